"""Worker processes: fork once, pin, park, run the measured loop on command.

The parent compiles every loop a sweep needs, then forks the largest number
of workers the sweep asks for.  A worker pins itself to one core (round-robin
over the cores the parent may use) and parks in a futex.  For each point the
parent writes the design and the number n of active workers, rings the
doorbells of workers 0..n-1 and wakes them with one FUTEX_WAKE_BITSET: the
parked rest are not woken, which matters when a 1-thread point shares two
cores with 1023 parked processes, and the parent is not preempted halfway
through by the workers it has woken.  No Python runs in a measurement, and
the window is timed by the workers themselves: the last one to arrive
writes the deadlines of the warm-up and of the window, and whichever worker
first finds a deadline passed moves the phase word on.  The parent only
sleeps; with 1024 workers on two cores it may wake a round of timeslices
late, which then costs wall time but never changes a window's length.
"""
import ctypes
import gc
import multiprocessing as mp
import os
import platform
import resource
import selectors
import signal
import time

import numpy as np

from allocators import bitmap, direct, magazines, pools, rbtree
from harness.dma import (CFG_CONSUMERS, CFG_DEPTH, CFG_DEVICE, CFG_DIAG, CFG_HYPERCALL, CFG_NCPUS,
                         CFG_NDOMAINS, CFG_PAGES, CFG_PREMAPPED, CFG_ROGUE, CFG_SEED,
                         CFG_TRANSLATE, CFG_TRIM, CFG_WARMUP, CFG_WINDOW, CTL_ATTACHED, CTL_CMD,
                         CTL_DESIGN, CTL_DONE, CTL_GEN, CTL_NACTIVE, CTL_PHASE, CTL_PRODUCERS_LEFT,
                         DIAG_SAMPLE, LINE, R_INDEX, RECENT, RING_WORDS, RINGCAP, SIZE_TABLE,
                         dma_map, dma_unmap, drain, timers)
from hwmodel import iommu
from hwmodel.cpu import (atomic_add, atomic_load, busy_wait_cycles, cas, cycles, fetch_add, hot,
                         load, pause, sched_yield, store)
from hwmodel.locks import CTL_ABORT

# phases of a point (CTL_PHASE)
PH_WAIT, PH_WARMUP, PH_MEASURE, PH_STOP = 0, 1, 2, 3
# commands to parked workers (CTL_CMD)
CMD_RUN, CMD_EXIT = 1, 2

# per-worker counter line (Env.cnt)
C_OPS = 0            # I/Os completed over the whole point
C_OPS_START = 1      # ... when the measurement window opened
C_OPS_END = 2        # ... when it closed
C_FAILS = 3          # allocations that found no room
C_T_START = 4
C_T_END = 5
C_STATUS = 6         # 1 ran to the end, 2 aborted
C_CORE = 7
C_UNMAPS = 8
C_DEVICE_WAIT = 9    # cycles spent waiting for the device to finish an I/O
C_HAND_WAIT = 10     # cycles a mapping worker waited for room in its hand-off ring
C_DONE_CYCLES = 11   # cycles of the whole loop
C_OPS_LIVE = 12      # I/Os so far, for the per-second series

CTL_FINISHED = 14    # workers past their loop; the last one drains the queues
CTL_ROGUE_PROBES = 15
CTL_ROGUE_STALE = 16
CTL_ROGUE_READY = 17
CTL_T_MEASURE = 18   # cycle counter at which the warm-up ends and the window opens
CTL_T_STOP = 19      # ... and at which the window closes

SPIN_BEFORE_YIELD = 200
TRIM_PERIOD_MS = 100 # IOVA_DEPOT_DELAY (drivers/iommu/iova.c, 6.7+)


@hot
def _xorshift(x):
    x ^= (x << 13) & 0x7FFFFFFFFFFFFFFF
    x ^= x >> 7
    x ^= (x << 17) & 0x7FFFFFFFFFFFFFFF
    return x


@hot
def _relax(ctl, spins):
    """A step of a wait on another process: pause, or yield the core."""
    spins += 1
    if spins >= SPIN_BEFORE_YIELD:
        sched_yield()
        return 0
    pause()
    return spins


