"""map and unmap as the DMA API does them, with the four invalidation
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
  10 ms timer flushes and empties every CPU's ring;
- `single`: the 6.7 single flush queue (IOMMU_DMA_OPTS_SINGLE_QUEUE, chosen
  by dma-iommu for IOMMUs whose flush also updates a hypervisor's shadow
  tables): the same ring logic and counters, but one ring of 32768 per
  domain under one lock that every CPU takes on every unmap, and a 1000 ms
  timer.
A range is given back to the allocator only after an invalidation that
covers it has completed.  The timers are deadlines in shared words that the
workers' loops test, so they fire whether or not more unmaps arrive.

The exposure of an unmap is the time from its page-table clear to the
completion of the invalidation covering it; it is recorded per worker in a
log-linear histogram (hwmodel/hist.py).  Under --diag the sampled maps and
unmaps, already timed whole, go into two more: their latency distributions.

With `--check` every page is also claimed in an ownership map with a
compare-and-swap from 0 to the claimant's id and released on unmap: a failed
claim is a double mapping, which the allocators must never produce.
"""
from collections import namedtuple

import numpy as np

from harness.abi import (CTL_ERR, CTL_ERR_CLAIMANT, CTL_ERR_HOLDER, CTL_ERR_KIND, CTL_ERR_PAGE,
                         CTL_WAITED, ERR_DOUBLE_MAP, ERR_EARLY_REUSE, ERR_NOT_HELD, LINE)
from harness.compose import pick
from hwmodel import hist, iommu
from hwmodel.cpu import (busy_wait_cycles, cas, chosen, cycles, fetch_add, hot,
                         inline_into_callers, load, stamp, store, xchg)
from hwmodel.locks import CTL_ABORT, acquire, release, waited

FLUSH_NONE, FLUSH_STRICT, FLUSH_BATCHED, FLUSH_PERCPU, FLUSH_SINGLE = range(5)
FLUSH_NAMES = ("none", "strict", "batched", "percpu", "single")
FLUSHES = FLUSH_NAMES[1:]    # what a design of an allocator that translates may use

# drivers/iommu/intel-iommu.c (2008): HIGH_WATER_MARK, the 10 ms unmap_timer
HIGH_WATER_MARK = 250
UNMAP_TIMER_MS = 10
# drivers/iommu/dma-iommu.c: IOVA_FQ_SIZE, IOVA_FQ_TIMEOUT (ms); 6.7 renamed
# them IOVA_DEFAULT_FQ_SIZE and IOVA_DEFAULT_FQ_TIMEOUT
IOVA_FQ_SIZE = 256
IOVA_FQ_TIMEOUT = 10
# drivers/iommu/dma-iommu.c (6.7+, "iommu/dma: Use a large flush queue and
# timeout for shadow_on_flush"): IOVA_SINGLE_FQ_SIZE, IOVA_SINGLE_FQ_TIMEOUT (ms)
IOVA_SINGLE_FQ_SIZE = 32768
IOVA_SINGLE_FQ_TIMEOUT = 1000
# a policy's timer (ms): the 2008 unmap_timer, then each flush queue's
TIMEOUT_MS = {"batched": UNMAP_TIMER_MS, "percpu": IOVA_FQ_TIMEOUT,
              "single": IOVA_SINGLE_FQ_TIMEOUT}
FQ_WORDS = 4                 # iova, pages, unmap cycle, flush-start count

# FlushQ.meta: one line per domain (percpu, single) or line 0 (batched)
M_COUNT = 0                  # batched: entries queued
M_TIMER_ON = 1
M_DEADLINE = 2
M_START_CNT = 3              # percpu, single: fq_flush_start_cnt
M_FINISH_CNT = 4             # percpu, single: fq_flush_finish_cnt
M_FLUSHES = 5
M_FLUSHED_ENTRIES = 6
M_TIMER_FLUSHES = 7
FLUSH_ENDS = 1024            # completion cycle of recent flushes, by finish count

