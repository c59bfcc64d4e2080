"""Workers: a dead worker fails its point by name and leaves nothing."""
import os
import signal
import threading
import time

import psutil
import pytest

from harness import designs
from harness.config import defaults
from harness.sweep import PointFailed, Sweep



def opts(**kw):
    o = defaults()
    o.update(threads=[4], duration=3.0, warmup=0.0, repeats=1)
    o.update(kw)
    return o


def test_killed_worker_fails_the_point_by_name(no_leaks):
    d = [designs.resolve("bitmap")]
    with Sweep(opts(), d) as sw:
        sw.start_workers()
        victim = sw.pool.procs[2].pid

        def kill():
            time.sleep(0.5)
            os.kill(victim, signal.SIGKILL)

        threading.Thread(target=kill).start()
        t0 = time.monotonic()
        with pytest.raises(PointFailed, match=r"worker 2 died \(killed by SIGKILL\) at bitmap, 4 threads"):
            sw.window(0, 4)
        assert time.monotonic() - t0 < 0.5 + 2.0     # noticed within 2 s
        assert sw.pool is None                      # the pool was replaced
        # the next point runs on fresh workers
        r = sw.window(0, 2)
        assert r["ops_per_sec"] > 0
    assert not psutil.Process().children(recursive=True)


def test_workers_are_pinned_round_robin():
    d = [designs.resolve("direct")]
    with Sweep(opts(threads=[3], duration=0.05), d) as sw:
        sw.window(0, 3)
        cores = sorted(os.sched_getaffinity(0))
        from harness.workers import C_CORE
        from harness.dma import LINE
        got = [int(sw.env.cnt[w * LINE + C_CORE]) for w in range(3)]
        assert got == [cores[w % len(cores)] for w in range(3)]
    assert not psutil.Process().children(recursive=True)