@hot
def _open(env):
    """Called by the last worker to arrive: once the rogue device (if any)
    is watching, set the deadlines and start the warm-up."""
    ctl = env.ctl
    cfg = env.cfg
    spins = 0
    while cfg[CFG_ROGUE] != 0 and load(ctl, CTL_ROGUE_READY) == 0:
        if load(ctl, CTL_ABORT) != 0:
            return
        spins = _relax(ctl, spins)
    t = cycles() + cfg[CFG_WARMUP]
    ctl[CTL_T_MEASURE] = t
    ctl[CTL_T_STOP] = t + cfg[CFG_WINDOW]
    store(ctl, CTL_PHASE, PH_WARMUP)


@hot
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
        spins = _relax(ctl, spins)
    return True


@hot
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


@hot
def _device_done(env, w, t_done):
    """Poll until the device has finished the I/O (NAPI-style)."""
    if cycles() >= t_done:
        return
    t0 = cycles()
    while cycles() < t_done:
        pause()
    env.cnt[w * LINE + C_DEVICE_WAIT] += cycles() - t0


@hot
def _access(env, w, dom, iova, pages):
    """The device's DMA: every page goes through the IOTLB."""
    if env.cfg[CFG_TRANSLATE] != 0:
        for i in range(pages):
            iommu.translate(env.io, w, dom, iova + i)


@hot
def _unmap(free, sts, env, w, cpu, owner, dom, iova, pages, sample):
    busy_wait_cycles(env.cfg[CFG_HYPERCALL] if env.cfg[CFG_TRANSLATE] != 0 else 0)
    dma_unmap(free, sts, env, w, cpu, owner, dom, iova, pages, sample)
    env.cnt[w * LINE + C_UNMAPS] += 1


@hot
def _map(alloc, sts, env, w, cpu, dom, pages, phys, sample):
    busy_wait_cycles(env.cfg[CFG_HYPERCALL] if env.cfg[CFG_TRANSLATE] != 0 else 0)
    return dma_map(alloc, sts[dom], env, w, cpu, dom, pages, phys, sample)


@hot(inline="always")
def _hand_base(w):
    return w * (RINGCAP * RING_WORDS + 2 * LINE)


@hot
def _service(free, housekeep, sts, env, w, cpu, next_trim):
    """What any worker does besides I/O: fire expired flush timers and, on
    worker 0, the depot trim.  Returns the next trim deadline."""
    now = cycles()
    timers(free, sts, env, w, cpu, now)
    if w == 0 and now >= next_trim:
        for d in range(env.cfg[CFG_NDOMAINS]):
            housekeep(sts[d], w, env.cfg[CFG_NCPUS])
        next_trim = now + env.cfg[CFG_TRIM]
    return next_trim


@hot
def _consume(free, housekeep, sts, env, w, cpu, first_consumer, nconsumers):
    """A worker that only unmaps: it serves the hand-off rings of the
    mapping workers assigned to it until they have all stopped."""
    ctl = env.ctl
    hand = env.hand
    k = w - first_consumer
    next_trim = cycles() + env.cfg[CFG_TRIM]
    spins = 0
    while True:
        busy = False
        for p in range(k, first_consumer, nconsumers):
            hb = _hand_base(p)
            hdr = hb + RINGCAP * RING_WORDS
            head = hand[hdr]
            if head != load(hand, hdr + LINE):
                o = hb + (head % RINGCAP) * RING_WORDS
                _device_done(env, w, hand[o + 2])
                _unmap(free, sts, env, w, cpu, p, hand[o + 3], hand[o], hand[o + 1], False)
                store(hand, hdr, head + 1)
                busy = True
        clock(ctl, cycles())
        next_trim = _service(free, housekeep, sts, env, w, cpu, next_trim)
        if not busy:
            if load(ctl, CTL_PRODUCERS_LEFT) == 0:
                # one more pass: a producer may have pushed before leaving
                left = False
                for p in range(k, first_consumer, nconsumers):
                    hdr = _hand_base(p) + RINGCAP * RING_WORDS
                    if hand[hdr] != load(hand, hdr + LINE):
                        left = True
                if not left:
                    return
            if load(ctl, CTL_ABORT) != 0:
                return
            spins = _relax(ctl, spins)


