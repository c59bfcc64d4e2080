"""Single-worker cost per I/O of each design, in ns, plain, with `--check`,
with `--lock-timing` (every lock hold timed) and with `--diag`, side by side
from one run, with the harness's reads of the cycle counter per I/O.

    python benchmarks/cost_per_io.py [--designs LIST] [--duration 1] [--repeats 5]
                                     [--profile none] [--against CHECKOUT]

The harness's own overhead is the `direct` row: its loop maps nothing.  The
settings are interleaved window by window, so that drift of the machine
hits them alike.  `--against CHECKOUT` measures this tree and another
checkout of the project instead (say, the commit before a change),
interleaved round by round: benchmarks/trees.py does that part.
"""
import argparse
import contextlib
import os
import statistics
import sys

from tabulate import tabulate

from harness import designs as designmod
from harness import readout
from harness.bench import Bench
from harness.config import defaults
from harness.report import header
from harness.results import machine

DEFAULT = ("direct,bitmap,pools,rbtree,magazines,lockfree,linux-2008,peleg-2015,linux-6.7,"
           "fujita-bitmap")
SETTINGS = {"plain": {}, "check": {"check": True}, "lock_timing": {"lock_timing": True},
            "diag": {"diag": True}}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default=DEFAULT)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", default="none",
                    help="cost profile; 'none' measures the code alone")
    ap.add_argument("--against", metavar="CHECKOUT",
                    help="another checkout of the project: plain cost of both, interleaved")
    args = ap.parse_args()
    if args.against:
        trees = os.path.join(ROOT, "benchmarks", "trees.py")
        os.execv(sys.executable, [sys.executable, trees, "--tree", args.against, "--tree", ROOT,
                                  "--designs", args.designs, "--duration", str(args.duration),
                                  "--repeats", str(args.repeats), "--profile", args.profile])
    names = args.designs.split(",")
    designs = [designmod.resolve(n) for n in names]
    runs = {(n, s): [] for n in names for s in SETTINGS}
    reads = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        benches = {}
        for s, over in SETTINGS.items():
            o = defaults()
            o.update(threads=[1], duration=args.duration, warmup=0.1, repeats=1,
                     profile=args.profile, **over)
            benches[s] = stack.enter_context(Bench(o, designs))
        for _ in range(args.repeats):
            for i, n in enumerate(names):
                for s, bench in benches.items():
                    w = readout.window(bench.window(i, 1))
                    runs[(n, s)].append(w["ops_per_sec"])
                    if s == "plain":
                        reads[n].append(w["clock_reads_per_io"])
        cpn = benches["plain"].cycles_per_ns
    print(header(machine(cpn)) + "; profile " + args.profile)
    rows = []
    for n in names:
        med = {s: statistics.median(runs[(n, s)]) for s in SETTINGS}
        plain = runs[(n, "plain")]
        row = [n, "%.1f" % (1e9 / med["plain"]), "%.2f" % statistics.median(reads[n])]
        for s in list(SETTINGS)[1:]:
            row += ["%.1f" % (1e9 / med[s]), "%+.1f%%" % ((med["plain"] / med[s] - 1) * 100)]
        row.append("%.1f%%" % (100 * (max(plain) - min(plain)) / med["plain"]))
        rows.append(row)
    print(tabulate(rows, headers=["design", "ns/I/O", "clock reads/I/O", "--check", "adds",
                                  "--lock-timing", "adds", "--diag", "adds", "spread"],
                   disable_numparse=True))
    print("1 worker; median of %d windows of %.1f s; 'adds' is the cost against plain; clock "
          "reads: the harness's, on the measured path (docs/performance.md)"
          % (args.repeats, args.duration))


if __name__ == "__main__":
    sys.exit(main())