# exposure histogram, per worker: hwmodel/hist.py's, log2 buckets split in 8
# (values are within 12.5% of their bucket's upper edge)
EXP_BUCKETS = hist.BUCKETS
EXP_WORDS = hist.WORDS                  # histogram, then a line of totals
E_COUNT, E_SUM, E_MAX = hist.H_COUNT, hist.H_SUM, hist.H_MAX
# --diag's latency histograms, per worker: the sampled maps', then the
# sampled unmaps', each timed whole
LAT_MAP, LAT_UNMAP = 0, 1
LAT_WORDS = 2 * hist.WORDS

# rogue device: recently unmapped IOVAs, two words each: (domain, IOVA) and
# the generation of the mapping that was unmapped
RECENT = 4096
R_INDEX = 2 * RECENT         # the ring's next slot; then probe and hit counts

FlushQ = namedtuple("FlushQ", ["q", "meta", "ends", "ring", "lk"])
# the run's arrays as compiled code sees them: those of harness/abi.py, then
# map and unmap's own
# (`stepw`: `steps` word for word, to copy it into `edges`)
Env = namedtuple("Env", ["ctl", "cfg", "cnt", "steps", "ring", "hand", "sizes",
                         "own", "exp", "lat", "recent", "gen", "io", "fq", "edges", "stepw"])


# The kernel's memory for a queue (x86-64, 6.7+): struct iova_fq_entry is
# iova_pfn, pages, the freelist's list_head and the flush counter; struct
# iova_fq's spinlock, head, tail and mod_mask come before the entries.
FQ_ENTRY_BYTES = 8 + 8 + 16 + 8
FQ_HEADER_BYTES = 4 + 3 * 4


def queue_bytes(flush, ndomains, ncpus):
    """What the kernel allocates for a policy's flush queues: a ring per
    possible CPU and domain (percpu, alloc_percpu), one per domain
    (single, vmalloc); 0 for the others."""
    if flush == "percpu":
        return ndomains * ncpus * (FQ_HEADER_BYTES + IOVA_FQ_SIZE * FQ_ENTRY_BYTES)
    if flush == "single":
        return ndomains * (FQ_HEADER_BYTES + IOVA_SINGLE_FQ_SIZE * FQ_ENTRY_BYTES)
    return 0


# a ring's words: its entries, then a line whose first two words are head
# and tail
PERCPU_RING = IOVA_FQ_SIZE * FQ_WORDS + LINE
SINGLE_RING = IOVA_SINGLE_FQ_SIZE * FQ_WORDS + LINE


def fq_layout(ndomains, ncpus, single=False):
    """The queues' arrays.  The rings of the per-CPU queues (ncpus per
    domain) and the single queues (one per domain, with `single`) share
    fq.ring: one design runs at a time."""
    ring = max(ndomains * ncpus * PERCPU_RING, ndomains * SINGLE_RING if single else 0)
    return [("fq.q", np.int64, (HIGH_WATER_MARK * FQ_WORDS + LINE,)),
            ("fq.meta", np.int64, (max(1, ndomains) * LINE,)),
            ("fq.ends", np.int64, (max(1, ndomains) * FLUSH_ENDS,)),
            ("fq.ring", np.int64, (ring,))]


def layout(nworkers, ndomains, pages, ncpus, tlb_entries, ways, single=False):
    """The arrays of map and unmap: the ownership map, exposure and latency
    histograms, the rogue device's list, the IOMMU and the flush queues
    (`single`: room for the single queues)."""
    return ([("own", np.int64, (ndomains * pages,)),
             ("exp", np.int64, (nworkers * EXP_WORDS,)),
             ("lat", np.int64, (nworkers * LAT_WORDS,)),
             ("recent", np.int64, (2 * RECENT + LINE,)),
             ("gen", np.int64, (ndomains * pages,))]
            + [("io." + n, d, s) for n, d, s in iommu.layout(ndomains, pages, tlb_entries,
                                                              ways, nworkers)]
            + fq_layout(ndomains, ncpus, single))


