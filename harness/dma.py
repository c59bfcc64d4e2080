"""map and unmap as the DMA API does them, with the three invalidation
policies.

map: allocate an IOVA range, write its page-table entries.  unmap: clear
them, then, by policy,
- `strict`: invalidate those pages, wait for completion, free the range;
- `batched`: the 2008 intel-iommu scheme (add_unmap / flush_unmaps): one
  global queue under one lock; the unmap that finds 250 entries queued
  flushes the IOTLB globally and frees them all; a timer flushes 10 ms after
  the first entry;
- `percpu`: the 2017+ flush queue (queue_iova / fq_ring_free /
  fq_flush_timeout): a ring of 256 per CPU and domain under its own lock,
  entries stamped with the domain's flush-start count, freed once the
  flush-finish count has passed them; a full ring flushes the domain; a
  10 ms timer flushes and empties every CPU's ring.
A range is given back to the allocator only after an invalidation that
covers it has completed.  The timers are deadlines in shared words that the
workers' loops test, so they fire whether or not more unmaps arrive.

The exposure of an unmap is the time from its page-table clear to the
completion of the invalidation covering it; it is recorded per worker in a
log-linear histogram.

With `--check` every page is also claimed in an ownership map with a
compare-and-swap from 0 to the claimant's id and released on unmap: a failed
claim is a double mapping, which the allocators must never produce.
"""
from collections import namedtuple

import numpy as np

from hwmodel import iommu
from hwmodel.cpu import cas, clz, cycles, fetch_add, hot, load, store, xchg
from hwmodel.locks import CTL_ABORT, acquire, release

LINE = 16

# Control words (Env.ctl), shared by the parent and every worker.
CTL_PHASE = 1
CTL_ATTACHED = 2
CTL_DONE = 3
CTL_NACTIVE = 4
CTL_GEN = 5                  # futex word parked workers sleep on (harness/workers.py)
CTL_CMD = 6
CTL_DESIGN = 7
CTL_ERR = 8                  # 1 once a double mapping was found
CTL_ERR_PAGE = 9
CTL_ERR_HOLDER = 10          # worker + 1 that held the page
CTL_ERR_CLAIMANT = 11        # worker + 1 that claimed it again
CTL_ERR_KIND = 12            # 1 double map, 2 release of a page not held,
                             # 3 reuse before the invalidation completed
CTL_PRODUCERS_LEFT = 13      # cross-CPU unmap: producers still mapping
CTL_WORDS = 32

# Env.cfg words: the point's parameters, read by every worker.
CFG_DEPTH = 0                # mappings outstanding before the oldest is unmapped
CFG_CHECK = 1
CFG_LIMIT = 2                # the limit passed to alloc (pfn, or index for bitmaps)
CFG_TRANSLATE = 3            # 0 for the direct design
CFG_SEED = 4
CFG_FLUSH = 5                # FLUSH_*
CFG_NDOMAINS = 6
CFG_DEVICE = 7               # cycles of device time per I/O
CFG_HYPERCALL = 8            # cycles per map and per unmap (PVDMA)
CFG_PREMAPPED = 9            # 1: the driver maps a buffer pool once and recycles it
CFG_CONSUMERS = 10           # workers that only unmap (cross-CPU unmap)
CFG_ROGUE = 11               # 1: publish unmapped IOVAs for the rogue device
CFG_FQ_TIMEOUT = 12          # cycles: IOVA_FQ_TIMEOUT / the 2008 unmap timer
CFG_NCPUS = 13
CFG_PAGES = 14               # IOVA space per domain
CFG_TRIM = 15                # cycles between depot trims (magazines, list depot)
CFG_DIAG = 16                # 1: sample the time of each step of an I/O
CFG_WARMUP = 17              # cycles of warm-up before the window
CFG_WINDOW = 18              # cycles of the measurement window
CFG_WORDS = 32

