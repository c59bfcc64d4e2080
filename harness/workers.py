"""Worker processes: fork once, pin, park, run the measured loop on command.

The parent compiles every loop a sweep needs, then forks the largest number
of workers the sweep asks for.  A worker pins itself to one core (round-robin
over the cores the parent may use) and parks in a futex on the generation
word; for each point the parent writes the design and the number of active
workers, bumps the generation and wakes them all.  Active workers run the
compiled loop; the others report done and park again.  No Python runs in a
measurement: phase changes are words in the arena that the loop polls.
"""
import ctypes
import gc
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import resource
import signal
import time

import numpy as np

from allocators import bitmap, direct
from harness import dma
from harness.dma import (CTL_ATTACHED, CTL_CMD, CTL_DESIGN, CTL_DONE, CTL_GEN,
                         CTL_NACTIVE, CTL_PHASE, CFG_DEPTH, CFG_SEED, LINE,
                         RINGCAP, SIZE_TABLE, dma_map, dma_unmap)
from hwmodel.cpu import atomic_add, atomic_load, cycles, fetch_add, hot, load, pause, sched_yield
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

SPIN_BEFORE_YIELD = 200


@hot
def _xorshift(x):
    x ^= (x << 13) & 0x7FFFFFFFFFFFFFFF
    x ^= x >> 7
    x ^= (x << 17) & 0x7FFFFFFFFFFFFFFF
    return x


@hot
def _wait_start(ctl):
    """Spin, then yield, until the parent opens the point."""
    spins = 0
    while load(ctl, CTL_PHASE) == PH_WAIT:
        if load(ctl, CTL_ABORT) != 0:
            return False
        spins += 1
        if spins >= SPIN_BEFORE_YIELD:
            sched_yield()
            spins = 0
        else:
            pause()
    return True


@hot
def io_loop(alloc, free, st, env, w, cpu):
    """The measured loop of one worker: map an I/O; once `depth` are
    outstanding, unmap the oldest.  Returns when the parent says stop."""
    ctl = env.ctl
    cnt = env.cnt
    c = w * LINE
    fetch_add(ctl, CTL_ATTACHED, 1)
    if not _wait_start(ctl):
        cnt[c + C_STATUS] = 2
        return
    depth = env.cfg[CFG_DEPTH]
    ring = env.ring
    rb = w * RINGCAP * 2
    phys_base = w * RINGCAP * 64
    rng = (env.cfg[CFG_SEED] + 1) * 0x9E3779B97F4A7C15 + w * 0xBF58476D1CE4E5B9
    rng = (rng & 0x7FFFFFFFFFFFFFFF) | 1
    head = 0
    nout = 0
    ops = 0
    fails = 0
    seen = PH_WARMUP
    while True:
        ph = load(ctl, CTL_PHASE)
        if ph != seen:
            if seen < PH_MEASURE and ph >= PH_MEASURE:
                cnt[c + C_OPS_START] = ops
                cnt[c + C_T_START] = cycles()
            if ph >= PH_STOP:
                break
            seen = ph
        rng = _xorshift(rng)
        pages = env.sizes[rng & (SIZE_TABLE - 1)]
        slot = (head + nout) % depth
        iova = dma_map(alloc, st, env, w, cpu, pages, phys_base + slot * 64)
        if iova < 0:
            fails += 1
            if nout > 0:
                o = rb + head * 2
                dma_unmap(free, st, env, w, cpu, ring[o], ring[o + 1])
                head = (head + 1) % depth
                nout -= 1
            continue
        o = rb + slot * 2
        ring[o] = iova
        ring[o + 1] = pages
        nout += 1
        ops += 1
        if nout >= depth:
            o = rb + head * 2
            dma_unmap(free, st, env, w, cpu, ring[o], ring[o + 1])
            head = (head + 1) % depth
            nout -= 1
    cnt[c + C_OPS_END] = ops
    cnt[c + C_T_END] = cycles()
    # every worker gives back what it holds, so the state can be checked
    while nout > 0:
        o = rb + head * 2
        dma_unmap(free, st, env, w, cpu, ring[o], ring[o + 1])
        head = (head + 1) % depth
        nout -= 1
    cnt[c + C_OPS] = ops
    cnt[c + C_FAILS] = fails
    cnt[c + C_STATUS] = 1


# One cached entry per allocator: a function whose signature holds a
# dispatcher is never found in numba's cache, one that calls it is.
@hot(cache=True)
def run_direct(st, env, w, cpu):
    io_loop(direct.alloc, direct.free, st, env, w, cpu)


