"""The pooled bitmap of powerpc's TCE allocator: `iommu_range_alloc`,
`__iommu_free`, `get_pool` and `iommu_init_table` of
arch/powerpc/kernel/iommu.c (mainline), over `iommu_area_alloc`
(lib/iommu-helper.c).

One bitmap covers the whole table.  A table of 1 GiB or more is cut into
IOMMU_NR_POOLS small pools over its bottom 3/4, smaller tables get one; the
top 1/4 is always the large pool.  Every pool has its own lock and next-fit
hint, so CPUs that hash to different pools do not contend.

What the kernel does, and this module does too:

- Page 0 is reserved at init (`iommu_table_reserve_pages`, it_offset 0), so
  that no device sees DMA address 0.  No other reserved range: the
  `res_start`/`res_end` window some platforms pass (a 32-bit MMIO hole) is
  taken as empty.
- A request over 15 pages goes to the large pool, any other to the pool
  `hash_32(cpu, IOMMU_POOL_HASHBITS) & (nr_pools - 1)`.
- The search in a pool stops one entry short of its end
  (`iommu_area_alloc` drops the last entry of its limit), so the last entry
  of every pool is never handed out.
- After a small allocation the hint moves to the next multiple of
  `it_blocksize` (16) past it, after a large one to just past it.
- A full pool is searched again from its start, then every small pool in
  turn starting with the next one after the CPU's own (with 4 pools the
  CPU's own pool comes round again), then the large pool, then the request
  fails.  Each move drops one pool lock and takes the next, and resets the
  new pool's hint to its start.
- A DMA limit below a pool's end shrinks the search to [hint & limit,
  limit) under that pool's lock on the first pass, and to [0, limit) under
  pool 0's lock on later ones.  Such a search can land outside the pool whose
  lock is held and leave that pool's hint outside it, so later unlimited
  requests of that pool start there too.  This is the kernel's behaviour,
  races included: under concurrency, two pools' holders can then claim the
  same entries.  `check` reports it if it happens.
- The bitmap is updated with plain read-modify-writes (`bitmap_set`,
  `bitmap_clear`), each under one pool's lock.  Two pools whose common edge
  is not a multiple of 64 entries share a word and can lose each other's
  updates under concurrency, in the kernel as here; tables of a power of two
  of at least 256 pages have no such edge.

Choices of this model:

- `limit` is the device's DMA mask in pages (`dma_get_mask(dev) >>
  it_page_shift`, the highest page index it can reach, e.g. 0xFFFFF for a
  32-bit device); 0 or a negative value means no limit.  It is used as the
  kernel uses its mask, including `hint & mask`, so it should be of the form
  2**k - 1.
- it_offset is 0 (the table starts at DMA address 0), the IOMMU page is the
  4 KiB kernel page, so streaming mappings ask no alignment (align_order 0).
- A request larger than the segment boundary fits nowhere, so every pass
  fails and so does the request; the kernel's `iommu_area_alloc` would spin
  on it forever (holding the pool lock) or fail the same way.
- A free that does not fit in the table is ignored, as `iommu_free_check`
  does (which also warns).

Unsigned kernel arithmetic is reproduced in int64: hash_32 masks to 32 bits
before and after its multiply, whose product fits in 63 bits.
"""
from collections import namedtuple

import numpy as np

from allocators import PAGE_SHIFT, STAT_LINE
from allocators import bitmap as _bitmap
from allocators.bitmap import _population, area_alloc, is_span_boundary, set_bits
from hwmodel.cpu import hot, inline_into_callers, uidx
from hwmodel.locks import acquire, release

NAME = "pools"
LOCK_CLASSES = ("pool",)
STATS = ("allocs", "fails", "spills", "words_scanned", "pass_retries", "frees")
LIMIT_IS_MASK = True        # a limit is the device's DMA mask in pages, 0: none
S_ALLOCS, S_FAILS, S_SPILLS, S_SCANNED, S_PASS_RETRIES, S_FREES = range(6)
# The search helpers borrowed from bitmap.py count scanned words at their own
# index of the worker's line; ours must be the same one.
assert S_SCANNED == _bitmap.S_SCANNED

