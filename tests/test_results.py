"""Results files: --resume keeps every point and never mixes options
unasked, a write leaves no temporary behind, and an existing file stays
as it was until there is a point to put in its place."""
import errno
import json
import types

import pytest

from harness import config, results, sweep
from harness.cli import main
from harness.errors import UsageError
from tests.test_cli import run_cli, segments_of

QUICK = ["--duration", "0.2", "--warmup", "0", "--repeats", "1"]


def options(**changes):
    """The options a `run --design direct` with QUICK measures with."""
    opts = dict(config.defaults(), designs=["direct"], threads=[1], duration=0.2, warmup=0.0,
                repeats=1, workload="")
    opts.update(changes)
    return results.plain_options(opts)


def fake_point(design, threads, ops=1e6):
    flush = "none" if design == "direct" else "strict"
    return {"design": design, "spec": design, "allocator": design, "variant": "",
            "flush": flush, "threads": threads, "ops_per_sec": ops, "runs": [ops]}


def write_doc(path, points, machine=None, **opts):
    doc = {"format": results.FORMAT, "version": results.VERSION, "command": "iommu-stress sweep",
           "started": "2026-01-01T00:00:00+00:00", "machine": machine or results.machine(2.0),
           "options": options(**opts), "points": points, "failures": [], "complete": True}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def one_error_line(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("iommu-stress: error: ")
    return err[0]


def no_temporaries(directory):
    return [f.name for f in directory.iterdir() if f.name.endswith(".tmp")] == []


# -------------------------------------------------------------------- resume

def test_resume_keeps_every_point_of_the_file(tmp_path):
    others = [fake_point(d, t) for d in ("direct", "bitmap") for t in (1, 4)]
    f = write_doc(tmp_path / "r.json", others)
    r = run_cli("run", "--design", "direct", "--threads", "2", *QUICK, "--resume", str(f))
    assert r.returncode == 0, r.stderr
    doc = json.loads(f.read_text())
    keys = [(p["design"], p["threads"]) for p in doc["points"]]
    assert keys == [("direct", 1), ("direct", 4), ("bitmap", 1), ("bitmap", 4), ("direct", 2)]
    # kept as they were, not measured again; the new one measured
    assert doc["points"][:4] == others
    assert doc["points"][4]["ops_per_sec"] > 0 and "options" not in doc["points"][4]
    assert doc["complete"] is True
    assert doc["options"]["designs"] == ["direct", "bitmap"]
    assert doc["options"]["threads"] == [1, 2, 4]
    assert "4 kept from" in r.stderr
    assert no_temporaries(tmp_path) and segments_of(r.pid) == []


def test_resume_measures_nothing_it_holds(tmp_path):
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1, 123.0)])
    r = run_cli("run", "--design", "direct", "--threads", "1", *QUICK, "--resume", str(f))
    assert r.returncode == 0, r.stderr
    doc = json.loads(f.read_text())
    assert [p["ops_per_sec"] for p in doc["points"]] == [123.0]
    assert doc["complete"] is True
    assert "0 points measured" in r.stderr


@pytest.mark.parametrize("flag, value, named", [
    ("--profile", "none", "--profile vtd-2015, this run asks for none"),
    ("--lock", "tas", "--lock qspinlock, this run asks for tas"),
    ("--seed", "7", "--seed 1, this run asks for 7"),
    ("--sizes", "1:0.5,2:0.5", "--sizes 1:1, this run asks for 1:0.5,2:0.5"),
    ("--check", None, "--check off, this run asks for on"),
])
def test_resume_with_other_options_is_refused(tmp_path, capsys, flag, value, named):
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1)])
    before = f.read_bytes()
    argv = ["run", "--design", "direct", "--threads", "2", *QUICK, flag] + \
        ([value] if value else []) + ["--resume", str(f)]
    line = one_error_line(capsys, argv)
    assert "%s was measured with %s" % (f, named) in line
    assert "--force-mix" in line
    assert f.read_bytes() == before


def test_resume_on_another_machine_is_refused(tmp_path, capsys):
    machine = dict(results.machine(2.0), cpu_model="Other CPU 1", cores_allowed=64)
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1)], machine=machine)
    before = f.read_bytes()
    line = one_error_line(capsys, ["run", "--design", "direct", "--threads", "2", *QUICK,
                                   "--resume", str(f)])
    assert "cpu-model Other CPU 1 and cores-allowed 64" in line
    assert f.read_bytes() == before


