"""The command line: bad input is one line and exit 2; a sweep writes the
documented results and leaves nothing behind."""
import json
import os
import subprocess
import sys

import pytest

from harness.cli import main


def run_cli(*args, timeout=300):
    """Runs the command; returns the CompletedProcess with its pid."""
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=timeout)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    r.pid = p.pid
    return r


def test_a_thread_range_holds_both_ends():
    from harness.config import parse_threads
    assert parse_threads("1-3") == [1, 2, 3]
    assert parse_threads("3-5") == [3, 4, 5]
    assert parse_threads("4-4") == [4]
    assert parse_threads("1-1024") == [1 << k for k in range(11)]
    assert parse_threads("1,6-9") == [1, 6, 8, 9]


def segments_of(pid):
    return [n for n in os.listdir("/dev/shm") if n.startswith("iommu-stress-%d-" % pid)]


def one_error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("cmd", [["sweep", "--designs", "direct"], ["run", "--design", "direct"]])
def test_an_empty_json_path_is_refused(capsys, cmd):
    assert "--json" in one_error_line(capsys, cmd + ["--json", ""])


def test_unknown_design_lists_the_valid_ones(capsys):
    line = one_error_line(capsys, ["sweep", "--designs", "direct,splay"])
    assert "splay" in line and "bitmap" in line and "rbtree" in line and "linux-2008" in line


def test_unknown_lock_lists_the_valid_ones(capsys):
    line = one_error_line(capsys, ["sweep", "--lock", "rcu"])
    assert "tas, ttas, ticket, mcs, qspinlock" in line


@pytest.mark.parametrize("threads", ["0", "2000", "1-2048"])
def test_threads_out_of_range(capsys, threads):
    assert "1..1024" in one_error_line(capsys, ["sweep", "--threads", threads])


@pytest.mark.parametrize("duration", ["abc", "-1", "0", "nan"])
def test_bad_duration(capsys, duration):
    line = one_error_line(capsys, ["sweep", "--duration", duration])
    assert "--duration" in line


@pytest.mark.parametrize("sizes", ["1:nan", "1:inf", "1:1e308,2:1e308", "1:-1", "0:1", "1:0"])
def test_bad_sizes(capsys, sizes):
    assert "--sizes" in one_error_line(capsys, ["sweep", "--sizes", sizes])


def test_an_allocator_refusing_its_sizes_is_one_line(capsys):
    line = one_error_line(capsys, ["run", "--design", "pools", "--threads", "1",
                                   "--pages", "2"])
    assert "pools cannot be built" in line and "2 pages" in line


def test_report_of_a_binary_file_is_one_line(capsys, tmp_path):
    f = tmp_path / "out.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert "not UTF-8" in one_error_line(capsys, ["report", str(f)])


def test_report_of_deeply_nested_json_is_one_line(capsys, tmp_path):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100000 + "]" * 100000)
    assert "nested too deeply" in one_error_line(capsys, ["report", str(f)])


def test_a_bad_shm_override_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("IOMMU_STRESS_SHM_AVAIL", "lots")
    line = one_error_line(capsys, ["run", "--design", "direct", "--threads", "1",
                                   "--duration", "0.05"])
    assert "IOMMU_STRESS_SHM_AVAIL" in line


