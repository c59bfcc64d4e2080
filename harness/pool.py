"""The worker processes: fork once, pin, park, wake, reap.

The parent forks the largest number of workers a sweep asks for.  A worker
pins itself to one core (worker w to the w-th CPU, modulo their number, of
the order harness/placement.py gives the run's CPUs; under `--placement
none` it may run on any of them) and parks in a futex.  For each point the
parent writes the design and the number n of active workers, rings the
doorbells of workers 0..n-1 and wakes them with one FUTEX_WAKE_BITSET: the
parked rest are not woken, which matters when a 1-thread point shares two
cores with 1023 parked processes, and the parent is not preempted halfway
through by the workers it has woken.  A woken worker runs its design's
compiled entry (harness/loop.py) and parks again.
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

from harness import signals
from harness.abi import (CMD_EXIT, CMD_RUN, CTL_ATTACHED, CTL_CMD, CTL_DESIGN, CTL_DONE,
                         CTL_GEN, CTL_NACTIVE, CTL_PHASE, LINE, PH_STOP, PH_WAIT, STATUS_ABORTED)
from hwmodel.cpu import atomic_add, atomic_load
from hwmodel.locks import CTL_ABORT

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
FUTEX_WAIT_BITSET, FUTEX_WAKE_BITSET = 9, 10      # include/uapi/linux/futex.h
FUTEX_BITSET_MATCH_ANY = 0xFFFFFFFF
PR_SET_PDEATHSIG = 1
MODES_MAX = 8                # a design's entries, one per mode: CTL_DESIGN packs both


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


class HelperDied(WorkerDied):
    """A process the bench started beside the workers (the rogue device)
    died: the point fails as for a worker."""

    def __init__(self, name, exitcode):
        Exception.__init__(self, "%s died (%s)" % (name, _describe_exit(exitcode)))
        self.worker = None
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


def child_setup():
    """First thing in a process forked by the run (under signals.deferred):
    it dies with its parent, which alone handles INT, TERM and HUP and
    stops it.  A signal sent to the whole group (Ctrl-C, a closed
    terminal) is not the child's to act on: it would die, or print a
    traceback, and the parent would report a failure that is none.
    Returns the parent's pid, or exits if the parent is already gone."""
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signals.ignore_in_child()
    if os.getppid() != parent:
        os._exit(3)
    return parent


def _worker_main(w, core, env, bell, states, entries):
    """`core`: the CPU the worker is pinned to, or the set of CPUs it may
    run on (not pinned: its core is recorded as -1)."""
    parent = child_setup()
    try:
        os.sched_setaffinity(0, core if isinstance(core, frozenset) else {core})
    except OSError:
        pass
    if isinstance(core, frozenset):
        core = -1
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
        env.cnt[w]["core"] = core
        d, mode = divmod(int(ctl[CTL_DESIGN]), MODES_MAX)
        try:
            entries[d][mode](states[d], env, w, w)
        except Exception:
            # a lock wait that saw the abort word raises out of the loop
            env.cnt[w]["status"] = STATUS_ABORTED
        atomic_add(ctl, CTL_DONE, 1)


