"""A spinlock-free IOVA allocator: the kernel's per-CPU magazines with
every lock taken out, over a bitmap that is claimed by compare-and-swap.

Cong Wang, on the iommu list in 2020 ("iommu: avoid unnecessary magazine
allocations"): "My ultimate goal is to find a spinlock-free algorithm,
otherwise there is no way to make it close to no-IOMMU performance."
This is one, so that the claim can be measured beside the designs that
take locks.

What it keeps of the kernel's rcache (drivers/iommu/iova.c, 6.7+), so that
it serves every workload the others serve and its cache behaves alike:
sizes under 32 pages rounded up to a power of two, six size classes of 1
to 32 pages, a loaded and a prev magazine of `p.mag_size` IOVAs per CPU
and class, the search down from a magazine's top for an entry that
respects the limit, full magazines handed to a depot per class that is
trimmed to the CPU count every IOVA_DEPOT_DELAY, and, when the range
allocator fails, every cache flushed back to it and one more try.  Where
it departs:

* A CPU's magazines are not locked but taken: one exchange marks its line
  owned and a store gives it back.  The kernel needs no more either, since
  only its own CPU touches that line; ours needs the exchange because two
  workers may act for one simulated CPU (a hand-off's unmap, a CPU count
  below the workers').  A worker that finds the line owned does not wait:
  it goes past the cache, straight to the range allocator (a `bypass`).
* The depot is a Treiber stack per class (hwmodel/stack.py), its head
  tagged against ABA; a magazine's size word is its link there, as in the
  kernel's list depot.  Empty magazines come from a stack of the same kind,
  as kmalloc hands them out to the kernel without a lock the caller sees.
  The pool is sized as for the list depot (magazines.mag_capacity); a
  worker that bypasses a cache can leave more ranges to be cached than
  that bound counts, so the pool may run empty, and then the IOVA being
  freed goes to the map instead, as the kernel's does when kmalloc fails
  (counted: `pool_empty`).
* The range allocator behind the cache is a bitmap, one bit per page, not
  a red-black tree: a tree cannot be changed by single-word
  compare-and-swaps.  A request takes the highest free run of its size,
  aligned to its size rounded up to a power of two (alloc_iova's
  size_aligned), below its limit and below its CPU's hint, where the last
  range that CPU took begins (next-fit, downward, so that the 32-bit space
  is used first, as in the kernel); past the bottom it wraps to the limit
  once.  The hints start spread over the space, a slice per CPU, so that
  CPUs missing the cache at once do not all claim bits in the same word.
  A run of at most 64 pages lies within one word (it is aligned to its
  size) and is claimed by one compare-and-swap; a longer one, whole words
  and a partial last one, is claimed word by word upwards and given back
  if a word turns out taken.

Lock-freedom.  No path waits for another worker.  Every loop is one of:
a compare-and-swap retried after it failed, which it does only because
another worker's succeeded on that word (that worker made progress); or
a scan over a bounded set (the words below a limit, the CPUs, a depot
that its own pops shorten).  So among workers that keep running, some
completes an operation in a bounded number of its own steps, whatever the
others do, including being stopped in the middle of one.  A stopped
worker withholds only what it holds: its CPU's two magazines of one class
(others on that CPU bypass them), the magazine it is moving, or the range
it is claiming.

ABA.  The stacks' heads are tagged (hwmodel/stack.py).  A bitmap word
needs no tag: the value written is the value read with free bits set, and
those bits were free whatever happened in between, if the word again
holds what was read.  The per-CPU line is taken by exchange, which
compares nothing.

What it cannot do that the kernel's rcache does: return the exact
answers of alloc_iova, since there is no tree; its placement is its own,
exact against its own reference model (tests/ref_iova.py, LockFree).  A
claim of several words can fail where the bits are free a moment later:
a request that finds every fitting run half claimed by others fails as
if the space were full (and flushes the caches, as any failure does).
"""
from collections import namedtuple

import numpy as np
from numba import njit

from allocators import STAT_LINE
from allocators.magazines import (CLASS_PAGES, LINE, NCLS, PC_HITS, PC_LOADED, PC_MISSES,
                                  PC_PREV, RC_PENDING, RC_SIZE, _mag_pop, _rounded,
                                  _stride, check_cpu, mag_bytes, mag_capacity,
                                  rcache_request)
