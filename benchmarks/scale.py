"""The harness at its limits: compile time cold and warm, time from command
to first measurement, memory (PSS) at 1, 64, 256 and 1024 workers, and a
sweep's wall time against the sum of its windows.

    python benchmarks/scale.py [--workers 1,64,256,1024] [--skip-cold] [--repeats 3]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil


def run(cmd, env=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t0, r


def pss_of_tree(pid):
    """PSS of a process and all its descendants, bytes."""
    total = 0
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def peak_pss(cmd):
    """Run cmd, sampling the PSS of its process tree; (peak bytes, seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        peak = max(peak, pss_of_tree(p.pid))
        time.sleep(0.5)
    return peak, time.perf_counter() - t0, p.returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,64,256,1024")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="windows per point of the sweep")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "harness.cli"]
    one = cli + ["run", "--design", "peleg-2015", "--threads", "1", "--duration", "0.2",
                 "--warmup", "0", "--repeats", "1"]
    if not args.skip_cold:
        cache = tempfile.mkdtemp()
        env = dict(os.environ, IOMMU_STRESS_CACHE=cache)
        cold, r = run(one, env)
        warm, r2 = run(one, env)
        shutil.rmtree(cache, ignore_errors=True)
        print("command to first result, cold numba cache: %.1f s (exit %d)" % (cold, r.returncode))
        print("command to first result, warm numba cache: %.1f s (exit %d)" % (warm, r2.returncode))
    for n in [int(x) for x in args.workers.split(",")]:
        # a 2 s window: the 0.5 s sampler must see the steady state
        cmd = cli + ["run", "--design", "peleg-2015", "--threads", str(n), "--duration", "2",
                     "--warmup", "0", "--repeats", "1"]
        peak, secs, rc = peak_pss(cmd)
        print("%5d workers: peak PSS %.0f MiB (%.2f MiB a worker), %.1f s, exit %d"
              % (n, peak / 2**20, peak / 2**20 / max(n, 1), secs, rc))
    # issue 6's budget: at most 1.3 x the sum of the windows (each with its
    # warm-up: the loop runs the same, only its counters are left out) plus
    # the start-up (compiling and forking the workers once)
    out = tempfile.mktemp(suffix=".json")
    cmd = cli + ["sweep", "--threads", "1-1024", "--designs", "direct,peleg-2015",
                 "--duration", "0.5", "--repeats", str(args.repeats), "--json", out]
    peak, secs, rc = peak_pss(cmd)
    doc = json.load(open(out))
    o = doc["options"]
    runs = sum(len(p["runs"]) for p in doc["points"])
    windows = runs * (o["duration"] + o["warmup"])
    start = doc["timings"]["compile_s"] + doc["timings"]["fork_s"]
    budget = 1.3 * windows + start
    print("%s (%d windows): %.1f s wall, exit %d; peak PSS %.0f MiB" % (
        " ".join(cmd[3:-2]), runs, secs, rc, peak / 2**20))
    print("  windows %.1f s (%.1f measured + %.1f warm-up), compile %.1f s, fork %.1f s"
          % (windows, runs * o["duration"], runs * o["warmup"], doc["timings"]["compile_s"],
             doc["timings"]["fork_s"]))
    print("  rest %.1f s = %.2f s a window; budget 1.3 x windows + start-up = %.1f s: %s"
          % (secs - windows - start, (secs - windows - start) / runs, budget,
             "met" if secs <= budget else "NOT met"))
    os.unlink(out)


if __name__ == "__main__":
    sys.exit(main())
