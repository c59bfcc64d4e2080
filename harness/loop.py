"""The measured loops, one per mode of a worker, and the start line they
share.

A worker of a point is in one of four modes:

- local ring (the default): map an I/O, let the device use it, and once
  `depth` are outstanding unmap the oldest, all on its own CPU;
- hand-off producer (`--unmap-fraction`): map, and hand each mapping to the
  worker that unmaps for it, as a completion on an interrupt CPU;
- unmap worker: serve the hand-off rings of its producers;
- premapped (the driver's pool of the seeds): map `depth` buffers once, then
  only let the device use them.

No Python runs in a measurement, and the clock is read only where a figure
needs it.  Every `phase_every` iterations a worker *ticks*: it reads the
cycle counter once, moves the phase word past any deadline gone by, fires
expired flush timers and runs the allocator's trim.  It notes the cycle and
its I/O count at the tick where it sees the window open and the one where it
sees it close, so its window is timed exactly even though it looks at the
clock one iteration in `phase_every`.  Besides the tick, an I/O reads the
clock when the device's time is modelled (once, to stamp when the device is
done, then while polling for it), when an unmap starts an exposure window
(every unmap of a design with an IOMMU), in the invalidation unit, and in the
steps of the one I/O in DIAG_SAMPLE that `--diag` times (that I/O is also
timed whole, so that the loop between its steps is measured too, and so
is one tick in DIAG_SAMPLE).

The window is timed by the workers: the last to reach the start line writes
the deadlines of the warm-up and of the window on the cycle counter, and the
first to see one pass moves the phase on.
"""
import numpy as np

from harness import dma
from harness.compose import pick
from harness.dma import lock_waits
from harness.abi import (CTL_ATTACHED, CTL_FINISHED, CTL_NACTIVE, CTL_PHASE, CTL_PRODUCERS_LEFT,
                         CTL_ROGUE_READY, CTL_T_MEASURE, CTL_T_STOP, DIAG_SAMPLE, E_DEVICE_WAIT,
                         E_HANDOFF_WAIT, E_INV_QUEUE, E_INV_WAIT, E_TICKS, E_UNMAPS, E_WAITED,
                         EDGE_STEPS, EDGE_WORDS, HAND_HEAD,
                         HAND_STRIDE, HAND_TAIL, LINE, MAX_DEPTH, PH_MEASURE, PH_STOP, PH_WAIT,
                         PH_WARMUP, RING_DOMAIN, RING_IOVA, RING_PAGES, RING_STRIDE, RING_T_DONE,
                         RING_WORDS, SIZE_TABLE, STATUS_ABORTED, STATUS_RAN)
from hwmodel import iommu
from hwmodel.cpu import (cas, chosen, cycles, fetch_add, hot, inline_into_callers, load,
                         out_of_line, pause, sched_yield, stamp, store)
from hwmodel.locks import CTL_ABORT

# the modes of a point's workers: every one a local ring; every one
# premapped; producers handing off to unmap workers
MODE_RING, MODE_PREMAPPED, MODE_HANDOFF = range(3)
MODES = ("ring", "premapped", "handoff")
SPIN_BEFORE_YIELD = 200
# Values numba types plainly (bool, int64): a `False` or `0` written in a
# call, or a variable's first value while typing a loop, is typed as a
# literal, and numba compiles the whole call tree below once for it and once
# again for the plain type (an unmap's, a tick's: a tenth of a loop's compile)
UNTIMED = np.bool_(False)
ZERO = np.int64(0)
WARMUP = np.int64(PH_WARMUP)
PAGES_PER_SLOT = 64          # physical pages apart: each ring slot its own buffer
# with 2 MiB mappings (--huge), a slot's buffer starts on a 2 MiB physical
# boundary, as one in a hugepage does: iommu_map uses a 2 MiB leaf only
# where IOVA and physical address are both aligned
HUGE_SLOT_PAGES = 512


# ------------------------------------------------------------ small helpers

