"""What the latency histograms cost: throughput with `--diag` and with
`--lock-timing`, each with its histograms filled and not, side by side
from one run, the rounds interleaved window by window so that the
machine's drift hits every setting alike.

    python benchmarks/histogram_cost.py [--designs LIST] [--threads 1]
                                        [--duration 0.3] [--repeats 15]
                                        [--profile none]

Per design and setting: the median throughput with the histograms and
without, the ratio of the two windows of each round (their median, with
its 95% interval: a round's windows run one beside the other, so that
the machine's drift cancels), the cost it means (the bound is 3%), the
Mann-Whitney verdict over the windows, and what the run itself says the
histograms cost (`latency_ns.cost_share`: the values recorded times what
one record costs, measured when the run starts).  The histograms are
turned off by the bench's `histograms` flag, which only the cost
measurement uses, window by window in one bench: the machine code, the
clock reads, the arena and the workers are the same.
"""
import contextlib
import statistics
import sys

from tabulate import tabulate

from _common import Failed, Parser, machine_line, run
from harness import designs as designmod
from harness import readout, stats
from harness.bench import Bench
from harness.config import defaults
from harness.errors import UsageError

DEFAULT = "linux-2008,peleg-2015"
SETTINGS = (("--diag", {"diag": True}), ("--lock-timing", {"lock_timing": True}))


def on_cpu_rate(raw):
    """I/Os per second of the mapping workers' time on a CPU: each one's
    I/Os over its window less its wait on a run queue.  On a machine
    shared with other work, most of the windows' spread is that wait,
    which the histograms have no part in."""
    seconds = readout.window_seconds(raw)
    delays = raw.run_delay_ns or []
    out = 0.0
    for w, ops in enumerate(readout.worker_ops(raw)):
        on = seconds - (delays[w] / 1e9 if w < len(delays) else 0.0)
        out += ops / on if on > 0.05 * seconds else 0.0
    return out


def timed_io_ns(raw):
    """--diag's sampled I/Os of the local ring timed whole (loop._io_end),
    ns each: with the histograms, their map's and unmap's records are in
    it; a preempted one is left out, so this is the quiet measure."""
    s = raw.steps
    ios = int(s["ios"].sum())
    return s["io_cycles"].sum() / ios / raw.cycles_per_ns if ios else None


def _pairs(on, off):
    """Each round's ratio, with over without: the two windows of a round
    ran one beside the other, so that the machine's drift cancels."""
    return [a / b for a, b in zip(on, off) if b > 0]


def _row(name, label, on, off, own):
    """A table row: the medians, the paired ratio with its median's
    interval, the cost it means, the Mann-Whitney verdict over the
    windows, and the run's own figure."""
    r = _pairs(on, off)
    med = statistics.median(r)
    lo, hi, level = stats.median_ci(r)
    verdict = stats.compare(off, on)["verdict"]
    return [name, label, "%.0f" % statistics.median(on), "%.0f" % statistics.median(off),
            "%.3f [%.3f, %.3f]" % (med, lo, hi), "%+.2f%%" % (100 * (1 - med)),
            "%+.2f%%" % (100 * (1 - lo)), verdict, own]