DIAG_SAMPLE = 16             # with --diag, one I/O in this many is timed step by step
# per-worker lines of Env.diag (cycles, summed over sampled I/Os)
B_ALLOC = 0
B_PTE = 1                    # page-table writes and clears
B_FREE = 2                   # the free, or the queueing of a deferred one
B_MAPS = 3                   # sampled maps
B_UNMAPS = 4                 # sampled unmaps

FLUSH_NONE, FLUSH_STRICT, FLUSH_BATCHED, FLUSH_PERCPU = range(4)
FLUSH_NAMES = ("none", "strict", "batched", "percpu")

RINGCAP = 1024               # the deepest in-flight ring a workload may ask for
RING_WORDS = 4               # iova, pages, device completion cycle, domain
SIZE_TABLE = 1024            # request sizes: a table indexed by 10 random bits

# drivers/iommu/intel-iommu.c (2008): HIGH_WATER_MARK, the 10 ms unmap_timer
HIGH_WATER_MARK = 250
# drivers/iommu/dma-iommu.c: IOVA_FQ_SIZE, IOVA_FQ_TIMEOUT (ms)
IOVA_FQ_SIZE = 256
IOVA_FQ_TIMEOUT = 10
FQ_WORDS = 4                 # iova, pages, unmap cycle, flush-start count

# FlushQ.meta: one line per domain (percpu) or line 0 (batched)
M_COUNT = 0                  # batched: entries queued
M_TIMER_ON = 1
M_DEADLINE = 2
M_START_CNT = 3              # percpu: fq_flush_start_cnt
M_FINISH_CNT = 4             # percpu: fq_flush_finish_cnt
M_FLUSHES = 5
M_FLUSHED_ENTRIES = 6
M_TIMER_FLUSHES = 7
FLUSH_ENDS = 1024            # completion cycle of recent flushes, by finish count

# exposure histogram, per worker: log2 buckets split in 8 (values are within
# 12.5% of their bucket's upper edge)
EXP_SUB_BITS = 3
EXP_SUB = 1 << EXP_SUB_BITS
EXP_BUCKETS = 64 * EXP_SUB
EXP_WORDS = EXP_BUCKETS + LINE          # histogram, then a line of totals
E_COUNT, E_SUM, E_MAX = 0, 1, 2

# rogue device: recently unmapped IOVAs, two words each: (domain, IOVA) and
# the generation of the mapping that was unmapped
RECENT = 4096
R_INDEX = 2 * RECENT         # the ring's next slot; then probe and hit counts

FlushQ = namedtuple("FlushQ", ["q", "meta", "ends", "ring", "lk"])
Env = namedtuple("Env", ["ctl", "cfg", "own", "cnt", "ring", "sizes", "io", "fq",
                         "exp", "hand", "recent", "diag", "gen"])


def fq_layout(ndomains, ncpus):
    return [("fq.q", np.int64, (HIGH_WATER_MARK * FQ_WORDS + LINE,)),
            ("fq.meta", np.int64, (max(1, ndomains) * LINE,)),
            ("fq.ends", np.int64, (max(1, ndomains) * FLUSH_ENDS,)),
            ("fq.ring", np.int64, (ndomains * ncpus * (IOVA_FQ_SIZE * FQ_WORDS + LINE),))]


def layout(nworkers, ndomains, pages, ncpus, tlb_entries, ways):
    return ([("ctl", np.int64, (CTL_WORDS,)),
             ("cfg", np.int64, (CFG_WORDS,)),
             ("own", np.int64, (ndomains * pages,)),
             ("cnt", np.int64, (nworkers * LINE,)),
             ("ring", np.int64, (nworkers * RINGCAP * RING_WORDS,)),
             ("sizes", np.int64, (SIZE_TABLE,)),
             ("exp", np.int64, (nworkers * EXP_WORDS,)),
             ("hand", np.int64, (nworkers * (RINGCAP * RING_WORDS + 2 * LINE),)),
             ("recent", np.int64, (2 * RECENT + LINE,)),
             ("gen", np.int64, (ndomains * pages,)),
             ("diag", np.int64, (nworkers * LINE,))]
            + [("io." + n, d, s) for n, d, s in iommu.layout(ndomains, pages, tlb_entries,
                                                              ways, nworkers)]
            + fq_layout(ndomains, ncpus))