def test_a_commit_or_python_of_its_own_is_no_difference():
    doc = {"options": options(), "machine": dict(results.machine(2.0), commit="0000",
                                                 python="3.0.0", numba="0.1", cycles_per_ns=9.9)}
    assert results.mismatch(doc, options(), results.machine()) == []


def test_force_mix_needs_resume(capsys):
    assert "--resume" in one_error_line(capsys, ["run", "--design", "direct", "--threads", "1",
                                               "--force-mix"])


def test_force_mix_keeps_both_and_says_so(tmp_path, capsys):
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1)])
    r = run_cli("run", "--design", "direct", "--threads", "2", *QUICK, "--profile", "none",
                "--lock", "tas", "--resume", str(f), "--force-mix")
    assert r.returncode == 0, r.stderr
    doc = json.loads(f.read_text())
    old, new = doc["points"]
    assert "options" not in old
    assert new["options"] == {"lock": "tas", "profile": "none"}
    assert doc["options"]["profile"] == "vtd-2015" and doc["options"]["lock"] == "qspinlock"
    assert "profile mixed" in r.stdout.splitlines()[0]
    assert main(["report", str(f)]) == 0
    out = capsys.readouterr().out
    assert 'mixed: direct at 2 measured with lock "tas", profile "none" (the file\'s: lock ' \
           '"qspinlock", profile "vtd-2015")' in out
    # the options line no longer claims one profile for all
    assert "profile vtd-2015" not in out and "lock qspinlock" not in out
    assert segments_of(r.pid) == []


# ------------------------------------------------------------------- writing

def results_file(path):
    return results.ResultsFile(str(path), {"cpu_model": "x", "cores_allowed": 1}, options(),
                               "iommu-stress run")


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temporary_and_the_old_file(tmp_path, monkeypatch, error):
    f = tmp_path / "r.json"
    f.write_text("old results\n")
    res = results_file(f)

    def dumps(*a, **kw):
        raise error
    monkeypatch.setattr(results, "json", types.SimpleNamespace(dumps=dumps))
    with pytest.raises(UsageError if isinstance(error, OSError) else KeyboardInterrupt) as e:
        res.add(fake_point("direct", 1))
    if isinstance(error, OSError):
        assert "r.json: cannot write results: No space left on device" in str(e.value)
    assert no_temporaries(tmp_path)
    assert f.read_text() == "old results\n"


def test_a_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    f = tmp_path / "r.json"
    res = results_file(f)

    def replace(a, b):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(results.os, "replace", replace)
    with pytest.raises(UsageError, match="Read-only file system"):
        res.add(fake_point("direct", 1))
    assert no_temporaries(tmp_path) and not f.exists()


def test_a_write_into_a_vanished_directory_is_one_error(tmp_path):
    (tmp_path / "gone").mkdir()
    res = results_file(tmp_path / "gone" / "r.json")
    (tmp_path / "gone").rmdir()
    with pytest.raises(UsageError, match="gone/r.json: cannot write results"):
        res.add(fake_point("direct", 1))


@pytest.mark.parametrize("where, why", [("missing/r.json", "no such directory"),
                                        (".", "is a directory")])
def test_an_unwritable_path_is_refused_before_measuring(tmp_path, capsys, where, why):
    line = one_error_line(capsys, ["run", "--design", "direct", "--threads", "1", *QUICK,
                                   "--json", str(tmp_path / where)])
    assert "cannot write results: " + why in line


class _Bench:
    """What sweep.run asks of a bench, failing as told at the first window."""

    def __init__(self, error):
        self.error = error
        self.designs = [types.SimpleNamespace(name="direct")]
        self.cores = [0]
        self.timings = {}
        self.launches = 1

    def window(self, i, threads):
        raise self.error


@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("a worker died")])
def test_an_existing_file_is_intact_until_the_first_point(tmp_path, error):
    f = write_doc(tmp_path / "r.json", [fake_point("bitmap", 8)])
    before = f.read_bytes()
    res = results_file(f)
    assert f.read_bytes() == before
    with pytest.raises(type(error)):
        sweep.run(_Bench(error), [(1, 0)], 1, res)
    assert f.read_bytes() == before and no_temporaries(tmp_path)


def test_an_existing_file_is_replaced_by_the_first_point(tmp_path):
    f = write_doc(tmp_path / "r.json", [fake_point("bitmap", 8)])
    res = results_file(f)
    res.add(fake_point("direct", 1))
    assert [p["design"] for p in results.load(f)["points"]] == ["direct"]


