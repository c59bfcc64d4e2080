"""`replay --concurrent` and `sweep --trace`: a trace replayed by one worker
per traced CPU, unmaps on the CPU the trace says.  One compiled loop for
all of them: bitmap's under strict invalidation."""
import json

import numpy as np
import pytest

from harness import cli, report, sweep, tracereplay
from harness.errors import UsageError
from harness.replayloop import B_BEGIN, B_END, B_LEFT, BOUND_WORDS, OP_MAP, Q_HOLD, Q_OP, Q_OWNER
from harness.trace import parse

# Two CPUs; x* mapped on CPU 0, y* on CPU 1; x0, y0 and x2 unmapped on the
# other CPU; y2 left mapped at the end.
TWO = """\
cpu 0
a x0 1
a x1 2
cpu 1
a y0 1
f x0
a y1 4
cpu 0
f y0
a x2 1
f x1
a x3 8
f x3
cpu 1
f x2
f y1
a y2 1
"""
MAPS, UNMAPPED_ELSEWHERE, LEFT = 7, 3, 1

# four sparse CPUs, cross-CPU frees between all of them
FOUR = """\
cpu 1
a a0 1
cpu 3
a b0 2
cpu 6
a c0 1
f a0
cpu 9
a d0 4
f b0
cpu 1
f c0
f d0
a a1 1
cpu 6
f a1
"""