def fq_lock_classes(ndomains, ncpus):
    """Lock 0 is the batched queue's; then one per (domain, cpu) ring."""
    return [0] + [1] * (ndomains * ncpus)


FQ_LOCK_CLASSES = ("flushq", "fq")


def make(views, fq_lk):
    io = iommu.make({n[3:]: v for n, v in views.items() if n.startswith("io.")})
    fq = FlushQ(views["fq.q"], views["fq.meta"], views["fq.ends"], views["fq.ring"], fq_lk)
    return Env(views["ctl"], views["cfg"], views["own"], views["cnt"], views["ring"],
               views["sizes"], io, fq, views["exp"], views["hand"], views["recent"],
               views["diag"], views["gen"])


# --- the ownership map ---------------------------------------------------

PENDING = -1                 # unmapped, its invalidation not yet completed

@hot
def _report(env, kind, page, holder, claimant):
    if cas(env.ctl, CTL_ERR, 0, 1) == 0:
        env.ctl[CTL_ERR_KIND] = kind
        env.ctl[CTL_ERR_PAGE] = page
        env.ctl[CTL_ERR_HOLDER] = holder
        env.ctl[CTL_ERR_CLAIMANT] = claimant
        store(env.ctl, CTL_ABORT, 1)


@hot
def _claim(env, owner, dom, iova, pages):
    base = dom * env.cfg[CFG_PAGES]
    for i in range(pages):
        old = cas(env.own, base + iova + i, 0, owner + 1)
        if old != 0:
            _report(env, 3 if old == PENDING else 1, iova + i, old, owner + 1)


@hot
def _release(env, owner, dom, iova, pages):
    """At unmap: the pages leave their owner but stay PENDING until the
    invalidation that covers them has completed."""
    base = dom * env.cfg[CFG_PAGES]
    for i in range(pages):
        old = cas(env.own, base + iova + i, owner + 1, PENDING)
        if old != owner + 1:
            _report(env, 2, iova + i, old, owner + 1)


@hot
def _settle(env, w, dom, iova, pages):
    """After the covering invalidation, before the allocator gets the range."""
    base = dom * env.cfg[CFG_PAGES]
    for i in range(pages):
        old = cas(env.own, base + iova + i, PENDING, 0)
        if old != PENDING:
            _report(env, 2, iova + i, old, w + 1)


# --- exposure --------------------------------------------------------------

@hot
def _exposure(env, w, c):
    if c < 0:
        c = 0
    if c < EXP_SUB:
        b = c
    else:
        shift = 63 - clz(np.uint64(c)) - EXP_SUB_BITS
        b = shift * EXP_SUB + (c >> shift)
    e = w * EXP_WORDS
    env.exp[e + b] += 1
    t = e + EXP_BUCKETS
    env.exp[t + E_COUNT] += 1
    env.exp[t + E_SUM] += c
    if c > env.exp[t + E_MAX]:
        env.exp[t + E_MAX] = c


def bucket_upper(b):
    """The largest value (cycles) histogram bucket b holds."""
    if b < EXP_SUB:
        return b
    shift = b // EXP_SUB - 1
    q = b % EXP_SUB + EXP_SUB
    return ((q + 1) << shift) - 1


@hot
def _publish(env, dom, iova):
    """For the rogue device: an IOVA whose unmap has returned, with the
    generation of that mapping, so that a hit on a later mapping of the
    same IOVA is not taken for a stale one.  The generation is written
    first and checked again by the reader."""
    i = fetch_add(env.recent, R_INDEX, 1) % RECENT
    store(env.recent, 2 * i + 1, load(env.gen, dom * env.cfg[CFG_PAGES] + iova))
    store(env.recent, 2 * i, (dom << 40) | (iova + 1))


# --- map and unmap -------------------------------------------------------

