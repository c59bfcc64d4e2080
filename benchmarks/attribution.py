"""Where an I/O's time goes, design by design: the share of a mapping
worker's wall time per I/O that the named parts of `--diag`'s breakdown
account for, at each worker count, and what the design's own steps take
of the I/O as it runs without --diag; the harness's loop and tick (beside
them, `direct`'s whole I/O: the same loop with no steps), --diag's own
cost, the time the worker lost its CPU (preempted, stalls), and what is
left unnamed.

    python benchmarks/attribution.py [--designs LIST] [--threads 1,2]
                                     [--duration 0.5] [--profile vtd-2015]
"""
import argparse
import sys

from tabulate import tabulate

from harness import designs as designmod
from harness import sweep
from harness.bench import Bench
from harness.config import defaults, parse_threads
from harness.diagnostics import attributed
from harness.report import header
from harness.results import machine

# the named parts that are not the design's own steps
GROUPS = {"harness": ("loop", "tick"), "--diag": ("diag_timing", "diag_histograms"),
          "CPU lost": ("preempted", "stalls")}
DEFAULT = ("direct,bitmap,pools,rbtree,magazines,linux-2008,peleg-2015,linux-6.7,fujita-bitmap,"
           "power-pools")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default=DEFAULT)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--duration", type=float, default=0.5)
    ap.add_argument("--profile", default="vtd-2015")
    args = ap.parse_args()
    names = args.designs.split(",")
    threads = parse_threads(args.threads)
    o = defaults()
    o.update(threads=threads, duration=args.duration, warmup=0.1, repeats=1, diag=True,
             profile=args.profile)
    rows = []
    with Bench(o, [designmod.resolve(n) for n in names]) as bench:
        for i, n in enumerate(names):
            for t in threads:
                p = sweep.measure(bench, i, t, 1)
                b = p["breakdown_ns"]
                ns = {k: sum(b.get(x, 0.0) for x in xs) for k, xs in GROUPS.items()}
                steps = attributed(b) * b["total"] - sum(ns.values())
                # the I/O as it runs without --diag: its cost named, taken off
                bare = b["total"] - ns["--diag"]
                rows.append([n, "%d%s" % (t, "!" if p["disturbed"] else ""),
                             "%.1f" % b["total"], "%.1f%%" % (100 * attributed(b)),
                             "%.1f%%" % (100 * steps / bare)]
                            + ["%.1f" % ns[k] for k in GROUPS] + ["%.1f" % b.get("unnamed", 0.0)])
        cpn = bench.cycles_per_ns
    print(header(machine(cpn)) + "; profile " + args.profile)
    print(tabulate(rows, headers=["design", "threads", "ns per I/O", "named", "steps"]
                   + ["%s ns" % k for k in GROUPS] + ["unnamed ns"], disable_numparse=True))
    print("one window of %.1f s each, --diag; ! a worker was preempted in the window; named: "
          "every part of the breakdown, of the I/O; steps: the design's own, of the I/O less "
          "--diag's cost (as it runs without --diag)" % args.duration)


if __name__ == "__main__":
    sys.exit(main())
