"""`replay --timing` of every allocator on request traces: the loop's ns per
request, median of several rounds, with a hash of the answers.

    python benchmarks/replay_timing.py [--trace FILE...] [--rounds 5]
                                       [--allocators LIST] [--pages 1048576]
                                       [--bitmap-pages 262144]
                                       [--requests 300000] [--live 3000]
                                       [--max-pages 64] [--cpus 4]

Traces are in format v1, plain or gzipped; without --trace one long random
trace is generated (--requests, --live, --max-pages, --cpus shape it).
Each figure is what `iommu-stress replay TRACE --timing` reports, the
compiled loop alone, so it can be set beside another implementation's
figure on the same trace; "answers sha1" is the sha1 of the replay's
output (`<tag> <pfn>` per allocation), so that their answers can be
compared too.  Rounds run every allocator in turn, so that drift of the
machine hits them alike.
"""
import gzip
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from tabulate import tabulate

from _common import Failed, Parser, machine_line, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = re.compile(r"replay: ([0-9.]+) ns/request(?: over ([0-9]+) requests)?")


def known_allocators():
    """allocator[:variant] for everything `replay` accepts, from the
    registry, so that a new allocator is measured unasked."""
    import allocators
    from harness.replay import replayable
    out = []
    for name in replayable():
        variants = allocators.module(name).VARIANTS
        out += [name + ":" + v for v in variants] if variants else [name]
    return out


def plain_trace(path, tmpdir):
    """A path `replay` can read: the file itself, or its gunzipped copy."""
    if not os.path.isfile(path):
        raise Failed("--trace %s: no such file" % path, 2)
    if not path.endswith(".gz"):
        return os.path.abspath(path)
    fd, out = tempfile.mkstemp(suffix=".trace", dir=tmpdir)
    try:
        with gzip.open(path, "rb") as src, os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as e:
        raise Failed("--trace %s: cannot gunzip: %s" % (path, e), 2) from None
    return out


def replay(trace, shown, alloc, pages, bitmap_pages):
    """One `replay --timing`: (ns/request, requests or None, sha1 of stdout)."""
    name, _, variant = alloc.partition(":")
    cmd = [sys.executable, "-m", "harness.cli", "replay", trace, "--allocator", name,
           "--pages", str(bitmap_pages if name == "bitmap" else pages), "--timing"]
    if variant:
        cmd += ["--variant", variant]
    # run from the project root, so that this checkout's harness is the one run
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    if r.returncode != 0:
        raise Failed("%s on %s: %s" % (alloc, shown, err[-1] if err
                                        else "exit status %d" % r.returncode))
    m = next((m for m in map(TIMING.search, reversed(err)) if m), None)
    if m is None:
        raise Failed("%s on %s: no 'replay: X ns/request' on stderr" % (alloc, shown))
    count = int(m.group(2)) if m.group(2) else None
    return float(m.group(1)), count, hashlib.sha1(r.stdout).hexdigest()


def main():
    known = known_allocators()
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", nargs="+", metavar="FILE",
                    help="trace files, format v1, plain or .gz (default: a random one)")
    ap.add_argument("--rounds", type=int, default=5, metavar="N",
                    help="replays of each trace by each allocator; the median is shown")
    ap.add_argument("--allocators", metavar="LIST",
                    help="allocator[:variant] list (default: all `replay` accepts: %s)"
                         % ",".join(known))
    ap.add_argument("--pages", type=int, default=1 << 20, metavar="N",
                    help="IOVA space in pages (default: %(default)s)")
    ap.add_argument("--bitmap-pages", type=int, default=1 << 18, metavar="N",
                    help="bitmap's space, the smaller GART aperture (default: %(default)s)")
    ap.add_argument("--requests", type=int, default=300000, metavar="N")
    ap.add_argument("--live", type=int, default=3000, metavar="N")
    ap.add_argument("--max-pages", type=int, default=64, metavar="N")
    ap.add_argument("--cpus", type=int, default=4, metavar="N")
    args = ap.parse_args()
    if args.rounds < 1:
        raise Failed("--rounds must be at least 1", 2)
    allocs = [a for a in (args.allocators.split(",") if args.allocators else known) if a]
    if not allocs:
        raise Failed("--allocators: empty list", 2)

    times = {}
    counts = {}
    hashes = {}
    with tempfile.TemporaryDirectory(prefix="replay-timing-") as tmpdir:
        traces = []         # (shown name, path replay reads)
        if args.trace:
            for path in args.trace:
                traces.append((path, plain_trace(path, tmpdir)))
        else:
            from harness.trace import random_trace
            try:
                text = random_trace(7, args.requests, args.live, args.max_pages, args.cpus)
            except ValueError as e:
                raise Failed(str(e), 2) from None
            path = os.path.join(tmpdir, "random.trace")
            with open(path, "w") as fh:
                fh.write(text)
            traces.append(("random(seed=7,n=%d,live=%d,pages=1..%d,cpus=%d)"
                           % (args.requests, args.live, args.max_pages, args.cpus), path))
        print("the first round compiles each allocator's replay once (it is not timed)",
              file=sys.stderr, flush=True)
        for r in range(args.rounds):
            print("round %d of %d" % (r + 1, args.rounds), file=sys.stderr, flush=True)
            for t, (shown, path) in enumerate(traces):
                for a in allocs:
                    ns, n, sha = replay(path, shown, a, args.pages, args.bitmap_pages)
                    times.setdefault((t, a), []).append(ns)
                    counts[(t, a)] = n
                    hashes.setdefault((t, a), set()).add(sha)

    print(machine_line())
    rows = []
    for t, (shown, _) in enumerate(traces):
        for a in allocs:
            xs = times[(t, a)]
            shas = hashes[(t, a)]
            n = counts[(t, a)]
            rows.append([shown, a, "%.1f" % statistics.median(xs), "%.1f" % min(xs),
                         "%.1f" % max(xs), "?" if n is None else str(n),
                         shas.pop() if len(shas) == 1 else "differs between rounds"])
    print(tabulate(rows, headers=["trace", "allocator", "ns/request", "min", "max",
                                  "requests", "answers sha1"], disable_numparse=True))
    print("median of %d rounds; the replay loop alone, 1 thread; --pages %d, bitmap %d"
          % (args.rounds, args.pages, args.bitmap_pages))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