@hot
def dma_map(alloc, st, env, w, cpu, dom, pages, phys, sample):
    """The bus address of `pages` pages at physical page `phys`, or -1 when
    the allocator has no room.  `sample`: time each step (--diag)."""
    if env.cfg[CFG_TRANSLATE] == 0:
        return phys
    t0 = cycles() if sample else 0
    iova = alloc(st, w, cpu, pages, env.cfg[CFG_LIMIT])
    if iova < 0:
        return -1
    t1 = cycles() if sample else 0
    if env.cfg[CFG_CHECK] != 0:
        _claim(env, w, dom, iova, pages)
    if env.cfg[CFG_ROGUE] != 0:
        g = dom * env.cfg[CFG_PAGES] + iova
        store(env.gen, g, load(env.gen, g) + 1)
    iommu.write_ptes(env.io, dom, iova, pages, phys)
    if sample:
        b = w * LINE
        env.diag[b + B_ALLOC] += t1 - t0
        env.diag[b + B_PTE] += cycles() - t1
        env.diag[b + B_MAPS] += 1
    return iova


@hot
def dma_unmap(free, sts, env, w, cpu, owner, dom, iova, pages, sample):
    """Unmap a range mapped by worker `owner` (not always `w`: cross-CPU)."""
    if env.cfg[CFG_TRANSLATE] == 0:
        return
    io = env.io
    t0 = cycles() if sample else 0
    inv0 = io.stats[w * LINE + iommu.W_INV_WAIT]
    iommu.clear_ptes(io, dom, iova, pages)
    if env.cfg[CFG_CHECK] != 0:
        _release(env, owner, dom, iova, pages)
    t1 = cycles()
    policy = env.cfg[CFG_FLUSH]
    if policy == FLUSH_BATCHED:
        _batched_add(free, sts, env, w, cpu, dom, iova, pages, t1)
    elif policy == FLUSH_PERCPU:
        _fq_queue(free, sts, env, w, cpu, dom, iova, pages, t1)
    else:
        end = iommu.invalidate(io, w, dom, iova, pages)
        _exposure(env, w, end - t1)
        if env.cfg[CFG_CHECK] != 0:
            _settle(env, w, dom, iova, pages)
        free(sts[dom], w, cpu, iova, pages)
    if env.cfg[CFG_ROGUE] != 0:
        _publish(env, dom, iova)
    if sample:
        # the invalidations waited for here are accounted by the IOMMU's
        # statistics; the free's share is the rest
        b = w * LINE
        inv = io.stats[w * LINE + iommu.W_INV_WAIT] - inv0
        env.diag[b + B_PTE] += t1 - t0
        env.diag[b + B_FREE] += cycles() - t1 - inv
        env.diag[b + B_UNMAPS] += 1


# --- batched: one global queue (2008) ----------------------------------------

@hot
def _batched_flush(free, sts, env, w, cpu):
    """flush_unmaps, with the queue's lock held: one global invalidation,
    then every queued range is freed."""
    fq = env.fq
    m = fq.meta
    m[M_TIMER_ON] = 0
    n = m[M_COUNT]
    if n == 0:
        return
    end = 0
    nd = env.cfg[CFG_NDOMAINS]
    for d in range(nd):
        # DMA_TLB_GLOBAL_FLUSH: every domain of the IOMMU at once; one unit
        # occupation, the domains' entries all dropped
        if d == 0:
            end = iommu.invalidate(env.io, w, d, -1, 0)
        else:
            iommu.drop_domain(env.io, d)
    for k in range(n):
        e = k * FQ_WORDS
        dom = fq.q[e + 2]
        _exposure(env, w, end - fq.q[e + 3])
        if env.cfg[CFG_CHECK] != 0:
            _settle(env, w, dom, fq.q[e], fq.q[e + 1])
        free(sts[dom], w, cpu, fq.q[e], fq.q[e + 1])
    m[M_COUNT] = 0
    m[M_FLUSHES] += 1
    m[M_FLUSHED_ENTRIES] += n