# arch/powerpc/include/asm/iommu.h
IOMMU_POOL_HASHBITS = 2
IOMMU_NR_POOLS = 1 << IOMMU_POOL_HASHBITS
# include/linux/hash.h (since 4.7; 0x9e370001, GOLDEN_RATIO_PRIME_32, before)
GOLDEN_RATIO_32 = 0x61C88647
# arch/powerpc/platforms/{pseries,powernv}: every table is set up with 16
IT_BLOCKSIZE = 16
# arch/powerpc/kernel/iommu.c iommu_range_alloc: `largealloc = npages > 15`
LARGE_ALLOC_PAGES = 15
# arch/powerpc/kernel/iommu.c iommu_init_table: split only from 1 GiB up
POOL_SPLIT_BYTES = 1 << 30
# the ppc64 cache line that struct iommu_pool is aligned to (footprint only)
L1_CACHE_BYTES = 128

LARGE_POOL = IOMMU_NR_POOLS      # pool and lock index of the large pool
NPOOLS_MAX = IOMMU_NR_POOLS + 1

# One line of `pool` per pool (the kernel aligns struct iommu_pool to a
# cache line for the same reason: its hint is written on every allocation).
P_START = 0
P_END = 1
P_HINT = 2
P_USED = 3       # pages set minus pages cleared under this pool's lock
P_STRAY = 4      # 1 once a search under this lock placed a range outside the pool

# meta words, written by init only
M_PAGES = 0
M_NR_POOLS = 1
M_POOLSIZE = 2
M_BLOCKSIZE = 3
M_BOUNDARY = 4

U32 = 0xFFFFFFFF

State = namedtuple("State", ["map", "pool", "meta", "stats", "lk"])


def nr_pools_for(pages):
    """iommu_init_table: IOMMU_NR_POOLS from 1 GiB of table up, else 1."""
    return IOMMU_NR_POOLS if (pages << PAGE_SHIFT) >= POOL_SPLIT_BYTES else 1