def main():
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--duration", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--profile", default="none",
                    help="cost profile; 'none' measures the code alone")
    args = ap.parse_args()
    if args.repeats < 1 or args.duration <= 0 or args.threads < 1:
        raise Failed("--repeats, --duration and --threads must be positive", 2)
    names = args.designs.split(",")
    try:
        designs = [designmod.resolve(n) for n in names]
    except UsageError as e:
        raise Failed(str(e), 2)
    # (design, setting, histograms filled): its windows' ops/s
    runs = {(n, s, f): [] for n in names for s, _ in SETTINGS for f in (True, False)}
    cpu = {k: [] for k in runs}
    whole = {k: [] for k in runs}
    per_io = {n: [] for n in names}
    share = {(n, s): [] for n in names for s, _ in SETTINGS}
    with contextlib.ExitStack() as stack:
        benches = []
        for label, over in SETTINGS:
            o = defaults()
            o.update(threads=[args.threads], duration=args.duration, warmup=0.1, repeats=1,
                     profile=args.profile, **over)
            benches.append((label, stack.enter_context(Bench(o, designs))))
        for k in range(args.repeats):
            for i, n in enumerate(names):
                for label, bench in benches:
                    # one bench, its arena and its workers, the histograms
                    # filled in one window and not in the next; every other
                    # round the other first
                    for filled in ((True, False) if k % 2 == 0 else (False, True)):
                        bench.histograms = filled
                        raw = bench.window(i, args.threads)
                        w = readout.window(raw)
                        runs[(n, label, filled)].append(w["ops_per_sec"])
                        cpu[(n, label, filled)].append(on_cpu_rate(raw))
                        if label == "--diag":
                            whole[(n, label, filled)].append(timed_io_ns(raw))
                            if filled:
                                b = w["breakdown_ns"]
                                # an I/O's time on a CPU
                                per_io[n].append((b["total"] - b["preempted"] - b["stalls"],
                                                  int(raw.steps["ios"].sum()),
                                                  int(raw.cnt["ops"].sum())))
                        if filled:
                            lat = w["latency_ns"]
                            share[(n, label)].append(
                                100 * lat.get("cost_share_on_cpu", lat["cost_share"]))
    print(machine_line())
    rows = []
    for n in names:
        for label, _ in SETTINGS:
            own = "%.2f%%" % statistics.median(share[(n, label)])
            rows.append(_row(n, label, runs[(n, label, True)], runs[(n, label, False)], own))
            rows.append(_row("", "  on a CPU", cpu[(n, label, True)], cpu[(n, label, False)], ""))
    print(tabulate(rows, headers=["design", "setting", "ops/s", "no histograms",
                                  "ratio [95%]", "cost", "at most", "windows", "run's own"],
                   disable_numparse=True))
    print("%d worker(s); %d interleaved rounds of %.1f s windows; ops/s: medians; ratio: the "
          "median of each round's with-over-without, with its 95%% interval; cost: the "
          "throughput the histograms lose (bound: 3%%), and at most: at the interval's low "
          "end; windows: Mann-Whitney U over the windows; run's own: what the output "
          "states (values recorded x one record's measured cost, over the I/O's time on a "
          "CPU); on a "
          "CPU: the same, each worker's I/Os over its window less its wait for a CPU"
          % (args.threads, args.repeats, args.duration))
    print()
    rows = []
    for n in names:
        on, off = whole[(n, "--diag", True)], whole[(n, "--diag", False)]
        if None in on or None in off:
            continue
        d = [a - b for a, b in zip(on, off)]
        med = statistics.median(d)
        lo, hi, _ = stats.median_ci(d)
        total = statistics.median(t for t, _, _ in per_io[n])
        share = statistics.median(ios / ops for _, ios, ops in per_io[n])
        rows.append([n, "%.1f" % statistics.median(on), "%.1f" % statistics.median(off),
                     "%+.1f [%+.1f, %+.1f]" % (med, lo, hi), "%.2f" % (med * share),
                     "%.3f%%" % (100 * med * share / total),
                     "%.3f%%" % (100 * max(hi, 0) * share / total)])
    print(tabulate(rows, headers=["--diag", "timed I/O, ns", "no histograms",
                                  "difference [95%]", "ns per I/O", "cost", "at most"],
                   disable_numparse=True))
    print("a sampled I/O timed whole (map to unmap, preempted ones left out): with the "
          "histograms it holds its map's and unmap's records; their difference, paired by "
          "round, times the share of I/Os so timed, is what the records cost an I/O, "
          "measured where they run")


if __name__ == "__main__":
    sys.exit(run(main))
