"""A sweep: points times repeats over one bench, with progress and results.

The bench (harness/bench.py) measures windows and hands back raw counters;
readout (harness/readout.py) turns them into figures; this module only
decides what to measure, in which order, and where the points go: a results
file rewritten after every point, so that a sweep cut short keeps what it
measured.  A signal does not cut a write in half: it is taken once the file
is whole (harness/signals.py).
"""
import sys

from tqdm import tqdm

from harness import readout, signals
from harness.bench import PointFailed

# tqdm's monitor thread would take the signals the main thread blocks
# (signals.deferred) and have their handlers run all the same
tqdm.monitor_interval = 0

__all__ = ["PointFailed", "measure", "run"]


def measure(bench, i, threads, repeats):
    """A point of design i at `threads` workers: `repeats` windows."""
    windows = [readout.window(bench.window(i, threads)) for _ in range(repeats)]
    return readout.point(bench.designs[i], threads, windows,
                         oversubscribed=bench.busy(threads) > len(bench.cores))


def run(bench, todo, repeats, results, on_error="stop", prog="iommu-stress"):
    """Measure every (threads, design index) of `todo` into `results` (a
    results.ResultsFile).  A failed point is recorded and, with on_error
    "stop", ends the sweep.  Returns True if every point was measured."""
    ok = True

    def record(what, *args):
        signals.check()
        if results.path is not None:
            bench.say("writing results")
        with signals.deferred():
            what(*args)

    bar = tqdm(total=len(todo), unit="point", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)
    try:
        for t, i in todo:
            bar.set_description("%s at %d threads" % (bench.designs[i].name, t))
            try:
                pt = measure(bench, i, t, repeats)
            except PointFailed as e:
                ok = False
                record(results.fail, str(e))
                tqdm.write("%s: point failed: %s" % (prog, e), file=sys.stderr)
                if on_error == "stop":
                    break
                continue
            finally:
                bar.update(1)
            results.doc["timings"] = dict(bench.timings)
            record(results.add, pt)
            if readout.stall_warning(pt):
                tqdm.write("%s: %s" % (prog, readout.stall_warning(pt)), file=sys.stderr)
        if ok:
            record(results.finish)
    finally:
        bar.close()
    return ok