def fq_lock_classes(ndomains, ncpus):
    """Lock 0 is the batched queue's; then one per (domain, cpu) ring;
    then one per domain's single queue."""
    return [0] + [1] * (ndomains * ncpus) + [2] * ndomains


# the queues' lock classes, and which a policy takes
FQ_LOCK_CLASSES = ("flushq", "fq", "single_fq")
FQ_CLASS_OF = {"batched": 0, "percpu": 1, "single": 2}


def make(views, fq_lk):
    io = iommu.make({n[3:]: v for n, v in views.items() if n.startswith("io.")})
    fq = FlushQ(views["fq.q"], views["fq.meta"], views["fq.ends"], views["fq.ring"], fq_lk)
    return Env(views["ctl"], views["cfg"], views["cnt"], views["steps"], views["ring"],
               views["hand"], views["sizes"], views["own"], views["exp"], views["lat"],
               views["recent"], views["gen"], io, fq, views["edges"],
               views["steps"].view(np.int64))


# --- the ownership map ---------------------------------------------------

PENDING = -1                 # unmapped, its invalidation not yet completed

@hot(inner=True)
def _report(env, kind, page, holder, claimant):
    if cas(env.ctl, CTL_ERR, 0, 1) == 0:
        env.ctl[CTL_ERR_KIND] = kind
        env.ctl[CTL_ERR_PAGE] = page
        env.ctl[CTL_ERR_HOLDER] = holder
        env.ctl[CTL_ERR_CLAIMANT] = claimant
        store(env.ctl, CTL_ABORT, 1)


@hot(inner=True)
def _claim(env, owner, dom, iova, pages):
    base = dom * env.cfg[0].pages
    for i in range(pages):
        old = cas(env.own, base + iova + i, 0, owner + 1)
        if old != 0:
            _report(env, ERR_EARLY_REUSE if old == PENDING else ERR_DOUBLE_MAP, iova + i, old, owner + 1)


@hot(inner=True)
def _release(env, owner, dom, iova, pages):
    """At unmap: the pages leave their owner but stay PENDING until the
    invalidation that covers them has completed."""
    base = dom * env.cfg[0].pages
    for i in range(pages):
        old = cas(env.own, base + iova + i, owner + 1, PENDING)
        if old != owner + 1:
            _report(env, ERR_NOT_HELD, iova + i, old, owner + 1)


@hot(inner=True)
def _settle(env, w, dom, iova, pages):
    """After the covering invalidation, before the allocator gets the range."""
    base = dom * env.cfg[0].pages
    for i in range(pages):
        old = cas(env.own, base + iova + i, PENDING, 0)
        if old != PENDING:
            _report(env, ERR_NOT_HELD, iova + i, old, w + 1)


# --- exposure --------------------------------------------------------------

@hot(inner=True)
def _exposure(env, w, c):
    inline_into_callers()
    hist.record(env.exp, w * EXP_WORDS, c)


@hot(inline="always", inner=True)
def _latency(env, w, which, c):
    """A sampled map or unmap, timed whole, into its worker's histogram
    (--diag; `lat_hist` off only to measure what filling it costs)."""
    if env.cfg[0].lat_hist != 0:
        hist.record(env.lat, w * LAT_WORDS + which * hist.WORDS, c)


@hot(inner=True)
def _publish(env, dom, iova):
    """For the rogue device: an IOVA whose unmap has returned, with the
    generation of that mapping, so that a hit on a later mapping of the
    same IOVA is not taken for a stale one.  The generation is written
    first and checked again by the reader."""
    i = fetch_add(env.recent, R_INDEX, 1) % RECENT
    store(env.recent, 2 * i + 1, load(env.gen, dom * env.cfg[0].pages + iova))
    store(env.recent, 2 * i, (dom << 40) | (iova + 1))


# --- map and unmap -------------------------------------------------------

