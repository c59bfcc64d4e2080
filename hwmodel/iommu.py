"""The IOMMU under the allocators: I/O page tables, an IOTLB, and the
invalidation unit.

Page tables are real memory: a map stores entries, an unmap clears them,
with the cache traffic that costs.  The IOTLB is a model: a set-associative
cache of translations per domain, filled by the device's accesses and
emptied only by an invalidation, so an unmap whose invalidation is deferred
leaves a translation that a device can still use.  The invalidation unit is
one serial resource per IOMMU: a flush occupies it for its modelled latency
and a second flush queues behind the first; the submitting CPU polls until
its own completes, as the kernel polls the invalidation-wait descriptor.
Where a map must also be made known to the IOMMU (s390 under a hypervisor
that shadows its tables: every map ends with a refresh of its range,
iotlb_sync_map), that refresh is served by the same unit: the hypervisor
serializes them with the flushes.

An IOTLB entry is one int64, ((iova pfn + 1) << 32) | physical pfn, so that a
probe never sees half of an entry.  An invalidation removes its entries when
it completes, not when it is submitted: until then the device can still use
them.

A miss costs a page walk: the profile's latency per miss (`walk_ns`),
polled by the worker that stands for the device, which waits for its
DMA as the device does; faults walk too.

2 MiB mappings (`--huge`): where a map's IOVA and physical address are
both 2 MiB aligned and 512 pages or more remain, the run is one leaf of
the level above the page table (a second-level entry with its page-size
bit), as iommu_map does: iommu_pgsize() picks the largest page size the
domain supports that the remaining length and the alignment of IOVA and
physical address together allow.  The IOVA allocator is not told: it
places pages as ever, and a range of 512 pages or more is 2 MiB aligned
only because dma-iommu asks for size-aligned ranges.  A 2 MiB IOTLB entry
is tagged with its run's first pfn and a flag above the tag, kept in the
set of pfn / 512, so the two sizes share the IOTLB's ways; a lookup tries
the run's set, then the page's (the hardware looks both up at once), and
an invalidation of a range drops the entries of both sizes it overlaps.
"""
from collections import namedtuple

import numpy as np

from hwmodel.cpu import (busy_wait_cycles, cas, cycles, hot, inline_into_callers, load,
                         out_of_line, pause, store)

LINE = 16
PTE_PRESENT = 1
PTE_WRITE = 2
PAGE_SHIFT = 12
TAG_SHIFT = 32
PHYS_MASK = (1 << 32) - 1
# drivers/iommu/intel/iommu.h: DMA_PTE_LARGE_PAGE, the page-size bit of a
# second-level entry that makes it a 2 MiB leaf
PTE_LARGE_PAGE = 1 << 7
# 2 MiB in 4 KiB pages (VTD_PAGE_SHIFT 12, a level of 9 bits: LEVEL_STRIDE)
HUGE_SHIFT = 9
HUGE_PAGES = 1 << HUGE_SHIFT
HUGE_MASK = HUGE_PAGES - 1
# a 2 MiB IOTLB entry's tag: the flag above any pfn + 1 (pfns below 2**30)
HUGE_TAG = 1 << 30

# Iommu.cfg words
I_SETS = 0             # IOTLB sets per domain
I_WAYS = 1
I_PAGES = 2            # page-table entries per domain
I_INV_PAGE = 3         # cycles of a page-selective invalidation
I_INV_DOMAIN = 4       # cycles of a domain-wide invalidation
I_PTE_EXTRA = 5        # cycles per entry written, beyond the store (non-coherent walkers)
I_NDOMAINS = 6
I_MAP_SYNC = 7         # cycles of the refresh that ends a map (0: none)
I_WALK = 8             # cycles of the page walk an IOTLB miss costs (0: none)
I_HUGE = 9             # 1: maps use 2 MiB leaves where they fit (--huge)