def write(tmp_path, text, name="t.trace"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------ the plan, no compile

def test_plan_puts_each_cpu_on_its_worker_and_leftovers_last():
    p = tracereplay.plan(parse(TWO), None, "max")
    assert p.workers == 2 and not p.folded
    assert p.cross_cpu == UNMAPPED_ELSEWHERE and p.left_mapped == LEFT
    b = p.bounds.reshape(-1, BOUND_WORDS)
    # worker 0: CPU 0's 7 requests; worker 1: CPU 1's 6 and the unmap of y2
    assert b[:, [B_BEGIN, B_LEFT, B_END]].tolist() == [[0, 7, 7], [7, 13, 14]]
    last = p.rows[13]
    assert last[Q_OP] != OP_MAP and last[Q_OWNER] == 1
    # every map has a word of its own; each unmap points at its map's
    maps = p.rows[p.rows[:, Q_OP] == OP_MAP]
    assert len(set(maps[:, Q_HOLD].tolist())) == MAPS
    assert set(p.rows[:, Q_HOLD].tolist()) == set(maps[:, Q_HOLD].tolist())
    # a mapper's words are on lines of its own
    w0 = set(p.rows[:7][p.rows[:7, Q_OP] == OP_MAP][:, Q_HOLD] // 16)
    w1 = set(p.rows[7:][p.rows[7:, Q_OP] == OP_MAP][:, Q_HOLD] // 16)
    assert not w0 & w1


def test_plan_folds_by_rank_and_merges_in_trace_order():
    t = parse(FOUR)
    p = tracereplay.plan(t, 2, "max")
    assert p.folded and p.workers == 2
    assert p.worker_of_cpu() == {1: 0, 3: 1, 6: 0, 9: 1}
    b = p.bounds.reshape(-1, BOUND_WORDS)
    w0 = p.rows[b[0, B_BEGIN]:b[0, B_END]]
    # worker 0 runs CPUs 1 and 6: a0, c0, f a0, f c0, f d0, a1, f a1 in trace order
    assert w0[:, Q_OP].tolist() == [0, 0, 1, 1, 1, 0, 1]
    assert "folded: 4 traced CPUs onto 2 workers" in "\n".join(p.describe())
    assert "1,6 -> 0; 3,9 -> 1" in "\n".join(p.describe())


def test_plan_refusals():
    with pytest.raises(UsageError, match=r"^--pace recorded: <trace> is a format 1 trace, "
                                         r"which records no times"):
        tracereplay.plan(parse(TWO), None, "recorded")
    with pytest.raises(UsageError, match=r"<trace>:2: the request has no recorded time"):
        tracereplay.plan(parse("format 2\na x 1\nf x t=5\n"), None, "recorded")
    with pytest.raises(UsageError, match=r"<trace>:1: a concurrent replay maps under the "
                                         r"design's own limit"):
        tracereplay.plan(parse("a x 1 100\n"), None, "max")


# ------------------------------------------------------------ replays

def test_cross_cpu_frees_complete_with_exact_counts(tmp_path, capsys, no_leaks, monkeypatch):
    # a relaunch between the passes, whatever forking costs on this machine
    monkeypatch.setattr(sweep, "LAUNCH_FREE_S", 1e9)
    out_json = tmp_path / "r.json"
    code, out, err = run(capsys, "replay", write(tmp_path, TWO), "--concurrent",
                         "--design", "bitmap+strict", "--pages", 256, "--repeats", 2,
                         "--check", "--json", out_json)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    (pt,) = doc["points"]
    r = pt["replay"]
    assert pt["threads"] == 2 and len(pt["runs"]) == 2
    assert pt["ops_total"] == MAPS and pt["unmaps"] == MAPS and pt["alloc_fails"] == 0
    assert r["maps_done"] == MAPS and r["unmaps_done"] == MAPS and r["failed_unmaps"] == 0
    assert r["cross_cpu_unmaps"] == UNMAPPED_ELSEWHERE == r["cross_worker_unmaps"]
    assert r["left_mapped"] == LEFT and not r["folded"]
    assert pt["state_checked"] and pt["ops_per_sec"] > 0
    assert pt["locks"][0]["name"] == "bitmap" and pt["locks"][0]["acquisitions"] == 2 * MAPS
    assert "CPU 0 -> worker 0, CPU 1 -> worker 1" in out
    assert "bitmap+strict" in out and "clean" in out and "bitmap+strict: locks" in out
    # the second pass in a launch of its own, a fresh segment: exact all the same
    assert pt["window_launch"] == [0, 1]
    text, _ = report.render_report(report.load_sources([str(out_json)]))
    assert "bitmap+strict maps/s" in text and "passes 2" in text and "duration" not in text


def test_folded_onto_fewer_workers(tmp_path, capsys, no_leaks):
    code, out, err = run(capsys, "sweep", "--trace", write(tmp_path, FOUR),
                         "--designs", "bitmap+strict", "--threads", 2, "--pages", 256,
                         "--repeats", 1, "--json", tmp_path / "r.json")
    assert code == 0, err
    (pt,) = json.loads((tmp_path / "r.json").read_text())["points"]
    r = pt["replay"]
    assert r["folded"] and r["workers"] == 2 and r["traced_cpus"] == 4
    assert pt["ops_total"] == 5 == pt["unmaps"]
    # every unmap is traced on another CPU than its map; folded, only d0's
    # (CPU 9 -> 1: worker 1 -> 0) runs on another worker
    assert r["cross_cpu_unmaps"] == 5 and r["cross_worker_unmaps"] == 1
    assert "folded: 4 traced CPUs onto 2 workers" in out


def test_recorded_pace_takes_the_recorded_time(tmp_path, capsys, no_leaks):
    text = "format 2\ncpu 0\na x 1 t=1000000\ncpu 1\nf x t=31000000\na y 1 t=31000001\n" \
           "cpu 0\nf y t=31000002\n"
    code, _, err = run(capsys, "replay", write(tmp_path, text), "--concurrent", "--design",
                       "bitmap+strict", "--pages", 256, "--repeats", 1, "--pace", "recorded",
                       "--json", tmp_path / "r.json")
    assert code == 0, err
    (pt,) = json.loads((tmp_path / "r.json").read_text())["points"]
    # 30 ms between the first request and the last
    assert 0.03 <= pt["window_s"] < 1.0 and pt["replay"]["pace"] == "recorded"
    assert pt["ops_total"] == 2 == pt["unmaps"]


def test_the_watchdog_ends_a_replay_that_does_not(tmp_path, capsys, monkeypatch, no_leaks):
    # recorded times 60 s apart, a watchdog of a fraction of a second
    monkeypatch.setattr(tracereplay.Plan, "timeout_s", lambda self: 0.3)
    text = "format 2\ncpu 0\na x 1 t=0\ncpu 1\nf x t=60000000000\n"
    code, _, err = run(capsys, "replay", write(tmp_path, text), "--concurrent", "--design",
                       "bitmap+strict", "--pages", 256, "--repeats", 1, "--pace", "recorded")
    assert code == 1
    assert "watchdog: the replay of" in err and "did not end within 0.3 s" in err


@pytest.mark.parametrize("argv,message", [
    (["replay", "{v1}", "--concurrent", "--design", "bitmap", "--pace", "recorded"],
     "--pace recorded: {v1} is a format 1 trace, which records no times; import a capture "
     "(format 2), or use --pace max"),
    (["replay", "{never}", "--concurrent", "--design", "bitmap"],
     "{never}:2: free of tag 'zz' that is not mapped (never allocated)"),
    (["replay", "{v1}", "--pace", "max"], "--pace: only with --concurrent"),
    (["replay", "{v1}", "--concurrent", "--design", "direct"],
     "design direct maps nothing: a trace replays through an allocator that places addresses"),
    (["sweep", "--trace", "{v1}", "--designs", "bitmap", "--threads", "1,2"],
     "--threads: a concurrent replay takes one worker count, the fold width (the trace sets "
     "the rest)"),
    (["sweep", "--designs", "bitmap", "--pace", "max"], "--pace: only with --trace"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, message, no_leaks):
    paths = {"v1": write(tmp_path, TWO), "never": write(tmp_path, "a x 1\nf zz\n", "n.trace")}
    code, out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert err == "iommu-stress: error: %s\n" % message.format(**paths)


def test_an_imported_capture_replays(tmp_path, capsys, no_leaks):
    from pathlib import Path
    capture = Path(__file__).parent / "data" / "captures" / "tracefs-dma-two-cpus.txt"
    trace = tmp_path / "c.trace"
    code, _, err = run(capsys, "trace", "import", capture, "-o", trace)
    assert code == 0, err
    code, out, err = run(capsys, "replay", trace, "--concurrent", "--design", "bitmap+strict",
                         "--pages", 1 << 20, "--repeats", 1, "--json", tmp_path / "r.json")
    assert code == 0, err
    (pt,) = json.loads((tmp_path / "r.json").read_text())["points"]
    r = pt["replay"]
    assert r["format"] == 2 and r["traced_cpus"] == 2 and r["devices"] == ["0000:01:00.0"]
    assert pt["ops_total"] == r["maps"] == pt["unmaps"] and r["cross_cpu_unmaps"] > 0
    assert np.isfinite(pt["ops_per_sec"])