@hot(inline="always", inner=True)
def lock_waits(env, w):
    """Cycles worker w has waited for contended locks so far, whatever
    the lock: --diag leaves them out of the steps it times and counts
    them whole, every one (a sampled I/O, slowed by its stamps, meets
    fewer of them than the others do).  Every lock set of the run counts
    into the one count, in the run's control words."""
    return waited(env.ctl, CTL_WAITED, w)


@hot(inline="always", inner=True)
def _hypercall(env):
    """PVDMA: a guest's map or unmap is a hypercall the host serves (the
    profile's hypercall_ns, polled as the guest waits for it)."""
    n = env.cfg[0].hypercall_cycles
    if n > 0:
        busy_wait_cycles(n)


@hot(inner=True)
def dma_map(alloc, st, env, w, cpu, dom, pages, phys, sample):
    """The bus address of `pages` pages at physical page `phys`, or -1 when
    the allocator has no room.  `sample`: time each step (--diag)."""
    inline_into_callers()
    cfg = env.cfg[0]
    if cfg.translate == 0:
        return phys
    t0 = stamp() if sample else 0
    _hypercall(env)
    t1 = stamp() if sample else 0
    w1 = lock_waits(env, w) if sample else 0
    iova = alloc(st, w, cpu, pages, cfg.limit)
    if iova < 0:
        return -1
    t2 = stamp() if sample else 0
    w2 = lock_waits(env, w) if sample else 0
    if cfg.check != 0:
        _claim(env, w, dom, iova, pages)
    if cfg.rogue != 0:
        g = dom * cfg.pages + iova
        store(env.gen, g, load(env.gen, g) + 1)
    iommu.write_ptes(env.io, dom, iova, pages, phys)
    iommu.sync_map(env.io, w, dom, iova, pages)
    if sample:
        s = env.steps[w]
        t3 = stamp()
        _latency(env, w, LAT_MAP, t3 - t0)
        # the lock waits are counted whole elsewhere: a step is the rest
        own = t3 - t0 - (w2 - w1)
        if own > cfg.outlier_cycles:
            s.outliers += 1
            s.outlier_cycles += own
        else:
            s.hypercall_cycles += t1 - t0
            s.alloc_cycles += t2 - t1 - (w2 - w1)
            s.map_pte_cycles += t3 - t2
            s.maps += 1
            s.map_cycles += t3 - t0
            s.map_sq += (t3 - t0) * (t3 - t0)
    return iova


@hot(inner=True)
def dma_unmap(free, sts, env, w, cpu, owner, dom, iova, pages, sample, policy):
    """Unmap a range mapped by worker `owner` (not always `w`: cross-CPU)
    under flush `policy` (see run_worker on why it is an argument)."""
    inline_into_callers()
    cfg = env.cfg[0]
    if policy == FLUSH_NONE:
        return
    if cfg.translate == 0:
        return
    io = env.io
    t0 = stamp() if sample else 0
    _hypercall(env)
    th = stamp() if sample else 0
    inv0 = io.stats[w * LINE + iommu.S_INV_WAIT] if sample else 0
    fl0 = env.steps[w].flush_cycles if sample else 0
    w0 = lock_waits(env, w) if sample else 0
    iommu.clear_ptes(io, dom, iova, pages)
    if cfg.check != 0:
        _release(env, owner, dom, iova, pages)
    # the exposure of this unmap starts here: every unmap reads the clock
    # (a sampled one in order, as it also ends a step)
    t1 = stamp() if sample else cycles()
    tinv = chosen(policy, _no_queue, _invalidate_now, _batched_add, _fq_queue, _single_queue)(
        free, sts, env, w, cpu, dom, iova, pages, t1, sample)
    if cfg.rogue != 0:
        _publish(env, dom, iova)
    if sample:
        # the invalidations waited for here are accounted by the IOMMU's
        # statistics, a queue's flush in full on its own, and the lock
        # waits (the flush's among them) whole; a strict invalidation's
        # submission and polling is its own step; the free's share is the
        # rest
        s = env.steps[w]
        inv = io.stats[w * LINE + iommu.S_INV_WAIT] - inv0
        t2 = stamp()
        _latency(env, w, LAT_UNMAP, t2 - t0)
        own = t2 - t1 - (s.flush_cycles - fl0) - (tinv if tinv > 0 else inv) \
            - (lock_waits(env, w) - w0)
        if own + tinv + t1 - t0 > cfg.outlier_cycles:
            s.outliers += 1
            s.outlier_cycles += own + tinv + t1 - t0
        else:
            s.hypercall_cycles += th - t0
            s.unmap_pte_cycles += t1 - th
            s.free_cycles += own
            if tinv > 0:
                s.inv_submit_cycles += tinv - inv
            s.unmaps += 1
        if t2 - t0 <= cfg.outlier_cycles:
            s.unmaps_whole += 1
            s.unmap_cycles += t2 - t0
            s.unmap_sq += (t2 - t0) * (t2 - t0)