@hot(inline="always", inner=True)
def relax(spins):
    """A step of a wait on another process: pause, or yield the core."""
    spins += 1
    if spins >= SPIN_BEFORE_YIELD:
        sched_yield()
        return 0
    pause()
    return spins


@hot(inline="always", inner=True)
def _xorshift(x):
    x ^= (x << 13) & 0x7FFFFFFFFFFFFFFF
    x ^= x >> 7
    x ^= (x << 17) & 0x7FFFFFFFFFFFFFFF
    return x


@hot(inline="always", inner=True)
def _sampled(rng):
    """Whether --diag times this I/O step by step: one in DIAG_SAMPLE, at
    random.  Every n-th I/O would meet a queue's flush every 250 unmaps
    at a rate set by the two periods, not by the flushes (never, or twice
    too often); the high bits are free of the size table's low ones."""
    return (rng >> 40) & (DIAG_SAMPLE - 1) == 0


@hot(inline="always", inner=True)
def _seed(env, w):
    rng = (env.cfg[0].seed + 1) * 0x9E3779B97F4A7C15 + w * 0xBF58476D1CE4E5B9
    return (rng & 0x7FFFFFFFFFFFFFFF) | 1


@hot(inline="always", inner=True)
def _size(env, rng):
    return env.sizes[rng & (SIZE_TABLE - 1)]


@hot(inline="always", inner=True)
def _device_ready(env, device, now, t_dev):
    """When the device will be done with an I/O submitted at `now`: it
    works through its I/Os one after the other."""
    return max(t_dev, now) + device


@hot(inner=True)
def _device_done(env, w, t_done):
    """Poll until the device has finished the I/O (NAPI-style); nothing to
    wait for when its time is not modelled (t_done 0)."""
    inline_into_callers()
    if t_done == 0:
        return
    t0 = cycles()
    if t0 >= t_done:
        return
    t = t0
    while t < t_done:
        pause()
        t = cycles()
    env.cnt[w].device_wait_cycles += t - t0


@hot(inner=True)
def _access(env, w, dom, iova, pages, sample):
    """The device's DMA: every page goes through the IOTLB, `dma_passes`
    times over (a buffer the device reads more than once)."""
    inline_into_callers()
    cfg = env.cfg[0]
    if cfg.translate == 0:
        return
    t0 = stamp() if sample else 0
    for _ in range(cfg.dma_passes):
        for i in range(pages):
            iommu.translate(env.io, w, dom, iova + i)
    if sample:
        env.steps[w].access_cycles += stamp() - t0


@hot(inner=True)
def _unmap(free, sts, env, w, cpu, owner, o, ring, sample, policy):
    """Wait for the device, then unmap the mapping at ring[o]."""
    inline_into_callers()
    _device_done(env, w, ring[o + RING_T_DONE])
    dma.dma_unmap(free, sts, env, w, cpu, owner, ring[o + RING_DOMAIN], ring[o + RING_IOVA],
                  ring[o + RING_PAGES], sample, policy)
    env.cnt[w].unmaps += 1


@hot(inline="always", inner=True)
def _map_and_use(alloc, sts, env, w, cpu, dom, pages, phys, sample, device, t_dev):
    """Map an I/O and let the device use it: (iova or -1, the device's
    next free cycle, when it is done with this I/O: 0 if not modelled)."""
    iova = dma.dma_map(alloc, pick(sts, dom), env, w, cpu, dom, pages, phys, sample)
    if iova < 0:
        return iova, t_dev, 0
    _access(env, w, dom, iova, pages, sample)
    if device == 0:
        return iova, t_dev, 0
    t_dev = _device_ready(env, device, cycles(), t_dev)
    return iova, t_dev, t_dev


@hot(inline="always", inner=True)
def _put(ring, o, iova, pages, t_done, dom):
    ring[o + RING_IOVA] = iova
    ring[o + RING_PAGES] = pages
    ring[o + RING_T_DONE] = t_done
    ring[o + RING_DOMAIN] = dom