@hot
def io_loop(alloc, free, housekeep, sts, env, w, cpu):
    """The measured loop of one worker: map an I/O, let the device use it;
    once `depth` are outstanding, unmap the oldest (or hand it to a worker
    that unmaps).  Returns when the parent says stop."""
    ctl = env.ctl
    cnt = env.cnt
    cfg = env.cfg
    c = w * LINE
    if not attach(env):
        cnt[c + C_STATUS] = 2
        return
    t_begin = cycles()
    nactive = ctl[CTL_NACTIVE]
    ncons = cfg[CFG_CONSUMERS]
    first_consumer = nactive - ncons
    if w >= first_consumer:
        _consume(free, housekeep, sts, env, w, cpu, first_consumer, ncons)
        _finish(free, sts, env, w, cpu, 0, 0, t_begin)
        return
    dom = w % cfg[CFG_NDOMAINS]
    depth = cfg[CFG_DEPTH]
    device = cfg[CFG_DEVICE]
    premapped = cfg[CFG_PREMAPPED] != 0
    diag = cfg[CFG_DIAG] != 0
    ring = env.ring
    rb = w * RINGCAP * RING_WORDS
    hand = env.hand
    hb = _hand_base(w)
    hdr = hb + RINGCAP * RING_WORDS
    phys_base = w * RINGCAP * 64
    rng = (cfg[CFG_SEED] + 1) * 0x9E3779B97F4A7C15 + w * 0xBF58476D1CE4E5B9
    rng = (rng & 0x7FFFFFFFFFFFFFFF) | 1
    head = 0
    nout = 0
    ops = 0
    fails = 0
    t_dev = 0
    next_trim = cycles() + cfg[CFG_TRIM]
    seen = PH_WARMUP
    deadline = ctl[CTL_T_MEASURE]
    if premapped:
        # the driver's pool: `depth` buffers of the largest size, mapped once
        big = 0
        for i in range(SIZE_TABLE):
            big = max(big, env.sizes[i])
        while nout < depth:
            iova = _map(alloc, sts, env, w, cpu, dom, big, phys_base + nout * 64, False)
            if iova < 0:
                break
            o = rb + nout * RING_WORDS
            ring[o] = iova
            ring[o + 1] = big
            nout += 1
        if nout == 0:
            fails += 1
    now = cycles()
    while True:
        # `now` is at most one I/O old: the fast path adds one compare
        ph = load(ctl, CTL_PHASE)
        if ph != seen or now >= deadline:
            ph = clock(ctl, now)
            if ph != seen:
                if seen < PH_MEASURE and ph >= PH_MEASURE:
                    cnt[c + C_OPS_START] = ops
                    cnt[c + C_T_START] = now
                if ph >= PH_STOP:
                    break
                seen = ph
                deadline = ctl[CTL_T_STOP]
        cnt[c + C_OPS_LIVE] = ops
        next_trim = _service(free, housekeep, sts, env, w, cpu, next_trim)
        rng = _xorshift(rng)
        pages = env.sizes[rng & (SIZE_TABLE - 1)]
        if premapped:
            if nout == 0:
                sched_yield()
                now = cycles()
                continue
            o = rb + (ops % nout) * RING_WORDS
            _access(env, w, dom, ring[o], pages)
            now = cycles()
            t_dev = max(t_dev, now) + device
            _device_done(env, w, t_dev)
            ops += 1
            continue
        slot = (head + nout) % depth
        sample = diag and (ops & (DIAG_SAMPLE - 1)) == 0
        iova = _map(alloc, sts, env, w, cpu, dom, pages, phys_base + slot * 64, sample)
        if iova < 0:
            fails += 1
            if nout > 0:
                o = rb + head * RING_WORDS
                _device_done(env, w, ring[o + 2])
                _unmap(free, sts, env, w, cpu, w, dom, ring[o], ring[o + 1], False)
                head = (head + 1) % depth
                nout -= 1
            else:
                sched_yield()       # the space is held by others: let them run
            now = cycles()
            continue
        _access(env, w, dom, iova, pages)
        now = cycles()
        t_dev = max(t_dev, now) + device
        ops += 1
        if ncons > 0:
            # cross-CPU unmap: the completion runs on another CPU
            tail = hand[hdr + LINE]
            if tail - load(hand, hdr) >= depth:
                t0 = cycles()
                spins = 0
                while tail - load(hand, hdr) >= depth:
                    if load(ctl, CTL_ABORT) != 0:
                        break
                    spins = _relax(ctl, spins)
                cnt[c + C_HAND_WAIT] += cycles() - t0
            o = hb + (tail % RINGCAP) * RING_WORDS
            hand[o] = iova
            hand[o + 1] = pages
            hand[o + 2] = t_dev
            hand[o + 3] = dom
            store(hand, hdr + LINE, tail + 1)
            continue
        o = rb + slot * RING_WORDS
        ring[o] = iova
        ring[o + 1] = pages
        ring[o + 2] = t_dev
        ring[o + 3] = dom
        nout += 1
        if nout >= depth:
            o = rb + head * RING_WORDS
            _device_done(env, w, ring[o + 2])
            _unmap(free, sts, env, w, cpu, w, dom, ring[o], ring[o + 1], sample)
            head = (head + 1) % depth
            nout -= 1
    cnt[c + C_OPS_END] = ops
    cnt[c + C_T_END] = cycles()
    if ncons > 0:
        fetch_add(ctl, CTL_PRODUCERS_LEFT, -1)
    # every worker gives back what it holds, so the state can be checked
    if premapped:
        for i in range(nout):
            o = rb + i * RING_WORDS
            _unmap(free, sts, env, w, cpu, w, dom, ring[o], ring[o + 1], False)
        nout = 0
    while nout > 0:
        o = rb + head * RING_WORDS
        _device_done(env, w, ring[o + 2])
        _unmap(free, sts, env, w, cpu, w, dom, ring[o], ring[o + 1], False)
        head = (head + 1) % depth
        nout -= 1
    cnt[c + C_OPS] = ops
    cnt[c + C_FAILS] = fails
    _finish(free, sts, env, w, cpu, ops, fails, t_begin)


