"""Next-fit over one bitmap: the x86 GART's `alloc_iommu`
(arch/x86/kernel/amd_gart_64.c) over `iommu_area_alloc` (lib/iommu-helper.c).

One global lock (`iommu_bitmap_lock`) guards the bitmap and the next-fit hint
`next_bit`.  An allocation searches from the hint to the end, then once more
from 0; either way the hint moves past the range handed out, back to 0 when
it reaches the end.  Wrapping is where the GART must flush its IOTLB, so the
allocator raises `need_flush` there and the caller consumes it.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from allocators import STAT_LINE
from hwmodel.cpu import ctz, hot, inline_into_callers, popcount, uidx
from hwmodel.locks import acquire, release

NAME = "bitmap"
LOCK_CLASSES = ("bitmap",)
STATS = ("allocs", "fails", "wraps", "words_scanned", "frees")
S_ALLOCS, S_FAILS, S_WRAPS, S_SCANNED, S_FREES = range(5)

# meta words
M_NEXT_BIT = 0       # the next-fit hint
M_NEED_FLUSH = 1     # set on wrap, cleared by whoever flushes
M_PAGES = 2          # bits in the map
M_BOUNDARY = 3       # segment boundary in pages (a power of two)
M_LIVE = 4           # pages allocated now
M_PEAK = 5

BITMAP_LOCK = 0

State = namedtuple("State", ["map", "meta", "stats", "lk"])


def layout(p):
    return [("map", np.uint64, ((p.pages + 63) // 64,)),
            ("meta", np.int64, (STAT_LINE,)),
            ("stats", np.int64, (p.nworkers * STAT_LINE,))]


def locks(p):
    return [0]


def make(views, lk):
    return State(views["map"], views["meta"], views["stats"], lk)


def init(st, p):
    st.map[:] = 0
    st.meta[:] = 0
    st.stats[:] = 0
    st.meta[M_PAGES] = p.pages
    st.meta[M_BOUNDARY] = p.boundary


def fit_refusal(size, start, end, boundary):
    """Why `size` pages never fit in the empty bits [start, end - 1) (the
    last bit is never used) without crossing a `boundary`, or None."""
    if size > boundary:
        return "a %d-page request is larger than the %d-page segment boundary" % (size, boundary)
    if start % boundary + size > boundary:
        start = (start // boundary + 1) * boundary
    if start + size > end - 1:
        return "a %d-page request fits nowhere in a %d-page space" % (size, end)
    return None


def refuse(p, size):
    return fit_refusal(size, 0, p.pages, p.boundary)


@hot
def find_next_bit(map_, size, start, want_zero, stats, s):
    """Index of the first bit at or after start that is 1 (or 0 when
    want_zero), or size: lib/find_bit.c, a word at a time."""
    if start >= size:
        return size
    i = start >> 6
    word = map_[uidx(i)]
    if want_zero:
        word = ~word
    word &= np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(start & 63)
    nwords = (size + 63) >> 6
    first = i
    while word == 0:
        i += 1
        if i >= nwords:
            # counted once per search, not per word: the store would
            # otherwise stay in the loop, as stats may alias the map
            stats[uidx(s + S_SCANNED)] += i - first
            return size
        word = map_[uidx(i)]
        if want_zero:
            word = ~word
    stats[uidx(s + S_SCANNED)] += i - first + 1
    r = (i << 6) + ctz(word)
    return r if r < size else size


@hot
def find_next_zero_area(map_, size, start, nr, align_mask, stats, s):
    """lib/bitmap.c bitmap_find_next_zero_area_off, offset 0: returns an
    index >= size when nothing fits."""
    while True:
        index = find_next_bit(map_, size, start, True, stats, s)
        index = (index + align_mask) & ~align_mask
        end = index + nr
        if end > size:
            return end
        i = find_next_bit(map_, end, index, False, stats, s)
        if i < end:
            start = i + 1
            continue
        return index


@hot
def is_span_boundary(index, nr, shift, boundary_size):
    """include/linux/iommu-helper.h iommu_is_span_boundary."""
    shift = (shift + index) & (boundary_size - 1)
    return shift + nr > boundary_size


@hot
def set_bits(map_, start, nr, value):
    """bitmap_set / bitmap_clear."""
    end = start + nr
    i = start
    while i < end:
        w = i >> 6
        lo = i & 63
        n = min(64 - lo, end - i)
        mask = np.uint64(0xFFFFFFFFFFFFFFFF) if n == 64 else \
            ((np.uint64(1) << np.uint64(n)) - np.uint64(1)) << np.uint64(lo)
        if value:
            map_[uidx(w)] |= mask
        else:
            map_[uidx(w)] &= ~mask
        i += n


@hot
def area_alloc(map_, size, start, nr, shift, boundary_size, align_mask, stats, s):
    """lib/iommu-helper.c iommu_area_alloc: -1 when nothing fits.  A request
    larger than the boundary never fits; the kernel would loop on it forever
    (its callers never ask), we fail it."""
    if nr > boundary_size:
        return -1
    size -= 1          # as the kernel: the last bit of the map is never used
    while True:
        index = find_next_zero_area(map_, size, start, nr, align_mask, stats, s)
        if index >= size:
            return -1
        if is_span_boundary(index, nr, shift, boundary_size):
            start = ((shift + index + boundary_size - 1) & ~(boundary_size - 1)) - shift
            continue
        set_bits(map_, index, nr, True)
        return index


@hot
def alloc(st, w, cpu, pages, limit):
    """amd_gart_64.c alloc_iommu, align_mask 0 (streaming mappings)."""
    inline_into_callers()
    s = w * STAT_LINE
    meta = st.meta
    size = meta[M_PAGES]
    boundary = meta[M_BOUNDARY]
    acquire(st.lk, BITMAP_LOCK, w)
    offset = area_alloc(st.map, size, meta[M_NEXT_BIT], pages, 0, boundary, 0,
                        st.stats, s)
    if offset == -1:
        meta[M_NEED_FLUSH] = 1
        st.stats[uidx(s + S_WRAPS)] += 1
        offset = area_alloc(st.map, size, 0, pages, 0, boundary, 0, st.stats, s)
    if offset != -1:
        meta[M_NEXT_BIT] = offset + pages
        if meta[M_NEXT_BIT] >= size:
            meta[M_NEXT_BIT] = 0
            meta[M_NEED_FLUSH] = 1
        meta[M_LIVE] += pages
        if meta[M_LIVE] > meta[M_PEAK]:
            meta[M_PEAK] = meta[M_LIVE]
        st.stats[uidx(s + S_ALLOCS)] += 1
    else:
        st.stats[uidx(s + S_FAILS)] += 1
    release(st.lk, BITMAP_LOCK, w)
    return offset


@hot
def free(st, w, cpu, pfn, pages):
    """amd_gart_64.c free_iommu: clear, and move the hint past a range freed
    at or above it, so the next search does not rescan it."""
    inline_into_callers()
    meta = st.meta
    acquire(st.lk, BITMAP_LOCK, w)
    set_bits(st.map, pfn, pages, False)
    if pfn >= meta[M_NEXT_BIT]:
        meta[M_NEXT_BIT] = pfn + pages
    meta[M_LIVE] -= pages
    st.stats[uidx(w * STAT_LINE + S_FREES)] += 1
    release(st.lk, BITMAP_LOCK, w)


@njit(cache=True)
def _population(map_):
    n = 0
    for i in range(map_.shape[0]):
        n += popcount(map_[i])
    return n


def map_differs(map_, expect):
    """[a problem] if the bitmap's bits are not `expect` (bools), else []."""
    bits = np.unpackbits(map_.view(np.uint8), bitorder="little").astype(bool)
    diff = np.flatnonzero(bits != expect)
    if len(diff):
        return ["bitmap differs from the live ranges at %d bit(s), first at %d"
                % (len(diff), diff[0])]
    return []


def check(st, p, live):
    """The bitmap holds exactly the live ranges."""
    problems = []
    expect = np.zeros(len(st.map) * 64, dtype=bool)
    for pfn, pages in live:
        if pfn < 0 or pfn + pages > p.pages - 1:
            problems.append("range %d+%d outside the map of %d" % (pfn, pages, p.pages))
            continue
        if expect[pfn:pfn + pages].any():
            problems.append("range %d+%d held twice" % (pfn, pages))
        expect[pfn:pfn + pages] = True
        if is_span_boundary(pfn, pages, 0, p.boundary):
            problems.append("range %d+%d crosses a %d-page boundary" % (pfn, pages, p.boundary))
    problems += map_differs(st.map, expect)
    pop = int(_population(st.map))
    if pop != int(st.meta[M_LIVE]):
        problems.append("bitmap holds %d pages, its count says %d" % (pop, st.meta[M_LIVE]))
    return problems


def footprint(st, p):
    nbytes = st.map.nbytes + 8          # the map and the hint
    return {"start": nbytes, "peak": nbytes}

