"""Per-CPU magazine caches over the red-black tree: `alloc_iova_fast` and
`free_iova_fast` of drivers/iommu/iova.c, with the depot of one of three
eras, chosen by `p.variant`:

* "list" (Linux 6.7+): an unbounded linked list of full magazines per size
  class; a delayed work item (`iova_depot_work_func`, every
  IOVA_DEPOT_DELAY = 100 ms while it has work) frees one magazine at a time
  back to the tree while the depot holds more magazines than there are
  CPUs.  `trim` is one run of that work for every size class.
* "fixed" (2016 to 6.6): an array of MAX_GLOBAL_MAGS = 32 full magazines
  per size class; a full magazine that finds the depot full has its IOVAs
  freed into the tree.
* "prealloc" (Cong Wang's 2020 proposal, "iommu: avoid unnecessary
  magazine allocations"): the 32 depot slots are allocated empty up front
  and magazines are swapped in and out of them instead of being freed and
  allocated again.

Everything else is the 6.7+ code for all three, so that only the depot
differs between them: sizes under 32 pages are rounded up to a power of two
(so the cache never hands back a range too small), six size classes of 1 to
32 pages are cached, a magazine holds `p.mag_size` IOVAs (IOVA_MAG_SIZE:
127 since 2022, 128 before), taking from a magazine looks down from its top
for an entry that respects the limit and fills the hole with the top entry,
and when the tree itself fails, every CPU's cache and the depot are flushed
into the tree and the tree is tried once more.

Locks, as the kernel's: the tree's `iova_rbtree_lock` (class "rbtree"), a
lock per CPU per size class (`cpu_rcache->lock`, class "magazine") and a
lock per size class for its depot (`rcache->lock`, class "depot").  They
nest in that order: magazine, then depot, then rbtree.

Magazines are kmalloc'ed in the kernel.  Here they are slots of one array,
each laid out as `struct iova_magazine` (a size word, then the pfns; in a
list depot the size word holds the link, as the kernel's union does) and
named, wherever one is held (a CPU's loaded and prev, a depot, a link), by
its address: the index of its size word in `mags`, as the kernel names it
by pointer, so that reaching a magazine costs one load.  Slots are taken
from and returned to a lock-free stack: kmalloc takes no lock the caller
could contend on, and neither does this.  The pool is sized so that it
cannot run out (see `mag_capacity`); if it did, the kernel's own
allocation-failure paths would be taken and `check` would say so.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from allocators import IOVA_RANGE_CACHE_MAX_SIZE, MAX_GLOBAL_MAGS, STAT_LINE
from allocators import rbtree
from allocators.rbtree import (DOMAIN_BYTES, IOVA_BYTES, M_NODES,
                               alloc_locked, free_locked)
from hwmodel import stack
from hwmodel.cpu import cas, fetch_add, fls, hot, inline_into_callers, load, out_of_line
from hwmodel.cpu import uidx as _u
from hwmodel.locks import acquire, acquire_fast, acquire_wait, counted, release

NAME = "magazines"
LOCK_CLASSES = ("rbtree", "magazine", "depot")
NCLS = IOVA_RANGE_CACHE_MAX_SIZE          # size classes 1, 2, 4, 8, 16, 32 pages
CLASS_PAGES = tuple(1 << c for c in range(NCLS))
STATS = tuple("hits_%d" % n for n in CLASS_PAGES) + \
    tuple("misses_%d" % n for n in CLASS_PAGES) + \
    ("depot_pushes", "depot_pops", "flush_retries", "trims")
S_PUSHES = 2 * NCLS         # hits and misses are counted per CPU (PC_HITS)
S_POPS = S_PUSHES + 1
S_FLUSHES = S_PUSHES + 2
S_TRIMS = S_PUSHES + 3

DEPOTS = ("fixed", "list", "prealloc")
FIXED, LIST, PREALLOC = range(3)
VARIANTS = DEPOTS                         # the design names' `magazines:<depot>`
DEFAULT_VARIANT = "list"

# drivers/iommu/iova.c IOVA_DEPOT_DELAY: the trim period, for the harness
IOVA_DEPOT_DELAY_MS = 100

LINE = STAT_LINE            # int64 words per 128-byte line

# meta: line 0 is read-only configuration
C_VARIANT = 0
C_MAGSIZE = 1
C_STRIDE = 2                # words per magazine slot
C_NCPUS = 3
C_NMAGS = 4
C_MAG_BYTES = 5             # kernel bytes of one magazine
# line 1: the magazine pool's free stack, (tag << 32) | (address + 1)
P_HEAD = LINE
# line 2: magazine and memory accounting
P_LIVE = 2 * LINE           # magazines allocated now
P_PEAK_MAGS = 2 * LINE + 1
P_PEAK_BYTES = 2 * LINE + 2
P_START_BYTES = 2 * LINE + 3
# line 3: things that must not happen
N_MAG_NOMEM = 3 * LINE      # the magazine pool was empty
META_WORDS = 4 * LINE

# a per-CPU, per-class line (struct iova_cpu_rcache, cache-line aligned).
# The kernel keeps no hit counts; ours live beside the magazines they
# count, on the line the lookup holds anyway (a counter on a line of its
# own cost a twelfth of a cache hit), and a replay, whose locks are Quiet
# (hwmodel/locks.py), keeps none.  LOADED and PREV are addresses in `mags`.
PC_LOADED = 0
PC_PREV = 1
PC_HITS = 2
PC_MISSES = 3
# a per-class line (struct iova_rcache)
RC_SIZE = 0                 # magazines in the depot
RC_HEAD = 1                 # list depot: the first magazine, or -1
RC_PENDING = 2              # list depot: the trim work is scheduled

MASK32 = 0xFFFFFFFF

State = namedtuple("State", ["tree", "pcpu", "rcache", "depot", "mags", "meta",
                             "stats", "lk"])


def _variant(p):
    depot = p.variant or DEFAULT_VARIANT
    if depot not in DEPOTS:
        raise ValueError("unknown depot %r: one of %s" % (depot, ", ".join(DEPOTS)))
    return DEPOTS.index(depot)


def _stride(mag_size):
    """Words per magazine slot: the size word and the pfns, rounded up to
    whole 128-byte lines so that no two magazines share one."""
    return (mag_size + 1 + LINE - 1) // LINE * LINE


def mag_bytes(p):
    """Kernel bytes of one magazine: the size word and the pfn array
    (struct iova_magazine, drivers/iommu/iova.c), 1024 for 127 entries.
    The 128-entry magazine of 2016 was kzalloc'ed, so its 1032 bytes really
    took a 2048-byte kmalloc object; like the 2020 thread's arithmetic, we
    count the structure."""
    return 8 + p.mag_size * 8


def depot_bound(p):
    """The most magazines one size class's depot can hold.  Fixed and
    preallocated depots have MAX_GLOBAL_MAGS slots.  The list depot is
    unbounded in the kernel; here it is bounded by what the class can have
    cached: a class only goes to the tree when the asking CPU's cache and
    the depot are empty, so (with one limit per domain, as a device's DMA
    mask gives) its ranges, live and cached, never exceed the other CPUs'
    two magazines each, one magazine per worker on its way back to the
    tree, and max_live."""
    if _variant(p) == LIST:
        return 2 * p.ncpus + p.nworkers + -(-p.max_live // p.mag_size)
    return MAX_GLOBAL_MAGS


def cache_bound(p):
    """The most IOVAs all the caches together can hold, beyond max_live:
    per class, every CPU's loaded and prev magazines and the depot, plus one
    magazine per worker detached on its way to the tree."""
    per_class = (2 * p.ncpus + depot_bound(p)) * p.mag_size
    return NCLS * per_class + p.nworkers * p.mag_size


def mag_capacity(p):
    """Magazine slots: a loaded and a prev per CPU per class, the depots
    full, and one more per worker (the new magazine a full CPU cache takes
    before its old one reaches the depot or the tree)."""
    return NCLS * (2 * p.ncpus + depot_bound(p)) + p.nworkers


def node_capacity(p):
    """Tree nodes: what is live and what the caches may hold."""
    return rbtree.node_capacity(p, cache_bound(p))


def refuse(p, size):
    """The tree's rule, for the size a request takes there: below the
    largest cached class, rounded up to a power of two."""
    return rbtree.aligned_refusal(p, size, _rounded(size))


def layout(p):
    _variant(p)
    nmags = mag_capacity(p)
    out = [("tree." + name, dtype, shape)
           for name, dtype, shape in rbtree.layout_nodes(p, node_capacity(p))]
    out += [("pcpu", np.int64, (p.ncpus * NCLS * LINE,)),
            ("rcache", np.int64, (NCLS * LINE,)),
            ("depot", np.int64, (NCLS * MAX_GLOBAL_MAGS,)),
            ("mags", np.int64, (nmags * _stride(p.mag_size),)),
            ("meta", np.int64, (META_WORDS,)),
            ("stats", np.int64, (p.nworkers * STAT_LINE,))]
    return out


def locks(p):
    """Lock 0 is the tree's; then one per (CPU, class); then one per
    class's depot."""
    return [0] + [1] * (p.ncpus * NCLS) + [2] * NCLS


