"""Single-worker cost per I/O of each design, in ns, plain, with `--check`,
with `--lock-timing` (every lock acquisition timed) and with `--diag`, side
by side from one run.  Lock counts are always on, so "plain" includes them.

    python benchmarks/cost_per_io.py [--designs LIST] [--duration 1] [--repeats 5]
                                     [--profile none]

The harness's own overhead is the `direct` row: its loop maps nothing.  The
settings are interleaved window by window, so that drift of the machine
hits them alike.
"""
import argparse
import statistics
import sys

from tabulate import tabulate

from harness import designs as designmod
from harness.config import defaults
from harness.report import header
from harness.results import machine
from harness.sweep import Sweep

DEFAULT = ("direct,bitmap,pools,rbtree,magazines,linux-2008,peleg-2015,linux-6.7,"
           "fujita-bitmap")
SETTINGS = {"plain": {}, "check": {"check": True}, "lock_timing": {"lock_timing": True},
            "diag": {"diag": True}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default=DEFAULT)
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", default="none",
                    help="cost profile; 'none' measures the code alone")
    args = ap.parse_args()
    names = args.designs.split(",")
    designs = [designmod.resolve(n) for n in names]
    runs = {(n, s): [] for n in names for s in SETTINGS}
    sweeps = {}
    for s, over in SETTINGS.items():
        o = defaults()
        o.update(threads=[1], duration=args.duration, warmup=0.1, repeats=1,
                 profile=args.profile, **over)
        sweeps[s] = Sweep(o, designs).__enter__()
    try:
        for _ in range(args.repeats):
            for i, n in enumerate(names):
                for s, sw in sweeps.items():
                    runs[(n, s)].append(sw.window(i, 1)["ops_per_sec"])
        cpn = sweeps["plain"].cycles_per_ns
    finally:
        for sw in sweeps.values():
            sw.close()
    print(header(machine(cpn)) + "; profile " + args.profile)
    rows = []
    for n in names:
        med = {s: statistics.median(runs[(n, s)]) for s in SETTINGS}
        plain = runs[(n, "plain")]
        row = [n, "%.1f" % (1e9 / med["plain"])]
        for s in list(SETTINGS)[1:]:
            row += ["%.1f" % (1e9 / med[s]), "%+.1f%%" % ((med["plain"] / med[s] - 1) * 100)]
        row.append("%.1f%%" % (100 * (max(plain) - min(plain)) / med["plain"]))
        rows.append(row)
    print(tabulate(rows, headers=["design", "ns/I/O", "--check", "adds", "--lock-timing", "adds",
                                  "--diag", "adds", "spread"], disable_numparse=True))
    print("1 worker; median of %d windows of %.1f s; 'adds' is the cost against plain"
          % (args.repeats, args.duration))


if __name__ == "__main__":
    sys.exit(main())
