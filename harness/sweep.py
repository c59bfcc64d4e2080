"""Points x repeats over one arena and one pool of workers.

A sweep lays out every design's state in one arena, compiles every loop it
needs in the parent, forks the largest number of workers once, and then
measures points: (design, threads) windows, repeated.  A point's figure is
the median of its repeats.  After every window each worker has unmapped all
it held, and the allocator must be back to its fresh state: a mismatch
fails the point.
"""
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from allocators import Params
from harness import compose, dma
from harness.arena import Arena, clean_stale
from harness.dma import (CTL_ATTACHED, CTL_DONE, CTL_ERR, CTL_ERR_CLAIMANT, CTL_ERR_HOLDER,
                         CTL_ERR_KIND, CTL_ERR_PAGE, CTL_PHASE, CFG_CHECK, CFG_DEPTH,
                         CFG_LIMIT, CFG_PT_PAGES, CFG_SEED, CFG_TRANSLATE, LINE, SIZE_TABLE)
from harness.workers import (C_FAILS, C_OPS, C_OPS_END, C_OPS_START, C_STATUS, ENTRIES,
                             PH_MEASURE, PH_STOP, PH_WARMUP, Pool, Watchdog, WorkerDied,
                             allowed_cores)
from hwmodel import locks as lockmod
from hwmodel.cpu import atomic_store, calibrate

ATTACH_TIMEOUT = 30.0        # seconds for the active workers to reach the start line
GRACE = 10.0                 # seconds after the window for every worker to finish


class PointFailed(Exception):
    """A point could not be measured (a worker died, a check failed...)."""


@dataclass
class Point:
    design: object
    threads: int
    runs: list = field(default_factory=list)
    per_worker_ops: list = field(default_factory=list)
    fails: int = 0
    locks: list = field(default_factory=list)
    alloc_stats: dict = field(default_factory=dict)
    footprint: dict = field(default_factory=dict)
    oversubscribed: bool = False
    error: str = ""

    @property
    def ops_per_sec(self):
        return statistics.median(self.runs) if self.runs else 0.0


def size_table(sizes, seed):
    """SIZE_TABLE request sizes with the configured weights, in a fixed
    shuffled order, so that a random index draws from the distribution."""
    pages = np.array([p for p, _ in sizes], dtype=np.int64)
    w = np.array([x for _, x in sizes], dtype=float)
    counts = np.floor(w / w.sum() * SIZE_TABLE).astype(int)
    # hand the rounding remainder to the largest fractions
    rest = SIZE_TABLE - counts.sum()
    frac = w / w.sum() * SIZE_TABLE - counts
    for i in np.argsort(-frac)[:rest]:
        counts[i] += 1
    table = np.repeat(pages, counts)
    np.random.default_rng(seed).shuffle(table)
    return table