@hot(inline="always", inner=True)
def _io_waits(env, w):
    """What a sampled I/O's steps leave out and the breakdown counts in
    full elsewhere: a full queue's flush, invalidation waits, the device,
    contended lock waits, a hand-off producer's waits for room."""
    c = env.cnt[w]
    return (env.steps[w].flush_cycles + env.io.stats[w * LINE + iommu.S_INV_WAIT]
            + c.device_wait_cycles + c.handoff_wait_cycles + lock_waits(env, w))


@hot(inline="always", inner=True)
def _io_begin(env, w):
    """The start of a sampled I/O of the local ring, timed whole."""
    s = env.steps[w]
    s.tick_dirty = 1
    s.io_outliers = s.outliers
    s.io_waits = _io_waits(env, w)
    return stamp()


@hot(inline="always", inner=True)
def _io_end(env, w, t_io):
    """The end of a sampled I/O timed whole, a map and an unmap, less the
    waits counted elsewhere: with its steps taken away, what is left is
    the loop's own time between them, which the breakdown then names
    instead of leaving it as a remainder.  An I/O whose map or unmap was
    an outlier is left out, as its steps are."""
    t = stamp() - t_io - (_io_waits(env, w) - env.steps[w].io_waits)
    s = env.steps[w]
    if s.outliers == s.io_outliers and t <= env.cfg[0].outlier_cycles:
        s.ios += 1
        s.io_cycles += t


@hot(inline="always", inner=True)
def _between_ticks(env, w, ops, now, timed):
    """--diag, at a tick: the I/Os since the last tick, timed together by
    the two ticks' reads of the clock, less the waits and the service
    counted elsewhere, fall in one of three sums, which together hold
    every cycle of the worker's loop between its first tick and its last.
    Over SAMPLE_OUTLIER_NS they held a stall (the CPU taken away: a
    preemption, the hypervisor).  Else, when none of them was sampled and
    the tick before them was neither timed nor ran the service, they are
    *clean*: what an I/O costs without --diag.  The rest hold --diag's
    stamps: less as many clean I/Os, what is left is --diag's own cost,
    the sampled I/Os' stamps and their wake on the I/Os after them.  So
    the breakdown's loop is the clean cost less the steps, and --diag's
    cost is measured, where the stamps' cost calibrated out of context
    was off by a few cycles a stamp, a dozen stamps an I/O: a tenth of a
    fast design's I/O."""
    s = env.steps[w]
    waits = _io_waits(env, w) + s.service_cycles
    if s.tick_prev != 0:
        t = now - s.tick_prev - (waits - s.tick_waits)
        if t > env.cfg[0].outlier_cycles:
            s.stall_cycles += t
            s.stall_ios += ops - s.tick_ops
        elif s.tick_dirty == 0 and not timed:
            s.clean_cycles += t
            s.clean_ios += ops - s.tick_ops
        else:
            s.dirty_cycles += t
            s.dirty_ios += ops - s.tick_ops
    s.tick_prev = now
    s.tick_ops = ops
    s.tick_waits = waits
    s.tick_dirty = timed


@hot(inner=True)
def _edge(env, w, which):
    """--diag: the counts the breakdown reads, as this worker's window
    opens (0) or closes (1), at the tick that notes its I/O count and
    cycle; the breakdown takes the one from the other."""
    out_of_line()
    e = env.edges
    b = (w * 2 + which) * EDGE_WORDS
    src = w * EDGE_STEPS
    for k in range(EDGE_STEPS):
        e[b + k] = env.stepw[src + k]
    c = env.cnt[w]
    e[b + E_WAITED] = lock_waits(env, w)
    e[b + E_INV_WAIT] = env.io.stats[w * LINE + iommu.S_INV_WAIT]
    e[b + E_INV_QUEUE] = env.io.stats[w * LINE + iommu.S_INV_QUEUE]
    e[b + E_DEVICE_WAIT] = c.device_wait_cycles
    e[b + E_HANDOFF_WAIT] = c.handoff_wait_cycles
    e[b + E_TICKS] = c.ticks
    e[b + E_UNMAPS] = c.unmaps


