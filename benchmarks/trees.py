"""Single-worker cost per I/O of each design in two or more checkouts of the
project, measured interleaved in one run, with the ratio last / first.

    python benchmarks/trees.py --tree OLD_CHECKOUT --tree NEW_CHECKOUT
                               [--designs LIST] [--duration 0.5] [--repeats 5]
                               [--profile none]

A checkout is any directory holding the project, e.g. one made with
`git worktree add ../before <commit>`.  The Python API changes between
versions, the command line does not: each tree is driven through
`python -m harness.cli sweep`, with its own sources first on the import
path.  One process per tree and round measures every design, so start-up is
paid once per round.  Rounds alternate the trees, and which of them goes
first, so that drift of the machine hits them alike.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

from tabulate import tabulate

from _common import Failed, Parser, machine_line, run

DEFAULT = ("direct,bitmap,pools,rbtree,magazines,linux-2008,peleg-2015,linux-6.7,"
           "fujita-bitmap")
# long enough for every design to compile and run its loop, short enough
# not to matter beside the compile
WARMUP_DURATION = 0.05


def git(tree, *args):
    r = subprocess.run(["git", "-C", tree] + list(args), capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def label(tree):
    """The tree's short commit, "-dirty" with changes to tracked files (as
    `git describe --dirty` counts them), else its directory's name."""
    head = git(tree, "rev-parse", "--short", "HEAD")
    if not head:
        return os.path.basename(os.path.abspath(tree)) or tree
    status = git(tree, "status", "--porcelain", "--untracked-files=no")
    return head + "-dirty" if status else head


def labels(trees):
    # an A/A run (one tree given twice) is a fair way to see the noise;
    # its columns still need telling apart
    out = []
    for t in trees:
        name = label(t)
        if name in out:
            name += "#%d" % (sum(1 for o in out if o.split("#")[0] == name) + 1)
        out.append(name)
    return out


def measure(tree, name, designs, duration, warmup, profile, tmpdir):
    """One sweep of every design at 1 worker in `tree`: {design: ops/s},
    in the order the tree reports them."""
    fd, out = tempfile.mkstemp(suffix=".json", dir=tmpdir)
    os.close(fd)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tree] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, "-m", "harness.cli", "sweep", "--designs", designs,
           "--threads", "1", "--duration", repr(duration), "--warmup", repr(warmup),
           "--repeats", "1", "--profile", profile, "--json", out]
    try:
        r = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines()
            raise Failed("%s (%s): %s" % (name, tree, lines[-1] if lines
                                          else "exit status %d" % r.returncode))
        try:
            with open(out) as fh:
                doc = json.load(fh)
            points = {p["design"]: float(p["ops_per_sec"])
                      for p in doc["points"] if int(p.get("threads", 1)) == 1}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise Failed("%s (%s): unreadable results: %s" % (name, tree, e)) from None
    finally:
        os.unlink(out)
    if not points or min(points.values()) <= 0:
        raise Failed("%s (%s): no throughput in its results" % (name, tree))
    return points


def spread(xs):
    m = statistics.median(xs)
    return (max(xs) - min(xs)) / m if m else 0.0


def main(argv=None):
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], metavar="DIR",
                    help="a checkout of the project; give two or more")
    ap.add_argument("--designs", default=DEFAULT, metavar="LIST")
    ap.add_argument("--duration", type=float, default=0.5, metavar="SECONDS")
    ap.add_argument("--repeats", type=int, default=5, metavar="N",
                    help="rounds; each measures every design once in every tree")
    ap.add_argument("--profile", default="none",
                    help="cost profile; 'none' measures the code alone")
    args = ap.parse_args(argv)
    if len(args.tree) < 2:
        raise Failed("give at least two --tree DIR to compare", 2)
    if not args.duration > 0:
        raise Failed("--duration must be above 0", 2)
    if args.repeats < 1:
        raise Failed("--repeats must be at least 1", 2)
    trees = []
    for t in args.tree:
        if not os.path.isdir(t):
            raise Failed("--tree %s: not a directory" % t, 2)
        if not os.path.isfile(os.path.join(t, "harness", "cli.py")):
            raise Failed("--tree %s: no harness/cli.py, not a checkout of the project" % t, 2)
        trees.append(os.path.abspath(t))
    names = labels(trees)

    runs = [dict() for _ in trees]      # per tree: {design: [ops/s per round]}
    order = None
    with tempfile.TemporaryDirectory(prefix="trees-") as tmpdir:
        for t, n in zip(trees, names):
            print("warming up %s (compiles its sources once, can take a minute)" % n,
                  file=sys.stderr, flush=True)
            got = measure(t, n, args.designs, WARMUP_DURATION, 0, args.profile, tmpdir)
            if order is None:
                order = list(got)
            elif set(got) != set(order):
                raise Failed("%s (%s): measures designs %s, %s measures %s"
                             % (n, t, ",".join(got), names[0], ",".join(order)))
        for r in range(args.repeats):
            idx = list(range(len(trees)))
            if r % 2:
                idx.reverse()
            print("round %d of %d" % (r + 1, args.repeats), file=sys.stderr, flush=True)
            for i in idx:
                got = measure(trees[i], names[i], args.designs, args.duration, 0.1,
                              args.profile, tmpdir)
                for d in order:
                    runs[i].setdefault(d, []).append(got[d])

    print(machine_line() + "; profile " + args.profile)
    headers = ["design"]
    for n in names:
        headers += ["%s ns/I/O" % n, "spread"]
    headers += ["%s / %s" % (names[-1], names[0]), "spread"]
    rows = []
    for d in order:
        row = [d]
        for i in range(len(trees)):
            xs = runs[i][d]
            row += ["%.1f" % (1e9 / statistics.median(xs)), "%.1f%%" % (100 * spread(xs))]
        first, last = runs[0][d], runs[-1][d]
        ratio = statistics.median(first) / statistics.median(last)
        # the relative spreads of a quotient's terms add
        row += ["%.3f" % ratio, "%.1f%%" % (100 * (spread(first) + spread(last)))]
        rows.append(row)
    print(tabulate(rows, headers=headers, disable_numparse=True))
    print("1 worker; median of %d rounds of %.2f s per design; ratio = ns/I/O of %s / %s: "
          "below 1, %s is faster; a difference inside the spread is noise"
          % (args.repeats, args.duration, names[-1], names[0], names[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