def test_malformed_toml_names_file_and_line(capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('designs = ["direct"]\nthreads = "1,2"\nduration = = 3\n')
    line = one_error_line(capsys, ["sweep", "--config", str(f)])
    assert "%s:3:" % f in line


def test_unknown_toml_key_names_the_line(capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('designs = ["direct"]\n\nthread = 4\n')
    line = one_error_line(capsys, ["sweep", "--config", str(f)])
    assert "%s:3:" % f in line and "thread" in line and "threads" in line


def test_wrong_type_in_toml(capsys, tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('repeats = "three"\n')
    line = one_error_line(capsys, ["sweep", "--config", str(f)])
    assert "%s:1:" % f in line and "repeats" in line


def test_missing_config_file(capsys):
    assert "no such config" in one_error_line(capsys, ["sweep", "--config", "/nonexistent.toml"])


def test_unknown_option_is_one_line(capsys):
    one_error_line(capsys, ["sweep", "--thraeds", "4"])


def test_sweep_writes_results_and_cleans_up(tmp_path):
    out = tmp_path / "out.json"
    r = run_cli("sweep", "--designs", "direct,bitmap", "--threads", "1-4", "--duration", "0.1",
                "--warmup", "0", "--repeats", "2", "--check", "--json", str(out), "-v")
    assert r.returncode == 0, r.stderr
    # 2 windows a point over the default 3 launches: a fresh segment and
    # workers between the two rounds of each thread count, unless forking
    # them would cost more than the windows (a loaded machine), as it says
    kept = [t for t in (1, 2, 4) if "at %d workers the windows stay in one launch" % t in r.stderr]
    assert r.stderr.count("launching anew") == 3 - len(kept)
    lines = r.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    rows = [l.split()[0] for l in lines if l[:1].isdigit()]
    cores = len(os.sched_getaffinity(0))
    assert rows == ["%d%s" % (t, "*" if t > cores else "") for t in (1, 2, 4)]
    doc = json.loads(out.read_text())
    assert doc["format"] == "iommu-stress-results" and doc["complete"]
    for key in ("cpu_model", "cores_allowed", "numba"):
        assert key in doc["machine"]
    assert len(doc["points"]) == 6
    for p in doc["points"]:
        assert p["design"] in ("direct", "bitmap")
        assert len(p["runs"]) == 2 and all(r > 0 for r in p["runs"])
        assert p["window_launch"] == ([0, 0] if p["threads"] in kept else [0, 1])
        assert sorted(p["runs"])[0] <= p["ops_per_sec"] <= sorted(p["runs"])[-1]
        assert len(p["per_worker_ops"]) == p["threads"]
        assert all(n > 0 for n in p["per_worker_ops"])
        assert p["oversubscribed"] == (p["threads"] > len(os.sched_getaffinity(0)))
    bitmap = [p for p in doc["points"] if p["design"] == "bitmap"]
    assert all(p["locks"][0]["name"] == "bitmap" and p["locks"][0]["acquisitions"] > 0
               for p in bitmap)
    assert segments_of(r.pid) == []


# ------------------------------------------------- no traceback on any input

QUICK = ["--threads", "1", "--duration", "0.05", "--warmup", "0", "--repeats", "1"]
HUGE = str(2 ** 70)


@pytest.mark.parametrize("argv, says", [
    (["run", "--design", "direct", "--boundary", HUGE], "--boundary: expected a number in the range 1..1099511627776"),
    (["run", "--design", "direct", "--pages", HUGE], "--pages: expected a number in the range 1..1099511627776"),
    (["run", "--design", "direct", "--tlb-entries", HUGE], "--tlb-entries: expected a number in the range"),
    (["run", "--design", "direct", "--seed", HUGE], "--seed: expected a number in the range 0..2147483648"),
    (["run", "--design", "direct", "--spin-bound", HUGE], "--spin-bound: expected a number in the range"),
    (["run", "--design", "direct", "--threads", "1-" + HUGE], "--threads: expected thread counts in the range 1..1024"),
    (["replay", "tests/data/basic.trace", "--allocator", "bitmap", "--pages", "64", "--boundary", HUGE],
     "--boundary: %s out of range 1..1099511627776" % HUGE),
])
def test_huge_integers_say_the_range(capsys, argv, says):
    if argv[0] == "run":
        argv = argv[:3] + QUICK + argv[3:]      # the later --threads wins
    assert says in one_error_line(capsys, argv)


@pytest.mark.parametrize("flag", ["--device-ns", "--hypercall-ns", "--duration", "--warmup",
                                  "--unmap-fraction"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_flags(capsys, flag, value):
    line = one_error_line(capsys, ["run", "--design", "direct", *QUICK, "%s=%s" % (flag, value)])
    assert line.startswith("iommu-stress: error: %s: expected a number in the range" % flag)


@pytest.mark.parametrize("kind, key", [("config", "duration"), ("config", "device_ns"),
                                       ("workload", "unmap_fraction"), ("workload", "hypercall_ns"),
                                       ("profile", "inv_page_ns"), ("profile", "iotlb_fill_ns")])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_in_toml_files(capsys, tmp_path, kind, key, value):
    f = tmp_path / "x.toml"
    f.write_text("# a comment\n%s = %s\n" % (key, value))
    line = one_error_line(capsys, ["run", "--design", "direct", *QUICK, "--" + kind, str(f)])
    assert line.startswith("iommu-stress: error: %s:2: %s: expected a number" % (f, key))


PREMAP = "design 'direct@premapped': direct maps nothing, so nothing to pre-map"


def test_premapped_direct_is_refused_however_written(capsys, tmp_path):
    assert one_error_line(capsys, ["run", "--design", "direct@premapped", *QUICK]).endswith(PREMAP)
    assert one_error_line(capsys, ["run", "--design", "direct", "--premapped", *QUICK]).endswith(PREMAP)
    f = tmp_path / "c.toml"
    f.write_text("premapped = true\n")
    assert one_error_line(capsys, ["diagnose", "--design", "direct", "--config", str(f),
                                   *QUICK]).endswith(PREMAP)


def test_replay_of_pools_on_too_small_a_space_is_one_line(capsys, tmp_path):
    f = tmp_path / "t.trace"
    f.write_text("a x 1\nf x\n")
    line = one_error_line(capsys, ["replay", str(f), "--allocator", "pools", "--pages", "2"])
    assert "a table of 2 pages has no room for a pool" in line


@pytest.mark.parametrize("published, says", [
    ("direct = 5", "published.direct: expected [figure, ratio, unit]"),
    ('direct = [1, nan, "IOPS"]', "published.direct: expected [figure, ratio, unit]"),
    ('direct = [1, "a", "IOPS"]', "published.direct: expected [figure, ratio, unit]"),
    ('threads = "x"', "published.threads: expected a number in 1..1024"),
    ('metric = "speed"', "published.metric: expected one of x_direct, x_first"),
])
def test_a_preset_is_checked_before_the_run(capsys, tmp_path, published, says):
    f = tmp_path / "p.toml"
    f.write_text('designs = ["direct"]\n[published]\n%s\n' % published)
    assert "%s:3: %s" % (f, says) in one_error_line(capsys, ["sweep", "--preset", str(f)])


@pytest.mark.parametrize("argv", [["designs"], ["report", "tests/data/none.json"],
                                  ["sweep", "--designs", "direct", *QUICK]])
def test_a_closed_stdout_is_one_line(argv):
    r = subprocess.run(["bash", "-c", '"$0" -m harness.cli "$@" >&-', sys.executable, *argv],
                       stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "iommu-stress: error: standard output is closed"


@pytest.mark.parametrize("argv", [["designs"], ["run", "--design", "direct", *QUICK]])
def test_a_full_stdout_is_one_line(argv):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "harness.cli", *argv], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    # beside a compile's notice, or another run's warning: one error line
    err = [l for l in r.stderr.splitlines() if "error" in l]
    assert err == ["iommu-stress: error: cannot write standard output: No space left on device"]


# ------------------------------------------- the device's passes, 2 MiB mappings

@pytest.mark.parametrize("value", ["0", "65", "-1", "two", "1.5"])
def test_bad_dma_passes(capsys, value):
    line = one_error_line(capsys, ["run", "--design", "rbtree", *QUICK, "--dma-passes", value])
    assert line.startswith("iommu-stress: error: --dma-passes: expected ")


def test_bad_dma_passes_in_a_config_file(capsys, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("# passes\ndma_passes = 0\n")
    line = one_error_line(capsys, ["run", "--design", "rbtree", *QUICK, "--config", str(f)])
    assert line.startswith("iommu-stress: error: %s:2: dma_passes: expected a number" % f)


@pytest.mark.parametrize("design, says", [
    ("direct@huge", "design 'direct@huge': direct maps nothing, so no 2 MiB mappings"),
    ("rbtree@huge@huge", "design 'rbtree@huge@huge': repeated modifier @huge; valid: @premapped, @huge"),
    ("rbtree@giant", "design 'rbtree@giant': unknown modifier @giant; valid: @premapped, @huge"),
])
def test_bad_huge_designs(capsys, design, says):
    assert one_error_line(capsys, ["run", "--design", design, *QUICK]).endswith(says)


def test_the_device_translates_every_page_once_per_pass(tmp_path):
    # bitmap+strict's ring loop, which the sweep test above compiles too.
    # Strict invalidation empties the IOTLB of a range before it is
    # reused, so the first pass over a page misses and the others hit
    out = tmp_path / "p.json"
    r = run_cli("run", "--design", "bitmap", *QUICK, "--sizes", "2", "--dma-passes", "3",
                "--profile", "vtd-2015", "--iotlb-walks", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    p = doc["points"][0]
    tlb, ios = p["iotlb"], p["ops_total"]
    assert doc["options"]["dma_passes"] == 3 and doc["options"]["iotlb_walks"] and ios > 0
    assert (tlb["fills"], tlb["hits"], tlb["faults"]) == (2 * ios, 4 * ios, 0)
    walk = int(330 * doc["machine"]["cycles_per_ns"])           # cycles per miss, as the bench
    assert tlb["walk_ns"] == pytest.approx(2 * ios * walk / doc["machine"]["cycles_per_ns"])