# ------------------------------------------------------ the start line, the clock

@hot(inner=True)
def _open(env):
    """Called by the last worker to arrive: once the rogue device (if any)
    is watching, set the deadlines and start the warm-up."""
    ctl = env.ctl
    cfg = env.cfg[0]
    spins = 0
    while cfg.rogue != 0 and load(ctl, CTL_ROGUE_READY) == 0:
        if load(ctl, CTL_ABORT) != 0:
            return
        spins = relax(spins)
    t = cycles() + cfg.warmup_cycles
    ctl[CTL_T_MEASURE] = t
    ctl[CTL_T_STOP] = t + cfg.window_cycles
    store(ctl, CTL_PHASE, PH_WARMUP)


@hot(inner=True)
def attach(env):
    """Report at the start line and wait there until every active worker
    has; False if the point is aborted first."""
    ctl = env.ctl
    if fetch_add(ctl, CTL_ATTACHED, 1) == ctl[CTL_NACTIVE] - 1:
        _open(env)
    spins = 0
    while load(ctl, CTL_PHASE) == PH_WAIT:
        if load(ctl, CTL_ABORT) != 0:
            return False
        spins = relax(spins)
    return True


@hot(inline="always", inner=True)
def clock(ctl, now):
    """The phase at cycle `now`, moving the phase word past any deadline
    that has gone by (the first worker to see it does; the CAS makes that
    one move)."""
    ph = load(ctl, CTL_PHASE)
    if ph == PH_WARMUP and now >= ctl[CTL_T_MEASURE]:
        cas(ctl, CTL_PHASE, PH_WARMUP, PH_MEASURE)
        ph = load(ctl, CTL_PHASE)
    if ph == PH_MEASURE and now >= ctl[CTL_T_STOP]:
        cas(ctl, CTL_PHASE, PH_MEASURE, PH_STOP)
        ph = load(ctl, CTL_PHASE)
    return ph


@hot(inner=True)
def _service(free, trim, sts, env, w, cpu, now, policy, diagnose):
    """What any worker does besides I/O, when the tick finds some due: fire
    expired flush timers and, on worker 0, the allocator's trim.  With
    --diag its time is the breakdown's `timers`, less the invalidations
    it waits for (the IOMMU's share) and its lock waits (counted whole).
    Returns the cycle it ended at (`now` without --diag)."""
    out_of_line()
    cfg = env.cfg[0]
    diag = diagnose != 0
    inv = env.io.stats[w * LINE + iommu.S_INV_WAIT] if diag else 0
    waits = lock_waits(env, w) if diag else 0
    dma.timers(free, sts, env, w, cpu, now, policy)
    c = env.cnt[w]
    if w == 0 and now >= c.next_trim:
        for d in range(cfg.ndomains):
            trim(pick(sts, d), w, cfg.ncpus)
        c.next_trim = now + cfg.trim_cycles
    if not diag:
        return now
    inv = env.io.stats[w * LINE + iommu.S_INV_WAIT] - inv
    end = cycles()
    env.steps[w].service_cycles += end - now - inv - (lock_waits(env, w) - waits)
    return end


