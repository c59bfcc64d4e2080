"""A trace replayed concurrently: `iommu-stress replay TRACE --design D
--concurrent` and `iommu-stress sweep --trace TRACE --designs ...`.

One pinned worker per traced CPU replays that CPU's requests through the
design's dma_map and dma_unmap (harness/replayloop.py), unmapping on
whichever CPU the trace says; a point is measured as a sweep's is (the
bench, the readout, the results file), one window per pass over the trace.

Workers: one per CPU the trace names, at most one per allowed core (or the
fold width --threads gives).  A trace with more CPUs is folded: its CPUs in
increasing order get ranks 0, 1, ..., and the CPU of rank r is replayed by
worker r mod n, which runs the requests of its CPUs merged in trace order
(an import's order is its capture's timestamp order).  A folded worker is
one CPU: its CPUs' requests share its per-CPU caches and flush queue.

A pass's window runs from the first worker's first request to the end of
the last worker's last traced request: `ops_per_sec` is maps per second
of it.  What the trace left mapped at its end is unmapped after it, outside
the window, so that every pass ends with the allocator back to its fresh
state, which is checked.
"""
import sys
import time
from dataclasses import dataclass, replace

import numpy as np

from harness import placement, readout, signals
from harness.abi import CTL_DONE, CTL_ERR, CTL_T_MEASURE, CTL_T_STOP, LINE, MAX_DOMAINS, STATUS_RAN
from harness.arena import Arena, private
from harness.bench import Bench, PointFailed
from harness.disturbance import Snapshot
from harness.errors import UsageError
from harness.pool import Watchdog, WorkerDied, allowed_cores, run_in_children
from harness.replayloop import (B_BEGIN, B_END, B_LEFT, BOUND_WORDS, C_PACE, CONF_WORDS, OP_MAP,
                                OP_UNMAP, Q_AT, Q_DOM, Q_HOLD, Q_OP, Q_OWNER, Q_PAGES, QROW, RQ,
                                W_CROSS, W_FAILED_UNMAPS, W_PACE_CYCLES, W_WAIT_CYCLES, W_WAITS)
from harness.trace import OP_ALLOC

PACES = ("max", "recorded")
# A pass that has not ended this long after its start (plus its recorded
# span under --pace recorded) is stopped by the watchdog: a replay must
# never hang, whatever a bug or a stopped worker does.
TIMEOUT_S = 60.0
TIMEOUT_PER_REQUEST_S = 20e-6


@dataclass
class Plan:
    """A trace's requests laid out for `workers` workers: rows (Q_*) in
    each worker's order, bounds (B_*), one held word per map."""
    trace: object
    workers: int
    cpus: np.ndarray          # the traced CPUs, increasing
    rows: np.ndarray          # (requests + unmaps of what is left mapped, QROW)
    bounds: np.ndarray
    nheld: int
    at_ns: np.ndarray         # per row: its recorded time from the first request's, ns
    pace: str
    cross_cpu: int            # unmaps traced on another CPU than their map
    left_mapped: int          # maps the trace never unmaps
    domains: int
    devices: list             # the devices replayed, by domain

    @property
    def folded(self):
        return len(self.cpus) > self.workers

    def worker_of_cpu(self):
        """{traced CPU: worker}."""
        return {int(c): r % self.workers for r, c in enumerate(self.cpus)}

    def specs(self):
        return [("rq.req", np.int64, self.rows.shape),
                ("rq.bounds", np.int64, (self.workers * BOUND_WORDS,)),
                ("rq.held", np.int64, (max(1, self.nheld),)),
                ("rq.wcnt", np.int64, (self.workers * LINE,)),
                ("rq.conf", np.int64, (CONF_WORDS,))]

    def bind(self, views):
        """The loop's arrays in `views`, filled (recorded times still in ns)."""
        rq = RQ(views["rq.req"], views["rq.bounds"], views["rq.held"], views["rq.wcnt"],
                views["rq.conf"])
        rq.req[:] = self.rows
        rq.bounds[:] = self.bounds
        rq.conf[:] = 0
        rq.conf[C_PACE] = 1 if self.pace == "recorded" else 0
        return rq

    def timeout_s(self):
        span = float(self.at_ns.max()) / 1e9 if self.pace == "recorded" and len(self.at_ns) else 0.0
        return TIMEOUT_S + span + TIMEOUT_PER_REQUEST_S * len(self.rows)

    def describe(self):
        """What the replay does with the trace, in a few lines."""
        t = self.trace
        maps = t.nallocs
        lines = ["trace %s: format %d, %d requests (%d maps, %d unmaps, %d of them on another "
                 "CPU than their map), %d CPU%s, %d device%s"
                 % (t.name, t.version, len(t), maps, len(t) - maps, self.cross_cpu,
                    len(self.cpus), "" if len(self.cpus) == 1 else "s", self.domains,
                    "" if self.domains == 1 else "s")]
        if self.folded:
            groups = {}
            for c, w in self.worker_of_cpu().items():
                groups.setdefault(w, []).append(str(c))
            lines.append("folded: %d traced CPUs onto %d worker%s (the CPU of rank r on worker "
                         "r mod %d: %s), each worker running its CPUs' requests merged in trace "
                         "order" % (len(self.cpus), self.workers,
                                    "" if self.workers == 1 else "s", self.workers,
                                    "; ".join("%s -> %d" % (",".join(cs), w)
                                              for w, cs in sorted(groups.items()))))
        else:
            lines.append("replayed on %d worker%s, one per traced CPU (%s)"
                         % (self.workers, "" if self.workers == 1 else "s",
                            ", ".join("CPU %d -> worker %d" % kv
                                      for kv in self.worker_of_cpu().items())))
        lines.append("pace %s%s; each pass a window from the first request to the last, "
                     "ops/s = maps/s%s"
                     % (self.pace, " (each request at its recorded time from the first)"
                        if self.pace == "recorded" else " (as fast as possible)",
                        "; %d maps left open by the trace unmapped after each window"
                        % self.left_mapped if self.left_mapped else ""))
        return lines


