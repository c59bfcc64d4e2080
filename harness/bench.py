"""The bench: one arena, the compiled loops and one pool of workers for a
set of designs; a window in, raw counters out.

Constructing a Bench only computes the arena's layout.  `open` makes the
segment, binds every design's state (one allocator instance per design and
domain), calibrates the cycle counter and compiles (or loads) every loop
before any worker is forked; the pool is forked at the first window, with
the workers it needs, and grows with the windows' thread counts.  A
relaunch makes a new launch of the bench: a fresh segment, fresh workers
(sweep.py spreads a point's windows over launches).  After every window
each worker has unmapped all it held and the last one out has drained the
flush queues; the allocator must then be back to its fresh state and the
page tables empty with no stale IOTLB entry, or the window fails.  What a
window measured leaves the bench as a `Raw`, copies of the counters, which
`readout.py` turns into figures.
"""
import contextlib
import functools
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass

import numpy as np

import allocators
from allocators import Params
from harness import abi, compose, dma, entries, loop, numa, placement, readout, signals
from harness.entries import compile_notice, compile_record
from harness.abi import (CTL_ATTACHED, CTL_CMD, CTL_DONE, CTL_ERR, CTL_GEN, CTL_PHASE,
                         CTL_PRODUCERS_LEFT, CTL_ROGUE_PROBES, CTL_ROGUE_READY, CTL_T_MEASURE,
                         CTL_T_STOP, LINE, PH_WAIT, STATUS_RAN)
from harness.arena import Arena, other_runs, private
from harness.config import load_profile
from harness.disturbance import Snapshot, StallWatch
from harness.errors import UsageError
from harness.pool import (HelperDied, Pool, Watchdog, WorkerDied, allowed_cores, child_setup,
                          run_in_children)
from harness.rogue import rogue_loop
from hwmodel import hist, iommu
from hwmodel import locks as lockmod
from hwmodel.cpu import calibrate, clock_read_cost, read_cycles, stamp_cost

ATTACH_TIMEOUT = 60.0        # seconds for the active workers to reach the start line
GRACE = 10.0                 # seconds after the window for every worker to finish
TRIM_PERIOD_MS = 100         # IOVA_DEPOT_DELAY (drivers/iommu/iova.c, 6.7+)
PHASE_EVERY = 16             # loop iterations between two looks at the clock
# The parent looks at the workers' live counters this often in a window, to
# see a worker stopped or starved: a few words read ten times a second cost
# the workers nothing they would notice, and show a stall of 0.2 s.
STALL_LOOK_S = 0.1
ROGUE_STOP_S = 5.0           # for the rogue device to end after the window
# windows a point gets whose rogue device the scheduler kept off every core:
# on a loaded machine with more busy processes than cores it can wait out a
# short window whole, and the point is measured again rather than lost
ROGUE_TRIES = 3


class PointFailed(Exception):
    """A point could not be measured (a worker died, a check failed...)."""


class RogueStarved(PointFailed):
    """The rogue device never probed in the window: it did not get a core."""


@dataclass
class Raw:
    """What one window left in shared memory, copied out: the counters of
    its workers and of the design's state, untouched by any arithmetic."""
    design: object
    threads: int
    consumers: int
    cycles_per_ns: float
    lock_timing: int                  # 0 off, n: one acquisition in n timed
    ctl: np.ndarray                   # the control words after the window
    cnt: np.ndarray                   # abi.COUNTERS of the active workers
    steps: np.ndarray                 # abi.STEPS of the active workers
    io_stats: np.ndarray              # (workers, LINE): hwmodel/iommu.py S_*
    exp: np.ndarray                   # (workers, dma.EXP_WORDS): exposure histograms
    fq_meta: np.ndarray               # (domains, LINE): dma.M_*
    alloc_locks: list                 # per domain: lockmod.class_stats
    fq_locks: list                    # lockmod.class_stats of the flush queues' locks
    alloc_stats: np.ndarray           # (workers, len(STATS)): summed over domains
    footprint: dict                   # summed over domains
    series: list = None               # --diag: samples of the window, once a second
    longest_stall_s: list = None      # per worker: the longest stretch without progress
    concurrent_runs: list = None      # pids of other runs measuring on the machine
    rogue: bool = False
    cores: int = 1                    # cores the workers may run on
    device_modelled: bool = False     # the device's time per I/O is waited for
    hypercalls: bool = False          # maps and unmaps are hypercalls (PVDMA)
    preemptions: list = None          # per busy process (workers, then the rogue device)
    run_delay_ns: list = None         # ... the time each waited for a CPU
    clock_read_cycles: float = 0.0    # what one read of the cycle counter costs
    stamp_cycles: float = 0.0         # what one in-order read (--diag's steps) costs
    steal_ns: float = 0.0             # the hypervisor's, on those cores
    other_load: dict = None           # the machine's other load (disturbance.Snapshot.since)
    lat: np.ndarray = None            # (workers, dma.LAT_WORDS): --diag's map and unmap
                                      # latency histograms
    alloc_lock_hists: list = None     # per lock class: lockmod.class_hists, all domains
    fq_lock_hists: list = None        # ... of the flush queues' locks
    record_cycles: float = 0.0        # what recording one value in a histogram costs
    edges: np.ndarray = None          # (workers, 2, abi.EDGE_WORDS): --diag's counts as each
                                      # worker's window opened and closed