def make(views, lk):
    tree = rbtree.make({name[5:]: v for name, v in views.items()
                        if name.startswith("tree.")}, lk)
    return State(tree, views["pcpu"], views["rcache"], views["depot"],
                 views["mags"], views["meta"], views["stats"], lk)


def init(st, p):
    """iova_domain_init_rcaches: every CPU gets an empty loaded and prev
    magazine per class; a preallocated depot gets its 32 empty slots."""
    variant = _variant(p)
    if p.start_pfn < 1:
        # a cached pfn 0 would read as "nothing cached"
        raise ValueError("magazines need start_pfn >= 1")
    if p.mag_size < 1:
        raise ValueError("mag_size must be positive")
    rbtree.init(st.tree, p)
    stride = _stride(p.mag_size)
    nmags = len(st.mags) // stride
    st.mags[:] = 0
    st.pcpu[:] = 0
    st.rcache[:] = 0
    st.depot[:] = -1
    st.meta[:] = 0
    st.stats[:] = 0
    used = 0
    pc = st.pcpu.reshape(p.ncpus * NCLS, LINE)
    for row in range(p.ncpus * NCLS):
        pc[row, PC_LOADED] = used * stride
        pc[row, PC_PREV] = (used + 1) * stride
        used += 2
    if variant == PREALLOC:
        st.depot[:] = np.arange(used, used + NCLS * MAX_GLOBAL_MAGS) * stride
        used += NCLS * MAX_GLOBAL_MAGS
    rc = st.rcache.reshape(NCLS, LINE)
    rc[:, RC_HEAD] = -1
    if used > nmags:
        raise ValueError("magazine pool of %d slots, %d needed at start"
                         % (nmags, used))
    # the free stack: slots used, used+1, ..., each one's size word holding
    # the next one's address + 1 (0: none)
    mags = st.mags.reshape(nmags, stride)
    nxt = np.arange(used + 1, nmags + 1, dtype=np.int64) * stride + 1
    nxt[-1:] = 0
    mags[used:, 0] = nxt
    m = st.meta
    m[C_VARIANT] = variant
    m[C_MAGSIZE] = p.mag_size
    m[C_STRIDE] = stride
    m[C_NCPUS] = p.ncpus
    m[C_NMAGS] = nmags
    m[C_MAG_BYTES] = mag_bytes(p)
    m[P_HEAD] = used * stride + 1 if used < nmags else 0
    m[P_LIVE] = used
    m[P_PEAK_MAGS] = used
    start = DOMAIN_BYTES + used * mag_bytes(p)
    m[P_START_BYTES] = start
    m[P_PEAK_BYTES] = start