@hot
def _finish(free, sts, env, w, cpu, ops, fails, t_begin):
    """The last worker out flushes what the queues still hold."""
    ctl = env.ctl
    c = w * LINE
    if fetch_add(ctl, CTL_FINISHED, 1) == ctl[CTL_NACTIVE] - 1:
        drain(free, sts, env, w, cpu)
    env.cnt[c + C_DONE_CYCLES] = cycles() - t_begin
    env.cnt[c + C_STATUS] = 1


# One cached entry per allocator: a function whose signature holds a
# dispatcher is never found in numba's cache, one that calls it is.
@hot(cache=True)
def run_direct(sts, env, w, cpu):
    io_loop(direct.alloc, direct.free, direct.trim, sts, env, w, cpu)


@hot(cache=True)
def run_bitmap(sts, env, w, cpu):
    io_loop(bitmap.alloc, bitmap.free, bitmap.trim, sts, env, w, cpu)


@hot(cache=True)
def run_pools(sts, env, w, cpu):
    io_loop(pools.alloc, pools.free, pools.trim, sts, env, w, cpu)


@hot(cache=True)
def run_rbtree(sts, env, w, cpu):
    io_loop(rbtree.alloc, rbtree.free, rbtree.trim, sts, env, w, cpu)


@hot(cache=True)
def run_magazines(sts, env, w, cpu):
    io_loop(magazines.alloc, magazines.free, magazines.trim, sts, env, w, cpu)


ENTRIES = {"direct": run_direct, "bitmap": run_bitmap, "pools": run_pools,
           "rbtree": run_rbtree, "magazines": run_magazines}


@hot(cache=True)
def rogue_loop(env):
    """A device that keeps reading through the IOTLB at IOVAs whose unmap has
    returned: any translation it still gets is a stale hit."""
    ctl = env.ctl
    io = env.io
    store(ctl, CTL_ROGUE_READY, 1)
    while load(ctl, CTL_PHASE) < PH_MEASURE:
        if load(ctl, CTL_ABORT) != 0:
            return
        sched_yield()
    probes = 0
    stale = 0
    k = 0
    while load(ctl, CTL_PHASE) == PH_MEASURE:
        n = load(env.recent, R_INDEX)
        if n == 0:
            sched_yield()
            continue
        # the most recent unmaps first, then further back
        k = (k + 1) % 64
        i = (n - 1 - k) % RECENT
        e = load(env.recent, 2 * i)
        gen = load(env.recent, 2 * i + 1)
        if e == 0 or load(env.recent, 2 * i) != e:
            continue
        dom = e >> 40
        iova = (e & ((1 << 40) - 1)) - 1
        probes += 1
        phys = iommu.probe(io, dom, iova)
        # a hit counts if the IOVA has not been mapped again since: its
        # translation is the one whose unmap returned
        if phys >= 0 and load(env.gen, dom * env.cfg[CFG_PAGES] + iova) == gen:
            stale += 1
    ctl[CTL_ROGUE_PROBES] = probes
    ctl[CTL_ROGUE_STALE] = stale