@hot(inner=True)
def tick(free, trim, sts, env, w, cpu, ops, seen, policy, diagnose):
    """One look at the clock: the phase now (PH_STOP ends the loop), the
    window's edges noted with the I/O count and cycle they were seen at,
    then the timers and the trim if one is due.  Returns the phase.
    Inlined, with the service out of line: a call hands over the run's
    arrays, a copy that cost more than the tick's own work."""
    inline_into_callers()
    c = env.cnt[w]
    # --diag times one tick in DIAG_SAMPLE, less the service it may run
    diag = diagnose != 0
    timed = diag and c.ticks & (DIAG_SAMPLE - 1) == 0
    now = stamp() if timed else cycles()
    if diag:
        _between_ticks(env, w, ops, now, timed)
    ph = clock(env.ctl, now)
    c.ops_live = ops
    c.ticks += 1
    if ph != seen:
        if seen < PH_MEASURE and ph >= PH_MEASURE:
            c.ops_start = ops
            c.t_start = now
            if diag:
                _edge(env, w, 0)
        if ph >= PH_STOP:
            c.ops_end = ops
            c.t_end = now
            if diag:
                _edge(env, w, 1)
            return ph
    end = now
    if dma.timer_due(env, now, policy) or (w == 0 and now >= c.next_trim):
        end = _service(free, trim, sts, env, w, cpu, now, policy, diagnose)
        if diag:
            env.steps[w].tick_dirty = 1     # the service is not an I/O's
    if timed:
        # its own cycles: the service (counted whole in `timers`, its
        # invalidations and lock waits in theirs) left out
        t = stamp()
        s = env.steps[w]
        s.tick_cycles += t - end
        s.ticks_timed += 1
    return ph


# ------------------------------------------------------------------- modes

@hot(inner=True)
def local_ring(alloc, free, trim, sts, env, w, cpu, policy, diagnose):
    """Map, let the device use it, unmap the oldest once `depth` are out.
    Returns (I/Os, failed allocations); the ring is empty again."""
    cfg = env.cfg[0]
    dom = w % cfg.ndomains
    depth = cfg.depth
    device = cfg.device_cycles
    mask = cfg.phase_every - 1
    diag = diagnose != 0
    ring = env.ring
    rb = w * RING_STRIDE
    stride = cfg.slot_pages
    phys = w * MAX_DEPTH * stride
    rng = _seed(env, w)
    head = 0
    nout = 0
    ops = ZERO
    fails = 0
    t_dev = 0
    seen = WARMUP
    it = 0
    rng = _xorshift(rng)
    while True:
        if it & mask == 0:
            seen = tick(free, trim, sts, env, w, cpu, ops, seen, policy, diagnose)
            if seen >= PH_STOP:
                break
        it += 1
        sample = diag and _sampled(rng)
        t_io = _io_begin(env, w) if sample else 0
        pages = _size(env, rng)
        slot = head + nout
        if slot >= depth:
            slot -= depth
        iova, t_dev, t_done = _map_and_use(alloc, sts, env, w, cpu, dom, pages,
                                           phys + slot * stride, sample, device, t_dev)
        if iova < 0:
            fails += 1
            if nout > 0:
                _unmap(free, sts, env, w, cpu, w, rb + head * RING_WORDS, ring, UNTIMED, policy)
                head = head + 1 if head + 1 < depth else 0
                nout -= 1
            else:
                sched_yield()       # the space is held by others: let them run
            rng = _xorshift(rng)
            continue
        _put(ring, rb + slot * RING_WORDS, iova, pages, t_done, dom)
        ops += 1
        nout += 1
        # the next I/O's draw, here so that a timed I/O holds one draw
        rng = _xorshift(rng)
        if nout >= depth:
            _unmap(free, sts, env, w, cpu, w, rb + head * RING_WORDS, ring, sample, policy)
            head = head + 1 if head + 1 < depth else 0
            nout -= 1
            if sample:
                _io_end(env, w, t_io)
    while nout > 0:
        _unmap(free, sts, env, w, cpu, w, rb + head * RING_WORDS, ring, UNTIMED, policy)
        head = head + 1 if head + 1 < depth else 0
        nout -= 1
    return ops, fails


@hot(inline="always", inner=True)
def _hand_base(w):
    return w * HAND_STRIDE