# ------------------------------------------------------ the magazine pool


@hot
def _raise_peak(meta, i, value):
    while True:
        peak = load(meta, i)
        if value <= peak or cas(meta, i, peak, value) == peak:
            return


@hot
def _note_bytes(meta, tree_meta):
    """Fold the current kernel-memory footprint into the peak."""
    nodes = load(tree_meta, M_NODES)
    now = DOMAIN_BYTES + (nodes - 1) * IOVA_BYTES + \
        load(meta, P_LIVE) * meta[C_MAG_BYTES]
    _raise_peak(meta, P_PEAK_BYTES, now)


@hot
def _mag_alloc(st):
    """iova_magazine_alloc: an empty magazine's address, or -1 when none
    is left (the kernel's GFP_ATOMIC failure)."""
    meta = st.meta
    i, _ = stack.pop(meta, P_HEAD, st.mags)
    if i == -1:
        fetch_add(meta, N_MAG_NOMEM, 1)
        return -1
    st.mags[i] = 0
    live = fetch_add(meta, P_LIVE, 1) + 1
    _raise_peak(meta, P_PEAK_MAGS, live)
    _note_bytes(meta, st.tree.meta)
    return i


@hot
def _mag_free(st, i):
    """iova_magazine_free: the magazine at address i."""
    stack.push(st.meta, P_HEAD, st.mags, i)
    fetch_add(st.meta, P_LIVE, -1)


@hot
def _mag_pop(mags, b, limit_pfn):
    """iova_magazine_pop: the topmost pfn at or below limit_pfn (both
    unsigned, as the kernel's), the hole it leaves filled with the top
    entry; 0 if none qualifies."""
    i = mags[_u(b)] - 1
    while _u(mags[_u(b + 1 + i)]) > _u(limit_pfn):
        if i == 0:
            return 0
        i -= 1
    pfn = mags[_u(b + 1 + i)]
    n = mags[_u(b)] - 1
    mags[_u(b + 1 + i)] = mags[_u(b + 1 + n)]
    mags[_u(b)] = n
    return pfn


@hot
def _free_pfns(st, w, b):
    """iova_magazine_free_pfns: every pfn of the magazine at address b back
    to the tree, in the magazine's order, under one hold of the tree lock
    (taken even for an empty magazine, as the kernel does)."""
    mags = st.mags
    t = st.tree
    rbtree.lock(t, w)
    for k in range(mags[b]):
        # a pfn the tree does not hold is counted there as a bad free
        free_locked(t, w, mags[b + 1 + k], 0)
    rbtree.unlock(t, w)
    n = mags[b]
    mags[b] = 0
    return n


@hot
def _cpu_lock(cpu, c):
    return 1 + cpu * NCLS + c


@hot
def _pcpu_line(cpu, c):
    """raw_cpu_ptr(rcache->cpu_rcaches): where CPU cpu's line of size
    class c starts in `pcpu`."""
    return (cpu * NCLS + c) * LINE


@hot
def _depot_lock(meta, c):
    return 1 + meta[C_NCPUS] * NCLS + c