# --- parking -------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10      # include/uapi/linux/futex.h
FUTEX_BITSET_MATCH_ANY = 0xFFFFFFFF
PR_SET_PDEATHSIG = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _word_addr(arr, index):
    return arr.ctypes.data + index * arr.itemsize


def futex_wait(arr, index, expected, bits, timeout):
    """Sleep while the low 32 bits of arr[index] equal `expected`, until a
    wake whose bitset meets `bits`, or `timeout` seconds."""
    if _SYS_FUTEX is None:
        time.sleep(min(timeout, 0.01))
        return
    # FUTEX_WAIT_BITSET's timeout is absolute, on CLOCK_MONOTONIC
    end = time.monotonic() + timeout
    ts = _Timespec(int(end), int((end % 1) * 1e9))
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(_word_addr(arr, index)), FUTEX_WAIT_BITSET,
                  ctypes.c_uint(expected & 0xFFFFFFFF), ctypes.byref(ts), None,
                  ctypes.c_uint(bits))


def futex_wake(arr, index, bits=FUTEX_BITSET_MATCH_ANY):
    """Wake every waiter on arr[index] whose bitset meets `bits`: one system
    call, so the caller is not preempted by the first one it wakes."""
    if _SYS_FUTEX is not None:
        _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(_word_addr(arr, index)), FUTEX_WAKE_BITSET,
                      ctypes.c_int(2**31 - 1), None, None, ctypes.c_uint(bits))


def _group(w):
    """The futex bit of worker w: workers 2^(k-1)..2^k-1 share bit k, so
    that waking workers 0..n-1 wakes fewer than 2n."""
    return 1 << min(31, w.bit_length())


def _groups_below(n):
    return (_group(n - 1) << 1) - 1 if n > 0 else 0


def allowed_cores():
    return sorted(os.sched_getaffinity(0))


class WorkerDied(Exception):
    def __init__(self, worker, exitcode):
        super().__init__("worker %d died (%s)" % (worker, _describe_exit(exitcode)))
        self.worker = worker
        self.exitcode = exitcode


class Watchdog(Exception):
    """Workers did not finish within the grace period."""


def _describe_exit(code):
    if code is None:
        return "still running"
    if code < 0:
        try:
            return "killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "killed by signal %d" % -code
    return "exit status %d" % code


# a parked worker looks at its parent this often; PR_SET_PDEATHSIG does the
# real work, this only covers a parent that died before the prctl
PARK_TIMEOUT = 5.0


def layout(nworkers):
    """One doorbell word per worker, each on its own cache line."""
    return [("bell", np.int64, (nworkers * LINE,))]


def _worker_main(w, core, env, bell, states, entries):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = os.getppid()
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        pass
    ctl = env.ctl
    bit = _group(w)
    # bells start at 0 when the pool is made, before any fork: a ring the
    # parent sends before this process gets here is not missed
    rung = 0
    while True:
        while int(atomic_load(bell, w * LINE)) == rung:
            # the parent rings, then bumps CTL_GEN, then wakes: a bump after
            # this read fails the wait at once, one before it rang first
            gen = int(atomic_load(ctl, CTL_GEN))
            if int(atomic_load(bell, w * LINE)) != rung:
                break
            futex_wait(ctl, CTL_GEN, gen, bit, PARK_TIMEOUT)
            if os.getppid() != parent:
                os._exit(3)
        rung = int(atomic_load(bell, w * LINE))
        if ctl[CTL_CMD] == CMD_EXIT:
            os._exit(0)
        env.cnt[w * LINE + C_CORE] = core
        d = int(ctl[CTL_DESIGN])
        try:
            entries[d](states[d], env, w, w)
        except Exception:
            env.cnt[w * LINE + C_STATUS] = 2
        atomic_add(ctl, CTL_DONE, 1)