from hwmodel import stack
from hwmodel.cpu import (cas, clz, fetch_add, fetch_and, fls, hot, inline_into_callers, load,
                         out_of_line, store, xchg)
from hwmodel.cpu import uidx as _u
from hwmodel.locks import counted

NAME = "lockfree"
LOCK_CLASSES = ("none",)        # none taken: the lock table shows it empty
# per worker first (a line of STAT_LINE), then what `counters` keeps per CPU
STATS = ("cas_failures", "bypasses", "depot_pushes", "depot_pops", "flush_retries",
         "trims") + tuple("hits_%d" % n for n in CLASS_PAGES) + \
    tuple("misses_%d" % n for n in CLASS_PAGES) + ("pool_empty",)
S_CAS, S_BYPASS, S_PUSHES, S_POPS, S_FLUSHES, S_TRIMS = range(6)

# meta: line 0 is read-only configuration
C_MAGSIZE = 0
C_STRIDE = 1
C_NCPUS = 2
C_NMAGS = 3
C_MAG_BYTES = 4
C_PAGES = 5                 # bits in the map
C_START = 6                 # the lowest pfn handed out (start_pfn)
C_MAP_BYTES = 7
# line 1: the magazine pool's free stack (hwmodel/stack.py)
P_HEAD = LINE
# line 2: magazine accounting
P_LIVE = 2 * LINE
P_PEAK_MAGS = 2 * LINE + 1
# line 3: a magazine wanted when the pool had none
N_MAG_NOMEM = 3 * LINE
META_WORDS = 4 * LINE

# the per-CPU, per-class line: magazines's, plus the word that owns it
PC_OWNED = 4
# the per-class depot line: RC_SIZE and RC_PENDING as in magazines, the
# stack's head in a word of its own
RC_TOP = 3
# a CPU's line in `hints`: where its next search begins (exclusive top)
H_HINT = 0

# the start of every aligned run, by log2 of the alignment, within a word
_ALIGNED = (-1, 0x5555555555555555, 0x1111111111111111, 0x0101010101010101,
            0x0001000100010001, 0x0000000100000001, 1)

State = namedtuple("State", ["map", "hints", "pcpu", "rcache", "mags", "meta",
                             "stats", "lk"])