class Sweep:
    def __init__(self, opts, designs):
        self.opts = opts
        self.designs = designs
        self.max_threads = max(opts["threads"])
        self.cores = allowed_cores()
        n = self.max_threads
        self.params = []
        for d in designs:
            self.params.append(Params(
                pages=opts["pages"], nworkers=n, ncpus=n, boundary=opts["boundary"],
                max_live=n * opts["depth"] + 64, depot=d.depot))
        specs = dma.layout(n, opts["pages"])
        for i, (d, p) in enumerate(zip(designs, self.params)):
            specs += compose.specs(d.module(), p, "d%d." % i)
        clean_stale()
        self.arena = Arena(specs)
        self.pool = None
        self.cycles_per_ns = None

    def __enter__(self):
        self.arena.create()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _setup(self):
        v = self.arena.views
        self.env = dma.make(v)
        self.states = []
        for i, (d, p) in enumerate(zip(self.designs, self.params)):
            self.states.append(compose.bind(d.module(), p, v, "d%d." % i, self.env.ctl,
                                            self.opts["lock"], self.opts["spin_bound"]))
        self.entries = [ENTRIES[d.allocator] for d in self.designs]
        self.cycles_per_ns = calibrate()
        self._compile()

    def _compile(self):
        """Compile (or load) every loop in the parent, before forking: a
        loop called with the abort word set returns at once."""
        ctl = self.env.ctl
        ctl[lockmod.CTL_ABORT] = 1
        for entry, st in zip(self.entries, self.states):
            entry(st, self.env, 0, 0)
        ctl[lockmod.CTL_ABORT] = 0
        ctl[CTL_ATTACHED] = 0

    def start_workers(self):
        if self.pool is None:
            self.pool = Pool(self.max_threads, self.env, self.states, self.entries, self.cores)

    def close(self):
        try:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
        finally:
            self.arena.unlink()

    def _reset(self, i, threads):
        d, p, st = self.designs[i], self.params[i], self.states[i]
        mod = d.module()
        mod.init(st, p)
        lockmod.init(st.lk, self.opts["lock"], mod.locks(p), self.opts["spin_bound"])
        env = self.env
        env.cnt[:] = 0
        env.cfg[:] = 0
        env.cfg[CFG_DEPTH] = self.opts["depth"]
        env.cfg[CFG_CHECK] = 1 if self.opts["check"] else 0
        env.cfg[CFG_LIMIT] = p.pages - 1
        env.cfg[CFG_TRANSLATE] = 0 if d.allocator == "direct" else 1
        env.cfg[CFG_SEED] = self.opts["seed"]
        env.cfg[CFG_PT_PAGES] = p.pages
        env.sizes[:] = size_table(self.opts["sizes"], self.opts["seed"])
        for k in (CTL_ERR, CTL_ERR_PAGE, CTL_ERR_HOLDER, CTL_ERR_CLAIMANT, CTL_ERR_KIND):
            env.ctl[k] = 0

    def window(self, i, threads):
        """One measurement of design i at `threads` workers: ops/s and the
        per-worker figures.  Raises PointFailed."""
        self.start_workers()
        d = self.designs[i]
        self._reset(i, threads)
        ctl = self.env.ctl
        pool = self.pool
        try:
            pool.start_point(i, threads)
            pool.wait_for(lambda: ctl[CTL_ATTACHED] >= threads,
                          time.monotonic() + ATTACH_TIMEOUT)
            atomic_store(ctl, CTL_PHASE, PH_WARMUP)
            pool.sleep(self.opts["warmup"])
            atomic_store(ctl, CTL_PHASE, PH_MEASURE)
            t0 = time.perf_counter()
            pool.sleep(self.opts["duration"])
            atomic_store(ctl, CTL_PHASE, PH_STOP)
            t1 = time.perf_counter()
            pool.wait_for(lambda: ctl[CTL_DONE] >= pool.n,
                          time.monotonic() + GRACE + 0.01 * pool.n)
        except WorkerDied as e:
            self._abandon_pool()
            raise PointFailed("%s at %s, %d threads" % (e, d.name, threads)) from None
        except Watchdog:
            self._abandon_pool()
            raise PointFailed("watchdog: workers of %s at %d threads did not finish "
                              "within %.0f s of the window's end"
                              % (d.name, threads, GRACE)) from None
        cnt = self.env.cnt.reshape(-1, LINE)[:threads]
        if ctl[CTL_ERR]:
            raise PointFailed(self._double_mapping(d, threads))
        bad = np.flatnonzero(cnt[:, C_STATUS] != 1)
        if len(bad):
            raise PointFailed("worker %d of %s at %d threads did not end its loop cleanly"
                              % (bad[0], d.name, threads))
        per_worker = (cnt[:, C_OPS_END] - cnt[:, C_OPS_START]).astype(np.int64)
        # statistics before the check, whose own lock traffic would count
        stats = {"locks": self.lock_stats(i), "alloc_stats": self.alloc_stats(i),
                 "footprint": self.footprint(i)}
        problems = self.check(i)
        if problems:
            raise PointFailed("%s at %d threads: allocator state is not fresh after the run: %s"
                              % (d.name, threads, "; ".join(problems[:3])))
        return {"ops_per_sec": float(per_worker.sum() / (t1 - t0)),
                "per_worker_ops": per_worker.tolist(),
                "fails": int(cnt[:, C_FAILS].sum()),
                "ops_total": int(cnt[:, C_OPS].sum()),
                "seconds": t1 - t0, **stats}

    def _double_mapping(self, d, threads):
        ctl = self.env.ctl
        kind = "double mapping" if ctl[CTL_ERR_KIND] == 1 else "unmap of a page not held"
        return ("%s of page %d in %s at %d threads: held by worker %d, claimed by worker %d"
                % (kind, ctl[CTL_ERR_PAGE], d.name, threads,
                   ctl[CTL_ERR_HOLDER] - 1, ctl[CTL_ERR_CLAIMANT] - 1))

    def check(self, i):
        """The state after every worker unmapped all it held must be fresh."""
        d, p, st = self.designs[i], self.params[i], self.states[i]
        mod = d.module()
        if hasattr(mod, "flush_all"):
            mod.flush_all(st, 0)
        problems = list(mod.check(st, p, []))
        if d.allocator != "direct":
            n = np.count_nonzero(self.env.pt)
            if n:
                problems.append("%d page-table entries still present" % n)
            n = np.count_nonzero(self.env.own)
            if n:
                problems.append("%d pages still owned" % n)
        return problems

    def _abandon_pool(self):
        """A point that failed leaves workers in an unknown state: replace them."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def lock_stats(self, i):
        d, st = self.designs[i], self.states[i]
        out = []
        for name, s in zip(d.module().LOCK_CLASSES, lockmod.class_stats(st.lk)):
            out.append(dict(name=name, **s))
        return out

    def alloc_stats(self, i):
        d, st = self.designs[i], self.states[i]
        names = d.module().STATS
        if not names:
            return {}
        rows = st.stats.reshape(-1, LINE)
        return {n: int(rows[:, k].sum()) for k, n in enumerate(names)}

    def footprint(self, i):
        d, p, st = self.designs[i], self.params[i], self.states[i]
        return d.module().footprint(st, p)

    def measure(self, i, threads, repeats):
        """A point: `repeats` windows; the figure is their median, the
        per-worker split and the statistics are those of the median window."""
        windows = [self.window(i, threads) for _ in range(repeats)]
        pt = Point(self.designs[i], threads, oversubscribed=threads > len(self.cores))
        pt.runs = [r["ops_per_sec"] for r in windows]
        pt.fails = sum(r["fails"] for r in windows)
        med = min(windows, key=lambda r: abs(r["ops_per_sec"] - pt.ops_per_sec))
        pt.per_worker_ops = med["per_worker_ops"]
        pt.locks = med["locks"]
        pt.alloc_stats = med["alloc_stats"]
        pt.footprint = med["footprint"]
        return pt