@hot(cache=True)
def run_bitmap(st, env, w, cpu):
    io_loop(bitmap.alloc, bitmap.free, st, env, w, cpu)


ENTRIES = {"direct": run_direct, "bitmap": run_bitmap}


# --- parking -------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
FUTEX_WAIT, FUTEX_WAKE = 0, 1
PR_SET_PDEATHSIG = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _word_addr(arr, index):
    return arr.ctypes.data + index * arr.itemsize


def futex_wait(arr, index, expected, timeout):
    """Sleep while the low 32 bits of arr[index] equal `expected`."""
    if _SYS_FUTEX is None:
        time.sleep(min(timeout, 0.01))
        return
    ts = _Timespec(int(timeout), int((timeout % 1) * 1e9))
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(_word_addr(arr, index)), FUTEX_WAIT,
                  ctypes.c_uint(expected & 0xFFFFFFFF), ctypes.byref(ts), None, 0)


def futex_wake(arr, index):
    if _SYS_FUTEX is not None:
        _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(_word_addr(arr, index)), FUTEX_WAKE,
                      ctypes.c_int(2**31 - 1), None, None, 0)


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


def _worker_main(w, core, env, states, entries):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    parent = os.getppid()
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        pass
    env.cnt[w * LINE + C_CORE] = core
    ctl = env.ctl
    gen = int(ctl[CTL_GEN])
    while True:
        while int(atomic_load(ctl, CTL_GEN)) == gen:
            futex_wait(ctl, CTL_GEN, gen, 0.5)
            if os.getppid() != parent:
                os._exit(3)
        gen = int(atomic_load(ctl, CTL_GEN))
        if ctl[CTL_CMD] == CMD_EXIT:
            os._exit(0)
        if w < ctl[CTL_NACTIVE]:
            d = int(ctl[CTL_DESIGN])
            try:
                entries[d](states[d], env, w, w)
            except Exception:
                env.cnt[w * LINE + C_STATUS] = 2
        atomic_add(ctl, CTL_DONE, 1)


class Pool:
    """`n` forked workers parked on the arena's generation word."""

    def __init__(self, n, env, states, entries, cores=None):
        self.env = env
        self.n = n
        self.cores = cores or allowed_cores()
        _raise_fd_limit(n)
        ctx = mp.get_context("fork")
        env.ctl[CTL_GEN] = 0
        env.ctl[CTL_CMD] = 0
        gc.collect()
        gc.freeze()      # forked children then leave the heap's pages shared
        self.procs = []
        try:
            for w in range(n):
                core = self.cores[w % len(self.cores)]
                p = ctx.Process(target=_worker_main, name="iommu-stress-w%d" % w,
                                args=(w, core, env, states, entries), daemon=True)
                p.start()
                self.procs.append(p)
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

    def wait_for(self, cond, deadline, poll=0.02):
        """Wait until cond() holds; raise if a worker dies or time runs out."""
        sentinels = [p.sentinel for p in self.procs]
        while not cond():
            if time.monotonic() > deadline:
                raise Watchdog()
            ready = mp.connection.wait(sentinels, timeout=poll)
            if ready:
                d = self.dead()
                if d:
                    raise WorkerDied(*d)

    def sleep(self, seconds):
        """Sleep, watching for dead workers."""
        end = time.monotonic() + seconds
        sentinels = [p.sentinel for p in self.procs]
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            if mp.connection.wait(sentinels, timeout=min(left, 0.05)):
                d = self.dead()
                if d:
                    raise WorkerDied(*d)

    def start_point(self, design_index, nactive):
        ctl = self.env.ctl
        ctl[CTL_PHASE] = PH_WAIT
        ctl[CTL_ABORT] = 0
        ctl[CTL_ATTACHED] = 0
        ctl[CTL_DONE] = 0
        ctl[CTL_NACTIVE] = nactive
        ctl[CTL_DESIGN] = design_index
        ctl[CTL_CMD] = CMD_RUN
        atomic_add(ctl, CTL_GEN, 1)
        futex_wake(ctl, CTL_GEN)

    def close(self, timeout=2.0):
        """Stop every worker; kill the ones that do not exit in time."""
        ctl = self.env.ctl
        ctl[CTL_CMD] = CMD_EXIT
        ctl[CTL_ABORT] = 1
        ctl[CTL_PHASE] = PH_STOP
        atomic_add(ctl, CTL_GEN, 1)
        futex_wake(ctl, CTL_GEN)
        end = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, end - time.monotonic()))
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
        for p in self.procs:
            p.join(1.0)
        self.procs = []


def _raise_fd_limit(n):
    """Each worker costs the parent one descriptor (its sentinel)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
