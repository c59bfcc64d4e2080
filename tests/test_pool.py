"""The pool of workers: a dead worker fails its point by name and leaves
nothing; a point wakes only its own workers; the workers keep the window."""
import os
import signal
import threading
import time

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import bench as benchmod
from harness import designs, pool, readout
from harness.abi import CTL_T_STOP
from harness.bench import Bench, PointFailed
from harness.loop import MODE_HANDOFF, MODE_RING
from harness.config import defaults


def opts(**kw):
    o = defaults()
    o.update(threads=[4], duration=3.0, warmup=0.0, repeats=1)
    o.update(kw)
    return o


def test_killed_worker_fails_the_point_by_name(no_leaks):
    d = [designs.resolve("bitmap")]
    with Bench(opts(), d) as sw:
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
        r = readout.window(sw.window(0, 2))
        assert r["ops_per_sec"] > 0
    assert not psutil.Process().children(recursive=True)


def test_workers_are_pinned_round_robin():
    d = [designs.resolve("direct")]
    with Bench(opts(threads=[3], duration=0.05), d) as sw:
        sw.window(0, 3)
        cores = sorted(os.sched_getaffinity(0))
        got = sw.env.cnt["core"][:3].tolist()
        assert got == [cores[w % len(cores)] for w in range(3)]
    assert not psutil.Process().children(recursive=True)


@settings(deadline=None)
@given(st.integers(1, 1 << 16))
def test_a_wake_of_n_workers_reaches_them_all_and_fewer_than_2n(n):
    mask = pool._groups_below(n)
    woken = [w for w in range(2 * n + 1) if pool._group(w) & mask]
    assert woken[:n] == list(range(n))
    assert len(woken) < 2 * n


def _wait_parked(procs):
    """Until every worker sleeps (its only sleep is the futex)."""
    end = time.monotonic() + 30
    while not all(psutil.Process(p.pid).status() == psutil.STATUS_SLEEPING for p in procs):
        assert time.monotonic() < end
        time.sleep(0.01)


def test_a_point_wakes_only_its_workers(monkeypatch, no_leaks):
    # no timed wake-up of a parked worker within the test
    monkeypatch.setattr(pool, "PARK_TIMEOUT", 600.0)
    d = [designs.resolve("direct")]
    with Bench(opts(threads=[8], duration=0.1), d) as sw:
        sw.window(0, 8)
        procs = sw.pool.procs
        _wait_parked(procs)
        switches = lambda: [psutil.Process(p.pid).num_ctx_switches().voluntary for p in procs]
        before = switches()
        sw.window(0, 1)
        _wait_parked(procs)
        after = switches()
        assert after[0] > before[0]
        assert after[1:] == before[1:]        # workers 1-7 slept through it
        r = readout.window(sw.window(0, 8))   # and still answer the next point
        assert len(r["per_worker_ops"]) == 8 and min(r["per_worker_ops"]) > 0


def test_the_workers_keep_the_window_when_the_parent_is_late(no_leaks):
    d = [designs.resolve("direct")]
    with Bench(opts(threads=[2], duration=0.2), d) as sw:
        sw.start_workers()
        on_time = sw.pool.sleep
        sw.pool.sleep = lambda s: on_time(s + 0.5)
        t0 = time.monotonic()
        r = readout.window(sw.window(0, 2))
        assert time.monotonic() - t0 >= 0.5        # it woke after the window's end
        assert r["window_s"] == pytest.approx(0.2, rel=1e-6)
        late = (sw.env.cnt["t_end"][:2] - sw.env.ctl[CTL_T_STOP]) / sw.cycles_per_ns / 1e9
        # each worker left its loop at the deadline, not when the parent woke
        assert max(late) < 0.2


def test_run_in_child_reports_how_the_child_ended():
    assert pool.run_in_child(lambda: None)
    assert not pool.run_in_child(lambda: 1 / 0)
    assert not psutil.Process().children()


def test_children_run_side_by_side_and_each_reports(tmp_path):
    def child(k):
        (tmp_path / ("start%d" % k)).touch()
        # both must be running at once: each waits for the other's mark
        end = time.monotonic() + 30
        while not (tmp_path / ("start%d" % (1 - k))).exists():
            assert time.monotonic() < end
            time.sleep(0.01)
        if k:
            raise RuntimeError("this one fails")

    took = pool.run_in_children([lambda: child(0), lambda: child(1)], parallel=2)
    assert took[0] is not None and took[0] >= 0
    assert took[1] is None
    assert not psutil.Process().children()


def test_children_are_killed_when_the_parent_is_stopped():
    started = time.monotonic()

    def interrupt(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            pool.run_in_children([lambda: time.sleep(60)] * 3, parallel=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 30
    assert not psutil.Process().children()


def test_loops_missing_from_the_cache_compile_in_children(no_leaks, monkeypatch):
    calls = []

    def counted(fns, parallel):
        calls.append((len(fns), parallel))
        return pool.run_in_children(fns, parallel)

    # as if the loops were not in the cache: each is compiled (or loaded)
    # in a child, which must find the same types as the parent does
    monkeypatch.setattr(Bench, "_uncompiled", lambda self: self._loops())
    monkeypatch.setattr(benchmod, "run_in_children", counted)
    with Bench(opts(threads=[2], duration=0.05), [designs.resolve("bitmap")]) as sw:
        assert calls == [(1, 1)]
        assert readout.window(sw.window(0, 2))["ops_per_sec"] > 0
    cores = len(pool.allowed_cores())
    with Bench(opts(threads=[1], duration=0.05),
               [designs.resolve("bitmap"), designs.resolve("direct")]):
        assert calls[1:] == [(2, min(2, cores))]          # side by side
    # a sweep whose points need two modes of a design: two loops (direct's,
    # whose second mode no other test compiles and which compile in seconds)
    with Bench(opts(threads=[1, 2], duration=0.05, unmap_fraction=0.5),
               [designs.resolve("direct")]) as sw:
        assert calls[2:] == [(2, min(2, cores))]
        assert sw._loops() == [(0, MODE_RING), (0, MODE_HANDOFF)]
    assert not psutil.Process().children(recursive=True)


def test_the_loop_does_not_depend_on_the_number_of_domains(no_leaks):
    """Domains are a run-time size: one compiled loop serves every count."""
    from harness import entries
    run = entries.of("bitmap").run_strict_ring
    for n in (1, 3):
        with Bench(opts(threads=[2], duration=0.05, domains=n),
                   [designs.resolve("bitmap")]) as sw:
            r = readout.window(sw.window(0, 2))
            assert r["ops_per_sec"] > 0
            assert not sw.check(0)
    assert len(run.signatures) == 1, run.signatures