# ------------------------------------------------------------ the rcache
#
# What is inlined into the caller's loop is the kernel's common case alone:
# the CPU's lock taken with its one cmpxchg, the loaded magazine's size word
# and entry, the lock's release.  Everything else an operation may do (wait
# for the lock, swap or exchange magazines, go to the tree) is one
# out-of-line call, `_free_slow` or `_alloc_slow`, from one cold branch.
# One call site, because numba gives every call a return slot and an
# exception slot on the stack, and every value live across a call is kept
# where the call cannot clobber it; and made through a function of its own
# inlined into that branch (`_free_slow_call`), because numba zeroes a
# call's slots at the start of the function that makes the call, which for
# a function inlined into a loop is the loop's common path.  Inside the
# slow call, what it reaches on its way (a magazine exchange, the tree) is
# inlined in turn: each call hands over the State, a hundred words copied
# onto the stack, and a slow path that called _refill, then the tree,
# copied it three times.


@hot
def _rcache_insert_locked(st, w, cpu, c, pfn):
    """__iova_rcache_insert past its spin_lock: True if the cache took
    pfn.  Releases the CPU's lock."""
    inline_into_callers()
    mags = st.mags
    pcpu = st.pcpu
    pc = _pcpu_line(cpu, c)
    can_insert = True
    to_free = -1
    if mags[_u(pcpu[_u(pc + PC_LOADED)])] >= st.meta[C_MAGSIZE]:
        can_insert, to_free = _make_room(st, w, cpu, c)
    if can_insert:
        b = pcpu[_u(pc + PC_LOADED)]
        mags[_u(b + 1 + mags[_u(b)])] = pfn
        mags[_u(b)] += 1
    release(st.lk, _cpu_lock(cpu, c), w)
    if to_free != -1:
        # the depot was full: this magazine's IOVAs go back to the tree
        _free_pfns(st, w, to_free)
        _mag_free(st, to_free)
    return can_insert


@hot
def _make_room(st, w, cpu, c):
    """The rest of __iova_rcache_insert, with the CPU's lock held and its
    loaded magazine full: swap in prev, or hand loaded to the depot and
    start an empty one.  Returns (can insert, magazine to free or -1)."""
    inline_into_callers()
    meta = st.meta
    variant = meta[C_VARIANT]
    ms = meta[C_MAGSIZE]
    mags = st.mags
    pcpu = st.pcpu
    rc = st.rcache
    pc = _pcpu_line(cpu, c)
    r = c * LINE
    s = w * STAT_LINE
    dl = _depot_lock(meta, c)
    loaded = pcpu[_u(pc + PC_LOADED)]
    prev = pcpu[_u(pc + PC_PREV)]
    can_insert = False
    to_free = -1
    if variant == PREALLOC:
        if mags[_u(prev)] == 0:
            pcpu[_u(pc + PC_LOADED)] = prev
            pcpu[_u(pc + PC_PREV)] = loaded
            can_insert = True
        else:
            acquire(st.lk, dl, w)
            ds = rc[_u(r + RC_SIZE)]
            if ds < MAX_GLOBAL_MAGS:
                # swap(depot[ds], prev); swap(prev, loaded)
                slot = st.depot[_u(c * MAX_GLOBAL_MAGS + ds)]
                st.depot[_u(c * MAX_GLOBAL_MAGS + ds)] = prev
                pcpu[_u(pc + PC_PREV)] = loaded
                pcpu[_u(pc + PC_LOADED)] = slot
                rc[_u(r + RC_SIZE)] = ds + 1
                st.stats[_u(s + S_PUSHES)] += 1
                can_insert = True
            else:
                to_free = loaded
            release(st.lk, dl, w)
            if to_free != -1:
                new = _mag_alloc(st)
                if new != -1:
                    pcpu[_u(pc + PC_LOADED)] = new
                    can_insert = True
                else:
                    to_free = -1
    elif mags[_u(prev)] < ms:
        pcpu[_u(pc + PC_LOADED)] = prev
        pcpu[_u(pc + PC_PREV)] = loaded
        can_insert = True
    else:
        new = _mag_alloc(st)
        if new != -1:
            acquire(st.lk, dl, w)
            if variant == LIST:
                # iova_depot_push: the size word becomes the link
                mags[_u(loaded)] = rc[_u(r + RC_HEAD)]
                rc[_u(r + RC_HEAD)] = loaded
                rc[_u(r + RC_SIZE)] += 1
                rc[_u(r + RC_PENDING)] = 1      # schedule_delayed_work
                st.stats[_u(s + S_PUSHES)] += 1
            elif rc[_u(r + RC_SIZE)] < MAX_GLOBAL_MAGS:
                st.depot[_u(c * MAX_GLOBAL_MAGS + rc[r + RC_SIZE])] = loaded
                rc[_u(r + RC_SIZE)] += 1
                st.stats[_u(s + S_PUSHES)] += 1
            else:
                to_free = loaded
            release(st.lk, dl, w)
            pcpu[_u(pc + PC_LOADED)] = new
            can_insert = True
    return can_insert, to_free


