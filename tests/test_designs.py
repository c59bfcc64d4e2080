"""Every design under many workers with the ownership map on: no page is
ever mapped twice, every window ends with the allocator back to fresh, and
the lock and allocator statistics add up."""
import psutil
import pytest

from harness import designs
from harness.config import defaults
from harness import results, sweep
from harness.bench import Bench

THREADS = [1, 2, 64, 256]
# two groups, so that two test processes share the work; each group forks
# its 256 workers once.  The deferred policies ride on two of the
# allocators, so that tests/test_flush.py's run of the policies loads these
# loops instead of compiling its own.
GROUPS = [["direct", "bitmap", "pools+batched", "rbtree", "lockfree"],
          ["magazines:fixed+percpu", "magazines:list+percpu", "magazines:prealloc+percpu"]]


@pytest.mark.parametrize("names", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_designs_under_load_with_check(names, no_leaks):
    o = defaults()
    # sizes over 32 pages bypass the magazines; a small space makes the
    # allocators wrap, fill and fail, where their bugs live
    o.update(threads=THREADS, duration=0.15, warmup=0.0, repeats=1, check=True,
             sizes=[(1, 4.0), (3, 2.0), (8, 1.0), (40, 0.5)], pages=1 << 16, depth=8)
    ds = [designs.resolve(n) for n in names]
    with Bench(o, ds) as bench:
        for t, (i, d) in ((t, x) for t in THREADS for x in enumerate(ds)):
            w = sweep.measure(bench, i, t, 1)   # raises on a double mapping or a dirty state
            assert w["ops_per_sec"] > 0
            assert len(w["per_worker_ops"]) == t
            assert sum(w["per_worker_ops"]) > 0
            if d.module().LOCK_CLASSES == ("none",):
                # no lock of the allocator's is ever taken
                assert w["locks"][0]["acquisitions"] == 0
            elif d.translates:
                acq = sum(l["acquisitions"] for l in w["locks"])
                assert acq > 0
                assert all(l["contentions"] <= l["acquisitions"] for l in w["locks"])
    assert not psutil.Process().children(recursive=True)


def test_diag_times_the_loop_between_the_steps(no_leaks):
    """--diag times the unsampled I/Os in runs between two ticks as well as
    the sampled ones step by step: the harness's loop is a part of its
    own, measured, not what is left."""
    o = defaults()
    o.update(threads=[1], duration=0.2, warmup=0.0, repeats=1, diag=True, profile="none")
    # --diag's loop is compiled apart: bitmap+strict's, which
    # tests/test_dmabench.py compiles too
    with Bench(o, [designs.resolve("bitmap+strict")]) as bench:
        # the loop is what an unsampled I/O costs over its steps, some 5 to
        # 20 ns against 100: a window whose stamps cost more before a step
        # than after one splits a few ns the wrong way, and can floor it.
        for _ in range(5):
            w = sweep.measure(bench, 0, 1, 1)
            if w["breakdown_ns"]["loop"] > 0:
                break
    b = w["breakdown_ns"]
    assert 0 < b["loop"] < b["total"]
    assert 0 < b["tick"] < b["loop"] + b["tick"] < b["total"]
    assert b["allocate"] > 0 and b["unnamed"] >= 0
    _latency_distributions(w, o["depth"])


def _latency_distributions(w, depth):
    """The same window's latency distributions, as the results file
    holds them: every sampled map and unmap, in order; with one worker,
    no lock was ever contended, and the timed holds were recorded."""
    results.POINT(w, "point")
    lat = w["latency_ns"]
    d = w["diag"]
    # each sampled map and unmap is in its histogram, outliers included
    assert lat["map"]["count"] + lat["unmap"]["count"] == d["sampled"] + d["outliers"]
    # a ring of `depth`: the first sampled maps had no unmap beside them
    assert 0 <= lat["map"]["count"] - lat["unmap"]["count"] <= depth
    for k in ("map", "unmap"):
        x = lat[k]
        assert x["count"] > 0
        assert 0 < x["p50"] <= x["p90"] <= x["p99"] <= x["p99_9"] <= x["max"]
        assert sum(c for _, c in x["buckets"]) == x["count"]
    taken = {l["name"] for l in w["locks"] if l["acquisitions"]}
    assert taken and set(lat["locks"]) >= taken
    for name in taken:
        assert lat["locks"][name]["wait"] == {"count": 0}
        assert lat["locks"][name]["hold"]["count"] > 0
    assert 0 < w["breakdown_ns"]["diag_histograms"] <= lat["cost_ns_per_io"]
    assert 0 < lat["cost_share"] <= lat.get("cost_share_on_cpu", 1) and lat["cost_share"] < 0.03