# --- strict: invalidate, wait, free -----------------------------------------

@hot(inner=True)
def _invalidate_now(free, sts, env, w, cpu, dom, iova, pages, t1, sample):
    """The strict unmap's invalidation and free; with `sample`, the cycles
    of the invalidation's submission and wait (else 0)."""
    inline_into_callers()
    end = iommu.invalidate(env.io, w, dom, iova, pages)
    tinv = stamp() - t1 if sample else 0
    _exposure(env, w, end - t1)
    if env.cfg[0].check != 0:
        _settle(env, w, dom, iova, pages)
    free(pick(sts, dom), w, cpu, iova, pages)
    return tinv


@hot(inline="always", inner=True)
def _no_queue(free, sts, env, w, cpu, dom, iova, pages, t1, sample):
    return 0


# --- the work of a full queue, timed in full under --diag --------------------

@hot(inline="always", inner=True)
def _flush_begin(env, w):
    """With --diag, the start of a queue's flush and frees inside an unmap
    (every one is timed: they come once in hundreds of unmaps, and a
    sampled unmap would catch them at a rate set by the sampling period,
    not by their own); the invalidations and lock waits in it are noted
    to be left out.  0 without --diag."""
    if env.cfg[0].diag == 0:
        return 0
    s = env.steps[w]
    s.flush_inv = env.io.stats[w * LINE + iommu.S_INV_WAIT]
    s.flush_waited = lock_waits(env, w)
    return stamp()


@hot(inline="always", inner=True)
def _flush_end(env, w, t0):
    if t0 != 0:
        s = env.steps[w]
        inv = env.io.stats[w * LINE + iommu.S_INV_WAIT] - s.flush_inv
        s.flush_cycles += stamp() - t0 - inv - (lock_waits(env, w) - s.flush_waited)


# --- batched: one global queue (2008) ----------------------------------------

@hot(inner=True)
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
    nd = env.cfg[0].ndomains
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
        if env.cfg[0].check != 0:
            _settle(env, w, dom, fq.q[e], fq.q[e + 1])
        free(pick(sts, dom), w, cpu, fq.q[e], fq.q[e + 1])
    m[M_COUNT] = 0
    m[M_FLUSHES] += 1
    m[M_FLUSHED_ENTRIES] += n


@hot(inner=True)
def _batched_add(free, sts, env, w, cpu, dom, iova, pages, t, sample):
    inline_into_callers()
    fq = env.fq
    m = fq.meta
    acquire(fq.lk, 0, w)
    if m[M_COUNT] == HIGH_WATER_MARK:
        t0 = _flush_begin(env, w)
        _batched_flush(free, sts, env, w, cpu)
        _flush_end(env, w, t0)
    e = m[M_COUNT] * FQ_WORDS
    fq.q[e] = iova
    fq.q[e + 1] = pages
    fq.q[e + 2] = dom
    fq.q[e + 3] = t
    if m[M_TIMER_ON] == 0:
        store(m, M_DEADLINE, t + env.cfg[0].fq_timeout_cycles)
        store(m, M_TIMER_ON, 1)
    m[M_COUNT] += 1
    release(fq.lk, 0, w)
    return 0