@hot
def _rcache_get_locked(st, w, cpu, c, limit_pfn):
    """__iova_rcache_get past its spin_lock: a cached pfn at or below
    limit_pfn, or 0.  Releases the CPU's lock."""
    inline_into_callers()
    mags = st.mags
    pcpu = st.pcpu
    pc = _pcpu_line(cpu, c)
    has_pfn = True
    if mags[_u(pcpu[_u(pc + PC_LOADED)])] == 0:
        has_pfn = _refill(st, w, cpu, c)
    pfn = 0
    if has_pfn:
        pfn = _mag_pop(mags, pcpu[_u(pc + PC_LOADED)], limit_pfn)
    _count(st, pc, pfn)
    release(st.lk, _cpu_lock(cpu, c), w)
    return pfn


@hot
def _count(st, pc, pfn):
    """A lookup's hit or miss, where the locks keep statistics."""
    inline_into_callers()
    if counted(st.lk):
        if pfn != 0:
            st.pcpu[_u(pc + PC_HITS)] += 1
        else:
            st.pcpu[_u(pc + PC_MISSES)] += 1


@hot
def _refill(st, w, cpu, c):
    """The rest of __iova_rcache_get, with the CPU's lock held and its
    loaded magazine empty: swap in prev, or take a full magazine from the
    depot.  True if loaded then holds IOVAs."""
    inline_into_callers()
    meta = st.meta
    variant = meta[C_VARIANT]
    ms = meta[C_MAGSIZE]
    mags = st.mags
    pcpu = st.pcpu
    rc = st.rcache
    pc = _pcpu_line(cpu, c)
    r = c * LINE
    s = w * STAT_LINE
    loaded = pcpu[_u(pc + PC_LOADED)]
    prev = pcpu[_u(pc + PC_PREV)]
    psize = mags[_u(prev)]
    if (psize == ms) if variant == PREALLOC else (psize > 0):
        pcpu[_u(pc + PC_LOADED)] = prev
        pcpu[_u(pc + PC_PREV)] = loaded
        return True
    has_pfn = False
    dl = _depot_lock(meta, c)
    acquire(st.lk, dl, w)
    ds = rc[_u(r + RC_SIZE)]
    if ds > 0:
        if variant == LIST:
            # iova_depot_pop: the link word becomes the size again
            mag = rc[_u(r + RC_HEAD)]
            rc[_u(r + RC_HEAD)] = mags[_u(mag)]
            mags[_u(mag)] = ms
            _mag_free(st, loaded)
            pcpu[_u(pc + PC_LOADED)] = mag
        elif variant == FIXED:
            mag = st.depot[_u(c * MAX_GLOBAL_MAGS + ds - 1)]
            _mag_free(st, loaded)
            pcpu[_u(pc + PC_LOADED)] = mag
        else:
            # swap(depot[ds - 1], prev); swap(prev, loaded)
            slot = st.depot[_u(c * MAX_GLOBAL_MAGS + ds - 1)]
            st.depot[_u(c * MAX_GLOBAL_MAGS + ds - 1)] = prev
            pcpu[_u(pc + PC_PREV)] = loaded
            pcpu[_u(pc + PC_LOADED)] = slot
        rc[_u(r + RC_SIZE)] = ds - 1
        st.stats[_u(s + S_POPS)] += 1
        has_pfn = True
    release(st.lk, dl, w)
    return has_pfn


@hot
def free_cpu_cached_iovas(st, w, cpu):
    """Every IOVA in one CPU's loaded and prev magazines back to the tree;
    the magazines stay."""
    n = 0
    for c in range(NCLS):
        pc = _pcpu_line(cpu, c)
        cl = _cpu_lock(cpu, c)
        acquire(st.lk, cl, w)
        n += _free_pfns(st, w, st.pcpu[pc + PC_LOADED])
        n += _free_pfns(st, w, st.pcpu[pc + PC_PREV])
        release(st.lk, cl, w)
    return n


@hot
def free_global_cached_iovas(st, w):
    """Every IOVA in the depots back to the tree.  Fixed and list depots
    free their magazines; a preallocated depot keeps its slots, and empties
    all 32 of them, since a slot above depot_size can still hold IOVAs (a
    partly filled prev swapped out of a CPU)."""
    meta = st.meta
    variant = meta[C_VARIANT]
    ms = meta[C_MAGSIZE]
    rc = st.rcache
    n = 0
    for c in range(NCLS):
        r = c * LINE
        dl = _depot_lock(meta, c)
        acquire(st.lk, dl, w)
        if variant == LIST:
            while rc[r + RC_HEAD] != -1:
                mag = rc[r + RC_HEAD]
                rc[r + RC_HEAD] = st.mags[mag]
                st.mags[mag] = ms
                rc[r + RC_SIZE] -= 1
                n += _free_pfns(st, w, mag)
                _mag_free(st, mag)
        elif variant == FIXED:
            for j in range(rc[r + RC_SIZE]):
                mag = st.depot[c * MAX_GLOBAL_MAGS + j]
                n += _free_pfns(st, w, mag)
                _mag_free(st, mag)
                st.depot[c * MAX_GLOBAL_MAGS + j] = -1
        else:
            for j in range(MAX_GLOBAL_MAGS):
                n += _free_pfns(st, w, st.depot[c * MAX_GLOBAL_MAGS + j])
        rc[r + RC_SIZE] = 0
        release(st.lk, dl, w)
    return n


