"""Faults: signals, a worker killed mid-window, a small /dev/shm, stale
segments, an interrupted sweep resumed.  Each ends with the exit status and
message the README promises, and leaves no segment and no process behind."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.diagnostics import fmt_ops

ROOT = Path(__file__).resolve().parent.parent
SHM = "/dev/shm"
FAST = ["--designs", "direct,bitmap", "--duration", "0.4", "--warmup", "0", "--repeats", "1"]
START_TIMEOUT = 600     # the first run after an edit compiles the loops (minutes on a busy box)
EXEC_GRACE_S = 0.25     # longer than any fork-to-exec, shorter than any window
POINT_RE = r"worker (\d+) died \(killed by SIGKILL\) at %s, %d threads"


def segments_of(pid):
    return [n for n in os.listdir(SHM) if n.startswith("iommu-stress-%d-" % pid)]


def _alive(proc):
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(procs, deadline):
    """Every process in `procs` has exited by `deadline` (monotonic)."""
    while True:
        alive = [p.pid for p in procs if _alive(p)]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError("processes still running: %s" % alive)
        time.sleep(0.05)


class Command:
    """`iommu-stress ARGS` in the background: its output lines with the time
    each arrived, and every process it started while it ran."""

    def __init__(self, *args, env=None, **popen):
        self.p = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  **popen)
        self.pid = self.p.pid
        self.out, self.err = [], []
        self.seen = {}               # pid -> every process it started
        self.worker_pids = set()     # ... of which its forked workers
        self._readers = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                         for s, l in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self._readers:
            t.start()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append((time.monotonic(), line.rstrip("\n")))

    def _watch(self):
        while not self._done.is_set() and self.p.poll() is None:
            self.descendants()
            self.workers()
            time.sleep(0.05)

    def descendants(self):
        """The command's processes now; all of them are remembered."""
        try:
            procs = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def workers(self):
        """Its forked workers (same command line as the parent), oldest first."""
        try:
            parent = psutil.Process(self.pid)
            cmdline = parent.cmdline()
            out = []
            for p in parent.children():
                try:
                    # a child forked to exec (git, for the results'
                    # commit) shows the parent's command line until it
                    # does: a worker is one that still does after a while
                    if (p.cmdline() == cmdline and _alive(p)
                            and time.time() - p.create_time() > EXEC_GRACE_S
                            and p.cmdline() == cmdline):
                        out.append(p)
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            return []
        for p in out:
            self.seen.setdefault(p.pid, p)
            self.worker_pids.add(p.pid)
        return sorted(out, key=lambda p: p.pid)

    def wait_workers(self, n, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            w = self.workers()
            if len(w) >= n:
                return w
            time.sleep(0.02)
        self.kill()
        raise AssertionError("no %d workers within %d s" % (n, timeout))

    def wait_points(self, path, n, timeout=START_TIMEOUT):
        """The results file once it holds at least n points."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_running()
            try:
                doc = json.loads(Path(path).read_text())
            except (OSError, ValueError):
                doc = None
            if doc and len(doc["points"]) >= n:
                return doc
            time.sleep(0.02)
        self.kill()
        raise AssertionError("no %d points in %s within %d s" % (n, path, timeout))

    def wait_stderr(self, pattern, timeout):
        """(arrival time, line) of the first stderr line matching pattern."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.err):
                if re.search(pattern, line):
                    return t, line
            if self.p.poll() is not None and not self._readers[1].is_alive():
                break
            time.sleep(0.02)
        raise AssertionError("no %r on stderr: %s" % (pattern, self.stderr))

    def check_running(self):
        if self.p.poll() is not None:
            self.wait(10)
            raise AssertionError("exited early with %s: %s" % (self.p.returncode, self.stderr))

    def wait(self, timeout):
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        for t in self._readers:
            t.join(10)
        self._done.set()
        self._watcher.join(10)
        return rc

    def kill(self):
        for p in list(self.seen.values()):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.p.kill()
        self.p.wait()

    @property
    def stdout(self):
        return "\n".join(l for _, l in self.out)

    @property
    def stderr(self):
        return "\n".join(l for _, l in self.err)


def run_cli(*args, env=None, timeout=START_TIMEOUT):
    c = Command(*args, env=env)
    c.returncode = c.wait(timeout)
    return c


def error_lines(cmd):
    return [l for _, l in cmd.err if l.strip()]


def check_report(path, points):
    """`iommu-stress report FILE` lists every point of the file."""
    r = run_cli("report", str(path))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for d in {p["design"] for p in points}:
        assert any(d + " ops/s" in l for l in lines), r.stdout
    for p in points:
        rows = [l for l in lines if l.split()[:1] == [str(p["threads"])]
                or l.split()[:1] == ["%d*" % p["threads"]]]
        assert rows, r.stdout
        assert fmt_ops(p["ops_per_sec"]) in rows[0], (p["design"], p["ops_per_sec"], r.stdout)


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Compile (or load) the loops once, so that no compilation runs beside
    the timed parts of the tests."""
    r = run_cli("sweep", "--designs", "direct,bitmap", "--threads", "1", "--duration", "0.01",
                "--warmup", "0", "--repeats", "1")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_signal_stops_the_sweep_and_keeps_what_it_measured(tmp_path, sig, status, word):
    out = tmp_path / "results.json"
    cmd = Command("sweep", *FAST, "--threads", "1,2", "--json", str(out))
    first = cmd.wait_points(out, 1)
    workers = cmd.workers()
    procs = cmd.descendants()
    assert workers, "no worker running after the first point"
    t_sig = time.monotonic()
    os.kill(cmd.pid, sig)
    assert cmd.wait(60) == status, cmd.stderr
    assert time.monotonic() - t_sig < 5.0            # 2 s meant; loose on a busy machine
    assert_gone(workers + procs, t_sig + 5.0)
    assert_gone(list(cmd.seen.values()), time.monotonic() + 2.0)
    assert segments_of(cmd.pid) == []
    assert word in cmd.stderr
    assert "Traceback" not in cmd.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is False
    assert 1 <= len(doc["points"]) < 4
    assert doc["points"][0] == first["points"][0]
    keys = [(p["design"], p["threads"]) for p in doc["points"]]
    assert len(set(keys)) == len(keys)
    assert all(p["ops_per_sec"] > 0 for p in doc["points"])
    check_report(out, doc["points"])


@pytest.mark.parametrize("on_error", ["stop", "continue"])
def test_killed_worker_fails_the_point(tmp_path, on_error):
    out = tmp_path / "results.json"
    cmd = Command("sweep", "--designs", "direct,bitmap", "--threads", "2", "--duration", "5",
                  "--warmup", "0", "--repeats", "1", "--json", str(out), "--on-error", on_error)
    workers = cmd.wait_workers(2)
    time.sleep(1.0)              # inside the first window: direct at 2 threads
    cmd.check_running()
    victim = 1
    t_kill = time.monotonic()
    workers[victim].send_signal(signal.SIGKILL)
    t_line, line = cmd.wait_stderr(r"worker \d+ died", 30)
    assert t_line - t_kill < 3.0                     # 2 s meant; the window had 4 s left
    m = re.search(POINT_RE % ("direct", 2), line)
    assert m, line
    assert int(m.group(1)) == victim
    rc = cmd.wait(120)
    t_exit = time.monotonic()
    assert rc == 1, cmd.stderr
    assert "Traceback" not in cmd.stderr
    assert len([l for l in error_lines(cmd) if "died" in l]) == 1, cmd.stderr
    assert_gone(list(cmd.seen.values()), time.monotonic() + 2.0)
    assert segments_of(cmd.pid) == []
    doc = json.loads(out.read_text())
    assert len(doc["failures"]) == 1
    assert re.search(POINT_RE % ("direct", 2), doc["failures"][0]), doc["failures"]
    if on_error == "stop":
        assert t_exit - t_line < 3.0                 # right after, not after the next point
        assert doc["points"] == []
    else:
        # the sweep went on, with fresh workers, to the next point
        assert [(p["design"], p["threads"]) for p in doc["points"]] == [("bitmap", 2)]
        assert doc["points"][0]["ops_per_sec"] > 0
        assert t_exit - t_kill > 4.0
        assert len(cmd.worker_pids - {w.pid for w in workers}) >= 2


def test_small_shm_fails_before_starting():
    env = dict(os.environ, IOMMU_STRESS_SHM_AVAIL="65536")
    cmd = run_cli("sweep", *FAST, "--threads", "1,2", env=env)
    assert cmd.returncode == 2, cmd.stderr
    lines = error_lines(cmd)
    assert len(lines) == 1, lines
    line = lines[0]
    assert "free" in line and "need" in line, line
    sizes = re.findall(r"\d[\d.]*\s*(?:[KMGT]i?B|bytes)\b", line)
    assert len(sizes) >= 2, line              # how much is free, how much is needed
    assert "Traceback" not in cmd.stderr
    assert segments_of(cmd.pid) == []
    assert not [p for p in cmd.seen.values() if _alive(p)]
    assert not cmd.worker_pids                # no worker was started
    assert "ops/s" not in cmd.stdout          # nothing was measured


def test_clean_removes_a_stale_segment():
    # 4194304 is above any pid_max: no such process can be alive
    stale = os.path.join(SHM, "iommu-stress-4194304-0")
    live = os.path.join(SHM, "iommu-stress-%d-999999" % os.getpid())
    try:
        for _ in range(5):
            for path in (stale, live):
                open(path, "wb").close()
            r = run_cli("clean")
            # a sweep running beside this test removes stale segments too
            if "iommu-stress-4194304-0" in r.stdout or os.path.exists(stale):
                break
        assert r.returncode == 0, r.stderr
        assert "iommu-stress-4194304-0" in r.stdout
        assert not os.path.exists(stale)
        assert os.path.exists(live)               # its owner is running: kept
        assert "iommu-stress-%d-" % os.getpid() not in r.stdout
    finally:
        for path in (stale, live):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def test_resume_measures_only_the_missing_points(tmp_path):
    out = tmp_path / "results.json"
    sweep = ["sweep", *FAST, "--threads", "1,2"]
    cmd = Command(*sweep, "--json", str(out))
    cmd.wait_points(out, 1)
    os.kill(cmd.pid, signal.SIGINT)
    assert cmd.wait(60) == 130, cmd.stderr
    cut = json.loads(out.read_text())
    kept = cut["points"]
    assert 1 <= len(kept) < 4 and cut["complete"] is False

    r = run_cli(*sweep, "--resume", str(out), "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    keys = sorted((p["design"], p["threads"]) for p in doc["points"])
    assert keys == sorted((d, t) for d in ("direct", "bitmap") for t in (1, 2))
    assert doc["complete"] is True
    for p in kept:                                # not measured again
        assert p in doc["points"], p
    m = re.search(r"(\d+) points? measured", r.stderr)
    if m:
        assert int(m.group(1)) == 4 - len(kept), r.stderr
    assert segments_of(r.pid) == [] and segments_of(cmd.pid) == []
    assert_gone(list(r.seen.values()) + list(cmd.seen.values()), time.monotonic() + 2.0)