@hot
def _batched_add(free, sts, env, w, cpu, dom, iova, pages, t):
    fq = env.fq
    m = fq.meta
    acquire(fq.lk, 0, w)
    if m[M_COUNT] == HIGH_WATER_MARK:
        _batched_flush(free, sts, env, w, cpu)
    e = m[M_COUNT] * FQ_WORDS
    fq.q[e] = iova
    fq.q[e + 1] = pages
    fq.q[e + 2] = dom
    fq.q[e + 3] = t
    if m[M_TIMER_ON] == 0:
        store(m, M_DEADLINE, t + env.cfg[CFG_FQ_TIMEOUT])
        store(m, M_TIMER_ON, 1)
    m[M_COUNT] += 1
    release(fq.lk, 0, w)


# --- percpu: flush queues per CPU and domain (2017+) ------------------------

@hot(inline="always")
def _fq_base(env, dom, cpu):
    return (dom * env.cfg[CFG_NCPUS] + cpu) * (IOVA_FQ_SIZE * FQ_WORDS + LINE)


@hot
def _fq_flush(env, w, dom):
    """fq_flush_iotlb: start count, domain-wide flush, finish count."""
    m = env.fq.meta
    b = dom * LINE
    fetch_add(m, b + M_START_CNT, 1)
    end = iommu.invalidate(env.io, w, dom, -1, 0)
    fin = fetch_add(m, b + M_FINISH_CNT, 1) + 1
    store(env.fq.ends, dom * FLUSH_ENDS + fin % FLUSH_ENDS, end)
    fetch_add(m, b + M_FLUSHES, 1)


@hot
def _fq_ring_free(free, sts, env, w, cpu, dom, ring_cpu):
    """Free the entries of (dom, ring_cpu)'s ring that a completed flush
    covers; its lock is held."""
    fq = env.fq
    b = _fq_base(env, dom, ring_cpu)
    hdr = b + IOVA_FQ_SIZE * FQ_WORDS
    head = fq.ring[hdr]
    tail = fq.ring[hdr + 1]
    fin = load(fq.meta, dom * LINE + M_FINISH_CNT)
    n = 0
    while head != tail:
        e = b + head * FQ_WORDS
        cnt = fq.ring[e + 3]
        if cnt >= fin:
            break
        # the flush that covered this entry is the one that took the start
        # count from cnt to cnt + 1; if its record was overwritten, the
        # newest completion is an upper bound
        end = load(fq.ends, dom * FLUSH_ENDS + (cnt + 1) % FLUSH_ENDS)
        if fin - (cnt + 1) >= FLUSH_ENDS:
            end = load(fq.ends, dom * FLUSH_ENDS + fin % FLUSH_ENDS)
        if end < fq.ring[e + 2]:
            # its record is not written yet (that flush is between counting
            # its finish and storing its end) or was overwritten: now is
            # an upper bound
            end = cycles()
        _exposure(env, w, end - fq.ring[e + 2])
        if env.cfg[CFG_CHECK] != 0:
            _settle(env, w, dom, fq.ring[e], fq.ring[e + 1])
        free(sts[dom], w, cpu, fq.ring[e], fq.ring[e + 1])
        head = (head + 1) % IOVA_FQ_SIZE
        n += 1
    fq.ring[hdr] = head
    # other CPUs free their own rings under their own locks meanwhile
    fetch_add(fq.meta, dom * LINE + M_FLUSHED_ENTRIES, n)


