"""Points x repeats over one arena and one pool of workers.

A sweep lays out every design's state in one arena (one allocator instance
per design and domain), compiles every loop it needs in the parent, forks
the largest number of workers once, and then measures points: (design,
threads) windows, repeated.  A point's figure is the median of its repeats.
After every window each worker has unmapped all it held and the last one out
has drained the flush queues; the allocator must then be back to its fresh
state, the page tables empty: a mismatch fails the point.
"""
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from allocators import Params
from harness import compose, dma, workers
from harness.arena import Arena, clean_stale
from harness.config import load_profile
from harness.dma import (CFG_CHECK, CFG_CONSUMERS, CFG_DEPTH, CFG_DEVICE, CFG_DIAG, CFG_FLUSH,
                         CFG_FQ_TIMEOUT, CFG_HYPERCALL, CFG_LIMIT, CFG_NCPUS, CFG_NDOMAINS,
                         CFG_PAGES, CFG_PREMAPPED, CFG_ROGUE, CFG_SEED, CFG_TRANSLATE, CFG_TRIM,
                         CFG_WARMUP, CFG_WINDOW, CTL_ATTACHED, CTL_DONE, CTL_ERR,
                         CTL_ERR_CLAIMANT, CTL_ERR_HOLDER, CTL_ERR_KIND, CTL_ERR_PAGE, CTL_PHASE,
                         CTL_PRODUCERS_LEFT, EXP_BUCKETS, EXP_WORDS, E_COUNT, E_MAX, E_SUM,
                         FLUSH_NAMES, IOVA_FQ_TIMEOUT, LINE, M_FLUSHED_ENTRIES, M_FLUSHES,
                         M_TIMER_FLUSHES, SIZE_TABLE, bucket_upper)
from harness.workers import (C_DEVICE_WAIT, C_FAILS, C_HAND_WAIT, C_OPS, C_OPS_END, C_OPS_START,
                             C_STATUS, C_UNMAPS, CTL_FINISHED, CTL_ROGUE_PROBES, CTL_ROGUE_READY,
                             CTL_ROGUE_STALE, CTL_T_MEASURE, CTL_T_STOP, ENTRIES, PH_WAIT,
                             TRIM_PERIOD_MS, Pool, Watchdog, WorkerDied, allowed_cores,
                             rogue_loop, run_in_child)
from hwmodel import iommu
from hwmodel import locks as lockmod
from hwmodel.cpu import calibrate, read_cycles

ATTACH_TIMEOUT = 60.0        # seconds for the active workers to reach the start line
GRACE = 10.0                 # seconds after the window for every worker to finish
LEAN_PARENT = 64             # sweeps of more workers compile in a child process


class PointFailed(Exception):
    """A point could not be measured (a worker died, a check failed...)."""


@dataclass
class Point:
    design: object
    threads: int
    runs: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    oversubscribed: bool = False

    @property
    def ops_per_sec(self):
        return statistics.median(self.runs) if self.runs else 0.0

    @property
    def median_window(self):
        med = self.ops_per_sec
        return min(self.windows, key=lambda r: abs(r["ops_per_sec"] - med))


def size_table(sizes, seed):
    """SIZE_TABLE request sizes with the configured weights, in a fixed
    shuffled order, so that a random index draws from the distribution."""
    pages = np.array([p for p, _ in sizes], dtype=np.int64)
    w = np.array([x for _, x in sizes], dtype=float)
    share = w / w.sum() * SIZE_TABLE
    counts = np.floor(share).astype(int)
    # hand the rounding remainder to the largest fractions
    for i in np.argsort(-(share - counts))[:SIZE_TABLE - counts.sum()]:
        counts[i] += 1
    table = np.repeat(pages, counts)
    np.random.default_rng(seed).shuffle(table)
    return table


def consumers(threads, fraction):
    """Workers that only unmap, out of `threads`: at least one as soon as the
    fraction asks for any and there are two workers, never all of them."""
    if fraction <= 0 or threads < 2:
        return 0
    return min(threads - 1, max(1, int(round(threads * fraction))))


def percentile(hist, q):
    """The q-th percentile (upper bucket edge) of a histogram."""
    total = hist.sum()
    if total == 0:
        return 0
    idx = int(np.searchsorted(np.cumsum(hist), q * total))
    return bucket_upper(min(idx, len(hist) - 1))