@hot
def check_cpu(ncpus, cpu):
    inline_into_callers()
    if np.uint64(cpu) >= np.uint64(ncpus):       # also cpu < 0
        raise IndexError("simulated CPU out of range")


@hot
def rcache_request(pages, limit):
    """How alloc_iova_fast sees a request of `pages` (>= 1): (the pages
    its range takes, its size class, the highest pfn a cached entry may
    have to serve it)."""
    inline_into_callers()
    size = pages
    if size < (1 << (NCLS - 1)):
        size = np.int64(1) << fls(size - 1)        # roundup_pow_of_two
    # iova_rcache_get(iovad, size, limit + 1): entries up to
    # limit + 1 - size, an unsigned subtraction in the kernel, and so
    # compared by _mag_pop (below zero, it wraps above every pfn)
    return size, fls(size - 1), limit + 1 - size   # order_base_2


@hot
def alloc(st, w, cpu, pages, limit):
    """alloc_iova_fast(iovad, pages, limit, true): pfn, or -1.  Inlined:
    a pfn the CPU's loaded magazine holds; all else is `_alloc_slow`."""
    inline_into_callers()
    check_cpu(st.meta[C_NCPUS], cpu)
    if pages < 1:
        return -1
    size, c, lim = rcache_request(pages, limit)
    step = -1                      # no cache for this size: the tree
    if c < NCLS:
        step = acquire_fast(st.lk, _cpu_lock(cpu, c), w)
        if step == 0:
            mags = st.mags
            pc = _pcpu_line(cpu, c)
            b = st.pcpu[_u(pc + PC_LOADED)]
            if mags[_u(b)] != 0:
                pfn = _mag_pop(mags, b, lim)
                _count(st, pc, pfn)
                release(st.lk, _cpu_lock(cpu, c), w)
                if pfn != 0:
                    return pfn
                step = -1          # none at or below the limit: the tree
    return _alloc_slow_call(st, w, cpu, pages, limit, step)


@hot
def _alloc_slow_call(st, w, cpu, pages, limit, step):
    """The one call of `_alloc_slow`, inlined into its cold branch so that
    its slots are zeroed there (see "the rcache" above)."""
    inline_into_callers()
    return _alloc_slow(st, w, cpu, pages, limit, step)


@hot
def _alloc_slow(st, w, cpu, pages, limit, step):
    """The rest of alloc_iova_fast.  `step`: -1, straight to the tree (a
    size no cache holds, or a loaded magazine with nothing at or below the
    limit); 0, the CPU's lock is held and its loaded magazine is empty;
    else the token of a contended acquisition of that lock."""
    out_of_line()
    size, c, lim = rcache_request(pages, limit)
    if step != -1:
        if step != 0:
            acquire_wait(st.lk, _cpu_lock(cpu, c), w, step)
        pfn = _rcache_get_locked(st, w, cpu, c, lim)
        if pfn != 0:
            return pfn
    return _alloc_from_tree(st, w, size, limit)


@hot
def _alloc_from_tree(st, w, size, limit):
    """Past the cache, the tree.  The footprint can only grow here or with
    a new magazine, so only these fold it into the peak."""
    inline_into_callers()
    t = st.tree
    rbtree.lock(t, w)
    pfn = alloc_locked(t, w, size, limit)
    rbtree.unlock(t, w)
    if pfn == -1:
        pfn = _flush_and_retry(st, w, size, limit)
    if pfn != -1:
        _note_bytes(st.meta, t.meta)
    return pfn


@hot
def _flush_and_retry(st, w, size, limit):
    """The tree failed: replenish it from every cache, then try once more."""
    t = st.tree
    st.stats[w * STAT_LINE + S_FLUSHES] += 1
    for k in range(st.meta[C_NCPUS]):
        free_cpu_cached_iovas(st, w, k)
    free_global_cached_iovas(st, w)
    rbtree.lock(t, w)
    pfn = alloc_locked(t, w, size, limit)
    rbtree.unlock(t, w)
    return pfn


@hot
def free(st, w, cpu, pfn, pages):
    """free_iova_fast(iovad, pfn, pages): into this CPU's cache, or, for
    an uncached size or a cache that cannot take it, into the tree.
    Inlined: a loaded magazine with room; all else is `_free_slow`."""
    inline_into_callers()
    check_cpu(st.meta[C_NCPUS], cpu)
    if pages < 1:
        return
    c = fls(pages - 1)                             # order_base_2
    step = -1                      # no cache for this size: the tree
    if c < NCLS:
        step = acquire_fast(st.lk, _cpu_lock(cpu, c), w)
        if step == 0:
            mags = st.mags
            b = st.pcpu[_u(_pcpu_line(cpu, c) + PC_LOADED)]
            n = mags[_u(b)]
            if n < st.meta[C_MAGSIZE]:
                mags[_u(b + 1 + n)] = pfn
                mags[_u(b)] = n + 1
                release(st.lk, _cpu_lock(cpu, c), w)
                return
    _free_slow_call(st, w, cpu, pfn, pages, step)