# --- percpu and single: the flush queues of dma-iommu.c ----------------------
#
# A ring is `size` entries (a power of two, indexed by mask as the kernel's
# mod_mask does) and a header line: head, tail.  Both policies run the same
# ring code, as the kernel's do since 6.7; they differ in which ring an
# unmap takes (its CPU's, or the domain's one), its size, its lock, the
# timer's period and what the timer empties.

@hot(inline="always", inner=True)
def _percpu_ring(env, dom, cpu):
    """raw_cpu_ptr(cookie->percpu_fq): (ring base, size, lock index)."""
    ncpus = env.cfg[0].ncpus
    return (dom * ncpus + cpu) * PERCPU_RING, IOVA_FQ_SIZE, 1 + dom * ncpus + cpu


@hot(inline="always", inner=True)
def _single_ring(env, dom):
    """cookie->single_fq: (ring base, size, lock index)."""
    cfg = env.cfg[0]
    return dom * SINGLE_RING, IOVA_SINGLE_FQ_SIZE, 1 + cfg.ndomains * cfg.ncpus + dom


@hot(inner=True)
def _fq_flush(env, w, dom):
    """fq_flush_iotlb: start count, domain-wide flush, finish count."""
    m = env.fq.meta
    b = dom * LINE
    fetch_add(m, b + M_START_CNT, 1)
    end = iommu.invalidate(env.io, w, dom, -1, 0)
    fin = fetch_add(m, b + M_FINISH_CNT, 1) + 1
    store(env.fq.ends, dom * FLUSH_ENDS + fin % FLUSH_ENDS, end)
    fetch_add(m, b + M_FLUSHES, 1)


@hot(inner=True)
def _fq_ring_free(free, sts, env, w, cpu, dom, b, size):
    """fq_ring_free_locked: free the entries of the ring at b that a
    completed flush covers; its lock is held."""
    fq = env.fq
    hdr = b + size * FQ_WORDS
    mask = size - 1
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
        if env.cfg[0].check != 0:
            _settle(env, w, dom, fq.ring[e], fq.ring[e + 1])
        free(pick(sts, dom), w, cpu, fq.ring[e], fq.ring[e + 1])
        head = (head + 1) & mask
        n += 1
    fq.ring[hdr] = head
    # other CPUs free their own rings under their own locks meanwhile
    fetch_add(fq.meta, dom * LINE + M_FLUSHED_ENTRIES, n)


@hot(inline="always", inner=True)
def _fq_ready(env, dom, b, size):
    """Whether the ring at b has an entry that a finished flush covers:
    _fq_ring_free has work."""
    fq = env.fq
    hdr = b + size * FQ_WORDS
    head = fq.ring[hdr]
    return head != fq.ring[hdr + 1] and \
        fq.ring[b + head * FQ_WORDS + 3] < load(fq.meta, dom * LINE + M_FINISH_CNT)