# ---------------------------------------------------------------- validation

def doc_with(tmp_path, change):
    """A valid document's text after `change(doc)`."""
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1), fake_point("bitmap", 2)])
    doc = json.loads(f.read_text())
    change(doc)
    f.write_text(json.dumps(doc))
    return f


def set_in(path, value):
    def change(doc):
        at = doc
        for k in path[:-1]:
            at = at[k]
        at[path[-1]] = value
    return change


@pytest.mark.parametrize("path, value, says", [
    (("points", 1, "threads"), 0, "point 1: threads: expected an integer in the range 1..1048576, got 0"),
    (("points", 1, "threads"), "2", 'point 1: threads: expected an integer in the range 1..1048576, got "2"'),
    (("points", 0, "ops_per_sec"), -1.0, "point 0: ops_per_sec: expected a number in the range 0..1e+18, got -1.0"),
    (("points", 0, "ops_per_sec"), 10 ** 400, "point 0: ops_per_sec: expected a number in the range 0..1e+18, got an integer of 401 digits"),
    (("points", 0, "runs"), [1.0, None], "point 0: runs[1]: expected a number in the range"),
    (("points", 0, "design"), 3, "point 0: design: expected a string, got 3"),
    (("points", 1), [1, 2], "point 1: expected an object, got [1, 2]"),
    (("points", 0, "breakdown_ns"), {"total": "x"}, 'point 0: breakdown_ns: total: expected a number'),
    (("points", 0, "locks"), [{"name": "a", "acquisitions": True}], "point 0: locks[0]: acquisitions: expected a number"),
    (("points", 0, "options"), {"profile": 1}, "point 0: options: profile: expected a string, got 1"),
    (("options",), [], "options: expected an object, got []"),
    (("options", "sizes"), [[1]], "options: sizes[0]: expected a [pages, weight] pair, got [1]"),
    (("machine", "cores_allowed"), 0, "machine: cores_allowed: expected an integer in the range 1..1048576"),
    (("failures",), "oops", 'failures: expected a list, got "oops"'),
    (("complete",), 1, "complete: expected true or false, got 1"),
])
def test_a_file_of_wrong_types_is_one_line_naming_point_and_key(tmp_path, capsys, path, value, says):
    f = doc_with(tmp_path, set_in(path, value))
    for cmd in (["report", str(f)], ["compare", str(f), str(f)],
                ["plot", str(f), "-o", str(tmp_path / "r.png")]):
        assert one_error_line(capsys, cmd).startswith("iommu-stress: error: %s: %s" % (f, says))


def test_a_point_without_a_required_key_is_named(tmp_path, capsys):
    f = doc_with(tmp_path, lambda doc: doc["points"][1].pop("flush"))
    assert one_error_line(capsys, ["report", str(f)]).endswith("%s: point 1: no key 'flush'" % f)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(tmp_path, capsys, literal):
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1)])
    f.write_text(f.read_text().replace('"ops_per_sec": 1000000.0', '"ops_per_sec": ' + literal))
    line = one_error_line(capsys, ["report", str(f)])
    assert line.endswith("%s: not a results file: %s is not a number JSON knows" % (f, literal))


def test_an_oversized_file_is_refused_unread(tmp_path, capsys, monkeypatch):
    f = write_doc(tmp_path / "r.json", [fake_point("direct", 1)])
    monkeypatch.setattr(results, "MAX_BYTES", 100)
    assert "over the 0 MiB one can hold" in one_error_line(capsys, ["report", str(f)])


def test_a_mixed_file_reads_back_and_keeps_per_point_options(tmp_path):
    f = doc_with(tmp_path, set_in(("points", 1, "options"), {"profile": "none"}))
    doc = results.load(f)
    assert results.mixed_keys(doc) == ["profile"]
    assert doc["version"] == results.VERSION


def test_a_device_is_not_read_forever(capsys):
    assert one_error_line(capsys, ["report", "/dev/zero"]).endswith(
        "/dev/zero: not a results file: a device")


@pytest.mark.parametrize("cmd, what", [(["replay", "/dev/zero"], "not a trace: a device"),
                                       (["sweep", "--config", "/dev/zero"], "no such config"),
                                       (["sweep", "--workload", "/dev/zero"], "no such workload")])
def test_a_device_as_any_input_file_is_one_line(capsys, cmd, what):
    assert "/dev/zero: %s" % what in one_error_line(capsys, cmd)
