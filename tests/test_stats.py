"""Statistics that decide: the median's interval, the test and interval of
a comparison agreeing, --repeats auto, and the designs' windows
interleaved in a seeded shuffled order."""
import itertools
import types

import numpy as np
import pytest

from harness import readout, report, stats, sweep
from harness.errors import UsageError


def test_the_median_interval_is_the_order_statistics_one():
    assert stats.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0, 0.75)
    lo, hi, level = stats.median_ci(list(range(10)))
    # 10 windows: the 2nd and the 9th cover 1 - 2 * 11/1024 of the time
    assert (lo, hi) == (1.0, 8.0) and level == pytest.approx(1 - 22 / 1024)
    lo, hi, level = stats.median_ci(list(range(100)))
    assert level >= 0.95 and 38 <= lo < 49 < hi <= 61
    assert stats.median_ci([7.0]) == (7.0, 7.0, 0.0)
    assert stats.half_width([10.0, 10.0, 10.0, 10.0, 10.0, 10.0]) == 0.0
    assert stats.half_width([9.0, 10.0, 12.0]) == pytest.approx(0.2)


def test_the_exact_null_of_u_is_the_count_of_orderings():
    m, n = 3, 4
    counts = np.zeros(m * n + 1)
    for a in itertools.combinations(range(m + n), m):
        counts[sum(1 for i in a for j in range(m + n) if j not in a and j < i)] += 1
    assert np.allclose(stats._u_null(m, n), counts / counts.sum())


