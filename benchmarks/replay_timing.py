"""`replay --timing` for every allocator on one long random trace.

    python benchmarks/replay_timing.py [--requests 300000] [--live 3000]
"""
import argparse
import os
import subprocess
import sys
import tempfile

from harness.trace import random_trace


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300000)
    ap.add_argument("--live", type=int, default=3000)
    ap.add_argument("--max-pages", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=4)
    args = ap.parse_args()
    text = random_trace(7, args.requests, args.live, args.max_pages, args.cpus)
    with tempfile.NamedTemporaryFile("w", suffix=".trace", delete=False) as f:
        f.write(text)
    try:
        print("trace: %d requests, up to %d live, 1..%d pages, %d CPUs"
              % (args.requests, args.live, args.max_pages, args.cpus))
        for alloc in ("bitmap", "pools", "rbtree", "magazines"):
            for depot in (("fixed", "list", "prealloc") if alloc == "magazines" else (None,)):
                cmd = [sys.executable, "-m", "harness.cli", "replay", f.name,
                       "--allocator", alloc, "--timing"]
                if depot:
                    cmd += ["--depot", depot]
                r = subprocess.run(cmd, capture_output=True, text=True)
                line = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "(nothing)"
                print("%-20s %s" % (alloc + (":" + depot if depot else ""), line))
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main())