@hot(inner=True)
def _queue_iova(free, sts, env, w, cpu, dom, iova, pages, t, b, size, li):
    """queue_iova on the ring at b, whose lock is li."""
    inline_into_callers()
    fq = env.fq
    acquire(fq.lk, li, w)
    hdr = b + size * FQ_WORDS
    mask = size - 1
    t0 = 0
    if _fq_ready(env, dom, b, size):
        t0 = _flush_begin(env, w)
        _fq_ring_free(free, sts, env, w, cpu, dom, b, size)
    tail = fq.ring[hdr + 1]
    # The kernel flushes once and takes the room for granted.  Entries
    # stamped while another CPU's flush was in flight are not covered by a
    # flush that finishes before that one, though, and with flushers that
    # can be preempted (userspace) the ring can still be full: flush again
    # rather than overwrite an entry.
    while (tail + 1) & mask == fq.ring[hdr]:
        if t0 == 0:
            t0 = _flush_begin(env, w)
        _fq_flush(env, w, dom)
        _fq_ring_free(free, sts, env, w, cpu, dom, b, size)
    if t0 != 0:
        _flush_end(env, w, t0)
    e = b + tail * FQ_WORDS
    fq.ring[e] = iova
    fq.ring[e + 1] = pages
    fq.ring[e + 2] = t
    fq.ring[e + 3] = load(fq.meta, dom * LINE + M_START_CNT)
    fq.ring[hdr + 1] = (tail + 1) & mask
    release(fq.lk, li, w)
    mb = dom * LINE
    if load(fq.meta, mb + M_TIMER_ON) == 0:
        # the deadline first: a timer seen on must never carry an old one
        store(fq.meta, mb + M_DEADLINE, cycles() + env.cfg[0].fq_timeout_cycles)
        xchg(fq.meta, mb + M_TIMER_ON, 1)
    return 0


@hot(inner=True)
def _fq_queue(free, sts, env, w, cpu, dom, iova, pages, t, sample):
    """queue_iova, per-CPU queues: this CPU's ring."""
    inline_into_callers()
    b, size, li = _percpu_ring(env, dom, cpu)
    return _queue_iova(free, sts, env, w, cpu, dom, iova, pages, t, b, size, li)


@hot(inner=True)
def _single_queue(free, sts, env, w, cpu, dom, iova, pages, t, sample):
    """queue_iova, IOMMU_DMA_OPTS_SINGLE_QUEUE: the domain's one ring."""
    inline_into_callers()
    b, size, li = _single_ring(env, dom)
    return _queue_iova(free, sts, env, w, cpu, dom, iova, pages, t, b, size, li)


@hot(inner=True)
def _fq_ring_free_locking(free, sts, env, w, cpu, dom, b, size, li):
    """fq_ring_free: the ring's lock taken around fq_ring_free_locked."""
    acquire(env.fq.lk, li, w)
    _fq_ring_free(free, sts, env, w, cpu, dom, b, size)
    release(env.fq.lk, li, w)


@hot(inner=True)
def _fq_flush_all(free, sts, env, w, cpu, dom):
    """fq_flush_timeout's work, per-CPU queues: flush the domain, then
    empty every CPU's ring."""
    _fq_flush(env, w, dom)
    for c in range(env.cfg[0].ncpus):
        b, size, li = _percpu_ring(env, dom, c)
        _fq_ring_free_locking(free, sts, env, w, cpu, dom, b, size, li)


@hot(inner=True)
def _single_flush_all(free, sts, env, w, cpu, dom):
    """fq_flush_timeout's work, single queue: flush the domain, then empty
    its ring."""
    _fq_flush(env, w, dom)
    b, size, li = _single_ring(env, dom)
    _fq_ring_free_locking(free, sts, env, w, cpu, dom, b, size, li)


@hot(inner=True)
def _fq_timeout(free, sts, env, w, cpu, dom):
    """fq_flush_timeout, per-CPU queues: the timer is off again, then its
    work."""
    store(env.fq.meta, dom * LINE + M_TIMER_ON, 0)
    fetch_add(env.fq.meta, dom * LINE + M_TIMER_FLUSHES, 1)
    _fq_flush_all(free, sts, env, w, cpu, dom)


@hot(inner=True)
def _single_timeout(free, sts, env, w, cpu, dom):
    """fq_flush_timeout, single queue."""
    store(env.fq.meta, dom * LINE + M_TIMER_ON, 0)
    fetch_add(env.fq.meta, dom * LINE + M_TIMER_FLUSHES, 1)
    _single_flush_all(free, sts, env, w, cpu, dom)


@hot(inline="always", inner=True)
def _expired(fq, mb, now):
    """Whether the timer of the queue whose meta line starts at mb is armed
    (1; 2 is being fired) and past its deadline."""
    return load(fq.meta, mb + M_TIMER_ON) == 1 and now >= load(fq.meta, mb + M_DEADLINE)