@hot(inner=True)
def handoff_producer(alloc, free, trim, sts, env, w, cpu, policy, diagnose):
    """Map, let the device use it, and hand the mapping to this worker's
    unmap worker; wait when `depth` are handed and not yet unmapped."""
    cfg = env.cfg[0]
    ctl = env.ctl
    dom = w % cfg.ndomains
    depth = cfg.depth
    device = cfg.device_cycles
    mask = cfg.phase_every - 1
    diag = diagnose != 0
    hand = env.hand
    hb = _hand_base(w)
    stride = cfg.slot_pages
    phys = w * MAX_DEPTH * stride
    rng = _seed(env, w)
    ops = ZERO
    fails = 0
    t_dev = 0
    seen = WARMUP
    it = 0
    while True:
        if it & mask == 0:
            seen = tick(free, trim, sts, env, w, cpu, ops, seen, policy, diagnose)
            if seen >= PH_STOP:
                break
        it += 1
        rng = _xorshift(rng)
        pages = _size(env, rng)
        tail = hand[hb + HAND_TAIL]
        sample = diag and _sampled(rng)
        iova, t_dev, t_done = _map_and_use(alloc, sts, env, w, cpu, dom, pages,
                                           phys + (tail % depth) * stride, sample,
                                           device, t_dev)
        if iova < 0:
            fails += 1
            sched_yield()           # its unmap worker holds the space: let it run
            continue
        ops += 1
        if tail - load(hand, hb + HAND_HEAD) >= depth:
            t0 = cycles()
            spins = 0
            while tail - load(hand, hb + HAND_HEAD) >= depth:
                if load(ctl, CTL_ABORT) != 0:
                    break
                spins = relax(spins)
            env.cnt[w].handoff_wait_cycles += cycles() - t0
        _put(hand, hb + (tail % MAX_DEPTH) * RING_WORDS, iova, pages, t_done, dom)
        store(hand, hb + HAND_TAIL, tail + 1)
    fetch_add(ctl, CTL_PRODUCERS_LEFT, -1)
    return ops, fails


@hot(inner=True)
def _serve(free, sts, env, w, cpu, k, first, stride, policy):
    """One pass over the hand-off rings this unmap worker serves: at most
    one unmap from each.  True if it found work."""
    hand = env.hand
    busy = False
    for p in range(k, first, stride):
        hb = _hand_base(p)
        head = hand[hb + HAND_HEAD]
        if head != load(hand, hb + HAND_TAIL):
            _unmap(free, sts, env, w, cpu, p, hb + (head % MAX_DEPTH) * RING_WORDS, hand, UNTIMED,
                   policy)
            store(hand, hb + HAND_HEAD, head + 1)
            busy = True
    return busy


@hot(inner=True)
def unmap_worker(free, trim, sts, env, w, cpu, first, policy, diagnose):
    """A worker that only unmaps: it serves the hand-off rings of the
    mapping workers k, k + n, k + 2n, ... (n unmap workers) until they
    have all stopped and their rings are empty."""
    ctl = env.ctl
    k = w - first
    stride = ctl[CTL_NACTIVE] - first
    mask = env.cfg[0].phase_every - 1
    seen = WARMUP
    spins = 0
    it = 0
    while True:
        if it & mask == 0:
            seen = tick(free, trim, sts, env, w, cpu, 0, seen, policy, diagnose)
        it += 1
        if _serve(free, sts, env, w, cpu, k, first, stride, policy):
            continue
        # one more pass once the producers are gone: one may have handed
        # a mapping over just before it left
        if load(ctl, CTL_PRODUCERS_LEFT) == 0 and \
                not _serve(free, sts, env, w, cpu, k, first, stride, policy):
            return
        if load(ctl, CTL_ABORT) != 0:
            return
        spins = relax(spins)