# Iommu.unit words, one line per IOMMU
U_BUSY_UNTIL = 0       # cycle at which the unit's last accepted flush completes

# per-worker statistics line
S_FILLS = 0
S_HITS = 1
S_FAULTS = 2
S_INV = 3              # invalidations submitted
S_INV_WAIT = 4         # cycles waited for own invalidations (queueing included)
S_INV_QUEUE = 5        # cycles of that spent behind other CPUs' flushes
S_INV_ENTRIES = 6      # IOTLB entries removed
S_MAP_SYNCS = 7        # refreshes at map (I_MAP_SYNC)
S_MAP_SYNC_WAIT = 8    # cycles waited for them (queueing included)
S_WALK = 9             # cycles of page walks (I_WALK per miss: fills and faults)
S_HUGE_FILLS = 10      # fills of 2 MiB entries (counted in S_FILLS too)
S_HUGE_HITS = 11       # hits on 2 MiB entries (counted in S_HITS too)

Iommu = namedtuple("Iommu", ["pt", "pd", "tlb", "unit", "cfg", "stats"])


def pd_entries(pages):
    """Second-level entries of one domain: one per 2 MiB of IOVA space."""
    return (pages + HUGE_MASK) >> HUGE_SHIFT


def layout(ndomains, pages, tlb_entries, ways, nworkers):
    sets = max(1, tlb_entries // ways)
    return [("pt", np.int64, (ndomains * pages,)),
            ("pd", np.int64, (ndomains * pd_entries(pages),)),
            ("tlb", np.int64, (ndomains * sets * ways,)),
            ("unit", np.int64, (LINE,)),
            ("cfg", np.int64, (LINE,)),
            ("stats", np.int64, (nworkers * LINE,))]


def make(views):
    return Iommu(*(views[n] for n in Iommu._fields))


def init(io, ndomains, pages, tlb_entries, ways, inv_page_cycles, inv_domain_cycles,
         pte_extra_cycles, map_sync_cycles=0, walk_cycles=0, huge=False):
    io.pt[:] = 0
    io.pd[:] = 0
    io.tlb[:] = 0
    io.unit[:] = 0
    io.stats[:] = 0
    io.cfg[:] = 0
    io.cfg[I_SETS] = max(1, tlb_entries // ways)
    io.cfg[I_WAYS] = ways
    io.cfg[I_PAGES] = pages
    io.cfg[I_NDOMAINS] = ndomains
    io.cfg[I_INV_PAGE] = inv_page_cycles
    io.cfg[I_INV_DOMAIN] = inv_domain_cycles
    io.cfg[I_PTE_EXTRA] = pte_extra_cycles
    io.cfg[I_MAP_SYNC] = map_sync_cycles
    io.cfg[I_WALK] = walk_cycles
    io.cfg[I_HUGE] = 1 if huge else 0


@hot(inline="always")
def _set_base(io, dom, pfn):
    sets = io.cfg[I_SETS]
    return (dom * sets + pfn % sets) * io.cfg[I_WAYS]


# The steps every I/O takes are inlined into the harness's loop: a call
# would copy the IOMMU's arrays, some fifty words, onto the stack each time.
@hot
def write_ptes(io, dom, iova, pages, phys):
    inline_into_callers()
    if pages >= HUGE_PAGES and io.cfg[I_HUGE] != 0:
        _write_huge(io, dom, iova, pages, phys)
        return
    base = dom * io.cfg[I_PAGES]
    for i in range(pages):
        io.pt[base + iova + i] = ((phys + i) << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITE
    busy_wait_cycles(io.cfg[I_PTE_EXTRA] * pages)


@hot(inline="always")
def _pd_index(io, dom, pfn):
    return dom * ((io.cfg[I_PAGES] + HUGE_MASK) >> HUGE_SHIFT) + (pfn >> HUGE_SHIFT)


@hot
def _write_huge(io, dom, iova, pages, phys):
    """__iommu_map with 2 MiB pages allowed: page by page until IOVA and
    physical address are both at a 2 MiB boundary, a 2 MiB leaf while 512
    pages remain, pages for the tail (iommu_pgsize's choice at every
    step).  An IOVA and a physical address that differ modulo 2 MiB are
    never both aligned: pages throughout."""
    out_of_line()
    base = dom * io.cfg[I_PAGES]
    i = 0
    written = 0
    while i < pages:
        if ((iova + i) | (phys + i)) & HUGE_MASK == 0 and pages - i >= HUGE_PAGES:
            io.pd[_pd_index(io, dom, iova + i)] = (((phys + i) << PAGE_SHIFT) | PTE_LARGE_PAGE
                                                   | PTE_PRESENT | PTE_WRITE)
            i += HUGE_PAGES
        else:
            io.pt[base + iova + i] = ((phys + i) << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITE
            i += 1
        written += 1
    busy_wait_cycles(io.cfg[I_PTE_EXTRA] * written)


@hot
def _clear_huge(io, dom, iova, pages):
    """__iommu_unmap: whatever leaf the table holds at each step, a 2 MiB
    one where a run was mapped so, else a page's."""
    out_of_line()
    base = dom * io.cfg[I_PAGES]
    i = 0
    cleared = 0
    while i < pages:
        if (iova + i) & HUGE_MASK == 0 and pages - i >= HUGE_PAGES and \
                io.pd[_pd_index(io, dom, iova + i)] != 0:
            io.pd[_pd_index(io, dom, iova + i)] = 0
            i += HUGE_PAGES
        else:
            io.pt[base + iova + i] = 0
            i += 1
        cleared += 1
    busy_wait_cycles(io.cfg[I_PTE_EXTRA] * cleared)


@hot
def sync_map(io, w, dom, iova, pages):
    """After a map's entries are written: the IOMMU told of them where it
    must be (s390's iotlb_sync_map with tlb_refresh set, a refresh of the
    range that the hypervisor serves by shadowing the new entries); a
    test of one word elsewhere."""
    inline_into_callers()
    if io.cfg[I_MAP_SYNC] > 0:
        _refresh_on_map(io, w)


@hot
def _refresh_on_map(io, w):
    t0, end = _occupy_unit(io, w, io.cfg[I_MAP_SYNC])
    while cycles() < end:
        pause()
    s = w * LINE
    io.stats[s + S_MAP_SYNCS] += 1
    io.stats[s + S_MAP_SYNC_WAIT] += end - t0


@hot
def clear_ptes(io, dom, iova, pages):
    inline_into_callers()
    if pages >= HUGE_PAGES and io.cfg[I_HUGE] != 0:
        _clear_huge(io, dom, iova, pages)
        return
    base = dom * io.cfg[I_PAGES]
    for i in range(pages):
        io.pt[base + iova + i] = 0
    busy_wait_cycles(io.cfg[I_PTE_EXTRA] * pages)


@hot
def translate(io, w, dom, pfn):
    """A device access to page `pfn`: the IOTLB's translation (physical pfn)
    or a walk that fills it; -1 when the walk finds nothing (a fault)."""
    inline_into_callers()
    ways = io.cfg[I_WAYS]
    s = w * LINE
    huge = io.cfg[I_HUGE] != 0
    if huge:
        # the run's 2 MiB entry first, in line: under --huge it is the hit
        # most accesses take (the hardware looks both sizes up at once)
        hb = _huge_set(io, dom, pfn)
        tag = HUGE_TAG | ((pfn & ~HUGE_MASK) + 1)
        for k in range(ways):
            e = load(io.tlb, hb + k)
            if e != 0 and (e >> TAG_SHIFT) == tag:
                io.stats[s + S_HITS] += 1
                io.stats[s + S_HUGE_HITS] += 1
                return (e & PHYS_MASK) + (pfn & HUGE_MASK)
    b = _set_base(io, dom, pfn)
    empty = -1
    for k in range(ways):
        e = load(io.tlb, b + k)
        if e == 0:
            if empty < 0:
                empty = k
        elif (e >> TAG_SHIFT) == pfn + 1:
            io.stats[s + S_HITS] += 1
            return e & PHYS_MASK
    if huge:
        phys = _fill_huge(io, w, dom, pfn)
        if phys >= 0:
            return phys
    _walk(io, s)
    pte = load(io.pt, dom * io.cfg[I_PAGES] + pfn)
    if pte & PTE_PRESENT == 0:
        io.stats[s + S_FAULTS] += 1
        return -1
    phys = pte >> PAGE_SHIFT
    # a free way if the set has one; else a victim picked by the cycle
    # counter's low bits: no shared replacement state to bounce between CPUs
    victim = empty if empty >= 0 else cycles() % ways
    store(io.tlb, b + victim, ((pfn + 1) << TAG_SHIFT) | (phys & PHYS_MASK))
    io.stats[s + S_FILLS] += 1
    return phys


@hot(inline="always")
def _walk(io, s):
    """The page walk of a miss: its latency, polled, and counted."""
    c = io.cfg[I_WALK]
    if c > 0:
        busy_wait_cycles(c)
        io.stats[s + S_WALK] += c


@hot(inline="always")
def _huge_set(io, dom, pfn):
    return _set_base(io, dom, pfn >> HUGE_SHIFT)


@hot
def _fill_huge(io, w, dom, pfn):
    """A miss on both sizes under --huge: a walk that ends at the run's
    2 MiB leaf fills a 2 MiB entry (the walk charged here); -1 when the
    run has no such leaf, for the walk to go on to the page's entry."""
    out_of_line()
    pde = load(io.pd, _pd_index(io, dom, pfn))
    if pde & PTE_PRESENT == 0:
        return -1
    s = w * LINE
    _walk(io, s)
    b = _huge_set(io, dom, pfn)
    ways = io.cfg[I_WAYS]
    victim = -1
    for k in range(ways):
        if load(io.tlb, b + k) == 0:
            victim = k
            break
    if victim < 0:
        victim = cycles() % ways
    tag = HUGE_TAG | ((pfn & ~HUGE_MASK) + 1)
    phys = pde >> PAGE_SHIFT
    store(io.tlb, b + victim, (tag << TAG_SHIFT) | (phys & PHYS_MASK))
    io.stats[s + S_FILLS] += 1
    io.stats[s + S_HUGE_FILLS] += 1
    return phys + (pfn & HUGE_MASK)


@hot
def probe(io, dom, pfn):
    """What a device would get for `pfn` from the IOTLB alone (no walk, no
    fill): the cached physical pfn, or -1."""
    b = _set_base(io, dom, pfn)
    for k in range(io.cfg[I_WAYS]):
        e = load(io.tlb, b + k)
        if e != 0 and (e >> TAG_SHIFT) == pfn + 1:
            return e & PHYS_MASK
    if io.cfg[I_HUGE] != 0:
        b = _huge_set(io, dom, pfn)
        tag = HUGE_TAG | ((pfn & ~HUGE_MASK) + 1)
        for k in range(io.cfg[I_WAYS]):
            e = load(io.tlb, b + k)
            if e != 0 and (e >> TAG_SHIFT) == tag:
                return (e & PHYS_MASK) + (pfn & HUGE_MASK)
    return -1


@hot
def pte(io, dom, pfn):
    return load(io.pt, dom * io.cfg[I_PAGES] + pfn)


@hot
def _occupy_unit(io, w, latency):
    """Reserve the unit for `latency` cycles after whatever it is doing:
    returns (start, end) of this flush."""
    while True:
        now = cycles()
        busy = load(io.unit, U_BUSY_UNTIL)
        start = now if busy < now else busy
        end = start + latency
        if cas(io.unit, U_BUSY_UNTIL, busy, end) == busy:
            if start > now:
                io.stats[w * LINE + S_INV_QUEUE] += start - now
            return now, end
        pause()


@hot
def _drop_entries(io, w, dom, pfn, pages):
    removed = 0
    ways = io.cfg[I_WAYS]
    for i in range(pages):
        b = _set_base(io, dom, pfn + i)
        for k in range(ways):
            e = load(io.tlb, b + k)
            if e != 0 and (e >> TAG_SHIFT) == pfn + i + 1:
                if cas(io.tlb, b + k, e, 0) == e:
                    removed += 1
    if io.cfg[I_HUGE] != 0:
        removed += _drop_huge(io, dom, pfn, pages)
    return removed


@hot
def _drop_huge(io, dom, pfn, pages):
    """The 2 MiB entries of the runs that [pfn, pfn + pages) overlaps."""
    removed = 0
    ways = io.cfg[I_WAYS]
    for run in range(pfn >> HUGE_SHIFT, ((pfn + pages - 1) >> HUGE_SHIFT) + 1):
        b = _set_base(io, dom, run)
        tag = HUGE_TAG | ((run << HUGE_SHIFT) + 1)
        for k in range(ways):
            e = load(io.tlb, b + k)
            if e != 0 and (e >> TAG_SHIFT) == tag:
                if cas(io.tlb, b + k, e, 0) == e:
                    removed += 1
    return removed


@hot
def drop_domain(io, dom):
    n = io.cfg[I_SETS] * io.cfg[I_WAYS]
    b = dom * n
    removed = 0
    for k in range(n):
        if load(io.tlb, b + k) != 0:
            store(io.tlb, b + k, 0)
            removed += 1
    return removed


@hot
def invalidate(io, w, dom, pfn, pages):
    """Invalidate `pages` pages from `pfn` (page-selective; pfn < 0: the
    whole domain) and wait for completion.  Returns the completion cycle."""
    inline_into_callers()
    latency = io.cfg[I_INV_DOMAIN] if pfn < 0 else io.cfg[I_INV_PAGE]
    t0, end = _occupy_unit(io, w, latency)
    while cycles() < end:
        pause()
    # the stale translations live until the invalidation completes
    if pfn < 0:
        removed = drop_domain(io, dom)
    else:
        removed = _drop_entries(io, w, dom, pfn, pages)
    s = w * LINE
    io.stats[s + S_INV] += 1
    io.stats[s + S_INV_WAIT] += end - t0
    io.stats[s + S_INV_ENTRIES] += removed
    return end


def _decode(e):
    """(first pfn, pages covered, physical pfn) of a nonzero IOTLB entry."""
    tag = int(e) >> TAG_SHIFT
    if tag & HUGE_TAG:
        return (tag & ~HUGE_TAG) - 1, HUGE_PAGES, int(e) & PHYS_MASK
    return tag - 1, 1, int(e) & PHYS_MASK


def stale_entries(io, dom):
    """IOTLB entries of domain `dom` whose page-table entry no longer maps
    what they cache (Python, for checks): the first pfn of each, a 2 MiB
    entry's run start for one that the run's leaf no longer backs."""
    sets, ways, pages = int(io.cfg[I_SETS]), int(io.cfg[I_WAYS]), int(io.cfg[I_PAGES])
    n = sets * ways
    out = []
    for e in io.tlb[dom * n:(dom + 1) * n]:
        if e:
            pfn, size, phys = _decode(e)
            if size == 1:
                cur = int(io.pt[dom * pages + pfn])
                ok = cur & PTE_PRESENT and cur >> PAGE_SHIFT == phys
            else:
                cur = int(io.pd[dom * pd_entries(pages) + (pfn >> HUGE_SHIFT)])
                ok = cur & PTE_PRESENT and cur & PTE_LARGE_PAGE and cur >> PAGE_SHIFT == phys
            if not ok:
                out.append(pfn)
    return out