def pool_bounds(pages):
    """[(start, end)] of the small pools, then the large pool, as
    iommu_init_table sets them."""
    nr = nr_pools_for(pages)
    poolsize = (pages * 3 // 4) // nr
    out = [(poolsize * i, poolsize * i + poolsize) for i in range(nr)]
    out.append((poolsize * nr, pages))
    return out


def _validate(p):
    if p.pages < 4:
        raise ValueError("pools: a table of %d pages has no room for a pool" % p.pages)
    if p.boundary <= 0 or p.boundary & (p.boundary - 1):
        raise ValueError("pools: the segment boundary (%d pages) must be a power of two"
                         % p.boundary)


def refuse(p, size):
    """A small request may land in any pool, a large one only in the large
    pool; entry 0 is reserved, and no range crosses the boundary."""
    try:
        _validate(p)
    except ValueError as e:
        return str(e)
    bounds = pool_bounds(p.pages)
    pools = bounds if size <= LARGE_ALLOC_PAGES else bounds[-1:]
    whys = [_bitmap.fit_refusal(size, max(start, 1), end, p.boundary) for start, end in pools]
    if not all(whys):
        return None
    if size <= LARGE_ALLOC_PAGES or size > p.boundary:
        return whys[-1]
    return ("a %d-page request fits nowhere in the large pool (pages %d..%d), where requests "
            "over %d pages go" % (size, bounds[-1][0], p.pages - 1, LARGE_ALLOC_PAGES))


def layout(p):
    _validate(p)
    return [("map", np.uint64, ((p.pages + 63) // 64,)),
            ("pool", np.int64, (NPOOLS_MAX * STAT_LINE,)),
            ("meta", np.int64, (STAT_LINE,)),
            ("stats", np.int64, (p.nworkers * STAT_LINE,))]


def locks(p):
    """One lock per small pool and one for the large pool, all of class
    "pool"; with one small pool, locks 1..3 are never taken."""
    return [0] * NPOOLS_MAX


def make(views, lk):
    return State(views["map"], views["pool"], views["meta"], views["stats"], lk)


def init(st, p):
    _validate(p)
    st.map[:] = 0
    st.pool[:] = 0
    st.meta[:] = 0
    st.stats[:] = 0
    nr = nr_pools_for(p.pages)
    bounds = pool_bounds(p.pages)
    st.meta[M_PAGES] = p.pages
    st.meta[M_NR_POOLS] = nr
    st.meta[M_POOLSIZE] = bounds[0][1] - bounds[0][0]
    st.meta[M_BLOCKSIZE] = IT_BLOCKSIZE
    st.meta[M_BOUNDARY] = p.boundary
    for i, (start, end) in enumerate(bounds):
        b = (i if i < nr else LARGE_POOL) * STAT_LINE
        st.pool[b + P_START] = start
        st.pool[b + P_END] = end
        st.pool[b + P_HINT] = start
    # iommu_table_reserve_pages: entry 0 is never handed out
    st.map[0] = np.uint64(1)


@hot
def hash_32(val, bits):
    """include/linux/hash.h hash_32 on a u32: the top `bits` bits of the
    32-bit product."""
    return (((val & U32) * GOLDEN_RATIO_32) & U32) >> (32 - bits)


@hot
def cpu_pool(cpu, nr_pools):
    """The small pool a CPU starts in: setup_iommu_pool_hash stores
    hash_32(cpu, IOMMU_POOL_HASHBITS) per CPU, iommu_range_alloc masks it
    with nr_pools - 1."""
    return hash_32(cpu, IOMMU_POOL_HASHBITS) & (nr_pools - 1)


@hot
def _hand_over(lk, held, to, w):
    """Drop one pool's lock and take another's (possibly the same again):
    the kernel's spin_unlock + spin_lock with interrupts kept off."""
    release(lk, held, w)
    acquire(lk, to, w)
    return to


@hot
def alloc(st, w, cpu, pages, limit):
    """iommu_range_alloc without a scatterlist handle, align_order 0.
    Returns the first entry, or -1."""
    inline_into_callers()
    s = w * STAT_LINE
    stats = st.stats
    if pages <= 0:
        # the kernel WARNs and returns DMA_MAPPING_ERROR
        stats[uidx(s + S_FAILS)] += 1
        return -1
    meta = st.meta
    pl = st.pool
    nr_pools = meta[M_NR_POOLS]
    boundary = meta[M_BOUNDARY]
    largealloc = pages > LARGE_ALLOC_PAGES
    pool_nr = cpu_pool(cpu, nr_pools)
    cur = LARGE_POOL if largealloc else pool_nr
    first = cur
    acquire(st.lk, cur, w)
    npass = 0
    while True:
        b = cur * STAT_LINE
        start = pl[uidx(b + P_HINT)]
        end_ = pl[uidx(b + P_END)]
        if start >= end_:
            start = pl[uidx(b + P_START)]
        if limit > 0 and end_ > limit:
            end_ = limit + 1
            # The kernel's test below can never be true (start & mask is at
            # most mask), so in effect only passes after the first move.
            if (start & limit) >= end_ or npass > 0:
                cur = _hand_over(st.lk, cur, 0, w)
                b = 0
                start = pl[P_START]
            else:
                start &= limit
        n = area_alloc(st.map, end_, start, pages, 0, boundary, 0, stats, s)
        if n != -1:
            break
        if npass == 0:
            pl[uidx(b + P_HINT)] = pl[uidx(b + P_START)]
        elif npass <= nr_pools:
            pool_nr = (pool_nr + 1) & (nr_pools - 1)
            cur = _hand_over(st.lk, cur, pool_nr, w)
            pl[uidx(cur * STAT_LINE + P_HINT)] = pl[uidx(cur * STAT_LINE + P_START)]
        elif npass == nr_pools + 1:
            cur = _hand_over(st.lk, cur, LARGE_POOL, w)
            pl[uidx(cur * STAT_LINE + P_HINT)] = pl[uidx(cur * STAT_LINE + P_START)]
        else:
            break
        npass += 1
        stats[uidx(s + S_PASS_RETRIES)] += 1
    if n == -1:
        stats[uidx(s + S_FAILS)] += 1
        release(st.lk, cur, w)
        return -1
    end = n + pages
    if largealloc:
        # large ranges are packed: rounding would waste the large pool
        pl[uidx(b + P_HINT)] = end
    else:
        # small ones start a fresh block (a TCE cache line) each
        bs = meta[M_BLOCKSIZE]
        pl[uidx(b + P_HINT)] = (end + bs - 1) & ~(bs - 1)
    pl[uidx(b + P_USED)] += pages
    if n < pl[uidx(b + P_START)] or end > pl[uidx(b + P_END)] - 1:
        pl[uidx(b + P_STRAY)] = 1
    stats[uidx(s + S_ALLOCS)] += 1
    if cur != first:
        stats[uidx(s + S_SPILLS)] += 1
    release(st.lk, cur, w)
    return n


@hot
def get_pool(meta, pl, entry):
    """The pool whose lock guards `entry`, by position alone."""
    if entry >= pl[uidx(LARGE_POOL * STAT_LINE + P_START)]:
        return LARGE_POOL
    return entry // meta[M_POOLSIZE]


@hot
def free(st, w, cpu, pfn, pages):
    """__iommu_free: clear the range under the lock of the pool its first
    entry lies in."""
    inline_into_callers()
    meta = st.meta
    if pfn < 0 or pages <= 0 or pfn + pages > meta[M_PAGES]:
        return
    cur = get_pool(meta, st.pool, pfn)
    acquire(st.lk, cur, w)
    set_bits(st.map, pfn, pages, False)
    st.pool[uidx(cur * STAT_LINE + P_USED)] -= pages
    st.stats[uidx(w * STAT_LINE + S_FREES)] += 1
    release(st.lk, cur, w)


def pool_state(st):
    """[(start, end, hint)] of the small pools in use, then the large pool."""
    nr = int(st.meta[M_NR_POOLS])
    out = []
    for i in list(range(nr)) + [LARGE_POOL]:
        b = i * STAT_LINE
        out.append((int(st.pool[b + P_START]), int(st.pool[b + P_END]),
                    int(st.pool[b + P_HINT])))
    return out


def check(st, p, live):
    """The bitmap holds exactly the live ranges and the reserved entry 0.

    `live` holds (pfn, pages) or (pfn, pages, limit) for every range held;
    a limit > 0 is the one the range was asked with and is checked.  Each
    range must lie in the usable part of one pool (its last entry excluded)
    unless some pool records a limited search that escaped it, which makes
    any place in the table legal."""
    problems = []
    pages_total = p.pages
    bounds = [(s, e) for s, e, _ in pool_state(st)]
    if bounds != pool_bounds(p.pages):
        problems.append("pool bounds %r, expected %r" % (bounds, pool_bounds(p.pages)))
    strayed = any(int(st.pool[i * STAT_LINE + P_STRAY]) for i in range(NPOOLS_MAX))
    expect = np.zeros(len(st.map) * 64, dtype=bool)
    expect[0] = True
    npages = 0
    for item in live:
        pfn, pages = int(item[0]), int(item[1])
        limit = int(item[2]) if len(item) > 2 else 0
        npages += pages
        if pfn < 1 or pages < 1 or pfn + pages > pages_total - 1:
            problems.append("range %d+%d outside the usable table of %d"
                            % (pfn, pages, pages_total))
            continue
        if expect[pfn:pfn + pages].any():
            problems.append("range %d+%d overlaps another" % (pfn, pages))
        expect[pfn:pfn + pages] = True
        if is_span_boundary(pfn, pages, 0, p.boundary):
            problems.append("range %d+%d crosses a %d-page boundary"
                            % (pfn, pages, p.boundary))
        if limit > 0 and pfn + pages - 1 > limit:
            problems.append("range %d+%d beyond its limit %d" % (pfn, pages, limit))
        if not strayed and not any(s <= pfn and pfn + pages <= e - 1 for s, e in bounds):
            problems.append("range %d+%d not inside one pool" % (pfn, pages))
    problems += _bitmap.map_differs(st.map, expect)
    pop = int(_population(st.map))
    if pop != npages + 1:
        problems.append("bitmap holds %d entries, the live ranges %d (+1 reserved)"
                        % (pop, npages))
    used = sum(int(st.pool[i * STAT_LINE + P_USED]) for i in range(NPOOLS_MAX))
    if used != pop - 1:
        problems.append("pool counts say %d pages in use, the bitmap %d" % (used, pop - 1))
    return problems


def footprint(st, p):
    """The kernel's metadata: it_map (whole longs) and the IOMMU_NR_POOLS + 1
    cache-line-aligned struct iommu_pool; it never grows."""
    nbytes = (p.pages + 63) // 64 * 8 + NPOOLS_MAX * L1_CACHE_BYTES
    return {"start": nbytes, "peak": nbytes}

