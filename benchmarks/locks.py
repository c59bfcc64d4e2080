"""One design under each lock kind, side by side in one run: throughput
at each worker count, the kinds' windows interleaved, and each kind's
throughput over the first kind's.

    python benchmarks/locks.py [--design rbtree] [--locks qspinlock,ticket,mcs]
                               [--threads 1,2,4] [--duration 0.5] [--rounds 3]
                               [--profile none]

The design is measured through `python -m harness.cli sweep`, one process
per kind and round (the kind is a run's option); rounds rotate which kind
goes first, so that drift of the machine hits the kinds alike.  Each figure
is the median over the rounds of the sweep's own median; `!` marks a figure
of which some round was disturbed (a worker preempted, time stolen).
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

from tabulate import tabulate

from _common import Failed, Parser, machine_line, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep(design, lock, args, path):
    cmd = [sys.executable, "-m", "harness.cli", "sweep", "--designs", design, "--lock", lock,
           "--threads", args.threads, "--duration", str(args.duration), "--repeats", "1",
           "--warmup", "0.1", "--profile", args.profile, "--json", path]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
        raise Failed("%s under %s: %s" % (design, lock, last))
    with open(path) as f:
        return {p["threads"]: p for p in json.load(f)["points"]}


def main():
    from hwmodel.locks import KINDS
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", default="rbtree")
    ap.add_argument("--locks", default="qspinlock,ticket,mcs")
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--duration", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", default="none")
    args = ap.parse_args()
    kinds = args.locks.split(",")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise Failed("unknown lock %r: choose from %s" % (bad[0], ", ".join(KINDS)), 2)
    if not 1 <= args.rounds <= 100:
        raise Failed("--rounds %d: out of range 1..100" % args.rounds, 2)
    if not 0 < args.duration <= 60:
        raise Failed("--duration %g: out of range (0, 60] seconds" % args.duration, 2)
    got = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for k in order:
                got[k].append(sweep(args.design, k, args, os.path.join(d, "%s.json" % k)))
    threads = sorted(got[kinds[0]][0])
    rows = []
    for t in threads:
        row = [t]
        base = None
        for k in kinds:
            pts = [g[t] for g in got[k]]
            ops = statistics.median(p["ops_per_sec"] for p in pts)
            mark = "!" if any(p.get("disturbed") for p in pts) else ""
            base = ops if base is None else base
            row += ["%.3fM%s" % (ops / 1e6, mark), "%.2f" % (ops / base)]
        rows.append(row)
    heads = ["threads"]
    for k in kinds:
        heads += [k + " ops/s", "/ " + kinds[0]]
    print(machine_line())
    print("%s, profile %s, %d rounds of %.1f s windows, kinds interleaved"
          % (args.design, args.profile, args.rounds, args.duration))
    print(tabulate(rows, headers=heads, disable_numparse=True))
    print("! some round of the figure was disturbed (a worker preempted, or time stolen)")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
