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
"""
from collections import namedtuple

import numpy as np

from hwmodel.cpu import busy_wait_cycles, cas, cycles, hot, inline_into_callers, load, pause, store

LINE = 16
PTE_PRESENT = 1
PTE_WRITE = 2
PAGE_SHIFT = 12
TAG_SHIFT = 32
PHYS_MASK = (1 << 32) - 1

# Iommu.cfg words
I_SETS = 0             # IOTLB sets per domain
I_WAYS = 1
I_PAGES = 2            # page-table entries per domain
I_INV_PAGE = 3         # cycles of a page-selective invalidation
I_INV_DOMAIN = 4       # cycles of a domain-wide invalidation
I_PTE_EXTRA = 5        # cycles per entry written, beyond the store (non-coherent walkers)
I_NDOMAINS = 6
I_MAP_SYNC = 7         # cycles of the refresh that ends a map (0: none)

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

Iommu = namedtuple("Iommu", ["pt", "tlb", "unit", "cfg", "stats"])


def layout(ndomains, pages, tlb_entries, ways, nworkers):
    sets = max(1, tlb_entries // ways)
    return [("pt", np.int64, (ndomains * pages,)),
            ("tlb", np.int64, (ndomains * sets * ways,)),
            ("unit", np.int64, (LINE,)),
            ("cfg", np.int64, (LINE,)),
            ("stats", np.int64, (nworkers * LINE,))]


def make(views):
    return Iommu(*(views[n] for n in Iommu._fields))


def init(io, ndomains, pages, tlb_entries, ways, inv_page_cycles, inv_domain_cycles,
         pte_extra_cycles, map_sync_cycles=0):
    io.pt[:] = 0
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


@hot(inline="always")
def _set_base(io, dom, pfn):
    sets = io.cfg[I_SETS]
    return (dom * sets + pfn % sets) * io.cfg[I_WAYS]


# The steps every I/O takes are inlined into the harness's loop: a call
# would copy the IOMMU's arrays, some fifty words, onto the stack each time.
@hot
def write_ptes(io, dom, iova, pages, phys):
    inline_into_callers()
    base = dom * io.cfg[I_PAGES]
    for i in range(pages):
        io.pt[base + iova + i] = ((phys + i) << PAGE_SHIFT) | PTE_PRESENT | PTE_WRITE
    busy_wait_cycles(io.cfg[I_PTE_EXTRA] * pages)


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
    base = dom * io.cfg[I_PAGES]
    for i in range(pages):
        io.pt[base + iova + i] = 0
    busy_wait_cycles(io.cfg[I_PTE_EXTRA] * pages)


@hot
def translate(io, w, dom, pfn):
    """A device access to page `pfn`: the IOTLB's translation (physical pfn)
    or a walk that fills it; -1 when the walk finds nothing (a fault)."""
    inline_into_callers()
    b = _set_base(io, dom, pfn)
    ways = io.cfg[I_WAYS]
    s = w * LINE
    empty = -1
    for k in range(ways):
        e = load(io.tlb, b + k)
        if e == 0:
            if empty < 0:
                empty = k
        elif (e >> TAG_SHIFT) == pfn + 1:
            io.stats[s + S_HITS] += 1
            return e & PHYS_MASK
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


@hot
def probe(io, dom, pfn):
    """What a device would get for `pfn` from the IOTLB alone (no walk, no
    fill): the cached physical pfn, or -1."""
    b = _set_base(io, dom, pfn)
    for k in range(io.cfg[I_WAYS]):
        e = load(io.tlb, b + k)
        if e != 0 and (e >> TAG_SHIFT) == pfn + 1:
            return e & PHYS_MASK
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


def stale_entries(io, dom):
    """IOTLB entries of domain `dom` whose page-table entry no longer maps
    what they cache (Python, for checks)."""
    sets, ways, pages = int(io.cfg[I_SETS]), int(io.cfg[I_WAYS]), int(io.cfg[I_PAGES])
    n = sets * ways
    out = []
    for e in io.tlb[dom * n:(dom + 1) * n]:
        if e:
            pfn = (int(e) >> TAG_SHIFT) - 1
            phys = int(e) & PHYS_MASK
            cur = int(io.pt[dom * pages + pfn])
            if not cur & PTE_PRESENT or cur >> PAGE_SHIFT != phys:
                out.append(pfn)
    return out
