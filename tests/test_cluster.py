"""Sweeps over a Dask cluster (harness/cluster.py), on a LocalCluster of two
worker processes that each offer machine=1: the points merged in the
sweep's order with their machines, machines of two kinds refused unless
asked for, each machine apart, a point measured again after its worker is
killed in the middle of it, --resume, Ctrl-C, and the one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from distributed import Client

from harness import cli, cluster as clustermod, config, results
from harness.cli import main
from tests.test_cli import run_cli
from tests.test_results import QUICK as RESULTS_QUICK, fake_point, one_error_line, write_doc

QUICK = ["--duration", "0.05", "--warmup", "0", "--repeats", "1"]
with open("/proc/sys/kernel/pid_max") as _f:
    PID_MAX = int(_f.read())
OTHER = json.dumps({"cpu_model": "Other CPU 9", "cores_allowed": 64})


# The LocalCluster lives in a process of its own: multiprocessing's
# resource tracker, which its nannies start, would otherwise stay a child
# of the test process for good, and other tests assert that a run leaves
# no child behind.  It ends when its standard input closes.
LOCAL_CLUSTER = """
import logging, sys
from distributed import LocalCluster
if __name__ == "__main__":
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      resources={"machine": 1}, dashboard_address=None,
                      silence_logs=logging.CRITICAL)
    print(lc.scheduler_address, flush=True)
    sys.stdin.read()
    lc.close()