def consumers(threads, fraction):
    """Workers that only unmap, out of `threads`: at least one as soon as the
    fraction asks for any and there are two workers, never all of them."""
    if fraction <= 0 or threads < 2:
        return 0
    return min(threads - 1, max(1, int(round(threads * fraction))))


@contextlib.contextmanager
def _buildable(design):
    """An allocator refusing the sizes it is asked to be built with (its
    layout or init raises ValueError) is the user's error, said in a line."""
    try:
        yield
    except ValueError as e:
        raise UsageError("design %s cannot be built: %s" % (design.name, e)) from None


def _refuse_impossible(designs, params, sizes):
    """A design under which some request size drawn can never be placed is
    refused before anything is built: its figure would count failures."""
    drawn = [pages for pages, weight in sizes if weight > 0]
    for d, p in zip(designs, params):
        why = allocators.refusal(d.module(), p, drawn)
        if why:
            raise UsageError("design %s can never map a buffer: %s" % (d.name, why))


def size_table(sizes, seed):
    """SIZE_TABLE request sizes with the configured weights, in a fixed
    shuffled order, so that a random index draws from the distribution."""
    pages = np.array([p for p, _ in sizes], dtype=np.int64)
    w = np.array([x for _, x in sizes], dtype=float)
    share = w / w.sum() * abi.SIZE_TABLE
    counts = np.floor(share).astype(int)
    # hand the rounding remainder to the largest fractions
    for i in np.argsort(-(share - counts))[:abi.SIZE_TABLE - counts.sum()]:
        counts[i] += 1
    table = np.repeat(pages, counts)
    np.random.default_rng(seed).shuffle(table)
    return table