class Pool:
    """`n` forked workers, parked until their doorbell in `bell` rings."""

    def __init__(self, n, env, bell, states, entries, cores=None, pin=True):
        self.env = env
        self.bell = bell
        self.n = 0
        self.cores = cores or allowed_cores()
        self._args = (env, bell, states, entries, pin)
        bell[:] = 0
        env.ctl[CTL_CMD] = 0
        env.ctl[CTL_GEN] = 0
        # what a parked worker calls must be compiled here: loading it in
        # every child would cost each one megabytes of private memory
        atomic_load(bell, 0)
        atomic_add(env.ctl, CTL_DONE, 0)
        self.procs = []
        # one epoll set of the workers' sentinels, made once: building a
        # selector of 1024 descriptors at every poll costs the parent
        # milliseconds it does not get back when 1024 workers share 2 cores
        self._watch = selectors.DefaultSelector()
        self.grow(n)

    def grow(self, n):
        """Fork workers up to `n` in all, beside the parked ones: a sweep's
        pool grows with its thread counts, so that a relaunch at a few
        workers forks a few."""
        env, bell, states, entries, pin = self._args
        anywhere = frozenset(self.cores)
        _raise_fd_limit(n)
        ctx = mp.get_context("fork")
        gc.collect()
        gc.freeze()      # forked children then leave the heap's pages shared
        try:
            for w in range(self.n, n):
                core = self.cores[w % len(self.cores)] if pin else anywhere
                p = ctx.Process(target=_worker_main, name="iommu-stress-w%d" % w,
                                args=(w, core, env, bell, states, entries), daemon=True)
                # a signal arriving during the fork is taken once the
                # worker is forked and known (the child inherits the mask)
                with signals.deferred():
                    p.start()
                    self.procs.append(p)
                    self._watch.register(p.sentinel, selectors.EVENT_READ, w)
                    self.n = w + 1
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

    def watch_helper(self, proc, name):
        """Watch helper process `proc` (one started by multiprocessing) as
        the workers are: waits raise HelperDied if it dies, unless it exits
        with status 0 (its work done).  `name` says what it was."""
        self._watch.register(proc.sentinel, selectors.EVENT_READ, (name, proc))

    def unwatch_helper(self, proc):
        try:
            self._watch.unregister(proc.sentinel)
        except (KeyError, ValueError):
            pass

    def _watch_for(self, timeout):
        """Sleep up to `timeout` s, or raise as soon as a worker (or a
        watched helper) dies."""
        end = time.monotonic() + timeout
        while True:
            events = self._watch.select(max(0.0, end - time.monotonic()))
            for key, _ in events:
                if not isinstance(key.data, tuple):
                    p = self.procs[key.data]
                    p.join(1.0)
                    raise WorkerDied(key.data, p.exitcode)
                name, p = key.data
                self.unwatch_helper(p)
                p.join(1.0)
                if p.exitcode != 0:
                    raise HelperDied(name, p.exitcode)
            if not events or time.monotonic() >= end:
                return

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

    def start_point(self, design_index, mode, nactive):
        """Run the loop of design `design_index` in `mode` (its index in
        the design's entries) on workers 0..nactive-1; each adds one to
        CTL_DONE when it is parked again."""
        ctl = self.env.ctl
        ctl[CTL_PHASE] = PH_WAIT
        ctl[CTL_ABORT] = 0
        ctl[CTL_ATTACHED] = 0
        ctl[CTL_DONE] = 0
        ctl[CTL_NACTIVE] = nactive
        ctl[CTL_DESIGN] = design_index * MODES_MAX + mode
        ctl[CTL_CMD] = CMD_RUN
        self._ring(nactive)

    def close(self, timeout=1.0):
        """Stop every worker; kill the ones that have not exited in
        `timeout` s, or at once when a signal stops the run.  Not cut short
        by a signal: one that arrives is taken once every worker is
        reaped."""
        if signals.pending() is not None:
            timeout = 0.0
        with signals.deferred():
            ctl = self.env.ctl
            ctl[CTL_CMD] = CMD_EXIT
            ctl[CTL_ABORT] = 1
            ctl[CTL_PHASE] = PH_STOP
            self._ring(len(self.procs))
            left = set(range(len(self.procs)))
            end = time.monotonic() + timeout
            while left:
                wait = end - time.monotonic()
                if wait <= 0:
                    break
                for key, _ in self._watch.select(wait):
                    self._watch.unregister(key.fileobj)
                    left.discard(key.data)
            for w in left:
                self.procs[w].kill()
            # SIGKILL cannot be refused; on a loaded machine the process may
            # need a while to be scheduled and die, and it must be reaped
            for p in self.procs:
                p.join()
            self.procs = []
            self._watch.close()


def _fork_child(fn):
    """fn() in a forked child (see child_setup); its pid."""
    with signals.deferred():
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                child_setup()
                fn()
                code = 0
            finally:
                os._exit(code)
    return pid


def run_in_children(fns, parallel=1, poll=0.05):
    """Run each fn() in a forked child, at most `parallel` at once, and wait
    for them all: the seconds each took, or None for one that failed.  The
    children ignore INT, TERM and HUP and die with the parent; the parent
    kills and reaps them on any exception, a signal's included, and a child
    ended while the parent is being stopped is that stop, not a failure."""
    took = [None] * len(fns)
    waiting = list(enumerate(fns))
    running = {}                       # pid -> (index, start)
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                k, fn = waiting.pop(0)
                running[_fork_child(fn)] = (k, time.monotonic())
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    k, t0 = running.pop(pid)
                    if os.waitstatus_to_exitcode(status) == 0:
                        took[k] = time.monotonic() - t0
            if running:
                time.sleep(poll)
    except BaseException:
        with signals.deferred():
            for pid in running:
                _kill_child(pid)
        raise
    signals.check()
    return took


def run_in_child(fn):
    """Run fn() in a forked child and wait for it; True if it returned."""
    return run_in_children([fn])[0] is not None


def _kill_child(pid):
    """Kill and reap child `pid`, unless an interrupted wait reaped it."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return
    except ChildProcessError:
        return
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _raise_fd_limit(n):
    """Each worker costs the parent one descriptor (its sentinel)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