@hot
def _free_slow_call(st, w, cpu, pfn, pages, step):
    """The one call of `_free_slow`, inlined into its cold branch so that
    its slots are zeroed there (see "the rcache" above)."""
    inline_into_callers()
    _free_slow(st, w, cpu, pfn, pages, step)


@hot
def _free_slow(st, w, cpu, pfn, pages, step):
    """The rest of free_iova_fast.  `step`: -1, a size no cache holds; 0,
    the CPU's lock is held and its loaded magazine is full; else the token
    of a contended acquisition of that lock."""
    out_of_line()
    if step != -1:
        c = fls(pages - 1)
        if step != 0:
            acquire_wait(st.lk, _cpu_lock(cpu, c), w, step)
        if _rcache_insert_locked(st, w, cpu, c, pfn):
            return
    _free_to_tree(st, w, pfn, pages)


@hot
def _free_to_tree(st, w, pfn, pages):
    inline_into_callers()
    size = pages
    if size < (1 << (NCLS - 1)):
        size = np.int64(1) << fls(size - 1)        # what alloc gave out
    t = st.tree
    rbtree.lock(t, w)
    free_locked(t, w, pfn, size)
    rbtree.unlock(t, w)


@hot
def trim(st, w, ncpus):
    """One run of iova_depot_work_func for every size class whose work is
    scheduled (list depot only): while a depot holds more than `ncpus`
    magazines, one of them goes back to the tree.  Work that finds nothing
    to do is not rescheduled until the next push.  The harness calls this
    every IOVA_DEPOT_DELAY_MS.  Returns the magazines freed."""
    meta = st.meta
    if meta[C_VARIANT] != LIST:
        return 0
    ms = meta[C_MAGSIZE]
    rc = st.rcache
    n = 0
    for c in range(NCLS):
        r = c * LINE
        if load(rc, r + RC_PENDING) == 0:
            continue
        dl = _depot_lock(meta, c)
        acquire(st.lk, dl, w)
        mag = -1
        if rc[r + RC_SIZE] > ncpus:
            mag = rc[r + RC_HEAD]
            rc[r + RC_HEAD] = st.mags[mag]
            st.mags[mag] = ms
            rc[r + RC_SIZE] -= 1
        else:
            rc[r + RC_PENDING] = 0
        release(st.lk, dl, w)
        if mag != -1:
            _free_pfns(st, w, mag)
            _mag_free(st, mag)
            st.stats[w * STAT_LINE + S_TRIMS] += 1
            n += 1
    return n


@njit(cache=True)
def flush_all(st, w):
    """Every cached IOVA back to the tree (every CPU, then the depots);
    returns how many.  Afterwards the tree holds exactly the live ranges."""
    n = 0
    for k in range(st.meta[C_NCPUS]):
        n += free_cpu_cached_iovas(st, w, k)
    n += free_global_cached_iovas(st, w)
    return n


# ---------------------------------------------------------------- checks


def _rounded(pages):
    return pages if pages >= 1 << (NCLS - 1) else 1 << max(0, (pages - 1).bit_length())