class Bench:
    def __init__(self, opts, designs, say=None):
        self.opts = opts
        self.say = say or (lambda line: None)      # a line as each phase starts
        self.designs = designs
        self.max_threads = max(opts["threads"])
        self.placement = placement.choose(opts, allowed_cores())
        self.cores = self.placement.order
        if self.placement.node is not None:
            numa.check(self.placement.node)
        self.profile = load_profile(opts["profile"])
        # --lock-timing times every hold; --diag one in DIAG_SAMPLE, so
        # that diagnostics barely move the figures they explain
        self.lock_timing = 1 if opts["lock_timing"] else (abi.DIAG_SAMPLE if opts["diag"] else 0)
        # the latency histograms of --diag and lock timing: off only to
        # measure what they cost (benchmarks/histogram_cost.py)
        self.histograms = True
        n = self.max_threads
        self.ndomains = opts["domains"]
        self.ncpus_fq = n if any(d.flush == "percpu" for d in designs) else 1
        self.params = [self._params(d) for d in designs]
        specs = abi.layout(n)
        specs += dma.layout(n, self.ndomains, opts["pages"], self.ncpus_fq, opts["tlb_entries"],
                            opts["tlb_ways"], single=any(d.flush == "single" for d in designs))
        specs += [("fq.lock." + name, np.int64, shape)
                  for name, shape in lockmod.layout(len(self._fq_classes()), n,
                                                    len(dma.FQ_LOCK_CLASSES),
                                                    hist=bool(self.lock_timing))]
        if self.lock_timing:
            # one set of the allocators' lock histograms, shared by every
            # domain and design (one design runs at a time)
            ncls = max(len(d.module().LOCK_CLASSES) for d in designs)
            specs.append(("lock.hist", np.int64, (lockmod.hist_words(ncls, n),)))
        for i, (d, p) in enumerate(zip(designs, self.params)):
            with _buildable(d):
                specs += compose.stacked_specs(d.module(), p, self._prefix(i), self.ndomains)
        # after the layouts: a state that cannot be built at all says so first
        _refuse_impossible(designs, self.params, opts["sizes"])
        self.specs = specs
        self.arena = Arena(specs)
        self.pool = None
        self._rogue = None
        self.env = None
        self.stacked = []
        self.states = []
        self.cycles_per_ns = None
        self.clock_read_cycles = 0.0
        self.stamp_cycles = 0.0
        self.record_cycles = 0.0
        self.timings = {"compile_s": 0.0, "fork_s": 0.0}
        self.runs_warned = set()      # other runs already named on stderr
        self.launches = 1             # segments and pools this bench has had (relaunch)
        self.forks = []               # (workers, seconds) of each fork of workers

    def _params(self, d):
        o = self.opts
        n = self.max_threads
        # ranges alive at once: in flight, plus those waiting in flush queues
        deferred = {"batched": dma.HIGH_WATER_MARK,
                    "percpu": self.ncpus_fq * dma.IOVA_FQ_SIZE,
                    "single": dma.IOVA_SINGLE_FQ_SIZE}.get(d.flush, 0)
        return Params(pages=o["pages"], nworkers=n, ncpus=n, boundary=o["boundary"],
                      max_live=n * o["depth"] + deferred + 64, variant=d.variant,
                      mag_size=o["mag_size"])

    @staticmethod
    def _prefix(i):
        return "d%d." % i

    def _fq_classes(self):
        return dma.fq_lock_classes(self.ndomains, self.ncpus_fq)

    # ------------------------------------------------------------ life

    def open(self):
        try:
            # a signal here is taken once the segment exists and close()
            # can remove it
            with signals.deferred():
                self.arena.create()
            self._bind_node()
            self._bind()
            self.cycles_per_ns = calibrate()
            self.calibrate_reads()
            t0 = time.perf_counter()
            self._compile_ahead()
            self._compile()
            self.timings["compile_s"] = time.perf_counter() - t0
            signals.check()
        except BaseException:
            self.close()
            raise
        return self

    def calibrate_reads(self):
        """What a read of the cycle counter, a stamp and a histogram record
        cost, measured in this process before any worker is forked.  Taken
        again before each window, in the parent beside parked workers, they
        came out larger and the breakdown's named share of the fast designs
        fell by 5 to 10 points on an idle machine (docs/performance.md),
        so they are taken once."""
        self.clock_read_cycles = clock_read_cost()
        self.stamp_cycles = stamp_cost()
        self.record_cycles = hist.record_cost()

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        try:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
        finally:
            self.arena.unlink()

    def relaunch(self):
        """A new launch: a new segment (fresh pages, wherever the kernel
        puts them now) bound to the same compiled loops, and new workers
        at the next window, as many as it needs.  Two launches of the same bench differ by more
        than two windows of one launch do (docs/performance.md), so a
        figure that is to stand for the machine, not for one launch, is
        measured over several."""
        self.say("launching anew: a fresh segment, fresh workers")
        with signals.deferred():
            if self.pool is not None:
                self.pool.close()
                self.pool = None
            old, self.arena = self.arena, Arena(self.specs)
            old.unlink()
            self.arena.create()
        self._bind_node()
        self._bind()
        self.launches += 1

    def _bind_node(self):
        """--node: the segment's memory on that node, before the first
        touch places a page."""
        if self.placement.node is not None:
            name = next(iter(self.arena.offsets))
            numa.bind_range(self.arena.views[name].ctypes.data - self.arena.offsets[name],
                            self.arena.size, self.placement.node)

    def _bind(self, views=None):
        v = views or self.arena.views
        fq_lk = lockmod.Locks(v["fq.lock.word"], v["fq.lock.qnode"], v["fq.lock.stats"],
                              v["fq.lock.cfg"], v["ctl"], v["fq.lock.hist"])
        self.env = dma.make(v, fq_lk)
        o = self.opts
        self.stacked = []
        self.states = []
        for i, (d, p) in enumerate(zip(self.designs, self.params)):
            with _buildable(d):
                sts, each = compose.bind_stacked(d.module(), p, v, self._prefix(i), self.ndomains,
                                                 self.env.ctl, o["lock"], o["spin_bound"],
                                                 v.get("lock.hist"))
            self.stacked.append(sts)
            self.states.append(each)
        # per design, its loop of each mode (loop.MODE_*), --diag's or the plain one
        self.entries = [tuple(getattr(entries.of(d.allocator),
                                      entries.entry_name(d.flush, k, bool(o["diag"])))
                              for k in range(len(loop.MODES)))
                        for d in self.designs]

    def mode(self, i, threads):
        """The loop.MODE_* of design i's workers at `threads` workers."""
        o = self.opts
        if o["premapped"] or self.designs[i].premapped:
            return loop.MODE_PREMAPPED
        if consumers(threads, o["unmap_fraction"]):
            return loop.MODE_HANDOFF
        return loop.MODE_RING

    def _loops(self):
        """(design, mode) of every loop the run's points need."""
        return sorted({(i, self.mode(i, t)) for i in range(len(self.designs))
                       for t in self.opts["threads"]})

    def _uncompiled(self):
        """The loops the run needs that are not in the on-disk cache yet:
        (design, mode), one per loop (designs of one allocator and flush
        policy share theirs, unless its variants lay their states out
        apart)."""
        todo, seen = [], set()
        for i, k in self._loops():
            entry, sts = self.entries[i][k], self.stacked[i]
            key = (entry, entry.typeof_pyval(sts))
            if key not in seen and not entries.cached(entry, (sts, self.env, 0, 0)):
                todo.append((i, k))
            seen.add(key)
        return todo

    def _compile_ahead(self):
        """Compile the loops missing from the cache in child processes, as
        many at once as there are cores, saying so: a new user's first
        sweep waits for them.  Only the machine code is then loaded here,
        for two reasons.  A signal that stops the run mid-compile lands in
        this process, which only waits, and the children are killed: one
        raised through numba's compiler can leave LLVM's objects half made,
        and crash the interpreter on its way out.  And numba's compiler
        leaves some 400 MiB of LLVM's state in the process that ran it,
        which 1024 forked workers would map (and partly copy).  A failure in
        a child shows again, with its message, when this process loads."""
        todo = self._uncompiled()
        if not todo:
            return
        names = ["%s (%s%s)" % (self.designs[i].spec.partition("@")[0], loop.MODES[k],
                                ", --diag" if self.opts["diag"] else "")
                 for i, k in todo]
        parallel = min(len(todo), len(self.cores))
        compile_notice(names, parallel)
        took = run_in_children([functools.partial(self._compile_alone, i, k) for i, k in todo],
                               parallel)
        compile_record(names, took)

    def _compile_alone(self, i, k):
        """`_compile_one` in a child, over a private copy of the arena's
        arrays: children compiling at once would otherwise share, and reset
        under each other, one set of control words."""
        self._bind(private(self.specs))
        entry, sts = self.entries[i][k], self.stacked[i]
        with entries.compile_lock(entry, (sts, self.env, 0, 0)):
            self._compile_one(i, k)

    def _compile_one(self, i, k):
        """Compile (or load) design i's loop of mode k: called with the
        abort word set it returns at once.  Its reset and check are loaded
        too, so that the first point pays for nothing the others do not."""
        ctl = self.env.ctl
        self.reset(i, 1)
        ctl[lockmod.CTL_ABORT] = 1
        self.entries[i][k](self.stacked[i], self.env, 0, 0)
        ctl[lockmod.CTL_ABORT] = 0
        problems = self.check(i)
        if problems:
            raise RuntimeError("%s: fresh state fails its check: %s"
                               % (self.designs[i].name, "; ".join(problems[:3])))

    def _compile(self):
        """Every loop loaded (or, a child having failed, compiled) before
        the workers are forked; a signal waits for the end of a loop's load,
        a second or so, not to cut numba short."""
        ctl = self.env.ctl
        for i, k in self._loops():
            self.say("compiling %s" % self.designs[i].name)
            with signals.deferred():
                self._compile_one(i, k)
        if self.opts["rogue_device"]:
            with signals.deferred():
                ctl[lockmod.CTL_ABORT] = 1
                rogue_loop(self.env)
        ctl[:] = 0

    def start_workers(self, threads=None):
        """Workers enough for a window of `threads` (default: the run's
        most): the pool is forked at the first window and grows with the
        thread counts, so that a relaunch forks what its windows need."""
        n = threads or self.max_threads
        if self.pool is not None and self.pool.n >= n:
            return
        have = self.pool.n if self.pool is not None else 0
        self.say("starting %d workers" % (n - have))
        t0 = time.perf_counter()
        with numa.bound(self.placement.node):
            if self.pool is None:
                self.pool = Pool(n, self.env, self.arena.views["bell"],
                                 self.stacked, self.entries, self.cores, self.placement.pinned)
            else:
                self.pool.grow(n)
        took = time.perf_counter() - t0
        self.timings["fork_s"] += took
        self.forks.append((n - have, took))
        signals.check()

    def relaunch_cost(self, threads):
        """Seconds a relaunch for windows of `threads` workers would spend
        forking them (None before any fork): at the best rate a worker
        took so far, the larger forks' (a pool's set-up, a collection of
        the heap, weighs on a fork of one worker)."""
        if not self.forks:
            return None
        return min(took / n for n, took in self.forks) * threads

    def _abandon_pool(self):
        """A window that failed leaves workers in an unknown state: replace them."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    # ----------------------------------------------------------- a window

    def _cycles(self, ns):
        return int(ns * self.cycles_per_ns)

    def reset(self, i, threads):
        """Design i's state fresh, the run configuration packed for a
        window of `threads` workers, every counter zero."""
        o = self.opts
        d, p = self.designs[i], self.params[i]
        mod = d.module()
        preemptible = self.busy(threads) > len(self.cores)
        # --diag counts each worker's contended waits whole, any lock
        waited = abi.CTL_WAITED if o["diag"] else 0
        for st in self.states[i]:
            mod.init(st, p)
            lockmod.init(st.lk, o["lock"], mod.locks(p), o["spin_bound"], self.lock_timing,
                         preemptible, self.histograms, waited)
        env = self.env
        lockmod.init(env.fq.lk, o["lock"], self._fq_classes(), o["spin_bound"], self.lock_timing,
                     preemptible, self.histograms, waited)
        pr = self.profile
        huge = o["huge"] or d.huge
        iommu.init(env.io, self.ndomains, p.pages, o["tlb_entries"], o["tlb_ways"],
                   self._cycles(pr.inv_page_ns), self._cycles(pr.inv_domain_ns),
                   self._cycles(pr.pte_write_ns), self._cycles(pr.map_sync_ns),
                   self._cycles(pr.walk_ns) if o["iotlb_walks"] else 0, huge)
        dma.init(env)
        env.cnt[:] = 0
        env.steps[:] = 0
        env.edges[:] = 0
        env.hand[:] = 0
        premapped = o["premapped"] or d.premapped
        ncons = 0 if premapped else consumers(threads, o["unmap_fraction"])
        abi.pack(env.cfg,
                 depth=o["depth"], check=o["check"],
                 limit=0 if mod.LIMIT_IS_MASK else p.pages - 1,
                 translate=mod.TRANSLATES, seed=o["seed"],
                 flush=dma.FLUSH_NAMES.index(d.flush), ndomains=self.ndomains,
                 device_cycles=self._cycles(pr.device_ns if o["device_ns"] is None
                                            else o["device_ns"]),
                 hypercall_cycles=self._cycles(pr.hypercall_ns if o["hypercall_ns"] is None
                                               else o["hypercall_ns"]) if mod.TRANSLATES else 0,
                 premapped=premapped, consumers=ncons, rogue=o["rogue_device"],
                 fq_timeout_cycles=self._cycles(dma.TIMEOUT_MS.get(d.flush, 0) * 1e6),
                 ncpus=self.ncpus_fq, pages=p.pages,
                 trim_cycles=self._cycles(TRIM_PERIOD_MS * 1e6), diag=o["diag"],
                 outlier_cycles=self._cycles(abi.SAMPLE_OUTLIER_NS),
                 warmup_cycles=self._cycles(o["warmup"] * 1e9),
                 window_cycles=self._cycles(o["duration"] * 1e9), phase_every=PHASE_EVERY,
                 dma_passes=o["dma_passes"],
                 slot_pages=loop.HUGE_SLOT_PAGES if huge else loop.PAGES_PER_SLOT,
                 lat_hist=int(self.histograms))
        env.sizes[:] = size_table(o["sizes"], o["seed"])
        # before anything is started: a rogue device forked now must not see
        # the last window's stop.  The parked workers' futex word and
        # command stay as they are.
        ctl = env.ctl
        keep = ctl[CTL_GEN], ctl[CTL_CMD]
        ctl[:] = 0
        ctl[CTL_GEN], ctl[CTL_CMD] = keep
        ctl[CTL_PHASE] = PH_WAIT
        ctl[CTL_PRODUCERS_LEFT] = threads - ncons

    def _start_rogue(self):
        if not self.opts["rogue_device"]:
            return None
        p = mp.get_context("fork").Process(target=_rogue_main, args=(self.env,), daemon=True)
        with signals.deferred():
            p.start()
            self._rogue = p
        return p

    def window(self, i, threads):
        """One window of design i at `threads` workers, measured again
        while its rogue device was starved.  Raises PointFailed."""
        for attempt in range(1, ROGUE_TRIES + 1):
            try:
                return self._window(i, threads)
            except RogueStarved as e:
                if attempt == ROGUE_TRIES:
                    raise PointFailed("%s, in %d windows" % (e, ROGUE_TRIES)) from None
                print("iommu-stress: warning: %s; measured again" % e, file=sys.stderr)

    def _window(self, i, threads):
        self.start_workers(threads)
        d = self.designs[i]
        self.reset(i, threads)
        ctl = self.env.ctl
        rogue = None
        rogue_killed = False
        runs = self._other_runs(set())
        where = "%s at %d threads" % (d.name, threads)
        try:
            self.say("%s: warm-up" % where)
            rogue = self._start_rogue()
            if rogue is not None:
                self.pool.watch_helper(rogue, "the rogue device")
            self.pool.start_point(i, self.mode(i, threads), threads)
            self._wait_start(d, threads)
            t0, t1 = self._window_times()
            busy = [p.pid for p in self.pool.procs[:threads]] + ([rogue.pid] if rogue else [])
            self.pool.sleep(t0 - time.perf_counter())
            self.say("%s: measuring" % where)
            before = Snapshot(busy, self.cores)
            series, stalls = self._watch_window(i, threads, t0, t1)
            disturbed = Snapshot(busy, self.cores).since(before)
            self.pool.wait_for(lambda: ctl[CTL_DONE] >= threads,
                               time.monotonic() + GRACE + 0.01 * threads, poll=0.005)
        except WorkerDied as e:
            self._abandon_pool()
            raise PointFailed("%s at %s, %d threads" % (e, d.name, threads)) from None
        except Watchdog:
            self._abandon_pool()
            raise PointFailed("watchdog: workers of %s at %d threads did not finish "
                              "within %.0f s of the window's end"
                              % (d.name, threads, GRACE)) from None
        finally:
            rogue_killed = self._stop_rogue()
        signals.check()
        if rogue is not None:
            failed = self._rogue_failed(rogue, rogue_killed)
            if failed:
                raise PointFailed("%s at %s, %d threads" % (failed, d.name, threads))
            if not ctl[CTL_ROGUE_PROBES] and self.env.recent[dma.R_INDEX]:
                raise RogueStarved("the rogue device never probed in the window at %s, "
                                   "%d threads: it waited %.0f ms of the %.0f ms for a core "
                                   "(%d busy processes on %d cores)"
                                   % (d.name, threads, disturbed[1][-1] / 1e6,
                                      (t1 - t0) * 1e3, self.busy(threads), len(self.cores)))
        if ctl[CTL_ERR]:
            raise PointFailed(readout.ownership_error(ctl, d.name, threads))
        bad = np.flatnonzero(self.env.cnt["status"][:threads] != STATUS_RAN)
        if len(bad):
            raise PointFailed("worker %d of %s at %d threads did not end its loop cleanly"
                              % (bad[0], d.name, threads))
        # the counters before the check, whose own lock traffic would count
        raw = self._raw(i, threads, series, disturbed)
        raw.longest_stall_s = stalls
        raw.concurrent_runs = sorted(self._other_runs(runs))
        problems = self.check(i)
        if problems:
            raise PointFailed("%s at %d threads: state is not fresh after the run: %s"
                              % (d.name, threads, "; ".join(problems[:3])))
        return raw

    def _stop_rogue(self):
        """Reap the rogue device: it stops with the window, within
        ROGUE_STOP_S; on the way out of a failed or stopped window it is
        killed at once.  Whether it had to be killed."""
        rogue, self._rogue = self._rogue, None
        if rogue is None:
            return False
        with signals.deferred():
            if self.pool is not None:
                self.pool.unwatch_helper(rogue)
            if self.env.ctl[CTL_PHASE] == abi.PH_STOP:
                rogue.join(ROGUE_STOP_S)
            if rogue.exitcode is None:
                rogue.kill()
                rogue.join()
                return True
        return False

    def _wait_start(self, d, threads):
        ctl = self.env.ctl
        try:
            self.pool.wait_for(lambda: ctl[CTL_PHASE] != PH_WAIT,
                               time.monotonic() + ATTACH_TIMEOUT)
        except Watchdog:
            self._abandon_pool()
            missing = threads - int(ctl[CTL_ATTACHED])
            who = ("%d of the %d workers" % (missing, threads) if missing > 0
                   else "the rogue device")
            raise PointFailed("%s of %s did not reach the start line within %.0f s"
                              % (who, d.name, ATTACH_TIMEOUT)) from None

    def busy(self, threads):
        """Processes that keep a core busy in a window of `threads` workers."""
        return threads + (1 if self.opts["rogue_device"] else 0)

    def _raw(self, i, threads, series, disturbed):
        d, p = self.designs[i], self.params[i]
        mod = d.module()
        env = self.env
        nstats = len(mod.STATS)
        alloc_stats = np.zeros((threads, nstats), dtype=np.int64)
        footprint = {}
        for st in self.states[i]:
            if nstats:
                # names past a line's worth are kept only by `counters`
                k = min(nstats, allocators.STAT_LINE)
                alloc_stats[:, :k] += st.stats.reshape(-1, allocators.STAT_LINE)[:threads, :k]
            if mod.counters is not None:
                # kept per CPU, not per worker: the readout sums the rows
                for name, v in mod.counters(st).items():
                    alloc_stats[0, mod.STATS.index(name)] += v
            for k, v in mod.footprint(st, p).items():
                footprint[k] = footprint.get(k, 0) + v
        queues = dma.queue_bytes(d.flush, self.ndomains, self.ncpus_fq)
        if queues:
            footprint["flush_queues"] = queues
        return Raw(design=d, threads=threads, consumers=int(env.cfg[0]["consumers"]),
                   cycles_per_ns=self.cycles_per_ns, lock_timing=self.lock_timing,
                   ctl=env.ctl.copy(), cnt=env.cnt[:threads].copy(),
                   steps=env.steps[:threads].copy(),
                   edges=env.edges.reshape(-1, 2, abi.EDGE_WORDS)[:threads].copy(),
                   io_stats=env.io.stats.reshape(-1, LINE)[:threads].copy(),
                   exp=env.exp.reshape(-1, dma.EXP_WORDS)[:threads].copy(),
                   lat=env.lat.reshape(-1, dma.LAT_WORDS)[:threads].copy(),
                   # the domains share their histograms: the first holds all
                   alloc_lock_hists=lockmod.class_hists(self.states[i][0].lk),
                   fq_lock_hists=lockmod.class_hists(env.fq.lk),
                   record_cycles=self.record_cycles,
                   fq_meta=env.fq.meta.reshape(-1, LINE).copy(),
                   alloc_locks=[lockmod.class_stats(st.lk) for st in self.states[i]],
                   fq_locks=lockmod.class_stats(env.fq.lk), alloc_stats=alloc_stats,
                   footprint=footprint, series=series, rogue=bool(self.opts["rogue_device"]),
                   cores=len(self.cores), preemptions=disturbed[0], run_delay_ns=disturbed[1],
                   steal_ns=disturbed[2], other_load=disturbed[3], clock_read_cycles=self.clock_read_cycles,
                   stamp_cycles=self.stamp_cycles,
                   device_modelled=bool(env.cfg[0]["device_cycles"]),
                   hypercalls=bool(env.cfg[0]["hypercall_cycles"]))

    def _window_times(self):
        """The window's deadlines, which the workers keep, on perf_counter's clock."""
        ctl = self.env.ctl
        c, p = read_cycles(), time.perf_counter()
        per_s = self.cycles_per_ns * 1e9
        return (p + (ctl[CTL_T_MEASURE] - c) / per_s, p + (ctl[CTL_T_STOP] - c) / per_s)

    def _watch_window(self, i, threads, t0, end):
        """Sleep through the window, looking at the workers' live counters
        every STALL_LOOK_S.  Returns (with --diag, the window sampled once
        a second: (t, I/Os so far, the wait of each lock class so far);
        each worker's longest stretch without progress, in s)."""
        cnt = self.env.cnt

        def progress():
            # an unmap-only worker's progress is its unmaps
            return cnt["ops_live"][:threads] + cnt["unmaps"][:threads]

        watch = StallWatch(time.perf_counter(), progress())
        series = None
        if self.opts["diag"]:
            series = [(0.0, int(cnt["ops_live"][:threads].sum()), self._lock_waits(i))]
        next_sample = t0 + 1.0
        while True:
            now = time.perf_counter()
            if now >= end:
                return series, watch.end()
            nap = min(STALL_LOOK_S, end - now)
            if series is not None:
                nap = min(nap, max(0.0, next_sample - now))
            self.pool.sleep(nap)
            # the counters stop at the window's end, however late we look
            t = min(time.perf_counter(), end)
            watch.see(t, progress())
            if series is not None and (t >= next_sample or t >= end):
                series.append((t - t0, int(cnt["ops_live"][:threads].sum()), self._lock_waits(i)))
                next_sample += 1.0

    def _other_runs(self, seen):
        """`seen` and the pids of the other runs measuring on this machine
        now; each is named on stderr the first time it is seen."""
        out = set(seen)
        for pid in other_runs():
            out.add(pid)
            if pid not in self.runs_warned:
                self.runs_warned.add(pid)
                print("iommu-stress: warning: another iommu-stress run (pid %d) is measuring "
                      "on this machine: figures are shared with it" % pid, file=sys.stderr)
        return out

    def _rogue_failed(self, rogue, killed):
        """Why the rogue device's counts cannot be trusted, or None: it
        died, did not stop or never started.  (One that probed nothing
        while there were unmapped IOVAs to probe was kept off the cores:
        see RogueStarved.)"""
        ctl = self.env.ctl
        if killed:
            return "the rogue device did not stop within %.0f s of the window's end" % ROGUE_STOP_S
        if rogue.exitcode != 0:
            return str(HelperDied("the rogue device", rogue.exitcode))
        if not ctl[CTL_ROGUE_READY]:
            return "the rogue device never reported ready"
        return None

    def _lock_waits(self, i):
        """{class name: wait cycles so far} of design i's locks and the queues'."""
        return readout.lock_waits(self.designs[i].module().LOCK_CLASSES,
                                  [lockmod.class_stats(st.lk) for st in self.states[i]],
                                  lockmod.class_stats(self.env.fq.lk))

    def check(self, i):
        """The state after every worker unmapped all it held must be fresh."""
        d, p = self.designs[i], self.params[i]
        mod = d.module()
        problems = []
        for k, st in enumerate(self.states[i]):
            if mod.flush_all is not None:
                mod.flush_all(st, 0)
            problems += ["domain %d: %s" % (k, m) for m in mod.check(st, p, [])]
        if mod.TRANSLATES:
            n = np.count_nonzero(self.env.io.pt) + np.count_nonzero(self.env.io.pd)
            if n:
                problems.append("%d page-table entries still present" % n)
            stale = sum(len(iommu.stale_entries(self.env.io, k)) for k in range(self.ndomains))
            if stale:
                problems.append("%d stale IOTLB entries left by the invalidations" % stale)
            n = np.count_nonzero(self.env.own)
            if n:
                problems.append("%d pages still owned" % n)
        return problems


def _rogue_main(env):
    child_setup()
    rogue_loop(env)