"""


@pytest.fixture(scope="module")
def dask(tmp_path_factory):
    """(scheduler address, a client of ours) of two machines on this one."""
    script = tmp_path_factory.mktemp("cluster") / "local_cluster.py"
    script.write_text(LOCAL_CLUSTER)
    lc = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
    client = None
    try:
        addr = lc.stdout.readline().strip()
        assert addr.startswith("tcp://"), "the local cluster did not start"
        client = Client(addr)
        yield addr, client
    finally:
        if client is not None:
            client.close()
        lc.stdin.close()
        try:
            lc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            lc.kill()
            lc.wait()


@pytest.fixture
def two(dask):
    """Both machines up (a test may have killed one: its nanny starts it
    again), none pretending to be of another kind; no segment left."""
    addr, client = dask
    client.wait_for_workers(2, timeout=60)
    before = stale_segments()
    yield addr, client
    client.run(lambda: os.environ.pop(clustermod.MACHINE_ENV, None))
    assert stale_segments() - before == set()


def stale_segments():
    """Segments in /dev/shm of runs that are gone: a point's child
    stopped in the middle of it must have unlinked its own."""
    out = set()
    for name in os.listdir("/dev/shm"):
        if name.startswith("iommu-stress-"):
            pid = int(name.split("-")[2])
            # a pid above pid_max is another test's stand-in for a dead
            # run (tests/test_faults.py, tests/test_arena.py), made and
            # removed beside this one
            if pid < PID_MAX and not psutil.pid_exists(pid):
                out.add(name)
    return out


def sweep(addr, *args):
    return run_cli("sweep", "--cluster", addr, *args, timeout=180)


def points_of(path):
    return [(p["design"], p["threads"]) for p in json.loads(path.read_text())["points"]]


def children_measuring(client):
    """{Dask worker pid: [pids of its children running a point]}."""
    out = {}
    for pid in client.run(os.getpid).values():
        try:
            kids = psutil.Process(pid).children()
        except psutil.NoSuchProcess:
            continue
        out[pid] = [k.pid for k in kids if _is_point(k)]
    return out


def _is_point(proc):
    try:
        return "harness.cli" in proc.cmdline()
    except psutil.Error:
        return False


# ------------------------------------------------------------------- merging

def test_points_are_merged_in_order_each_with_its_machine(two, tmp_path):
    addr, _ = two
    out = tmp_path / "r.json"
    r = sweep(addr, "--designs", "direct,bitmap", "--threads", "1,2", *QUICK, "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = results.load(out)
    assert doc["version"] == results.VERSION == 9 and doc["complete"] and doc["failures"] == []
    assert doc["cluster"] == {"scheduler": addr, "mode": "spread"}
    # the sweep's order, whichever machine finished first
    assert points_of(out) == [("direct", 1), ("bitmap", 1), ("direct", 2), ("bitmap", 2)]
    here = results.machine()
    for p in doc["points"]:
        host = p["host"]
        assert host["name"] in ("0", "1") and host["worker"].startswith("tcp://")
        for key in ("cpu_model", "cores_allowed", "kernel", "python", "numba", "commit"):
            assert host[key] == here[key]
        assert host["memory_bytes"] > 0 and host["project"] and host["cycles_per_ns"] > 0
        assert p["ops_per_sec"] > 0 and "machine" not in p
    # the two machines shared the work
    assert {p["host"]["name"] for p in doc["points"]} == {"0", "1"}
    assert "points spread over 2 machines" in r.stdout
    assert "4 points measured on 2 machines" in r.stderr
    assert "share the host" in r.stderr      # two workers on one machine, as said
    assert main(["report", str(out)]) == 0


def test_machines_of_two_kinds_are_refused_unless_allowed(two, tmp_path, capfd):
    addr, client = two
    odd = sorted(client.scheduler_info()["workers"])[0]
    client.run(lambda: os.environ.update({clustermod.MACHINE_ENV: OTHER}), workers=[odd])
    out = tmp_path / "r.json"
    r = sweep(addr, "--designs", "direct,bitmap", "--threads", "1", *QUICK, "--json", str(out))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith("iommu-stress: error: the cluster's machines are not of one kind: ")
    assert "cpu_model, cores_allowed" in err[-1] and "--allow-mixed" in err[-1]
    assert "Traceback" not in r.stderr and not out.exists()

    r = sweep(addr, "--designs", "direct,bitmap", "--threads", "1", *QUICK, "--json", str(out),
              "--allow-mixed")
    assert r.returncode == 0, r.stderr
    doc = results.load(out)
    assert sorted(p["host"]["cpu_model"] for p in doc["points"]) == \
        sorted([results.machine()["cpu_model"], "Other CPU 9"])
    capfd.readouterr()
    assert main(["report", str(out)]) == 0
    assert "not of one kind of machine" in capfd.readouterr().out


def test_each_machine_measures_every_point_on_every_machine(two, tmp_path, capfd):
    addr, _ = two
    out = tmp_path / "r.json"
    r = sweep(addr, "--each-machine", "--designs", "direct", "--threads", "1", *QUICK,
              "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = results.load(out)
    assert doc["cluster"]["mode"] == "each-machine"
    assert sorted(p["host"]["name"] for p in doc["points"]) == ["0", "1"]
    for text in (r.stdout, ):
        assert "machine 0: " in text and "machine 1: " in text
    capfd.readouterr()
    assert main(["report", str(out)]) == 0
    shown = capfd.readouterr().out
    assert shown.count("direct ops/s") == 2 and "machine 1: " in shown
    assert main(["plot", str(out), "-o", str(tmp_path / "r.png")]) == 0
    assert "holds 2 machines" in one_error_line(capfd, ["compare", str(out), str(out)])


# -------------------------------------------------------------------- faults

def test_a_point_whose_machine_is_killed_is_measured_again(two, tmp_path):
    addr, client = two
    out = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", "--cluster", addr,
                          "--designs", "direct", "--threads", "1", "--duration", "1.5",
                          "--warmup", "0", "--repeats", "1", "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline:
        for worker, kids in children_measuring(client).items():
            # well into the point: past the interpreter's start and the loops' load
            if kids and time.time() - psutil.Process(kids[0]).create_time() > 1.2:
                victim = worker, kids[0]
        time.sleep(0.05)
    assert victim, "no point seen running"
    os.kill(victim[0], signal.SIGKILL)
    o, e = p.communicate(timeout=120)
    assert p.returncode == 0, e
    assert "left the cluster; a point it was measuring is measured again" in e
    doc = results.load(out)
    assert points_of(out) == [("direct", 1)] and doc["complete"] and doc["failures"] == []
    # the killed point's child went with its worker, and took its segment
    assert not psutil.pid_exists(victim[1])


def test_resume_measures_only_what_the_file_lacks(two, tmp_path):
    addr, _ = two
    kept = [fake_point("direct", 1, 123.0)]
    f = write_doc(tmp_path / "r.json", kept)
    r = sweep(addr, "--designs", "direct", "--threads", "1,2", *RESULTS_QUICK, "--resume", str(f))
    assert r.returncode == 0, r.stderr
    doc = results.load(f)
    assert points_of(f) == [("direct", 1), ("direct", 2)]
    assert doc["points"][0] == kept[0] and doc["points"][1]["host"]["name"] in ("0", "1")
    assert doc["complete"] and "1 kept from" in r.stderr
    # a spread file is not resumed on each machine
    r = sweep(addr, "--each-machine", "--designs", "direct", "--threads", "1,2", *RESULTS_QUICK,
              "--resume", str(f))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "iommu-stress: error: %s was measured spread over machines, or on one; this run asks "
        "for --each-machine" % f)


def test_ctrl_c_cancels_the_rest_and_keeps_what_was_merged(two, tmp_path):
    addr, client = two
    out = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", "--cluster", addr,
                          "--designs", "direct,bitmap", "--threads", "1,2,3",
                          "--duration", "1.0", "--warmup", "0", "--repeats", "1",
                          "--json", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.exists(), "no point merged"
    p.send_signal(signal.SIGINT)
    o, e = p.communicate(timeout=30)
    assert p.returncode == 130, e
    assert "interrupted; results measured so far are kept" in e and "Traceback" not in e
    doc = results.load(out)
    assert 1 <= len(doc["points"]) < 6 and doc["complete"] is False
    # the points being measured are stopped, the rest never start
    deadline = time.monotonic() + 15
    while any(children_measuring(client).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(children_measuring(client).values())
    assert not any(client.processing().values())


# ---------------------------------------------------------------- bad input

def test_without_the_extra_the_error_names_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    line = one_error_line(capsys, ["sweep", "--cluster", "tcp://127.0.0.1:8786",
                                   "--designs", "direct", *QUICK])
    assert line == "iommu-stress: error: " + clustermod.EXTRA
    assert "pip install -e '.[cluster]'" in line


@pytest.mark.parametrize("text", ["localhost", "tcp://host:port", "tcp://host:70000",
                                  "http://host:8786", "tcp://:8786"])
def test_a_malformed_address_is_one_line(capsys, text):
    line = one_error_line(capsys, ["sweep", "--cluster", text, "--designs", "direct", *QUICK])
    assert line.endswith("--cluster %s: expected a scheduler address tcp://HOST:PORT" % text)


def test_an_unreachable_scheduler_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(clustermod, "CONNECT_TIMEOUT", 1.0)
    line = one_error_line(capsys, ["sweep", "--cluster", "tcp://127.0.0.1:1", "--designs",
                                   "direct", *QUICK])
    assert line.startswith("iommu-stress: error: --cluster tcp://127.0.0.1:1: cannot reach "
                           "the scheduler: ")


@pytest.mark.parametrize("flag", ["--each-machine", "--allow-mixed"])
def test_cluster_flags_need_a_cluster(capsys, flag):
    assert one_error_line(capsys, ["sweep", flag, "--designs", "direct", *QUICK]).endswith(
        "%s: only with --cluster" % flag)


def test_a_task_measures_with_every_option_of_the_sweep():
    """The command line a task runs reproduces the client's options, a
    preset's and its workload's included."""
    args = cli.build_parser().parse_args(["sweep", "--preset", "peleg2015", "--lock", "mcs",
                                          "--sizes", "1:0.7,64:0.3", "--check"])
    opts = cli._options(args, True)
    argv = clustermod.point_argv(opts, "linux-2008", 2)
    again = cli._options(cli.build_parser().parse_args(["sweep", *argv]), True)
    for k in config.OPTIONS:
        if k not in ("designs", "threads", "workload"):
            assert again[k] == opts[k], k
    assert again["designs"] == ["linux-2008"] and again["threads"] == [2]