def plan(trace, width, pace):
    """Lay `trace` out for min(width, its CPUs) workers (width None: one
    per traced CPU).  UsageError for what a concurrent replay cannot do."""
    if pace not in PACES:
        raise UsageError("--pace: %r, expected max or recorded" % pace)
    n = len(trace)
    if trace.nallocs == 0:
        raise UsageError("%s: no map to replay" % trace.name)
    if pace == "recorded":
        if trace.version < 2:
            raise UsageError("--pace recorded: %s is a format 1 trace, which records no times; "
                             "import a capture (format 2), or use --pace max" % trace.name)
        if (trace.time < 0).any():
            i = int(np.flatnonzero(trace.time < 0)[0])
            raise UsageError("--pace recorded: %s: the request has no recorded time (t=)"
                             % trace.where(i))
    if (trace.limit >= 0).any():
        i = int(np.flatnonzero(trace.limit >= 0)[0])
        raise UsageError("%s: a concurrent replay maps under the design's own limit, and this "
                         "request names a limit_pfn; replay it without --concurrent"
                         % trace.where(i))
    cpus = np.unique(trace.cpu)
    workers = len(cpus) if width is None else max(1, min(width, len(cpus)))
    wk = np.searchsorted(cpus, trace.cpu) % workers
    is_map = trace.op == OP_ALLOC
    idx = np.arange(n, dtype=np.int64)
    map_of = np.where(is_map, idx, trace.ref)
    owner = wk[map_of]
    freed = np.zeros(n, dtype=bool)
    freed[trace.ref[~is_map]] = True
    left = np.flatnonzero(is_map & ~freed)
    # held words: each worker's maps in a region of their own, whole lines,
    # so that a worker's stores share a line with no other mapper's
    maps = np.flatnonzero(is_map)
    per = np.bincount(wk[maps], minlength=workers)
    region = np.concatenate([[0], np.cumsum(-(-per // LINE) * LINE)])
    order = np.argsort(wk[maps], kind="stable")
    sorted_w = wk[maps][order]
    first = np.concatenate([[0], np.cumsum(per)])[:-1]
    pos = np.empty(len(maps), dtype=np.int64)
    pos[order] = region[sorted_w] + np.arange(len(maps)) - first[sorted_w]
    hold = np.full(n, -1, dtype=np.int64)
    hold[maps] = pos
    hold = hold[map_of]
    used, dom = np.unique(trace.domain, return_inverse=True)
    if len(used) > MAX_DOMAINS:
        raise UsageError("%s: %d devices, a concurrent replay takes at most %d"
                         % (trace.name, len(used), MAX_DOMAINS))
    at = np.zeros(n, dtype=np.int64)
    if pace == "recorded":
        at = trace.time - trace.time.min()
    # the trace's rows, then an unmap of each map left open, on its mapper
    row_w = np.concatenate([wk, wk[left]])
    tail = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(len(left), dtype=np.int64)])
    seq = np.concatenate([idx, n + np.arange(len(left))])
    rows = np.zeros((n + len(left), QROW), dtype=np.int64)
    for col, v, extra in ((Q_OP, np.where(is_map, OP_MAP, OP_UNMAP), OP_UNMAP),
                          (Q_HOLD, hold, hold[left]), (Q_PAGES, trace.pages, trace.pages[left]),
                          (Q_DOM, dom, dom[left]), (Q_OWNER, owner, owner[left]),
                          (Q_AT, at, 0)):
        rows[:n, col] = v
        rows[n:, col] = extra
    perm = np.lexsort((seq, tail, row_w))
    rows = rows[perm]
    at_ns = np.concatenate([at, np.zeros(len(left), dtype=np.int64)])[perm]
    bounds = np.zeros(workers * BOUND_WORDS, dtype=np.int64)
    total = np.bincount(row_w, minlength=workers)
    traced = np.bincount(wk, minlength=workers)
    starts = np.concatenate([[0], np.cumsum(total)])
    for w in range(workers):
        bounds[w * BOUND_WORDS + B_BEGIN] = starts[w]
        bounds[w * BOUND_WORDS + B_LEFT] = starts[w] + traced[w]
        bounds[w * BOUND_WORDS + B_END] = starts[w + 1]
    cross = int(np.count_nonzero(~is_map & (trace.cpu != trace.cpu[map_of])))
    devices = [trace.devices[d] for d in used.tolist()] if trace.devices else ["-"]
    return Plan(trace, workers, cpus, rows, bounds, int(region[-1]), at_ns, pace, cross,
                len(left), len(used), devices)


class _Entry:
    """A design's concurrent replay as the pool calls a loop: (sts, env,
    w, cpu), the trace's arrays passed on."""

    def __init__(self, dispatcher, rq):
        self.dispatcher = dispatcher
        self.rq = rq

    def __call__(self, sts, env, w, cpu):
        return self.dispatcher(sts, env, self.rq, w, cpu)


class ReplayBench(Bench):
    """The bench of a concurrent replay: the trace's arrays in the arena,
    the designs' replay loops in place of the synthetic ones, and a window
    that is one pass over the trace."""

    def __init__(self, opts, designs, plan, say=None):
        self.plan = plan
        self.rq = None
        super().__init__(opts, designs, say)
        self.specs = self.specs + plan.specs()
        self.arena = Arena(self.specs)

    def _params(self, d):
        # every map of the trace may be live at once: a worker that only
        # maps runs ahead of those that unmap for it
        p = super()._params(d)
        o = self.opts
        room = p.max_live - self.max_threads * o["depth"]
        return replace(p, max_live=min(self.plan.trace.nallocs, o["pages"]) + room)

    def _bind(self, views=None):
        super()._bind(views)
        from harness import entries
        self.rq = self.plan.bind(views or self.arena.views)
        self.entries = [(_Entry(getattr(entries.of(d.allocator),
                                        entries.trace_entry_name(d.flush)), self.rq),)
                        for d in self.designs]
        self._paced = False

    def mode(self, i, threads):
        return 0

    def _args(self, i):
        return (self.stacked[i], self.env, self.rq, 0, 0)

    def _uncompiled(self):
        from harness import entries
        todo, seen = [], set()
        for i, k in self._loops():
            entry, sts = self.entries[i][k].dispatcher, self.stacked[i]
            key = (entry, entry.typeof_pyval(sts))
            if key not in seen and not entries.cached(entry, self._args(i)):
                todo.append((i, k))
            seen.add(key)
        return todo

    def _compile_ahead(self):
        from harness import entries
        todo = self._uncompiled()
        if not todo:
            return
        names = ["%s (replay)" % self.designs[i].spec.partition("@")[0] for i, _ in todo]
        parallel = min(len(todo), len(self.cores))
        entries.compile_notice(names, parallel)
        took = run_in_children([lambda i=i, k=k: self._compile_alone(i, k) for i, k in todo],
                               parallel)
        entries.compile_record(names, took)

    def _compile_alone(self, i, k):
        from harness import entries
        self._bind(private(self.specs))
        with entries.compile_lock(self.entries[i][k].dispatcher, self._args(i)):
            self._compile_one(i, k)

    def _pace_cycles(self):
        """The recorded times in cycles, once the counter is calibrated."""
        if not self._paced:
            self.rq.req[:, Q_AT] = (self.plan.at_ns * self.cycles_per_ns).astype(np.int64)
            self._paced = True

    def window(self, i, threads):
        """One pass of design i over the trace.  Raises PointFailed."""
        self.start_workers(threads)
        self._pace_cycles()
        d = self.designs[i]
        self.reset(i, threads)
        rq = self.rq
        rq.held[:] = 0
        rq.wcnt[:] = 0
        ctl = self.env.ctl
        runs = self._other_runs(set())
        diag = bool(self.opts["diag"])
        try:
            self.say("%s: replaying %s on %d workers" % (d.name, self.plan.trace.name, threads))
            self.pool.start_point(i, 0, threads)
            self._wait_start(d, threads)
            busy = [p.pid for p in self.pool.procs[:threads]]
            before = Snapshot(busy, self.cores)
            waits0 = self._lock_waits(i) if diag else None
            limit = self.plan.timeout_s()
            try:
                self.pool.wait_for(lambda: ctl[CTL_DONE] >= threads, time.monotonic() + limit,
                                   poll=0.005)
            except Watchdog:
                self._abandon_pool()
                raise PointFailed("watchdog: the replay of %s by %s on %d workers did not end "
                                  "within %.1f s" % (self.plan.trace.name, d.name, threads,
                                                     limit)) from None
            disturbed = Snapshot(busy, self.cores).since(before)
        except WorkerDied as e:
            self._abandon_pool()
            raise PointFailed("%s at %s, %d workers" % (e, d.name, threads)) from None
        signals.check()
        if ctl[CTL_ERR]:
            raise PointFailed(readout.ownership_error(ctl, d.name, threads))
        cnt = self.env.cnt
        bad = np.flatnonzero(cnt["status"][:threads] != STATUS_RAN)
        if len(bad):
            raise PointFailed("worker %d of %s at %d workers did not end its replay cleanly"
                              % (bad[0], d.name, threads))
        # one window for all: the union of the workers' own
        t0 = int(cnt["t_start"][:threads].min())
        t1 = int(cnt["t_end"][:threads].max())
        cnt["t_start"][:threads] = t0
        cnt["t_end"][:threads] = t1
        ctl[CTL_T_MEASURE] = t0
        ctl[CTL_T_STOP] = t1
        series = None
        if diag:
            series = [(0.0, 0, waits0), ((t1 - t0) / self.cycles_per_ns / 1e9,
                                         int(cnt["ops"][:threads].sum()), self._lock_waits(i))]
        raw = self._raw(i, threads, series, disturbed)
        raw.concurrent_runs = sorted(self._other_runs(runs))
        raw.replay = self._figures(threads)
        problems = self.check(i)
        if problems:
            raise PointFailed("%s at %d workers: state is not fresh after the replay: %s"
                              % (d.name, threads, "; ".join(problems[:3])))
        return raw

    def _figures(self, threads):
        """The point's `replay` key: what this pass did beyond the synthetic
        loops' counters."""
        p, w = self.plan, self.rq.wcnt.reshape(-1, LINE)[:threads]
        cpn = self.cycles_per_ns
        cnt = self.env.cnt[:threads]
        return {"trace": p.trace.name, "format": p.trace.version, "requests": len(p.trace),
                "maps": p.trace.nallocs, "traced_cpus": len(p.cpus), "workers": threads,
                "folded": p.folded, "worker_of_cpu": [[c, v] for c, v in
                                                      p.worker_of_cpu().items()],
                "pace": p.pace, "devices": list(p.devices),
                "cross_cpu_unmaps": p.cross_cpu,
                "cross_worker_unmaps": int(w[:, W_CROSS].sum()),
                "unmap_waits": int(w[:, W_WAITS].sum()),
                "unmap_wait_ns": float(w[:, W_WAIT_CYCLES].sum() / cpn),
                "pace_wait_ns": float(w[:, W_PACE_CYCLES].sum() / cpn),
                "failed_unmaps": int(w[:, W_FAILED_UNMAPS].sum()),
                "left_mapped": p.left_mapped,
                "maps_done": int(cnt["ops"].sum()), "unmaps_done": int(cnt["unmaps"].sum())}


# ------------------------------------------------------------------ running

def _check_designs(designs):
    for d in designs:
        if not d.translates:
            raise UsageError("design %s maps nothing: a trace replays through an allocator "
                             "that places addresses" % d.name)
        if d.premapped:
            raise UsageError("design %s: a trace's maps are its own, not a pre-mapped pool"
                             % d.name)


def _bench_opts(opts, plan):
    """The run's options for the bench of a replay of `plan`."""
    allocs = plan.trace.pages[plan.trace.op == OP_ALLOC]
    sizes, counts = np.unique(allocs, return_counts=True)
    return dict(opts, threads=[plan.workers], warmup=0.0, domains=plan.domains,
                unmap_fraction=0.0, premapped=False, rogue_device=False,
                sizes=[(int(s), float(c)) for s, c in zip(sizes, counts)])


def cores_for(opts):
    """How many CPUs the run's workers may take."""
    return len(placement.choose(opts, allowed_cores()).order)


def measure(trace, designs, opts, width, pace, json_path, command, say=None):
    """Replay `trace` concurrently under each design: (results document,
    plan, bench timings, whether every point was measured)."""
    from harness import results, sweep, system
    from harness.arena import clean_stale
    _check_designs(designs)
    if opts["rogue_device"]:
        raise UsageError("--rogue-device: not with a trace's replay")
    if opts["unmap_fraction"]:
        raise UsageError("--unmap-fraction: a trace says which CPU unmaps")
    if opts["premapped"]:
        raise UsageError("--premapped: a trace's maps are its own, not a pre-mapped pool")
    if width is None:
        width = cores_for(opts)
    p = plan(trace, width, pace)
    bo = _bench_opts(opts, p)
    if json_path:
        results.writable(json_path)
    clean_stale()
    state = system.current()
    with ReplayBench(bo, designs, p, say=say) as bench:
        held = dict(bo, designs=[d.name for d in designs])
        res = results.ResultsFile(json_path, results.machine(bench.cycles_per_ns), held, command)
        res.doc["placement"] = bench.placement.record()
        res.doc["system"] = system.record(state, res.doc["placement"], len(bench.cores))
        todo = [(p.workers, i) for i in range(len(designs))]
        ok = sweep.run(bench, todo, sweep.Repeats.of(bo), res, "continue", "iommu-stress",
                       order_seed=bo["order_seed"])
    return res.doc, p, bench.timings, ok


def table(doc, plan, fmt="simple"):
    """The replay's table: a row per design."""
    from tabulate import tabulate

    from harness import report
    from harness.diagnostics import fmt_ops
    if fmt == "csv":
        return _csv(doc)
    rows = []
    for pt in doc["points"]:
        r = pt.get("replay") or {}
        hw = report.ci_half_width(pt)
        waits = r.get("unmap_waits", 0)
        maps = max(1, pt.get("ops_total", 0))
        lock_wait = sum(lk.get("wait_ns_total", 0.0) for lk in pt.get("locks", []))
        over = "*" if pt.get("oversubscribed") else ""
        marks = "".join(m for m, on in (("!", pt.get("disturbed")),
                                        ("&", pt.get("concurrent_runs"))) if on)
        rows.append([pt["design"], "%d%s" % (pt["threads"], over),
                     fmt_ops(pt["ops_per_sec"]) + (" ±%s" % report.fmt_share(hw) if hw else "")
                     + (" " + marks if marks else ""),
                     "%d" % len(pt.get("runs", [])),
                     "%.1f" % (pt.get("window_s", 0.0) * 1e3),
                     "%d/%d" % (r.get("cross_worker_unmaps", 0), r.get("unmaps_done", 0)),
                     "%d" % waits,
                     "%.2f" % (r.get("unmap_wait_ns", 0.0) / waits / 1e3) if waits else "-",
                     "%d" % pt.get("alloc_fails", 0),
                     "%.0f" % (lock_wait / maps),
                     "clean" if pt.get("state_checked") else "-"])
    heads = ["design", "workers", "maps/s", "passes", "ms/pass", "unmaps on another worker",
             "waited for the map", "mean wait µs", "map fails", "lock wait ns/map", "state"]
    text = tabulate(rows, headers=heads, tablefmt=report.table_format(fmt), disable_numparse=True)
    notes = []
    if any(report.ci_half_width(pt) for pt in doc["points"]):
        notes.append(report.CI_NOTE)
    if any(pt.get("disturbed") for pt in doc["points"]):
        notes.append(report.DISTURBED_NOTE)
    if any(pt.get("concurrent_runs") for pt in doc["points"]):
        notes.append(report.CONCURRENT_NOTE)
    if any(pt.get("oversubscribed") for pt in doc["points"]):
        notes.append("* more workers than cores: they share cores")
    if plan.folded:
        notes.append("folded: %d traced CPUs replayed by %d worker%s (see above)"
                     % (len(plan.cpus), plan.workers, "" if plan.workers == 1 else "s"))
    return text + ("\n" + "\n".join(notes) if notes else "")


def _csv(doc):
    """The replay's table as CSV: raw numbers, for a script."""
    import csv
    import io
    keys = ("workers", "traced_cpus", "folded", "pace", "cross_worker_unmaps", "unmaps_done",
            "unmap_waits", "unmap_wait_ns", "pace_wait_ns", "failed_unmaps")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["design", "maps_per_sec", "passes", "window_s", "alloc_fails"] + list(keys))
    for pt in doc["points"]:
        r = pt.get("replay") or {}
        w.writerow([pt["design"], pt["ops_per_sec"], len(pt.get("runs", [])),
                    pt.get("window_s", ""), pt.get("alloc_fails", "")]
                   + [r.get(k, "") for k in keys])
    return buf.getvalue().rstrip("\n")


def print_results(doc, plan, opts, out=sys.stdout, fmt="simple"):
    from harness import diagnostics, report
    for line in plan.describe():
        print(line, file=out)
    print(report.header(doc["machine"]) + "; profile %s" % opts["profile"], file=out)
    for line in report.placement_lines(doc) + report.system_lines(doc):
        print(line, file=out)
    if not doc["points"]:
        return
    print(table(doc, plan, fmt), file=out)
    text = report.exposure_table(doc["points"])
    if text:
        print(file=out)
        print(text, file=out)
    for pt in doc["points"]:
        print(file=out)
        if opts["diag"]:
            print(diagnostics.render_point(pt, doc["machine"], doc["options"], fmt="simple"),
                  file=out)
        else:
            print("%s: locks" % pt["design"], file=out)
            print(diagnostics.lock_table(pt, fmt="simple", options=doc["options"]), file=out)
    for msg in doc.get("failures", []):
        print("failed: %s" % msg, file=out)


def _finish(doc, p, opts, timings, ok, t_start, stdout, stderr, fmt="simple"):
    print_results(doc, p, opts, stdout, fmt)
    stdout.flush()
    print("%d points measured in %.1f s (compiling %.1f s, starting workers %.1f s)"
          % (len(doc["points"]), time.monotonic() - t_start, timings["compile_s"],
             timings["fork_s"]), file=stderr)
    return 0 if ok else 1


# ------------------------------------------------------------------ commands

def add_replay_arguments(parser):
    """`replay`'s options of a concurrent replay."""
    parser.add_argument("--concurrent", action="store_true",
                        help="one pinned worker per traced CPU, each replaying that CPU's "
                             "requests through the design's map and unmap (--design), unmaps "
                             "on the CPU the trace says; measured as a sweep's point")
    parser.add_argument("--design", metavar="D",
                        help="--concurrent: the design (allocator[:variant]+flush; default "
                             "the --allocator under strict invalidation)")
    parser.add_argument("--pace", choices=PACES, default=None,
                        help="--concurrent: max (as fast as possible, the default) or recorded "
                             "(each request at its traced time from the first; format 2)")
    parser.add_argument("--threads", metavar="N",
                        help="--concurrent: workers to fold the traced CPUs onto (default: one "
                             "per traced CPU, at most one per allowed core)")
    parser.add_argument("--repeats", metavar="N",
                        help="--concurrent: passes over the trace, each a window (default 3)")
    parser.add_argument("--diag", action="store_true",
                        help="--concurrent: sampled step timing and lock timing, as a sweep's")
    parser.add_argument("--check", action="store_true",
                        help="--concurrent: claim every mapped page in an ownership map")
    parser.add_argument("--lock-timing", action="store_true",
                        help="--concurrent: time every lock wait and hold")
    parser.add_argument("--profile", metavar="NAME",
                        help="--concurrent: cost profile (configs/profiles/)")
    parser.add_argument("--json", metavar="PATH",
                        help="--concurrent: write the results file here")


def concurrent_only(args):
    """Refuse the options of a concurrent replay without --concurrent."""
    for name in ("design", "pace", "threads", "repeats", "profile", "json"):
        if getattr(args, name, None) is not None:
            raise UsageError("--%s: only with --concurrent" % name.replace("_", "-"))
    for name in ("diag", "check", "lock_timing"):
        if getattr(args, name, False):
            raise UsageError("--%s: only with --concurrent" % name.replace("_", "-"))


def _width(text, flag="--threads"):
    from harness import config
    widths = config.convert("threads", text, flag)
    if len(widths) != 1:
        raise UsageError("%s: a concurrent replay takes one worker count, the fold width "
                         "(the trace sets the rest)" % flag)
    return widths[0]


def replay_command(args, stdout, stderr, validate, read):
    """`replay TRACE --concurrent`."""
    from harness import config, designs as designmod
    if args.preset:
        raise UsageError("--concurrent: not with --preset")
    if args.trace is None:
        raise UsageError("give a TRACE")
    if args.timing or args.op_timing:
        raise UsageError("--timing, --op-timing: the single-thread replay's; --concurrent "
                         "reports maps/s and, with --diag, the steps")
    name, pages, boundary, variant, mag_size = validate(args)
    # the bench's space: a power of two, in the bench's range
    pages = config.convert("pages", str(pages), "--pages")
    if args.design and args.variant:
        raise UsageError("--variant: with --design, name the variant there "
                         "(allocator:variant+flush)")
    spec = args.design or (name + (":" + variant if variant else ""))
    design = designmod.resolve(spec)
    opts = config.defaults()
    opts.update(pages=pages, boundary=boundary, mag_size=mag_size, designs=[design.name],
                repeats=3, diag=bool(args.diag), check=bool(args.check),
                lock_timing=bool(args.lock_timing))
    if args.repeats is not None:
        opts["repeats"] = config.convert("repeats", args.repeats, "--repeats")
        if opts["repeats"] == "auto":
            raise UsageError("--repeats: a number of passes")
    if args.profile is not None:
        opts["profile"] = config.convert("profile", args.profile, "--profile")
    width = _width(args.threads) if args.threads is not None else None
    trace = read(args.trace, pages=pages, masks=design.module().LIMIT_IS_MASK)
    t_start = time.monotonic()
    json_path = args.json
    if json_path is not None and not json_path.strip():
        raise UsageError("--json: the path is empty")
    doc, p, timings, ok = measure(trace, [design], opts, width, args.pace or "max",
                                  json_path and _path(json_path),
                                  " ".join(["iommu-stress"] + sys.argv[1:]))
    return _finish(doc, p, opts, timings, ok, t_start, stdout, stderr)


def _path(text):
    from pathlib import Path
    return Path(text)


def sweep_command(args, opts, designs, say=None):
    """`sweep --trace TRACE`: each design replays the trace concurrently;
    --threads, if given, is the one fold width."""
    from harness.trace import read
    for flag in ("resume", "cluster"):
        if getattr(args, flag, None):
            raise UsageError("--%s: not with --trace" % flag)
    width = _width(",".join(map(str, opts["threads"]))) if args.threads is not None else None
    if opts["repeats"] == "auto":
        raise UsageError("--repeats auto: not with --trace; give a number of passes")
    masks = {d.module().LIMIT_IS_MASK for d in designs}
    if len(masks) > 1:
        raise UsageError("--designs: pools reads a trace's limits as DMA masks, the others as "
                         "pfns; replay them apart")
    trace = read(args.trace, pages=opts["pages"], masks=masks.pop())
    if args.json is not None and not args.json.strip():
        raise UsageError("--json: the path is empty")
    t_start = time.monotonic()
    doc, p, timings, ok = measure(trace, designs, opts, width, args.pace or "max",
                                  args.json and _path(args.json),
                                  " ".join(["iommu-stress"] + sys.argv[1:]), say)
    return _finish(doc, p, opts, timings, ok, t_start, sys.stdout, sys.stderr,
                   "csv" if getattr(args, "csv", False) else "simple")
