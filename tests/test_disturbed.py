"""A figure is failed or marked whenever its measurement was disturbed: a
dead rogue device, a stopped worker, another run on the machine; a
configuration under which nothing can be allocated is refused up front; a
stale segment under our own (reused) pid does not stop a run."""
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from harness import arena, designs, readout, report
from harness.arena import Arena, clean_stale
from tests import test_faults
from tests.test_faults import SHM, Command, assert_gone, error_lines, run_cli, segments_of
from tests.test_readout import raw

# the loops compiled (or loaded) once, before the timed parts of the tests
compiled = test_faults.compiled

SHORT = ["--warmup", "0", "--repeats", "1"]


def _rogue_of(procs):
    """The rogue device among a sweep's forked children: the workers pin
    themselves to one core each, it does not."""
    if len(os.sched_getaffinity(0)) > 1:
        wide = [p for p in procs if len(p.cpu_affinity()) > 1]
        if len(wide) == 1:
            return wide[0]
    return max(procs, key=lambda p: (p.create_time(), p.pid))


def test_killed_rogue_device_fails_the_point(tmp_path):
    out = tmp_path / "results.json"
    cmd = Command("sweep", "--designs", "bitmap", "--threads", "1", "--duration", "3", *SHORT,
                  "--rogue-device", "--json", str(out))
    cmd.wait_workers(2)                          # the worker and the rogue device
    time.sleep(0.5)                              # the workers have pinned themselves
    _rogue_of(cmd.workers()).send_signal(signal.SIGKILL)
    rc = cmd.wait(120)
    assert rc == 1, cmd.stderr
    assert "Traceback" not in cmd.stderr
    pattern = r"the rogue device died \(killed by SIGKILL\) at bitmap, 1 threads"
    assert len([l for l in error_lines(cmd) if re.search(pattern, l)]) == 1, cmd.stderr
    doc = json.loads(out.read_text())
    assert doc["points"] == []
    assert len(doc["failures"]) == 1 and re.search(pattern, doc["failures"][0])
    assert_gone(list(cmd.seen.values()), time.monotonic() + 2.0)
    assert segments_of(cmd.pid) == []


def _cpu_s(p):
    t = p.cpu_times()
    return t.user + t.system


def test_stopped_worker_marks_the_point(tmp_path):
    out = tmp_path / "results.json"
    cmd = Command("sweep", "--designs", "direct", "--threads", "2", "--duration", "3", *SHORT,
                  "--json", str(out))
    workers = cmd.wait_workers(2)
    victim = workers[1]
    # parked workers use no CPU; a running one does: the window has opened
    start = _cpu_s(victim)
    deadline = time.monotonic() + 60
    while _cpu_s(victim) - start < 0.05:
        cmd.check_running()
        assert time.monotonic() < deadline, "the window never started"
        time.sleep(0.01)
    victim.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
    finally:
        victim.send_signal(signal.SIGCONT)
    assert cmd.wait(120) == 0, cmd.stderr
    doc = json.loads(out.read_text())
    (p,) = doc["points"]
    assert p["stalled"] is True
    assert [s["worker"] for s in p["stalled_workers"]] == [1], p["stalled_workers"]
    s = p["stalled_workers"][0]
    assert 1.5 <= s["longest_stall_s"] <= p["window_s"] + 0.2, s
    assert s["ops"] < p["per_worker_ops"][0] and s["median_ops"] > 0
    assert re.search(r"direct at 2 threads: 1 worker stalled or starved \(worker 1: ",
                     cmd.stderr), cmd.stderr
    r = run_cli("report", str(out))
    assert r.returncode == 0, r.stderr
    row = [l for l in r.stdout.splitlines() if re.match(r"2\*?\s", l)]
    assert row and " ?" in row[0], r.stdout
    assert "? stalled:" in r.stdout
    assert segments_of(cmd.pid) == []