@hot
def _fq_queue(free, sts, env, w, cpu, dom, iova, pages, t):
    """queue_iova."""
    fq = env.fq
    li = 1 + dom * env.cfg[CFG_NCPUS] + cpu
    acquire(fq.lk, li, w)
    _fq_ring_free(free, sts, env, w, cpu, dom, cpu)
    b = _fq_base(env, dom, cpu)
    hdr = b + IOVA_FQ_SIZE * FQ_WORDS
    tail = fq.ring[hdr + 1]
    # The kernel flushes once and takes the room for granted.  Entries
    # stamped while another CPU's flush was in flight are not covered by a
    # flush that finishes before that one, though, and with flushers that
    # can be preempted (userspace) the ring can still be full: flush again
    # rather than overwrite an entry.
    while (tail + 1) % IOVA_FQ_SIZE == fq.ring[hdr]:
        _fq_flush(env, w, dom)
        _fq_ring_free(free, sts, env, w, cpu, dom, cpu)
    e = b + tail * FQ_WORDS
    fq.ring[e] = iova
    fq.ring[e + 1] = pages
    fq.ring[e + 2] = t
    fq.ring[e + 3] = load(fq.meta, dom * LINE + M_START_CNT)
    fq.ring[hdr + 1] = (tail + 1) % IOVA_FQ_SIZE
    release(fq.lk, li, w)
    mb = dom * LINE
    if load(fq.meta, mb + M_TIMER_ON) == 0:
        # the deadline first: a timer seen on must never carry an old one
        store(fq.meta, mb + M_DEADLINE, cycles() + env.cfg[CFG_FQ_TIMEOUT])
        xchg(fq.meta, mb + M_TIMER_ON, 1)


@hot
def _fq_flush_all(free, sts, env, w, cpu, dom):
    """fq_flush_timeout's work: flush the domain, then empty every CPU's
    ring."""
    fq = env.fq
    _fq_flush(env, w, dom)
    ncpus = env.cfg[CFG_NCPUS]
    for c in range(ncpus):
        li = 1 + dom * ncpus + c
        acquire(fq.lk, li, w)
        _fq_ring_free(free, sts, env, w, cpu, dom, c)
        release(fq.lk, li, w)


@hot
def _fq_timeout(free, sts, env, w, cpu, dom):
    """fq_flush_timeout: the timer is off again, then its work."""
    store(env.fq.meta, dom * LINE + M_TIMER_ON, 0)
    fetch_add(env.fq.meta, dom * LINE + M_TIMER_FLUSHES, 1)
    _fq_flush_all(free, sts, env, w, cpu, dom)


@hot
def timers(free, sts, env, w, cpu, now):
    """Fire the flush timers whose deadline has passed (any worker may)."""
    policy = env.cfg[CFG_FLUSH]
    fq = env.fq
    if policy == FLUSH_BATCHED:
        if load(fq.meta, M_TIMER_ON) != 0 and now >= load(fq.meta, M_DEADLINE):
            acquire(fq.lk, 0, w)
            # the timer may have been consumed by a flush meanwhile
            if fq.meta[M_TIMER_ON] != 0 and now >= fq.meta[M_DEADLINE]:
                fq.meta[M_TIMER_FLUSHES] += 1
                _batched_flush(free, sts, env, w, cpu)
            release(fq.lk, 0, w)
    elif policy == FLUSH_PERCPU:
        for d in range(env.cfg[CFG_NDOMAINS]):
            mb = d * LINE
            if load(fq.meta, mb + M_TIMER_ON) != 0 and now >= load(fq.meta, mb + M_DEADLINE):
                # fq_flush_timeout runs once per expiry: whoever clears timer_on
                if cas(fq.meta, mb + M_TIMER_ON, 1, 2) == 1:
                    _fq_timeout(free, sts, env, w, cpu, d)


@hot
def drain(free, sts, env, w, cpu):
    """At the end of a window: flush and free everything still queued, as
    the timers would."""
    policy = env.cfg[CFG_FLUSH]
    fq = env.fq
    if policy == FLUSH_BATCHED:
        acquire(fq.lk, 0, w)
        _batched_flush(free, sts, env, w, cpu)
        release(fq.lk, 0, w)
    elif policy == FLUSH_PERCPU:
        for d in range(env.cfg[CFG_NDOMAINS]):
            _fq_flush_all(free, sts, env, w, cpu, d)


def init(env, ndomains, ncpus):
    """Empty queues (Python side, between points)."""
    env.fq.q[:] = 0
    env.fq.meta[:] = 0
    env.fq.ends[:] = 0
    env.fq.ring[:] = 0
    env.exp[:] = 0
    env.recent[:] = 0
    env.diag[:] = 0
    env.gen[:] = 0
