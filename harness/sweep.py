"""A sweep: points times repeats over one bench, with progress and results.

The bench (harness/bench.py) measures windows and hands back raw counters;
readout (harness/readout.py) turns them into figures; this module only
decides what to measure, in which order, and where the points go: a results
file rewritten after every point, so that a sweep cut short keeps what it
measured.  A signal does not cut a write in half: it is taken once the file
is whole (harness/signals.py).
"""
import itertools
import sys
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from harness import readout, signals, stats
from harness.bench import PointFailed
from harness.errors import UsageError

# tqdm's monitor thread would take the signals the main thread blocks
# (signals.deferred) and have their handlers run all the same
tqdm.monitor_interval = 0

__all__ = ["PointFailed", "Repeats", "measure", "run"]

# A relaunch forks the round's workers anew.  It is made where that costs at
# most LAUNCH_SHARE of the last round's windows, or LAUNCH_FREE_S in all:
# at 1024 workers on 2 cores a fork of them all takes some 6 s against a
# round of 1.4 s, and the windows of such a point stay in one launch.
LAUNCH_SHARE = 0.25
LAUNCH_FREE_S = 0.25


@dataclass
class Repeats:
    """How many windows a point takes: `fixed` of them, or (fixed None)
    between `least` and `most`, until the median's 95% interval is within
    `target` of it; and over how many launches (a fresh segment and fresh
    workers each, Bench.relaunch) at least."""
    fixed: int = None
    least: int = 6
    most: int = 30
    target: float = 0.02
    launches: int = 1

    @classmethod
    def of(cls, opts):
        launches = opts["launches"]
        if opts["repeats"] != "auto":
            return cls(fixed=opts["repeats"], launches=launches)
        if opts["min_repeats"] > opts["max_repeats"]:
            raise UsageError("--min-repeats %d is over --max-repeats %d"
                             % (opts["min_repeats"], opts["max_repeats"]))
        return cls(None, opts["min_repeats"], opts["max_repeats"], opts["target_ci"], launches)

    def more(self, runs):
        """Whether a point with windows `runs` takes another."""
        if self.fixed is not None:
            return len(runs) < self.fixed
        if len(runs) < self.least:
            return True
        return len(runs) < self.most and not self.reached(runs)

    def reached(self, runs):
        hw = stats.half_width(runs)
        _, _, level = stats.median_ci(runs)
        return hw is not None and level >= stats.LEVEL and hw <= self.target

    def per_launch(self):
        """Rounds of windows in one launch: the windows a point is sure to
        take, spread evenly over the launches (a point of --repeats 3
        --launches 3 takes each window in a launch of its own); under
        --repeats auto, the rounds past --min-repeats go on launching at
        that pace."""
        sure = self.fixed if self.fixed is not None else self.least
        return max(1, -(-sure // max(1, self.launches)))

    def outcome(self, runs):
        """What a point of --repeats auto records of it."""
        if self.fixed is not None:
            return None
        return {"target_ci": self.target, "reached": bool(self.reached(runs)),
                "half_width": stats.half_width(runs), "windows": len(runs)}


def measure(bench, i, threads, repeats):
    """A point of design i at `threads` workers: `repeats` windows."""
    windows = [readout.window(bench.window(i, threads)) for _ in range(repeats)]
    return readout.point(bench.designs[i], threads, windows,
                         oversubscribed=bench.busy(threads) > len(bench.cores))


def groups(todo):
    """`todo`'s (threads, design index) gathered by thread count, in order."""
    out = []
    for t, i in todo:
        if out and out[-1][0] == t:
            out[-1][1].append(i)
        else:
            out.append((t, [i]))
    return out


def run(bench, todo, repeats, results, on_error="stop", prog="iommu-stress", order_seed=None):
    """Measure every (threads, design index) of `todo` into `results` (a
    results.ResultsFile).  At each thread count the designs' windows
    are interleaved: round after round, each design that wants another
    window takes one, in an order shuffled anew each round by a generator
    seeded with `order_seed`, so that the machine's drift hits every
    design alike.  `repeats` is a Repeats or a number of windows.  The
    points of a thread count are recorded once all their windows are
    measured.  Every `repeats.per_launch()` rounds the bench is launched
    anew (a fresh segment and fresh workers), so that a point's windows
    span launches: two launches differ by more than two windows of one
    do, and `compare` tests the launches, not the windows.  A failed
    point is recorded and, with on_error "stop", ends the sweep.  Returns
    True if every point was measured."""
    if not isinstance(repeats, Repeats):
        repeats = Repeats(fixed=repeats)
    rng = np.random.default_rng(order_seed if order_seed is not None else 1)
    per = repeats.per_launch()
    one_launch = {}           # thread count -> the relaunch it did without (s)
    ok = True
    seq = 0                   # windows measured so far in the run

    def record(what, *args):
        signals.check()
        if results.path is not None:
            bench.say("writing results")
        with signals.deferred():
            what(*args)

    bar = tqdm(total=len(todo), unit="point", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)
    try:
        for t, designs in groups(todo):
            windows = {i: [] for i in designs}
            at = {i: [] for i in designs}
            launch = {i: [] for i in designs}
            failed = set()
            first = bench.launches
            round_s = None
            for rnd in itertools.count():
                want = [i for i in designs if i not in failed
                        and repeats.more([w["ops_per_sec"] for w in windows[i]])]
                if not want:
                    break
                if rnd and rnd % per == 0:
                    cost = bench.relaunch_cost(t)
                    if cost is None or cost <= max(LAUNCH_SHARE * round_s, LAUNCH_FREE_S):
                        bar.set_description("launching anew")
                        bench.relaunch()
                    elif t not in one_launch:
                        one_launch[t] = cost
                t0 = time.monotonic()
                for i in rng.permutation(want).tolist():
                    bar.set_description("%s at %d threads" % (bench.designs[i].name, t))
                    try:
                        windows[i].append(readout.window(bench.window(i, t)))
                        at[i].append(seq)
                        launch[i].append(bench.launches - first)
                        seq += 1
                    except PointFailed as e:
                        ok = False
                        failed.add(i)
                        record(results.fail, str(e))
                        tqdm.write("%s: point failed: %s" % (prog, e), file=sys.stderr)
                        if on_error == "stop":
                            return False
                round_s = time.monotonic() - t0
            if t in one_launch:
                tqdm.write("%s: at %d workers the windows stay in one launch: forking them anew "
                           "would take %.1f s, over a quarter of a round's windows (compare "
                           "tests such points window by window)" % (prog, t, one_launch[t]),
                           file=sys.stderr)
            for i in designs:
                bar.update(1)
                if i in failed:
                    continue
                pt = readout.point(bench.designs[i], t, windows[i],
                                   oversubscribed=bench.busy(t) > len(bench.cores))
                pt["window_order"] = at[i]
                pt["window_launch"] = launch[i]
                auto = repeats.outcome(pt["runs"])
                if auto is not None:
                    pt["repeats_auto"] = auto
                results.doc["timings"] = dict(bench.timings)
                record(results.add, pt)
                if readout.stall_warning(pt):
                    tqdm.write("%s: %s" % (prog, readout.stall_warning(pt)), file=sys.stderr)
        if ok:
            record(results.finish)
    finally:
        bar.close()
    return ok