def refuse(p, size):
    """A range of `size` pages, aligned to its power of two, must fit
    between start_pfn and the top of the space."""
    rounded = _rounded(size)
    align = 1 << (rounded - 1).bit_length()
    first = -(-p.start_pfn // align) * align
    if first + rounded > p.pages:
        return "a %d-page request fits nowhere in a %d-page space" % (size, p.pages)
    return None


def layout(p):
    nmags = mag_capacity(p)
    return [("map", np.int64, ((p.pages + 63) // 64,)),
            ("hints", np.int64, (p.ncpus * LINE,)),
            ("pcpu", np.int64, (p.ncpus * NCLS * LINE,)),
            ("rcache", np.int64, (NCLS * LINE,)),
            ("mags", np.int64, (nmags * _stride(p.mag_size),)),
            ("meta", np.int64, (META_WORDS,)),
            ("stats", np.int64, (p.nworkers * STAT_LINE,))]


def locks(p):
    return [0]


def make(views, lk):
    return State(views["map"], views["hints"], views["pcpu"], views["rcache"],
                 views["mags"], views["meta"], views["stats"], lk)


def start_hints(p):
    """Each CPU's first search begins at the top of its own slice of the
    space, in whole words."""
    span = (p.pages - p.start_pfn) // p.ncpus // 64 * 64
    return [p.pages - cpu * span for cpu in range(p.ncpus)]


def init(st, p):
    """An empty map; every CPU an empty loaded and prev per class."""
    if p.start_pfn < 1:
        # a cached pfn 0 would read as "nothing cached"
        raise ValueError("lockfree needs start_pfn >= 1")
    if p.mag_size < 1:
        raise ValueError("mag_size must be positive")
    stride = _stride(p.mag_size)
    nmags = len(st.mags) // stride
    for a in (st.map, st.hints, st.pcpu, st.rcache, st.mags, st.meta, st.stats):
        a[:] = 0
    st.hints.reshape(p.ncpus, LINE)[:, H_HINT] = start_hints(p)
    used = 2 * p.ncpus * NCLS
    if used > nmags:
        raise ValueError("magazine pool of %d slots, %d needed at start" % (nmags, used))
    pc = st.pcpu.reshape(p.ncpus * NCLS, LINE)
    pc[:, PC_LOADED] = np.arange(0, used, 2) * stride
    pc[:, PC_PREV] = np.arange(1, used, 2) * stride
    m = st.meta
    m[P_HEAD] = stack.chain(st.mags, list(range(used * stride, nmags * stride, stride)))
    m[C_MAGSIZE] = p.mag_size
    m[C_STRIDE] = stride
    m[C_NCPUS] = p.ncpus
    m[C_NMAGS] = nmags
    m[C_MAG_BYTES] = mag_bytes(p)
    m[C_PAGES] = p.pages
    m[C_START] = p.start_pfn
    m[C_MAP_BYTES] = (p.pages + 7) // 8
    m[P_LIVE] = used
    m[P_PEAK_MAGS] = used


# ------------------------------------------------------------- the bitmap


@hot
def _runs(free, size):
    """Bit k set where bits k .. k + size - 1 of `free` all are (size <= 64)."""
    g = np.uint64(free)
    have = 1
    while have < size:
        step = min(have, size - have)
        g &= g >> np.uint64(step)
        have += step
    return g


@hot
def _ones(n, at):
    """n set bits from bit `at` (n + at <= 64)."""
    if n == 64:
        return np.uint64(0xFFFFFFFFFFFFFFFF)
    return ((np.uint64(1) << np.uint64(n)) - np.uint64(1)) << np.uint64(at)


@hot
def _claim_in_words(bm, stats, s, top, lo, size, align):
    """The highest free run of `size` <= 64 pages, aligned, in [lo, top),
    claimed; -1 if none.  Such a run never crosses a word."""
    last = top - size
    if last < lo:
        return -1
    starts = np.uint64(_ALIGNED[fls(align - 1)])
    j = last >> 6
    while j >= lo >> 6:
        base = j << 6
        kmin = lo - base if lo > base else 0
        kmax = last - base if last - base < 63 else 63
        allowed = starts & ((np.uint64(2) << np.uint64(kmax)) - (np.uint64(1) << np.uint64(kmin)))
        old = load(bm, j)
        while True:
            cand = _runs(~np.uint64(old), size) & allowed
            if cand == 0:
                break
            k = 63 - clz(cand)
            seen = cas(bm, j, old, np.int64(np.uint64(old) | _ones(size, k)))
            if seen == old:
                return base + k
            stats[_u(s + S_CAS)] += 1
            old = seen
        j -= 1
    return -1


@hot
def _word_mask(i, size):
    """The bits of word i of a run of `size` pages that starts a word."""
    left = size - (i << 6)
    return _ones(left if left < 64 else 64, 0)


@hot
def _claim_words(bm, stats, s, j, size):
    """Claim words j, j+1, ... for a run of `size` > 64 pages starting at
    word j, upwards; if one is taken, give back what was claimed."""
    for i in range((size + 63) >> 6):
        mask = _word_mask(i, size)
        old = load(bm, j + i)
        while np.uint64(old) & mask == 0:
            seen = cas(bm, j + i, old, np.int64(np.uint64(old) | mask))
            if seen == old:
                break
            stats[_u(s + S_CAS)] += 1
            old = seen
        if np.uint64(old) & mask != 0:
            stats[_u(s + S_CAS)] += 1
            _release_words(bm, j, i * 64)
            return False
    return True


@hot
def _claim_spanning(bm, stats, s, top, lo, size, align):
    """The highest free run of `size` > 64 pages, aligned (to whole words),
    in [lo, top), claimed; -1 if none."""
    out_of_line()
    if top - size < lo:
        return -1
    pfn = (top - size) // align * align
    while pfn >= lo:
        j = pfn >> 6
        free = True
        for i in range((size + 63) >> 6):
            if np.uint64(load(bm, j + i)) & _word_mask(i, size) != 0:
                free = False
                break
        if free and _claim_words(bm, stats, s, j, size):
            return pfn
        pfn -= align
    return -1


@hot
def _release_words(bm, j, size):
    """Give back `size` pages from the start of word j."""
    while size >= 64:
        store(bm, j, 0)
        j += 1
        size -= 64
    if size:
        fetch_and(bm, j, np.int64(~_ones(size, 0)))


@hot
def _claim(bm, stats, s, top, lo, size, align):
    if size <= 64:
        return _claim_in_words(bm, stats, s, top, lo, size, align)
    return _claim_spanning(bm, stats, s, top, lo, size, align)


@hot
def _map_alloc(st, w, cpu, size, limit):
    """A range of `size` pages at or below `limit`, aligned to `size`
    rounded up to a power of two: below this CPU's hint first, then, once,
    from the limit down to where that search began."""
    m = st.meta
    pages = m[C_PAGES]
    top = pages if limit >= pages - 1 else limit + 1
    lo = m[C_START]
    align = np.int64(1) << fls(size - 1)
    hint = load(st.hints, cpu * LINE + H_HINT)
    start = hint if hint < top else top
    s = w * STAT_LINE
    pfn = _claim(st.map, st.stats, s, start, lo, size, align)
    if pfn == -1 and start < top:
        low = start - size + 1
        pfn = _claim(st.map, st.stats, s, top, low if low > lo else lo, size, align)
    if pfn != -1:
        store(st.hints, cpu * LINE + H_HINT, pfn)
    return pfn


@hot
def _map_free(bm, pfn, size):
    if size > 64:
        _release_words(bm, pfn >> 6, size)
    else:
        fetch_and(bm, pfn >> 6, np.int64(~_ones(size, pfn & 63)))


# -------------------------------------------------- magazines and depots


@hot
def _raise_peak(meta, i, value):
    while True:
        peak = load(meta, i)
        if value <= peak or cas(meta, i, peak, value) == peak:
            return


@hot
def _mag_alloc(st, s):
    """An empty magazine's address, or -1 when the pool is empty."""
    i, failed = stack.pop(st.meta, P_HEAD, st.mags)
    st.stats[_u(s + S_CAS)] += failed
    if i == -1:
        fetch_add(st.meta, N_MAG_NOMEM, 1)
        return -1
    st.mags[_u(i)] = 0
    _raise_peak(st.meta, P_PEAK_MAGS, fetch_add(st.meta, P_LIVE, 1) + 1)
    return i


@hot
def _mag_free(st, s, i):
    st.stats[_u(s + S_CAS)] += stack.push(st.meta, P_HEAD, st.mags, i)
    fetch_add(st.meta, P_LIVE, -1)


@hot
def _depot_push(st, s, c, mag):
    """A full magazine onto class c's depot: its size word becomes the link."""
    r = c * LINE
    st.stats[_u(s + S_CAS)] += stack.push(st.rcache, r + RC_TOP, st.mags, mag)
    fetch_add(st.rcache, r + RC_SIZE, 1)
    store(st.rcache, r + RC_PENDING, 1)         # schedule_delayed_work
    st.stats[_u(s + S_PUSHES)] += 1


@hot
def _depot_pop(st, s, c):
    """A full magazine from class c's depot, its size word restored, or -1."""
    r = c * LINE
    mag, failed = stack.pop(st.rcache, r + RC_TOP, st.mags)
    st.stats[_u(s + S_CAS)] += failed
    if mag != -1:
        fetch_add(st.rcache, r + RC_SIZE, -1)
        st.mags[_u(mag)] = st.meta[C_MAGSIZE]
    return mag


@hot
def _free_pfns(st, c, b):
    """Every pfn of the magazine at address b back to the map."""
    mags = st.mags
    n = mags[b]
    for k in range(n):
        _map_free(st.map, mags[b + 1 + k], np.int64(1) << c)
    mags[b] = 0
    return n


@hot
def _pcpu_line(cpu, c):
    return (cpu * NCLS + c) * LINE


@hot
def _take(st, w, cpu, c):
    """This CPU's line of class c, owned; -1 if another worker owns it."""
    inline_into_callers()
    pc = _pcpu_line(cpu, c)
    if xchg(st.pcpu, pc + PC_OWNED, 1) != 0:
        st.stats[_u(w * STAT_LINE + S_BYPASS)] += 1
        return -1
    return pc


@hot
def _give_back(st, pc):
    inline_into_callers()
    store(st.pcpu, pc + PC_OWNED, 0)


@hot
def _rcache_insert(st, w, cpu, c, pfn):
    """__iova_rcache_insert without a lock: True if the cache took pfn."""
    inline_into_callers()
    mags = st.mags
    pcpu = st.pcpu
    pc = _take(st, w, cpu, c)
    if pc == -1:
        return False
    can_insert = True
    if mags[_u(pcpu[_u(pc + PC_LOADED)])] >= st.meta[C_MAGSIZE]:
        can_insert = _make_room(st, w, pc, c)
    if can_insert:
        b = pcpu[_u(pc + PC_LOADED)]
        mags[_u(b + 1 + mags[_u(b)])] = pfn
        mags[_u(b)] += 1
    _give_back(st, pc)
    return can_insert


@hot
def _make_room(st, w, pc, c):
    """Loaded is full: swap in prev, or push loaded to the depot and start
    an empty one (the list depot's rule)."""
    out_of_line()
    mags = st.mags
    pcpu = st.pcpu
    loaded = pcpu[_u(pc + PC_LOADED)]
    prev = pcpu[_u(pc + PC_PREV)]
    if mags[_u(prev)] < st.meta[C_MAGSIZE]:
        pcpu[_u(pc + PC_LOADED)] = prev
        pcpu[_u(pc + PC_PREV)] = loaded
        return True
    s = w * STAT_LINE
    new = _mag_alloc(st, s)
    if new == -1:
        return False
    _depot_push(st, s, c, loaded)
    pcpu[_u(pc + PC_LOADED)] = new
    return True


@hot
def _rcache_get(st, w, cpu, c, limit_pfn):
    """__iova_rcache_get without a lock: a cached pfn at or below
    limit_pfn, or 0."""
    inline_into_callers()
    mags = st.mags
    pcpu = st.pcpu
    pc = _take(st, w, cpu, c)
    if pc == -1:
        return 0
    has_pfn = True
    if mags[_u(pcpu[_u(pc + PC_LOADED)])] == 0:
        has_pfn = _refill(st, w, pc, c)
    pfn = 0
    if has_pfn:
        pfn = _mag_pop(mags, pcpu[_u(pc + PC_LOADED)], limit_pfn)
    if counted(st.lk):
        if pfn != 0:
            pcpu[_u(pc + PC_HITS)] += 1
        else:
            pcpu[_u(pc + PC_MISSES)] += 1
    _give_back(st, pc)
    return pfn


@hot
def _refill(st, w, pc, c):
    """Loaded is empty: swap in prev, or take a full magazine from the
    depot.  True if loaded then holds IOVAs."""
    out_of_line()
    pcpu = st.pcpu
    loaded = pcpu[_u(pc + PC_LOADED)]
    prev = pcpu[_u(pc + PC_PREV)]
    if st.mags[_u(prev)] > 0:
        pcpu[_u(pc + PC_LOADED)] = prev
        pcpu[_u(pc + PC_PREV)] = loaded
        return True
    s = w * STAT_LINE
    mag = _depot_pop(st, s, c)
    if mag == -1:
        return False
    st.stats[_u(s + S_POPS)] += 1
    _mag_free(st, s, loaded)
    pcpu[_u(pc + PC_LOADED)] = mag
    return True


# ------------------------------------------------------------ the entries


@hot
def alloc(st, w, cpu, pages, limit):
    """alloc_iova_fast's rules, lock-free: pfn, or -1."""
    inline_into_callers()
    check_cpu(st.meta[C_NCPUS], cpu)
    if pages < 1:
        return -1
    size, c, lim = rcache_request(pages, limit)
    if c < NCLS:
        pfn = _rcache_get(st, w, cpu, c, lim)
        if pfn != 0:
            return pfn
    return _alloc_from_map(st, w, cpu, size, limit)


@hot
def _alloc_from_map(st, w, cpu, size, limit):
    out_of_line()
    pfn = _map_alloc(st, w, cpu, size, limit)
    if pfn == -1:
        st.stats[_u(w * STAT_LINE + S_FLUSHES)] += 1
        _flush(st, w)
        pfn = _map_alloc(st, w, cpu, size, limit)
    return pfn


@hot
def free(st, w, cpu, pfn, pages):
    """free_iova_fast's rules, lock-free."""
    inline_into_callers()
    check_cpu(st.meta[C_NCPUS], cpu)
    if pages < 1:
        return
    c = fls(pages - 1)                             # order_base_2
    if c < NCLS and _rcache_insert(st, w, cpu, c, pfn):
        return
    _free_to_map(st, pfn, pages)


@hot
def _free_to_map(st, pfn, pages):
    out_of_line()
    size = pages
    if size < (1 << (NCLS - 1)):
        size = np.int64(1) << fls(size - 1)        # what alloc gave out
    _map_free(st.map, pfn, size)


@hot
def trim(st, w, ncpus):
    """One run of the depot work for every class that has it pending:
    while a depot holds more than `ncpus` magazines, one goes back to the
    map.  Returns the magazines freed."""
    rc = st.rcache
    s = w * STAT_LINE
    n = 0
    for c in range(NCLS):
        r = c * LINE
        if load(rc, r + RC_PENDING) == 0:
            continue
        mag = -1
        if load(rc, r + RC_SIZE) > ncpus:
            mag = _depot_pop(st, s, c)
        else:
            store(rc, r + RC_PENDING, 0)
        if mag != -1:
            _free_pfns(st, c, mag)
            _mag_free(st, s, mag)
            st.stats[_u(s + S_TRIMS)] += 1
            n += 1
    return n


@njit(cache=True)
def flush_all(st, w):
    """Every cached IOVA back to the map; returns how many."""
    return _flush(st, w)


@hot
def _flush(st, w):
    """Every CPU's magazines that no other worker owns now, then every
    depot, back to the map; returns how many IOVAs."""
    s = w * STAT_LINE
    n = 0
    for cpu in range(st.meta[C_NCPUS]):
        for c in range(NCLS):
            pc = _pcpu_line(cpu, c)
            if xchg(st.pcpu, pc + PC_OWNED, 1) != 0:
                continue
            n += _free_pfns(st, c, st.pcpu[pc + PC_LOADED])
            n += _free_pfns(st, c, st.pcpu[pc + PC_PREV])
            store(st.pcpu, pc + PC_OWNED, 0)
    for c in range(NCLS):
        while True:
            mag = _depot_pop(st, s, c)
            if mag == -1:
                break
            n += _free_pfns(st, c, mag)
            _mag_free(st, s, mag)
    return n


# ---------------------------------------------------------------- checks


def cached(st, p):
    """(problems, {pfn: class}): every IOVA the caches hold, read from the
    magazines, with the pool and the depots checked on the way."""
    problems = []
    m = st.meta
    ms, stride, nmags = int(m[C_MAGSIZE]), int(m[C_STRIDE]), int(m[C_NMAGS])
    mags = st.mags.reshape(nmags, stride)
    owner = {}
    pfns = {}

    def take(addr, where, c, size=None):
        if not (0 <= addr < nmags * stride and addr % stride == 0):
            problems.append("lockfree: %s names address %d" % (where, addr))
            return
        slot = addr // stride
        if slot in owner:
            problems.append("lockfree: slot %d is both %s and %s" % (slot, owner[slot], where))
            return
        owner[slot] = where
        n = int(mags[slot, 0]) if size is None else size
        if not 0 <= n <= ms:
            problems.append("lockfree: %s holds %d of %d" % (where, n, ms))
            return
        for pfn in mags[slot, 1:1 + n].tolist():
            if pfn in pfns:
                problems.append("lockfree: pfn %#x cached twice" % pfn)
            pfns[pfn] = c

    pc = st.pcpu.reshape(p.ncpus, NCLS, LINE)
    owned = np.argwhere(pc[:, :, PC_OWNED] != 0)
    if len(owned):
        problems.append("lockfree: %d per-CPU line(s) still owned, first cpu %d class %d"
                        % ((len(owned),) + tuple(owned[0])))
    for cpu in range(p.ncpus):
        for c in range(NCLS):
            take(int(pc[cpu, c, PC_LOADED]), "cpu %d class %d loaded" % (cpu, c), c)
            take(int(pc[cpu, c, PC_PREV]), "cpu %d class %d prev" % (cpu, c), c)
    rc = st.rcache.reshape(NCLS, LINE)
    for c in range(NCLS):
        on = stack.walk(rc[c, RC_TOP], st.mags, nmags)
        if on is None:
            problems.append("lockfree: class %d depot loops" % c)
            continue
        for k, addr in enumerate(on):
            take(addr, "class %d depot #%d" % (c, k), c, ms)
        if len(on) != rc[c, RC_SIZE]:
            problems.append("lockfree: class %d depot holds %d, its size says %d"
                            % (c, len(on), rc[c, RC_SIZE]))
    free = stack.walk(m[P_HEAD], st.mags, nmags)
    if free is None:
        problems.append("lockfree: the free stack loops")
        free = []
    both = [a // stride for a in free if a // stride in owner]
    if both:
        problems.append("lockfree: slot %d is free and %s" % (both[0], owner[both[0]]))
    if len(free) + len(owner) != nmags:
        problems.append("lockfree: %d free + %d used slots, the pool has %d"
                        % (len(free), len(owner), nmags))
    if len(owner) != m[P_LIVE]:
        problems.append("lockfree: %d in use, the count says %d" % (len(owner), m[P_LIVE]))
    return problems, pfns


def map_ranges(st, p):
    """The set bits of the map, as a set of pfns."""
    bits = np.unpackbits(st.map.view(np.uint8), bitorder="little")[:p.pages]
    return set(np.flatnonzero(bits).tolist())


def check(st, p, live):
    """The map holds exactly the live ranges and the cached ones, no
    cached IOVA is also live, the caches' bookkeeping adds up."""
    problems, pfns = cached(st, p)
    want = set()
    for pfn, pages in live:
        pfn, size = int(pfn), _rounded(int(pages))
        if pfn in pfns:
            problems.append("lockfree: pfn %#x is cached and live" % pfn)
        span = set(range(pfn, pfn + size))
        if span & want:
            problems.append("lockfree: live range %#x+%d overlaps another" % (pfn, size))
        want |= span
    for pfn, c in pfns.items():
        span = set(range(pfn, pfn + (1 << c)))
        if span & want:
            problems.append("lockfree: cached range %#x+%d overlaps another" % (pfn, 1 << c))
        want |= span
    got = map_ranges(st, p)
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        problems.append("lockfree: the map has %d page(s) set that nothing holds (first %s) "
                        "and %d clear that are held (first %s)"
                        % (len(extra), [hex(x) for x in extra[:1]], len(missing),
                           [hex(x) for x in missing[:1]]))
    return problems


def counters(st):
    """Hits and misses, kept per CPU and class; the times the magazine
    pool was empty, kept in the state's meta line."""
    pc = st.pcpu.reshape(-1, NCLS, LINE)
    out = {"pool_empty": int(st.meta[N_MAG_NOMEM])}
    for c, n in enumerate(CLASS_PAGES):
        out["hits_%d" % n] = int(pc[:, c, PC_HITS].sum())
        out["misses_%d" % n] = int(pc[:, c, PC_MISSES].sum())
    return out


def footprint(st, p):
    """Bytes: the bitmap (one bit per page, fixed) and every live magazine
    at 8 + mag_size * 8; at the start, at the peak and now, with the
    magazines and the depot apart."""
    m = st.meta
    mb, bitmap = int(m[C_MAG_BYTES]), int(m[C_MAP_BYTES])
    depot = int(st.rcache.reshape(NCLS, LINE)[:, RC_SIZE].sum())
    start = bitmap + 2 * p.ncpus * NCLS * mb
    return {"start": start,
            "peak": bitmap + int(m[P_PEAK_MAGS]) * mb,
            "now": bitmap + int(m[P_LIVE]) * mb,
            "bitmap": bitmap,
            "magazines": int(m[P_LIVE]) * mb,
            "magazines_peak": int(m[P_PEAK_MAGS]) * mb,
            "depot": depot * mb}