def test_a_comparison_decides_only_what_the_windows_allow():
    c = stats.compare([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert c["verdict"] == "too few windows" and c["p"] == pytest.approx(0.1)
    c = stats.compare([1.0, 2, 3, 4, 5], [6.0, 7, 8, 9, 10])
    assert c["verdict"] == "faster" and c["p"] == pytest.approx(2 / 252) and c["low"] > 1
    c = stats.compare([6.0, 7, 8, 9, 10], [1.0, 2, 3, 4, 5])
    assert c["verdict"] == "slower" and c["high"] < 1
    rng = np.random.default_rng(3)
    a, b = rng.normal(100, 1, 8), rng.normal(100, 1, 8)
    c = stats.compare(a, b)
    assert c["verdict"] == "no significant difference" and c["low"] < 1 < c["high"]


def test_the_interval_excludes_one_exactly_when_the_test_rejects():
    rng = np.random.default_rng(7)
    for _ in range(60):
        m, n = rng.integers(4, 9, size=2)
        a = rng.normal(100, 5, m)
        b = rng.normal(100 + rng.uniform(-8, 8), 5, n)
        c = stats.compare(a, b)
        assert (c["low"] > 1 or c["high"] < 1) == (c["p"] <= 0.05), (a, b, c)
        assert c["level"] >= 0.95


def test_repeats_auto_stops_at_the_target_or_the_most():
    r = sweep.Repeats(None, least=6, most=10, target=0.02)
    assert r.more([100.0] * 5) and not r.more([100.0] * 6)
    noisy = [100.0, 90, 110, 95, 105, 100, 80, 120, 100]
    assert r.more(noisy) and not r.more(noisy + [100.0])
    assert r.outcome(noisy + [100.0])["reached"] is False
    assert sweep.Repeats(fixed=3).more([1.0, 2.0]) and not sweep.Repeats(fixed=3).more([1.0] * 3)
    with pytest.raises(UsageError, match="--min-repeats 9 is over --max-repeats 8"):
        sweep.Repeats.of({"repeats": "auto", "min_repeats": 9, "max_repeats": 8,
                          "target_ci": 0.02, "launches": 3})


class _Bench:
    """What sweep.run asks of a bench: windows whose figure is design i's
    own value, noisy from a seeded generator."""

    def __init__(self, n, noise=0.0):
        self.designs = [types.SimpleNamespace(name="d%d" % i, spec="d%d" % i, allocator="direct",
                                              variant="", flush="none") for i in range(n)]
        self.cores = [0, 1]
        self.timings = {}
        self.calls = []
        self.rng = np.random.default_rng(0)
        self.noise = noise
        self.launches = 1

    fork_s = 0.0                     # what a relaunch's fork would cost

    def relaunch(self):
        self.calls.append("relaunch")
        self.launches += 1

    def relaunch_cost(self, threads):
        return self.fork_s * threads

    def window(self, i, threads):
        self.calls.append((threads, i))
        return {"ops_per_sec": 1e6 * (i + 1) * (1 + self.noise * self.rng.standard_normal())}

    def busy(self, threads):
        return threads

    def say(self, line):
        pass


def _run(bench, todo, repeats, seed, monkeypatch):
    monkeypatch.setattr(readout, "window", lambda w: w)
    res = types.SimpleNamespace(path=None, doc={"points": []}, add=lambda p: res.doc["points"]
                                .append(p), fail=lambda m: None, finish=lambda: None)
    assert sweep.run(bench, todo, repeats, res, order_seed=seed)
    return res.doc["points"]


def test_windows_are_interleaved_in_a_seeded_order(monkeypatch):
    todo = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    b = _Bench(3)
    pts = _run(b, todo, 4, 5, monkeypatch)
    first = b.calls[:12]
    assert [t for t, _ in first] == [1] * 12 and [t for t, _ in b.calls[12:]] == [2] * 12
    # every round holds each design once, in an order of its own
    rounds = [tuple(i for _, i in first[k:k + 3]) for k in range(0, 12, 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds) and len(set(rounds)) > 1
    assert [(p["design"], p["threads"]) for p in pts] == [("d0", 1), ("d1", 1), ("d2", 1),
                                                          ("d0", 2), ("d1", 2), ("d2", 2)]
    assert sorted(sum((p["window_order"] for p in pts), [])) == list(range(24))
    again = _Bench(3)
    _run(again, todo, 4, 5, monkeypatch)
    assert again.calls == b.calls
    other = _Bench(3)
    _run(other, todo, 4, 6, monkeypatch)
    assert other.calls != b.calls


def test_repeats_auto_records_the_windows_and_whether_it_got_there(monkeypatch):
    pts = _run(_Bench(2, noise=0.0), [(1, 0), (1, 1)],
               sweep.Repeats(None, least=6, most=9, target=0.02), 1, monkeypatch)
    assert [p["repeats_auto"]["windows"] for p in pts] == [6, 6]
    assert all(p["repeats_auto"]["reached"] and p["ci"]["level"] >= 0.95 for p in pts)
    pts = _run(_Bench(2, noise=0.2), [(1, 0), (1, 1)],
               sweep.Repeats(None, least=6, most=9, target=0.001), 1, monkeypatch)
    assert [len(p["runs"]) for p in pts] == [9, 9]
    assert not any(p["repeats_auto"]["reached"] for p in pts)
    lines = report.repeats_lines(pts)
    assert lines[0] == "--repeats auto, target ±0.1%:"
    assert "d0 at 1: 9 windows" in lines[1] and lines[1].endswith("target not reached")
    assert lines[-1] == "never within ±0.1%: d0 at 1, d1 at 1"
    table = report.throughput_table(pts)
    assert " ±" in table and " >" in table and "order statistics" in table


def _source(tmp_path, name, runs_by_point):
    from harness import results
    res = results.ResultsFile(tmp_path / name, {"cpu_model": "x", "cores_allowed": 2},
                              {"designs": [], "threads": []}, "test")
    for (design, threads), runs in runs_by_point.items():
        launch = None
        if isinstance(runs, tuple):
            runs, launch = runs
        pt = {"design": design, "spec": design, "allocator": design, "variant": "",
              "flush": "none" if design == "direct" else "strict", "threads": threads,
              "ops_per_sec": float(np.median(runs)), "runs": list(runs),
              "ci": stats.point_ci(runs)}
        if launch is not None:
            pt["window_launch"] = launch
        res.add(pt)
    res.finish()
    return report.load_sources([str(tmp_path / name)])[0]


def test_compare_says_the_verdict_in_words(tmp_path):
    rng = np.random.default_rng(11)
    same = {("direct", t): list(rng.normal(3e7, 3e5, 5)) for t in (1, 2)}
    again = {k: list(rng.normal(3e7, 3e5, 5)) for k in same}
    text = report.compare_table(_source(tmp_path, "a.json", same),
                                _source(tmp_path, "b.json", again))
    assert text.count("no significant difference (p=") == 2
    assert "geometric mean of B/A over 2 points" in text
    slower = {k: [v / 50 for v in vs] for k, vs in again.items()}
    text = report.compare_table(_source(tmp_path, "a.json", same),
                                _source(tmp_path, "c.json", slower))
    assert text.count("B slower (p=0.0079)") == 2 and "(slower at 2)" in text
    # 3 windows a side: no p can be under 0.05, and the table says so
    text = report.compare_table(_source(tmp_path, "e.json", {k: v[:3] for k, v in same.items()}),
                                _source(tmp_path, "d.json", {k: v[:3] for k, v in slower.items()}))
    assert text.count("too few windows to decide") == 2 and "0.10 with 3 windows a side" in text
    assert "one launch a side" in text


def _hierarchical(rng, launches, windows, launch_sd, window_sd, mean=1e6):
    """Windows of `launches` launches: each launch's luck (log-normal,
    `launch_sd`) shared by its windows, which add their own."""
    runs, launch = [], []
    for k in range(launches):
        luck = rng.normal(0, launch_sd)
        runs += list(mean * np.exp(luck + rng.normal(0, window_sd, windows)))
        launch += [k] * windows
    return runs, launch


def test_launches_not_windows_are_the_draws_of_a_comparison():
    """Two runs of the same thing, whose launches differ by more than their
    windows do (as on a real machine): a test on the windows calls a
    difference far more often than its 5%; the test on the launches keeps
    to its level."""
    rng = np.random.default_rng(2)
    false_windows = false_launches = 0
    trials = 200
    for _ in range(trials):
        a, la = _hierarchical(rng, 3, 3, 0.05, 0.01)
        b, lb = _hierarchical(rng, 3, 3, 0.05, 0.01)
        false_windows += stats.compare(a, b)["verdict"] != "no significant difference"
        c = stats.compare(a, b, la, lb)
        assert c["unit"] == "launches" and c["n"] == [3, 3]
        false_launches += c["verdict"] != "no significant difference"
    assert false_windows > 0.15 * trials
    assert false_launches < 0.1 * trials
    # a real difference, of 20%, is found launch by launch
    a, la = _hierarchical(rng, 3, 3, 0.02, 0.01)
    b, lb = _hierarchical(rng, 3, 3, 0.02, 0.01, mean=1.2e6)
    c = stats.compare(a, b, la, lb)
    assert c["verdict"] == "faster" and c["low"] > 1 and c["p"] < 0.01


def test_a_launch_interval_excludes_one_exactly_when_welch_rejects():
    rng = np.random.default_rng(9)
    for _ in range(60):
        na, nb = rng.integers(2, 6, size=2)
        a, la = _hierarchical(rng, na, 2, 0.05, 0.02)
        b, lb = _hierarchical(rng, nb, 2, 0.05, 0.02, mean=1e6 * rng.uniform(0.9, 1.1))
        c = stats.compare(a, b, la, lb, alpha=0.0125)
        assert c["unit"] == "launches" and c["level"] == pytest.approx(0.9875)
        assert (c["low"] > 1 or c["high"] < 1) == (c["p"] <= 0.0125), c
    # one launch on a side: the windows are the draws again
    c = stats.compare([1.0, 2, 3, 4, 5], [6.0, 7, 8, 9, 10], [0] * 5, [0, 0, 1, 1, 1])
    assert c["unit"] == "windows" and c["verdict"] == "faster"
    assert stats.launch_medians([1.0, 5, 2, 8], [0, 1, 0, 1]) == [1.5, 6.5]


def test_the_windows_of_a_point_span_its_launches(monkeypatch):
    b = _Bench(2)
    pts = _run(b, [(1, 0), (1, 1), (2, 0), (2, 1)], sweep.Repeats(fixed=3, launches=3), 1,
               monkeypatch)
    assert [p["window_launch"] for p in pts] == [[0, 1, 2]] * 4
    # a launch between rounds, none before a thread count's first round
    assert b.calls.count("relaunch") == 4
    assert [c == "relaunch" for c in b.calls[:7]] == [False, False, True, False, False, True,
                                                       False]
    assert sweep.Repeats(fixed=10, launches=3).per_launch() == 4
    assert sweep.Repeats(fixed=2, launches=3).per_launch() == 1
    assert sweep.Repeats(None, least=6, most=30, launches=3).per_launch() == 2
    pts = _run(_Bench(1), [(1, 0)], sweep.Repeats(fixed=10, launches=3), 1, monkeypatch)
    assert pts[0]["window_launch"] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_a_launch_that_costs_more_than_its_windows_is_not_made(monkeypatch, capsys):
    """Forking 1024 workers takes seconds: where a relaunch would cost over
    a quarter of a round (and over a quarter second), the point's windows
    stay in one launch, and the run says so."""
    b = _Bench(2)
    b.fork_s = 0.01                  # 10 ms a worker: 40 ms for 4, 10 s for 1024
    pts = _run(b, [(4, 0), (4, 1), (1024, 0), (1024, 1)], sweep.Repeats(fixed=3, launches=3),
               1, monkeypatch)
    assert [p["window_launch"] for p in pts] == [[0, 1, 2]] * 2 + [[0, 0, 0]] * 2
    err = capsys.readouterr().err
    assert "at 1024 workers the windows stay in one launch" in err and "at 4 " not in err


def test_compare_tests_launches_at_the_tables_level(tmp_path):
    rng = np.random.default_rng(4)

    def side(name, mean):
        pts = {}
        for k in [("direct", 1), ("direct", 2), ("bitmap", 1), ("bitmap", 2)]:
            runs, launch = _hierarchical(rng, 3, 2, 0.03, 0.01, mean * (1 if k[0] == "direct"
                                                                        else 0.01))
            pts[k] = (runs, launch)
        return _source(tmp_path, name, pts)

    text = report.compare_table(side("a.json", 1e8), side("b.json", 1e8))
    assert "geometric means of each launch's median, from Welch's t test on their logs" in text
    assert "covering 98.75%" in text and "0.05 over the 4 points tested together" in text
    assert "one launch a side" not in text


def test_two_files_of_one_design_each_are_compared_by_thread_count(tmp_path):
    rng = np.random.default_rng(5)
    a = _source(tmp_path, "direct.json", {("direct", t): list(rng.normal(3e7, 1e6, 5))
                                          for t in (1, 2)})
    b = _source(tmp_path, "bitmap.json", {("bitmap", t): list(rng.normal(5e5, 2e4, 5))
                                          for t in (1, 2)})
    out, _ = report.render_compare(a, b)
    assert "A holds direct alone and B bitmap alone: compared at each thread count" in out
    assert out.count("direct -> bitmap") == 2 and out.count("B slower (p=0.0079)") == 2