def test_another_run_is_warned_of_and_recorded(tmp_path):
    out = tmp_path / "results.json"
    other = subprocess.Popen(["sleep", "60"])
    fake = os.path.join(SHM, "iommu-stress-%d-0" % other.pid)
    try:
        open(fake, "wb").close()
        r = run_cli("sweep", "--designs", "direct", "--threads", "1", "--duration", "0.2",
                    *SHORT, "--json", str(out))
        assert os.path.exists(fake)              # another run's: not touched
    finally:
        other.kill()
        other.wait()
        os.unlink(fake)
    assert r.returncode == 0, r.stderr
    warned = [l for l in error_lines(r) if "pid %d)" % other.pid in l]
    assert warned == ["iommu-stress: warning: another iommu-stress run (pid %d) is measuring on "
                      "this machine: figures are shared with it" % other.pid], r.stderr
    (p,) = json.loads(out.read_text())["points"]
    assert other.pid in p["concurrent_runs"]
    row = [l for l in r.stdout.splitlines() if re.match(r"1\s", l)]
    assert row and " &" in row[0], r.stdout
    assert "& another iommu-stress run" in r.stdout


@pytest.mark.parametrize("args, reason", [
    (["--designs", "direct,bitmap", "--pages", "1"],
     "design bitmap can never map a buffer: a 1-page request fits nowhere in a 1-page space"),
    (["--designs", "bitmap", "--boundary", "1", "--sizes", "2"],
     "design bitmap can never map a buffer: a 2-page request is larger than the 1-page "
     "segment boundary"),
    (["--designs", "rbtree", "--pages", "64", "--sizes", "1:1,64:1"],
     "design rbtree can never map a buffer: a 64-page request, aligned to 64 pages from pfn 1 "
     "up, fits nowhere in a 64-page space"),
    (["--designs", "direct", "--sizes", "1:0,2:0"], "at least one weight > 0"),
])
def test_impossible_configuration_is_refused_up_front(args, reason):
    r = run_cli("sweep", *args, "--threads", "1", "--duration", "0.1", *SHORT)
    assert r.returncode == 2, r.stderr
    lines = error_lines(r)
    assert len(lines) == 1 and lines[0].startswith("iommu-stress: error: "), r.stderr
    assert reason in lines[0], r.stderr
    assert not r.worker_pids and segments_of(r.pid) == []
    assert "ops/s" not in r.stdout


def test_a_stale_segment_under_our_own_pid_is_replaced():
    a = Arena([("x", np.int64, (4,))])
    assert a.owner == os.getpid()
    with open(a.path, "wb") as f:                # a run killed long ago, our pid since reused
        f.write(b"stale")
    stray = os.path.join(SHM, "iommu-stress-%d-999998" % os.getpid())
    try:
        with a:
            a["x"][:] = 7
            assert os.path.getsize(a.path) == a.size
            open(stray, "wb").close()
            removed = clean_stale()
            assert os.path.basename(stray) in removed and not os.path.exists(stray)
            assert a.name not in removed and os.path.exists(a.path)   # ours, live: kept
        assert not os.path.exists(a.path)
        assert a.path not in arena._live
    finally:
        for path in (a.path, stray):
            if os.path.exists(path):
                os.unlink(path)


def test_which_workers_are_marked_stalled():
    """Over a 1 s window on 2 cores: a worker left behind by its lock alone
    is the design's figure; one starved of a CPU or stopped is marked; in
    an oversubscribed window, only what waiting for a CPU does not explain."""
    def marked(r, stalls, waits_s):
        r.longest_stall_s = stalls
        r.run_delay_ns = [w * 1e9 for w in waits_s]
        return [s["worker"] for s in readout.stalled(r)]

    assert marked(raw(ops=(100, 4000)), [0.01, 0.01], [0, 0]) == []
    assert marked(raw(ops=(100, 4000)), [0.01, 0.01], [0.4, 0]) == [0]
    assert marked(raw(ops=(3000, 4000)), [0.6, 0.01], [0, 0]) == [0]
    over = raw(threads=4, ops=(0, 4000, 4000, 4000))
    assert marked(over, [0.9, 0.2, 0.2, 0.2], [0.85, 0.5, 0.5, 0.5]) == []
    assert marked(over, [0.9, 0.2, 0.2, 0.2], [0.1, 0.5, 0.5, 0.5]) == [0]
    p = readout.point(designs.resolve("bitmap"), 4, [readout.window(over)], oversubscribed=True)
    assert p["stalled"] and p["stalled_workers"][0]["window"] == 0
    table = report.throughput_table([p])
    assert re.search(r"^4\*\s+\S+ \?", table, re.M) and "? stalled:" in table, table
