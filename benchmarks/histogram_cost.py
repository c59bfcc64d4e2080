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
measurement uses: the code and the clock reads are otherwise the same.
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
# (name, options, histograms filled)
SETTINGS = (("diag", {"diag": True}, True), ("diag, no histograms", {"diag": True}, False),
            ("lock-timing", {"lock_timing": True}, True),
            ("lock-timing, no histograms", {"lock_timing": True}, False))


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
    runs = {(n, s[0]): [] for n in names for s in SETTINGS}
    share = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        benches = []
        for label, over, filled in SETTINGS:
            o = defaults()
            o.update(threads=[args.threads], duration=args.duration, warmup=0.1, repeats=1,
                     profile=args.profile, **over)
            bench = stack.enter_context(Bench(o, designs))
            bench.histograms = filled
            benches.append((label, bench))
        for k in range(args.repeats):
            for i, n in enumerate(names):
                # every other round in the reverse order: no setting always
                # runs first
                for label, bench in (benches if k % 2 == 0 else benches[::-1]):
                    w = readout.window(bench.window(i, args.threads))
                    runs[(n, label)].append(w["ops_per_sec"])
                    if label == "diag":
                        share[n].append(100 * w["latency_ns"]["cost_share"])
    print(machine_line())
    rows = []
    for n in names:
        r = {s[0]: runs[(n, s[0])] for s in SETTINGS}
        rows.append(_row(n, "--diag", r["diag"], r["diag, no histograms"],
                         "%.2f%%" % statistics.median(share[n])))
        rows.append(_row(n, "--lock-timing", r["lock-timing"], r["lock-timing, no histograms"],
                         ""))
    print(tabulate(rows, headers=["design", "setting", "ops/s", "no histograms",
                                  "ratio [95%]", "cost", "at most", "windows", "run's own"],
                   disable_numparse=True))
    print("%d worker(s); %d interleaved rounds of %.1f s windows; ops/s: medians; ratio: the "
          "median of each round's with-over-without, with its 95%% interval; cost: the "
          "throughput the histograms lose (bound: 3%%), and at most: at the interval's low "
          "end; windows: Mann-Whitney U over the windows; run's own: what --diag's output "
          "states (values recorded x one record's measured cost)"
          % (args.threads, args.repeats, args.duration))


if __name__ == "__main__":
    sys.exit(run(main))