@hot(inner=True)
def premapped(alloc, free, trim, sts, env, w, cpu, policy, diagnose):
    """The driver's pool: `depth` buffers of the largest size mapped once,
    then recycled; only the device's use of them is measured.  Returns
    (I/Os, failed allocations); the pool is unmapped again."""
    cfg = env.cfg[0]
    dom = w % cfg.ndomains
    depth = cfg.depth
    device = cfg.device_cycles
    mask = cfg.phase_every - 1
    ring = env.ring
    rb = w * RING_STRIDE
    big = 0
    for i in range(SIZE_TABLE):
        big = max(big, env.sizes[i])
    nout = 0
    fails = 0
    while nout < depth:
        iova = dma.dma_map(alloc, pick(sts, dom), env, w, cpu, dom, big,
                           (w * MAX_DEPTH + nout) * cfg.slot_pages, UNTIMED)
        if iova < 0:
            fails += 1
            break
        _put(ring, rb + nout * RING_WORDS, iova, big, 0, dom)
        nout += 1
    rng = _seed(env, w)
    ops = ZERO
    t_dev = 0
    seen = WARMUP
    it = 0
    k = 0
    while True:
        if it & mask == 0:
            seen = tick(free, trim, sts, env, w, cpu, ops, seen, policy, diagnose)
            if seen >= PH_STOP:
                break
        it += 1
        if nout == 0:
            sched_yield()
            continue
        rng = _xorshift(rng)
        _access(env, w, dom, ring[rb + k * RING_WORDS + RING_IOVA], _size(env, rng), UNTIMED)
        k = k + 1 if k + 1 < nout else 0
        if device > 0:
            t_dev = _device_ready(env, device, cycles(), t_dev)
            _device_done(env, w, t_dev)
        ops += 1
    for i in range(nout):
        _unmap(free, sts, env, w, cpu, w, rb + i * RING_WORDS, ring, UNTIMED, policy)
    return ops, fails


# --------------------------------------------------------------- a worker

@hot(inner=True)
def no_trim(st, w, ncpus):
    """The housekeeping of an allocator that has none."""
    return 0


@hot(inner=True)
def _finish(free, sts, env, w, cpu, policy):
    """The last worker out flushes what the queues still hold."""
    ctl = env.ctl
    if fetch_add(ctl, CTL_FINISHED, 1) == ctl[CTL_NACTIVE] - 1:
        dma.drain(free, sts, env, w, cpu, policy)


@hot(inline="always", inner=True)
def _ring_mode(alloc, free, trim, sts, env, w, cpu, policy, first, diagnose):
    return local_ring(alloc, free, trim, sts, env, w, cpu, policy, diagnose)


@hot(inline="always", inner=True)
def _premapped_mode(alloc, free, trim, sts, env, w, cpu, policy, first, diagnose):
    return premapped(alloc, free, trim, sts, env, w, cpu, policy, diagnose)


@hot(inline="always", inner=True)
def _handoff_mode(alloc, free, trim, sts, env, w, cpu, policy, first, diagnose):
    if w >= first:
        unmap_worker(free, trim, sts, env, w, cpu, first, policy, diagnose)
        return 0, 0
    return handoff_producer(alloc, free, trim, sts, env, w, cpu, policy, diagnose)


@hot(inner=True)
def run_worker(alloc, free, trim, sts, env, w, cpu, policy, mode, diagnose):
    """One worker's part of a point: the start line, the loop of its mode,
    what it holds given back, the queues drained by the last one out.

    `policy`, the flush policy (dma.FLUSH_*), `mode`, the point's
    workers' modes (MODE_*), and `diagnose` (1: --diag's loop, with its
    stamps and counts) are passed down as arguments, not read from the
    run's configuration: each generated entry writes them as numbers, and
    gets a loop compiled for them alone (hwmodel.cpu.chosen), a third of
    the compile a new user waits for, and of the machine code; the plain
    loop holds none of --diag's code, which made it slower when it was
    only skipped."""
    c = env.cnt[w]
    if not attach(env):
        c.status = STATUS_ABORTED
        return
    cfg = env.cfg[0]
    first_consumer = env.ctl[CTL_NACTIVE] - cfg.consumers
    ops, fails = chosen(mode, _ring_mode, _premapped_mode, _handoff_mode)(
        alloc, free, trim, sts, env, w, cpu, policy, first_consumer, diagnose)
    c.ops = ops
    c.fails = fails
    _finish(free, sts, env, w, cpu, policy)
    c.status = STATUS_RAN
