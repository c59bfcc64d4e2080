"""Single-worker cost per I/O of each design, in ns, with lock statistics
off and on, side by side from one run.

    python benchmarks/cost_per_io.py [--designs direct,bitmap] [--duration 1] [--repeats 5]

The harness's own overhead is the `direct` row: its loop maps nothing.
"""
import argparse
import statistics
import sys

from harness import designs as designmod
from harness.config import defaults
from harness.results import machine
from harness.report import header
from harness.sweep import Sweep
from tabulate import tabulate


def measure(design_names, duration, repeats, **over):
    opts = defaults()
    opts.update(threads=[1], duration=duration, warmup=0.1, repeats=repeats, **over)
    designs = [designmod.resolve(n) for n in design_names]
    out = {}
    with Sweep(opts, designs) as sw:
        for i, d in enumerate(designs):
            runs = [sw.window(i, 1)["ops_per_sec"] for _ in range(repeats)]
            out[d.name] = runs
        cpn = sw.cycles_per_ns
    return out, cpn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--designs", default="direct,bitmap")
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    names = args.designs.split(",")
    # alternate the two settings so that drift in the machine hits both alike
    plain, timed = {n: [] for n in names}, {n: [] for n in names}
    cpn = None
    for _ in range(args.repeats):
        a, cpn = measure(names, args.duration, 1)
        b, _ = measure(names, args.duration, 1, lock_timing=True)
        for n in names:
            plain[n] += a[n]
            timed[n] += b[n]
    print(header(machine(cpn)))
    rows = []
    for n in names:
        p = statistics.median(plain[n])
        t = statistics.median(timed[n])
        rows.append([n, "%.1f" % (1e9 / p), "%.1f" % (1e9 / t), "%+.1f%%" % ((p / t - 1) * 100),
                     "%.1f%%" % (100 * (max(plain[n]) - min(plain[n])) / p)])
    print(tabulate(rows, headers=["design", "ns/I/O", "ns/I/O lock timing", "timing adds",
                                  "spread"], disable_numparse=True))
    print("1 worker, median of %d windows of %.1f s each" % (args.repeats, args.duration))


if __name__ == "__main__":
    sys.exit(main())