def cached(st, p):
    """(problems, {pfn: class}, magazines in use): every IOVA the caches
    hold, read from the magazines, with the bookkeeping checked on the
    way."""
    problems = []
    m = st.meta
    variant = int(m[C_VARIANT])
    ms = int(m[C_MAGSIZE])
    stride = int(m[C_STRIDE])
    nmags = int(m[C_NMAGS])
    mags = st.mags.reshape(nmags, stride)
    owner = {}
    pfns = {}

    def slot_of(addr):
        """The slot of the magazine at address addr; None if none is there."""
        if 0 <= addr < nmags * stride and addr % stride == 0:
            return addr // stride
        return None

    def take(addr, where, c, size=None):
        # `where` is (format, args): formatted only for a problem, since a
        # check of 1024 CPUs visits twelve thousand magazines
        mag = slot_of(addr)
        if mag is None:
            problems.append("magazines: %s names address %d, not one of the %d "
                            "magazines" % (where[0] % where[1], addr, nmags))
            return 0
        if mag in owner:
            problems.append("magazines: slot %d is both %s and %s"
                            % (mag, owner[mag][0] % owner[mag][1], where[0] % where[1]))
            return 0
        owner[mag] = where
        n = int(mags[mag, 0]) if size is None else size
        if not 0 <= n <= ms:
            problems.append("magazines: %s holds %d of %d" % (where[0] % where[1], n, ms))
            return 0
        for pfn in mags[mag, 1:1 + n].tolist():
            if pfn in pfns:
                problems.append("magazines: pfn %#x cached twice" % pfn)
            pfns[pfn] = c
        return n

    pc = st.pcpu.reshape(p.ncpus * NCLS, LINE)
    for cpu in range(p.ncpus):
        for c in range(NCLS):
            row = pc[cpu * NCLS + c]
            take(int(row[PC_LOADED]), ("cpu %d class %d loaded", (cpu, c)), c)
            take(int(row[PC_PREV]), ("cpu %d class %d prev", (cpu, c)), c)
    rc = st.rcache.reshape(NCLS, LINE)
    depot = st.depot.reshape(NCLS, MAX_GLOBAL_MAGS)
    depot_mags = 0
    for c in range(NCLS):
        ds = int(rc[c, RC_SIZE])
        if variant == LIST:
            mag, k = int(rc[c, RC_HEAD]), 0
            while mag != -1 and k <= nmags:
                take(mag, ("class %d depot #%d", (c, k)), c, ms)
                k += 1
                mag = int(mags[mag // stride, 0]) if slot_of(mag) is not None else -1
            if k != ds:
                problems.append("magazines: class %d depot lists %d, its size "
                                "says %d" % (c, k, ds))
            depot_mags += k
        elif variant == FIXED:
            if not 0 <= ds <= MAX_GLOBAL_MAGS:
                problems.append("magazines: class %d depot size %d" % (c, ds))
                ds = 0
            for j in range(ds):
                take(int(depot[c, j]), ("class %d depot[%d]", (c, j)), c)
            depot_mags += ds
        else:
            for j in range(MAX_GLOBAL_MAGS):
                take(int(depot[c, j]), ("class %d depot[%d]", (c, j)), c)
            depot_mags += MAX_GLOBAL_MAGS
    free = 0
    top = int(m[P_HEAD]) & MASK32        # address + 1; 0: the stack is empty
    while top != 0 and free <= nmags:
        slot = slot_of(top - 1)
        if slot is None:
            problems.append("magazines: the free stack names address %d" % (top - 1))
            break
        if slot in owner:
            problems.append("magazines: slot %d is free and %s"
                            % (slot, owner[slot][0] % owner[slot][1]))
            break
        free += 1
        top = int(mags[slot, 0])
    if free + len(owner) != nmags:
        problems.append("magazines: %d free + %d used slots, the pool has %d"
                        % (free, len(owner), nmags))
    if len(owner) != m[P_LIVE]:
        problems.append("magazines: %d in use, the count says %d" % (len(owner), m[P_LIVE]))
    return problems, pfns, depot_mags


def check(st, p, live):
    """The tree is sound and holds exactly the live ranges and the cached
    ones; the caches' counts add up; no cached IOVA is also live."""
    problems, tree = rbtree.audit(st.tree, p)
    more, pfns, _ = cached(st, p)
    problems += more
    if problems:
        return problems
    want = {}
    for pfn, pages in live:
        want[int(pfn)] = _rounded(int(pages))
    both = [pfn for pfn in pfns if pfn in want]
    if both:
        problems.append("magazines: %d cached IOVA(s) also live, first %#x"
                        % (len(both), both[0]))
    for pfn, c in pfns.items():
        want[pfn] = 1 << c
    got = dict(tree)
    if got != want:
        extra = sorted(set(got.items()) - set(want.items()))
        missing = sorted(set(want.items()) - set(got.items()))
        problems.append("magazines: the tree holds %d ranges, %d are live or "
                        "cached; %d unaccounted for (first %s), %d missing "
                        "from the tree (first %s)"
                        % (len(got), len(want), len(extra), extra[:1],
                           len(missing), missing[:1]))
    tstats = st.tree.stats.reshape(-1, STAT_LINE)
    nomem = int(tstats[:, rbtree.S_NOMEM].sum())
    if nomem:
        problems.append("magazines: the node pool ran out %d time(s); raise "
                        "max_live" % nomem)
    if st.meta[N_MAG_NOMEM]:
        problems.append("magazines: the magazine pool ran out %d time(s); the "
                        "depot outgrew its bound (limits vary within a domain?)"
                        % st.meta[N_MAG_NOMEM])
    return problems


def counters(st):
    """The cache's hits and misses, kept per CPU and class."""
    pc = st.pcpu.reshape(-1, NCLS, LINE)
    out = {}
    for c, n in enumerate(CLASS_PAGES):
        out["hits_%d" % n] = int(pc[:, c, PC_HITS].sum())
        out["misses_%d" % n] = int(pc[:, c, PC_MISSES].sum())
    return out


def footprint(st, p):
    """Kernel bytes: the tree (domain and struct iovas) and every live
    magazine at 8 + mag_size * 8 bytes, at the start and at the peak; also
    now, the magazines alone and the depot alone."""
    m = st.meta
    mb = int(m[C_MAG_BYTES])
    tree_now = rbtree.node_bytes(int(st.tree.meta[M_NODES]))
    if m[C_VARIANT] == PREALLOC:
        depot_mags = NCLS * MAX_GLOBAL_MAGS
    else:
        depot_mags = int(st.rcache.reshape(NCLS, LINE)[:, RC_SIZE].sum())
    return {"start": int(m[P_START_BYTES]),
            "peak": int(m[P_PEAK_BYTES]),
            "now": tree_now + int(m[P_LIVE]) * mb,
            "magazines": int(m[P_LIVE]) * mb,
            "magazines_peak": int(m[P_PEAK_MAGS]) * mb,
            "depot": depot_mags * mb}