class Pool:
    """`n` forked workers, parked until their doorbell in `bell` rings."""

    def __init__(self, n, env, bell, states, entries, cores=None):
        self.env = env
        self.bell = bell
        self.n = n
        self.cores = cores or allowed_cores()
        _raise_fd_limit(n)
        ctx = mp.get_context("fork")
        bell[:] = 0
        env.ctl[CTL_CMD] = 0
        env.ctl[CTL_GEN] = 0
        # what a parked worker calls must be compiled here: loading it in
        # every child would cost each one megabytes of private memory
        atomic_load(bell, 0)
        atomic_add(env.ctl, CTL_DONE, 0)
        gc.collect()
        gc.freeze()      # forked children then leave the heap's pages shared
        self.procs = []
        # one epoll set of the workers' sentinels, made once: building a
        # selector of 1024 descriptors at every poll costs the parent
        # milliseconds it does not get back when 1024 workers share 2 cores
        self._watch = selectors.DefaultSelector()
        try:
            for w in range(n):
                core = self.cores[w % len(self.cores)]
                p = ctx.Process(target=_worker_main, name="iommu-stress-w%d" % w,
                                args=(w, core, env, bell, states, entries), daemon=True)
                p.start()
                self.procs.append(p)
                self._watch.register(p.sentinel, selectors.EVENT_READ, w)
        except BaseException:
            self.close()
            raise
        finally:
            gc.unfreeze()

    def dead(self):
        """(worker, exitcode) of the first worker that is gone, or None."""
        for w, p in enumerate(self.procs):
            if p.exitcode is not None:
                return w, p.exitcode
        return None

    def _watch_for(self, timeout):
        """Sleep up to `timeout` s, or raise as soon as a worker dies."""
        for key, _ in self._watch.select(timeout):
            p = self.procs[key.data]
            p.join(1.0)
            raise WorkerDied(key.data, p.exitcode)

    def wait_for(self, cond, deadline, poll=0.02):
        """Wait until cond() holds; raise if a worker dies or time runs out."""
        while not cond():
            if time.monotonic() > deadline:
                raise Watchdog()
            self._watch_for(poll)

    def sleep(self, seconds):
        """Sleep, watching for dead workers."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._watch_for(left)

    def _ring(self, n):
        """Ring the doorbells of workers 0..n-1 and wake them, with one
        system call whichever n."""
        self.bell[:n * LINE:LINE] += 1
        atomic_add(self.env.ctl, CTL_GEN, 1)
        futex_wake(self.env.ctl, CTL_GEN, _groups_below(n))

    def start_point(self, design_index, nactive):
        """Run the loop of design `design_index` on workers 0..nactive-1;
        each adds one to CTL_DONE when it is parked again."""
        ctl = self.env.ctl
        ctl[CTL_PHASE] = PH_WAIT
        ctl[CTL_ABORT] = 0
        ctl[CTL_ATTACHED] = 0
        ctl[CTL_DONE] = 0
        ctl[CTL_NACTIVE] = nactive
        ctl[CTL_DESIGN] = design_index
        ctl[CTL_CMD] = CMD_RUN
        self._ring(nactive)

    def close(self, timeout=2.0):
        """Stop every worker; kill the ones that do not exit in time."""
        ctl = self.env.ctl
        ctl[CTL_CMD] = CMD_EXIT
        ctl[CTL_ABORT] = 1
        ctl[CTL_PHASE] = PH_STOP
        self._ring(len(self.procs))
        end = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, end - time.monotonic()))
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
        # SIGKILL cannot be refused; on a loaded machine the process may
        # need a while to be scheduled and die, and it must be reaped
        for p in self.procs:
            p.join()
        self.procs = []
        self._watch.close()


def run_in_child(fn):
    """Run fn() in a forked child and wait for it; True if it returned.
    The child dies with the parent (PR_SET_PDEATHSIG)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            fn()
            code = 0
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return os.waitstatus_to_exitcode(status) == 0


def _raise_fd_limit(n):
    """Each worker costs the parent one descriptor (its sentinel)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
