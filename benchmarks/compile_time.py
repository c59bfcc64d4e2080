"""What a new user waits for: the CPU seconds of compiling each design's
loop into an empty cache, in one or more checkouts of the project,
interleaved in one run, with the ratio last / first.

    python benchmarks/compile_time.py [--tree CHECKOUT ...]
                                      [--designs bitmap+strict,peleg-2015]
                                      [--rounds 2]

Without --tree it measures this checkout alone.  Each measurement is one
`run` of a design, 1 worker, a 50 ms window, in a process of its own with
an empty numba cache; its CPU time (user and system, the compiling children
included) is what is reported.  CPU time rather than wall time: the compile
is single-threaded per loop, and CPU time moves less than wall time with
what else the machine runs.  Rounds alternate the trees, and which goes
first.
"""
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

from tabulate import tabulate

from _common import Failed, Parser, machine_line, run
from trees import labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = "bitmap+strict,peleg-2015"
RUN = ["run", "--threads", "1", "--duration", "0.05", "--warmup", "0", "--repeats", "1",
       "--profile", "none"]


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def compile_once(tree, design):
    """CPU seconds of one run of `design` in `tree` with an empty cache."""
    cache = tempfile.mkdtemp(prefix="compile-time-")
    env = dict(os.environ, PYTHONPATH=tree, IOMMU_STRESS_CACHE=cache)
    before = children_cpu()
    try:
        r = subprocess.run([sys.executable, "-m", "harness.cli"] + RUN + ["--design", design],
                           cwd=tree, env=env, capture_output=True, text=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
        raise Failed("%s in %s: %s" % (design, tree, last))
    return children_cpu() - before


def main():
    ap = Parser(description="CPU seconds of a design's first run (its compile), per checkout")
    ap.add_argument("--tree", action="append", metavar="CHECKOUT",
                    help="a checkout of the project (repeatable; default: this one)")
    ap.add_argument("--designs", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not 1 <= args.rounds <= 20:
        raise Failed("--rounds: %d out of range 1..20" % args.rounds, 2)
    trees = [os.path.abspath(t) for t in (args.tree or [ROOT])]
    for t in trees:
        if not os.path.isfile(os.path.join(t, "harness", "cli.py")):
            raise Failed("--tree %s: not a checkout of the project (no harness/cli.py)" % t, 2)
    designs = [d for d in args.designs.split(",") if d]
    if not designs:
        raise Failed("--designs: give at least one design", 2)
    names = labels(trees)
    took = {(n, d): [] for n in names for d in designs}
    for r in range(args.rounds):
        order = list(zip(names, trees))
        if r % 2:
            order.reverse()
        for name, tree in order:
            for d in designs:
                print("round %d of %d: %s, %s" % (r + 1, args.rounds, name, d),
                      file=sys.stderr, flush=True)
                took[(name, d)].append(compile_once(tree, d))
    print(machine_line())
    head = ["design"] + ["%s CPU s" % n for n in names]
    if len(names) > 1:
        head.append("%s / %s" % (names[-1], names[0]))
    rows = []
    for d in designs:
        med = [statistics.median(took[(n, d)]) for n in names]
        row = [d] + ["%.1f" % m for m in med]
        if len(names) > 1:
            row.append("%.3f" % (med[-1] / med[0]))
        rows.append(row)
    print(tabulate(rows, headers=head))
    print("median of %d rounds; each a run of 1 worker, 50 ms, with an empty cache: the "
          "CPU time is almost all the loop's compile" % args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