@hot(inline="always", inner=True)
def timer_due(env, now, policy):
    """Whether a flush timer has expired: a look at the queues' timer
    words, which only change when a timer is armed or fired."""
    return chosen(policy, _never_due, _never_due, _batched_due, _domain_due, _domain_due)(
        env, now)


@hot(inline="always", inner=True)
def _never_due(env, now):
    return False


@hot(inline="always", inner=True)
def _batched_due(env, now):
    return _expired(env.fq, 0, now)


@hot(inline="always", inner=True)
def _domain_due(env, now):
    """A flush queue's timer is the domain's (cookie->fq_timer)."""
    for d in range(env.cfg[0].ndomains):
        if _expired(env.fq, d * LINE, now):
            return True
    return False


@hot(inner=True)
def timers(free, sts, env, w, cpu, now, policy):
    """Fire the flush timers whose deadline has passed (any worker may)."""
    chosen(policy, _no_timers, _no_timers, _batched_timers, _percpu_timers, _single_timers)(
        free, sts, env, w, cpu, now)


@hot(inline="always", inner=True)
def _no_timers(free, sts, env, w, cpu, now):
    pass


@hot(inline="always", inner=True)
def _batched_timers(free, sts, env, w, cpu, now):
    fq = env.fq
    if _expired(fq, 0, now):
        acquire(fq.lk, 0, w)
        # the timer may have been consumed by a flush meanwhile
        if _expired(fq, 0, now):
            fq.meta[M_TIMER_FLUSHES] += 1
            _batched_flush(free, sts, env, w, cpu)
        release(fq.lk, 0, w)


@hot(inline="always", inner=True)
def _percpu_timers(free, sts, env, w, cpu, now):
    fq = env.fq
    for d in range(env.cfg[0].ndomains):
        mb = d * LINE
        # fq_flush_timeout runs once per expiry: whoever clears timer_on
        if _expired(fq, mb, now) and cas(fq.meta, mb + M_TIMER_ON, 1, 2) == 1:
            _fq_timeout(free, sts, env, w, cpu, d)


@hot(inline="always", inner=True)
def _single_timers(free, sts, env, w, cpu, now):
    fq = env.fq
    for d in range(env.cfg[0].ndomains):
        mb = d * LINE
        if _expired(fq, mb, now) and cas(fq.meta, mb + M_TIMER_ON, 1, 2) == 1:
            _single_timeout(free, sts, env, w, cpu, d)


@hot(inner=True)
def drain(free, sts, env, w, cpu, policy):
    """At the end of a window: flush and free everything still queued, as
    the timers would."""
    chosen(policy, _no_drain, _no_drain, _batched_drain, _percpu_drain, _single_drain)(
        free, sts, env, w, cpu)


@hot(inline="always", inner=True)
def _no_drain(free, sts, env, w, cpu):
    pass


@hot(inline="always", inner=True)
def _batched_drain(free, sts, env, w, cpu):
    fq = env.fq
    acquire(fq.lk, 0, w)
    _batched_flush(free, sts, env, w, cpu)
    release(fq.lk, 0, w)


@hot(inline="always", inner=True)
def _percpu_drain(free, sts, env, w, cpu):
    for d in range(env.cfg[0].ndomains):
        _fq_flush_all(free, sts, env, w, cpu, d)


@hot(inline="always", inner=True)
def _single_drain(free, sts, env, w, cpu):
    for d in range(env.cfg[0].ndomains):
        _single_flush_all(free, sts, env, w, cpu, d)


def init(env):
    """Empty queues, histograms and maps (Python side, between points)."""
    env.fq.q[:] = 0
    env.fq.meta[:] = 0
    env.fq.ends[:] = 0
    env.fq.ring[:] = 0
    env.exp[:] = 0
    env.lat[:] = 0
    env.recent[:] = 0
    env.own[:] = 0
    env.gen[:] = 0
