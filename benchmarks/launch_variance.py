"""How much two launches of the same sweep differ, against how much two
windows of one launch do: the reason `compare` tests launches, not windows.

Runs `iommu-stress sweep` --runs times (default 2), each point over
--launches launches of --windows windows, and prints per point:
- the spread of the windows within a launch (the sd of their logs, pooled),
- the spread of the launches' medians (the sd of their logs),
- what that spread would be were the windows independent draws (the
  window spread over the square root of the windows per launch), and the
  ratio of the two: over 1, a launch's windows share luck of their own;
then, the runs compared pairwise at the table's level, what a test on the
windows (Mann-Whitney U) and one on the launches (Welch's t) say of two
runs of the same sweep.

    python benchmarks/launch_variance.py --designs direct,bitmap --threads 1,2
"""
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from benchmarks._common import Failed, Parser, machine_line, run  # noqa: E402
from harness import stats  # noqa: E402


def sweep(args, path):
    cmd = [sys.executable, "-m", "harness.cli", "sweep", "--designs", args.designs,
           "--threads", args.threads, "--launches", str(args.launches),
           "--repeats", str(args.launches * args.windows), "--duration", str(args.duration),
           "--json", path]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]
        raise Failed("the sweep failed: %s" % last)
    with open(path) as f:
        return {(p["design"], p["threads"]): p for p in json.load(f)["points"]}


def spreads(p):
    """(sd of log windows within a launch, pooled; sd of log launch
    medians; windows per launch)."""
    runs, launch = np.log(p["runs"]), np.asarray(p["window_launch"])
    groups = [runs[launch == k] for k in sorted(set(launch.tolist()))]
    within = math.sqrt(np.mean([np.var(g, ddof=1) for g in groups if len(g) > 1]))
    medians = np.log(stats.launch_medians(p["runs"], p["window_launch"]))
    return within, float(np.std(medians, ddof=1)), len(groups[0])


def main():
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--designs", default="direct,bitmap")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--launches", type=int, default=4)
    ap.add_argument("--windows", type=int, default=3, help="windows per launch (at least 2)")
    ap.add_argument("--duration", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if args.launches < 2 or args.windows < 2 or args.runs < 1:
        raise Failed("--launches and --windows: at least 2; --runs: at least 1", 2)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        runs = [sweep(args, os.path.join(tmp, "run%d.json" % r)) for r in range(args.runs)]
    keys = list(runs[0])
    print("\n%-22s %-8s %12s %16s %22s %7s" % ("point", "run", "window sd", "launch-median sd",
                                              "if windows independent", "ratio"))
    for k in keys:
        for r, pts in enumerate(runs):
            within, between, w = spreads(pts[k])
            alone = within / math.sqrt(w)
            print("%-22s %-8d %11.2f%% %15.2f%% %21.2f%% %7.1f" % (
                "%s at %d" % k, r + 1, 100 * within, 100 * between, 100 * alone,
                between / alone if alone else float("inf")))
    if args.runs < 2:
        return 0
    alpha = (1 - stats.LEVEL) / len(keys)
    print("\nthe runs compared (B/A, each point at p < %.4g, the table's level):" % alpha)
    print("%-22s %-6s %7s  %-34s %s" % ("point", "runs", "B/A", "windows (Mann-Whitney U)",
                                       "launches (Welch's t)"))
    found = {"windows": 0, "launches": 0}
    for (i, a), (j, b) in itertools.combinations(enumerate(runs, 1), 2):
        for k in keys:
            w = stats.compare(a[k]["runs"], b[k]["runs"], alpha=alpha)
            lw = stats.compare(a[k]["runs"], b[k]["runs"], a[k]["window_launch"],
                               b[k]["window_launch"], alpha)
            found["windows"] += w["verdict"] in ("faster", "slower")
            found["launches"] += lw["verdict"] in ("faster", "slower")
            print("%-22s %-6s %7.3f  %-34s %s" % ("%s at %d" % k, "%d-%d" % (i, j), w["ratio"],
                                                 "%s (p=%.2g)" % (w["verdict"], w["p"] or 1),
                                                 "%s (p=%.2g)" % (lw["verdict"], lw["p"])))
    pairs = len(keys) * math.comb(args.runs, 2)
    print("\nof %d comparisons of the same sweep, a difference called: on the windows %d, "
          "on the launches %d" % (pairs, found["windows"], found["launches"]))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