class Sweep:
    def __init__(self, opts, designs):
        self.opts = opts
        self.designs = designs
        self.max_threads = max(opts["threads"])
        self.cores = allowed_cores()
        self.profile = load_profile(opts["profile"])
        # --lock-timing times every acquisition; --diag one in DIAG_SAMPLE,
        # so that diagnostics barely move the figures they explain
        self.lock_timing = 1 if opts["lock_timing"] else (dma.DIAG_SAMPLE if opts["diag"] else 0)
        n = self.max_threads
        nd = opts["domains"]
        self.ndomains = nd
        percpu = any(d.flush == "percpu" for d in designs)
        ncpus_fq = n if percpu else 1
        self.ncpus_fq = ncpus_fq
        self.params = []
        for d in designs:
            # ranges alive at once: in flight, plus those waiting in flush queues
            deferred = {"batched": dma.HIGH_WATER_MARK,
                        "percpu": ncpus_fq * dma.IOVA_FQ_SIZE}.get(d.flush, 0)
            self.params.append(Params(
                pages=opts["pages"], nworkers=n, ncpus=n, boundary=opts["boundary"],
                max_live=n * opts["depth"] + deferred + 64, depot=d.depot,
                mag_size=opts["mag_size"]))
        specs = dma.layout(n, nd, opts["pages"], ncpus_fq, opts["tlb_entries"], opts["tlb_ways"])
        specs += workers.layout(n)
        fq_classes = dma.fq_lock_classes(nd, ncpus_fq)
        specs += [("fq.lock." + name, np.int64, shape)
                  for name, shape in lockmod.layout(len(fq_classes), n, len(dma.FQ_LOCK_CLASSES))]
        for i, (d, p) in enumerate(zip(designs, self.params)):
            for k in range(nd):
                specs += compose.specs(d.module(), p, "d%d.%d." % (i, k))
        clean_stale()
        self.arena = Arena(specs)
        self.pool = None
        self.cycles_per_ns = None
        self.timings = {"compile_s": 0.0, "fork_s": 0.0}

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

    def _fq_locks(self):
        v = self.arena.views
        return lockmod.Locks(v["fq.lock.word"], v["fq.lock.qnode"], v["fq.lock.stats"],
                             v["fq.lock.cfg"], v["ctl"])

    def _setup(self):
        v = self.arena.views
        self.env = dma.make(v, self._fq_locks())
        self.states = []
        for i, (d, p) in enumerate(zip(self.designs, self.params)):
            self.states.append(tuple(
                compose.bind(d.module(), p, v, "d%d.%d." % (i, k), self.env.ctl,
                             self.opts["lock"], self.opts["spin_bound"])
                for k in range(self.ndomains)))
        self.entries = [ENTRIES[d.allocator] for d in self.designs]
        self.cycles_per_ns = calibrate()
        t0 = time.perf_counter()
        if self.max_threads > LEAN_PARENT:
            # numba's compiler leaves some 400 MiB of LLVM's state in the
            # process that ran it, which 1024 forked workers then map (and
            # partly copy): compile in a child that fills the on-disk cache,
            # and load only the machine code here.  A failure there shows
            # again, with its message, when this process compiles itself.
            run_in_child(self._compile)
        self._compile()
        self.timings["compile_s"] = time.perf_counter() - t0

    def _compile(self):
        """Compile (or load) every loop before the workers are forked: a
        loop called with the abort word set returns at once.  The reset and
        the check of each design are loaded here too, so that the first
        point pays for nothing the others do not."""
        ctl = self.env.ctl
        for i, (entry, sts) in enumerate(zip(self.entries, self.states)):
            self._reset(i, 1)
            ctl[lockmod.CTL_ABORT] = 1
            entry(sts, self.env, 0, 0)
            ctl[lockmod.CTL_ABORT] = 0
            problems = self.check(i)
            if problems:
                raise RuntimeError("%s: fresh state fails its check: %s"
                                   % (self.designs[i].name, "; ".join(problems[:3])))
        if self.opts["rogue_device"]:
            ctl[lockmod.CTL_ABORT] = 1
            rogue_loop(self.env)
        ctl[:] = 0

    def start_workers(self):
        if self.pool is None:
            t0 = time.perf_counter()
            self.pool = Pool(self.max_threads, self.env, self.arena.views["bell"], self.states,
                             self.entries, self.cores)
            self.timings["fork_s"] += time.perf_counter() - t0

    def close(self):
        try:
            if self.pool is not None:
                self.pool.close()
                self.pool = None
        finally:
            self.arena.unlink()

    def _ns(self, field_name):
        return self.profile.cycles(field_name, self.cycles_per_ns)

    def _reset(self, i, threads):
        o = self.opts
        d, p = self.designs[i], self.params[i]
        mod = d.module()
        for st in self.states[i]:
            mod.init(st, p)
            lockmod.init(st.lk, o["lock"], mod.locks(p), o["spin_bound"], self.lock_timing)
        env = self.env
        lockmod.init(env.fq.lk, o["lock"], dma.fq_lock_classes(self.ndomains, self.ncpus_fq),
                     o["spin_bound"], self.lock_timing)
        cpn = self.cycles_per_ns
        pr = self.profile
        iommu.init(env.io, self.ndomains, p.pages, o["tlb_entries"], o["tlb_ways"],
                   self._ns("inv_page_ns"), self._ns("inv_domain_ns"), self._ns("pte_write_ns"))
        dma.init(env, self.ndomains, self.ncpus_fq)
        env.own[:] = 0
        env.cnt[:] = 0
        env.hand[:] = 0
        cfg = env.cfg
        cfg[:] = 0
        cfg[CFG_DEPTH] = o["depth"]
        cfg[CFG_CHECK] = 1 if o["check"] else 0
        cfg[CFG_LIMIT] = p.pages - 1
        cfg[CFG_TRANSLATE] = 0 if d.allocator == "direct" else 1
        cfg[CFG_SEED] = o["seed"]
        cfg[CFG_FLUSH] = FLUSH_NAMES.index(d.flush)
        cfg[CFG_NDOMAINS] = self.ndomains
        device = pr.device_ns if o["device_ns"] is None else o["device_ns"]
        hyper = pr.hypercall_ns if o["hypercall_ns"] is None else o["hypercall_ns"]
        cfg[CFG_DEVICE] = int(device * cpn)
        cfg[CFG_HYPERCALL] = int(hyper * cpn)
        premapped = o["premapped"] or d.premapped
        cfg[CFG_PREMAPPED] = 1 if premapped else 0
        cfg[CFG_CONSUMERS] = 0 if premapped else consumers(threads, o["unmap_fraction"])
        cfg[CFG_ROGUE] = 1 if o["rogue_device"] else 0
        cfg[CFG_FQ_TIMEOUT] = int(IOVA_FQ_TIMEOUT * 1e6 * cpn)
        cfg[CFG_NCPUS] = self.ncpus_fq
        cfg[CFG_PAGES] = p.pages
        cfg[CFG_TRIM] = int(TRIM_PERIOD_MS * 1e6 * cpn)
        cfg[CFG_DIAG] = 1 if o["diag"] else 0
        cfg[CFG_WARMUP] = int(o["warmup"] * 1e9 * cpn)
        cfg[CFG_WINDOW] = int(o["duration"] * 1e9 * cpn)
        env.sizes[:] = size_table(o["sizes"], o["seed"])
        for k in (CTL_ERR, CTL_ERR_PAGE, CTL_ERR_HOLDER, CTL_ERR_CLAIMANT, CTL_ERR_KIND,
                  CTL_FINISHED, CTL_ROGUE_PROBES, CTL_ROGUE_STALE, CTL_ROGUE_READY,
                  CTL_T_MEASURE, CTL_T_STOP):
            env.ctl[k] = 0
        # before anything is started: a rogue device forked now must not see
        # the last window's stop
        env.ctl[CTL_PHASE] = PH_WAIT
        env.ctl[CTL_PRODUCERS_LEFT] = threads - cfg[CFG_CONSUMERS]

    def _start_rogue(self):
        if not self.opts["rogue_device"] or self.designs is None:
            return None
        p = mp.get_context("fork").Process(target=_rogue_main, args=(self.env,), daemon=True)
        p.start()
        return p

    def window(self, i, threads):
        """One measurement of design i at `threads` workers: ops/s and the
        per-worker figures.  Raises PointFailed."""
        self.start_workers()
        d = self.designs[i]
        self._reset(i, threads)
        ctl = self.env.ctl
        pool = self.pool
        rogue = None
        series = None
        try:
            rogue = self._start_rogue()
            pool.start_point(i, threads)
            try:
                pool.wait_for(lambda: ctl[CTL_PHASE] != PH_WAIT,
                              time.monotonic() + ATTACH_TIMEOUT)
            except Watchdog:
                self._abandon_pool()
                missing = threads - int(ctl[CTL_ATTACHED])
                who = ("%d of the %d workers" % (missing, threads) if missing > 0
                       else "the rogue device")
                raise PointFailed("%s of %s did not reach the start line within %.0f s"
                                  % (who, d.name, ATTACH_TIMEOUT)) from None
            t0, t1 = self._window_times()
            if self.opts["diag"]:
                series = self._sleep_and_sample(i, threads, t0, t1)
            pool.sleep(t1 - time.perf_counter())
            pool.wait_for(lambda: ctl[CTL_DONE] >= threads,
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
            if rogue is not None:
                rogue.join(5)
                if rogue.exitcode is None:
                    rogue.kill()
                    rogue.join()
        seconds = (ctl[CTL_T_STOP] - ctl[CTL_T_MEASURE]) / self.cycles_per_ns / 1e9
        cnt = self.env.cnt.reshape(-1, LINE)[:threads]
        if ctl[CTL_ERR]:
            raise PointFailed(self._double_mapping(d, threads))
        bad = np.flatnonzero(cnt[:, C_STATUS] != 1)
        if len(bad):
            raise PointFailed("worker %d of %s at %d threads did not end its loop cleanly"
                              % (bad[0], d.name, threads))
        per_worker = (cnt[:, C_OPS_END] - cnt[:, C_OPS_START]).astype(np.int64)
        nprod = threads - int(self.env.cfg[CFG_CONSUMERS])
        # statistics before the check, whose own lock traffic would count
        stats = self._statistics(i, threads, seconds)
        if series is not None:
            stats["series"] = series
            stats["breakdown_ns"] = self._breakdown(stats, threads, seconds,
                                                    int(per_worker.sum()))
            stats["diag"] = {"timing": "on: %s; one I/O in %d timed step by step"
                             % ("every lock acquisition timed" if self.lock_timing == 1 else
                                "one lock hold in %d timed, totals scaled"
                                % self.lock_timing, dma.DIAG_SAMPLE)}
        problems = self.check(i)
        if problems:
            raise PointFailed("%s at %d threads: state is not fresh after the run: %s"
                              % (d.name, threads, "; ".join(problems[:3])))
        if d.allocator != "direct":
            # a window whose check fails raises above: one kept says so
            stats["state_checked"] = "allocator state fresh, page tables empty, no page owned"
        return {"ops_per_sec": float(per_worker.sum() / seconds),
                "per_worker_ops": per_worker[:nprod].tolist(),
                "unmap_workers": threads - nprod,
                "fails": int(cnt[:, C_FAILS].sum()),
                "ops_total": int(cnt[:, C_OPS].sum()),
                "seconds": seconds, **stats}

    def _top_lock_wait(self, i):
        """(class name, total wait cycles) of the lock class waited on most."""
        best = ("", 0)
        mod = self.designs[i].module()
        rows = [lockmod.class_stats(st.lk) for st in self.states[i]]
        for c, name in enumerate(mod.LOCK_CLASSES):
            wait = sum(r[c]["wait_total"] for r in rows)
            if wait > best[1]:
                best = (name, wait)
        for c, r in enumerate(lockmod.class_stats(self.env.fq.lk)):
            if r["wait_total"] > best[1]:
                best = (dma.FQ_LOCK_CLASSES[c], r["wait_total"])
        return best

    def _window_times(self):
        """The window's deadlines, which the workers keep, on perf_counter's clock."""
        ctl = self.env.ctl
        c, p = read_cycles(), time.perf_counter()
        per_s = self.cycles_per_ns * 1e9
        return (p + (ctl[CTL_T_MEASURE] - c) / per_s, p + (ctl[CTL_T_STOP] - c) / per_s)

    def _sleep_and_sample(self, i, threads, t0, end):
        """The window, sampled once a second: ops/s and the top lock's wait."""
        from harness.workers import C_OPS_LIVE
        cnt = self.env.cnt.reshape(-1, LINE)
        self.pool.sleep(t0 - time.perf_counter())
        series = []
        last_t, last_ops = time.perf_counter(), int(cnt[:threads, C_OPS_LIVE].sum())
        last_wait = dict([self._top_lock_wait(i)])
        while True:
            now = time.perf_counter()
            if now >= end:
                return series
            self.pool.sleep(min(1.0, end - now))
            # the counters stop at the window's end, however late we look
            t = min(time.perf_counter(), end)
            ops = int(cnt[:threads, C_OPS_LIVE].sum())
            name, wait = self._top_lock_wait(i)
            series.append({"t": round(t - t0, 3),
                           "ops_per_sec": (ops - last_ops) / (t - last_t),
                           "top_lock": name,
                           "top_lock_wait_ns": (wait - last_wait.get(name, 0)) / self.cycles_per_ns})
            last_t, last_ops, last_wait = t, ops, {name: wait}

    def _breakdown(self, stats, threads, seconds, window_ops):
        """ns per I/O of each step; steps are sampled, invalidation and
        device waits counted in full, the harness is what is left."""
        cpn = self.cycles_per_ns
        diag = self.env.diag.reshape(-1, LINE)[:threads]
        cnt = self.env.cnt.reshape(-1, LINE)[:threads]
        ios = self.env.io.stats.reshape(-1, LINE)[:threads]
        maps = max(1, int(diag[:, dma.B_MAPS].sum()))
        unmaps = max(1, int(diag[:, dma.B_UNMAPS].sum()))
        ops_all = max(1, int(cnt[:, C_OPS].sum()))
        inv_wait = ios[:, iommu.W_INV_WAIT].sum()
        inv_queue = ios[:, iommu.W_INV_QUEUE].sum()
        nprod = threads - int(self.env.cfg[CFG_CONSUMERS])
        out = {
            "allocate": diag[:, dma.B_ALLOC].sum() / maps / cpn,
            "page_table": diag[:, dma.B_PTE].sum() / maps / cpn,
            "invalidation_own": (inv_wait - inv_queue) / ops_all / cpn,
            "invalidation_queued": inv_queue / ops_all / cpn,
            "free": diag[:, dma.B_FREE].sum() / unmaps / cpn,
            "device": cnt[:, C_DEVICE_WAIT].sum() / ops_all / cpn,
            "lock_wait": sum(l["wait_ns_total"] for l in stats["locks"]) / ops_all,
        }
        # wall time per I/O of one mapping worker
        total = seconds * 1e9 * nprod / max(1, window_ops)
        spent = sum(v for k, v in out.items() if k != "lock_wait")
        out["harness"] = max(0.0, total - spent)
        out["total"] = total
        return {k: float(v) for k, v in out.items()}

    def _double_mapping(self, d, threads):
        ctl = self.env.ctl
        kind, page = int(ctl[CTL_ERR_KIND]), int(ctl[CTL_ERR_PAGE])
        holder, claimant = int(ctl[CTL_ERR_HOLDER]) - 1, int(ctl[CTL_ERR_CLAIMANT]) - 1
        where = "in %s at %d threads" % (d.name, threads)
        if kind == 3:
            return ("page %d mapped again by worker %d before the invalidation of its unmap "
                    "completed, %s" % (page, claimant, where))
        if kind == 1:
            return ("double mapping of page %d %s: held by worker %d, claimed by worker %d"
                    % (page, where, holder, claimant))
        return ("unmap of page %d %s by worker %d, which did not hold it (owner word %d)"
                % (page, where, claimant, holder + 1))

    def check(self, i):
        """The state after every worker unmapped all it held must be fresh."""
        d, p = self.designs[i], self.params[i]
        mod = d.module()
        problems = []
        for k, st in enumerate(self.states[i]):
            if hasattr(mod, "flush_all"):
                mod.flush_all(st, 0)
            problems += ["domain %d: %s" % (k, m) for m in mod.check(st, p, [])]
        if d.allocator != "direct":
            n = np.count_nonzero(self.env.io.pt)
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

    def _statistics(self, i, threads, seconds):
        d, sts = self.designs[i], self.states[i]
        mod = d.module()
        cpn = self.cycles_per_ns
        env = self.env
        # lock classes: the allocator's, summed over domains, then the queues'
        locks = []
        per_dom = [lockmod.class_stats(st.lk) for st in sts]
        for c, name in enumerate(mod.LOCK_CLASSES):
            agg = _sum_lock_rows([rows[c] for rows in per_dom])
            locks.append(dict(name=name, **agg))
        if d.flush in ("batched", "percpu"):
            fqs = lockmod.class_stats(env.fq.lk)
            c = 0 if d.flush == "batched" else 1
            locks.append(dict(name=dma.FQ_LOCK_CLASSES[c], **fqs[c]))
        for l in locks:
            for k in ("wait", "hold"):
                for suffix in ("total", "max", "min"):
                    v = l.pop("%s_%s" % (k, suffix))
                    l["%s_ns_%s" % (k, suffix)] = v / cpn
        alloc_stats = {}
        if mod.STATS:
            for st in sts:
                rows = st.stats.reshape(-1, LINE)
                for k, n in enumerate(mod.STATS):
                    alloc_stats[n] = alloc_stats.get(n, 0) + int(rows[:, k].sum())
        footprint = {}
        for st in sts:
            for k, v in mod.footprint(st, self.params[i]).items():
                footprint[k] = footprint.get(k, 0) + v
        exp = env.exp.reshape(-1, EXP_WORDS)
        hist = exp[:, :EXP_BUCKETS].sum(axis=0)
        tot = exp[:, EXP_BUCKETS:]
        nexp = int(tot[:, E_COUNT].sum())
        exposure = {"count": nexp,
                    "mean": float(tot[:, E_SUM].sum() / nexp / cpn) if nexp else 0.0,
                    "p99": percentile(hist, 0.99) / cpn,
                    "max": float(tot[:, E_MAX].max() / cpn) if nexp else 0.0}
        ios = env.io.stats.reshape(-1, LINE)
        meta = env.fq.meta.reshape(-1, LINE)
        cnt = env.cnt.reshape(-1, LINE)[:threads]
        flush = {"invalidations": int(ios[:, iommu.W_INV].sum()),
                 "invalidation_wait_ns": float(ios[:, iommu.W_INV_WAIT].sum() / cpn),
                 "invalidation_queue_ns": float(ios[:, iommu.W_INV_QUEUE].sum() / cpn),
                 "queue_flushes": int(meta[:, M_FLUSHES].sum()),
                 "timer_flushes": int(meta[:, M_TIMER_FLUSHES].sum()),
                 "flushed_entries": int(meta[:, M_FLUSHED_ENTRIES].sum())}
        flush["mean_batch"] = (flush["flushed_entries"] / flush["queue_flushes"]
                               if flush["queue_flushes"] else 0.0)
        iotlb = {"hits": int(ios[:, iommu.W_HITS].sum()), "fills": int(ios[:, iommu.W_FILLS].sum()),
                 "faults": int(ios[:, iommu.W_FAULTS].sum())}
        out = {"locks": locks, "alloc_stats": alloc_stats, "footprint": footprint,
               "exposure_ns": exposure, "flush_stats": flush, "iotlb": iotlb,
               "unmaps": int(cnt[:, C_UNMAPS].sum()),
               "device_wait_ns": float(cnt[:, C_DEVICE_WAIT].sum() / cpn),
               "handoff_wait_ns": float(cnt[:, C_HAND_WAIT].sum() / cpn)}
        if self.opts["rogue_device"]:
            out["stale_hits"] = int(env.ctl[CTL_ROGUE_STALE])
            out["rogue_probes"] = int(env.ctl[CTL_ROGUE_PROBES])
            out["stale_hits_per_sec"] = out["stale_hits"] / seconds
        return out

    def measure(self, i, threads, repeats):
        """A point: `repeats` windows; the figure is their median, the
        per-worker split and the statistics are those of the median window."""
        pt = Point(self.designs[i], threads, oversubscribed=threads > len(self.cores))
        pt.windows = [self.window(i, threads) for _ in range(repeats)]
        pt.runs = [r["ops_per_sec"] for r in pt.windows]
        return pt


def _sum_lock_rows(rows):
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        if k.endswith("_max"):
            out[k] = max(vals)
        elif k.endswith("_min"):
            nz = [v for v in vals if v]
            out[k] = min(nz) if nz else 0
        else:
            out[k] = sum(vals)
    return out


def _rogue_main(env):
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rogue_loop(env)
