"""Readout: raw counters to figures, with no process and no arena."""
import numpy as np
import pytest

from harness import abi, designs, dma, loop, readout
from harness.abi import CTL_T_MEASURE, CTL_T_STOP, LINE
from harness.bench import Raw
from hwmodel import iommu, locks

CPN = 2.0                                  # cycles per ns


def lock_rows(acq, con):
    """class_stats rows as the locks return them, for one class."""
    nw = 2
    lk = locks.Locks(np.zeros(locks.STRIDE, np.int64), np.zeros(nw * LINE, np.int64),
                     np.zeros(nw * LINE, np.int64), np.zeros(LINE, np.int64),
                     np.zeros(LINE, np.int64), np.zeros(LINE, np.int64))
    locks.init(lk, "ttas", [0])
    lk.word[locks.W_ACQ] = acq
    lk.stats.reshape(nw, LINE)[0, locks.S_CONTENDED] = con
    return locks.class_stats(lk)


def raw(design="bitmap", threads=2, consumers=0, ops=(1000, 3000), window_cycles=2e9):
    d = designs.resolve(design)
    cnt = np.zeros(threads, dtype=abi.COUNTERS)
    cnt["ops_start"] = 100
    cnt["ops_end"][:len(ops)] = [100 + o for o in ops]
    cnt["ops"] = cnt["ops_end"] + 10
    cnt["t_start"] = 5
    cnt["t_end"] = 5 + window_cycles
    cnt["unmaps"] = cnt["ops"]
    cnt["ticks"] = cnt["ops"] // 16
    ctl = np.zeros(abi.CTL_WORDS, np.int64)
    ctl[CTL_T_MEASURE], ctl[CTL_T_STOP] = 5, 5 + window_cycles
    io = np.zeros((threads, LINE), np.int64)
    io[:, iommu.S_INV] = cnt["unmaps"]
    return Raw(design=d, threads=threads, consumers=consumers, cycles_per_ns=CPN, lock_timing=0,
               ctl=ctl, cnt=cnt, steps=np.zeros(threads, dtype=abi.STEPS), io_stats=io,
               exp=np.zeros((threads, dma.EXP_WORDS), np.int64),
               fq_meta=np.zeros((1, LINE), np.int64), alloc_locks=[lock_rows(500, 5)],
               fq_locks=lock_rows(0, 0) * 2,
               alloc_stats=np.zeros((threads, len(d.module().STATS)), np.int64),
               footprint={"start": 8, "peak": 16}, cores=2, preemptions=[0] * threads)


def test_throughput_is_each_workers_rate_over_its_own_window():
    w = readout.window(raw())
    # 1000 and 3000 I/Os over 1 s each
    assert w["ops_per_sec"] == pytest.approx(4000.0)
    assert w["window_s"] == pytest.approx(1.0)
    assert w["per_worker_ops"] == [1000, 3000]


def test_unmap_workers_count_no_io():
    w = readout.window(raw(threads=3, consumers=1, ops=(1000, 3000)))
    assert w["per_worker_ops"] == [1000, 3000] and w["unmap_workers"] == 1


def test_clock_reads_per_io():
    w = readout.window(raw())
    # a tick per 16 I/Os, an exposure stamp per unmap, two reads per invalidation
    assert w["clock_reads_per_io"] == pytest.approx(1 / 16 + 1 + 2, rel=0.01)


def test_disturbance_and_the_point():
    r = raw()
    r.preemptions = [0, 3]
    w = readout.window(r)
    assert w["disturbance"]["preemptions"] == 3 and w["disturbance"]["preempted"] == 1
    quiet = readout.window(raw())
    p = readout.point(designs.resolve("bitmap"), 2, [quiet, w, quiet], oversubscribed=False)
    assert p["disturbed"] and p["runs"] == [4000.0] * 3 and p["ops_per_sec"] == 4000.0
    assert p["spec"] == "bitmap+strict" and p["flush"] == "strict"


def test_ownership_error_names_page_and_workers():
    ctl = np.zeros(abi.CTL_WORDS, np.int64)
    ctl[abi.CTL_ERR_KIND], ctl[abi.CTL_ERR_PAGE] = abi.ERR_DOUBLE_MAP, 77
    ctl[abi.CTL_ERR_HOLDER], ctl[abi.CTL_ERR_CLAIMANT] = 1, 3
    assert readout.ownership_error(ctl, "bitmap", 4) == \
        "double mapping of page 77 in bitmap at 4 threads: held by worker 0, claimed by worker 2"


def test_every_key_written_is_documented():
    """docs/results-format.md names every key a point holds: the point's,
    a lock row's, the breakdown's and the disturbance's."""
    import re
    from pathlib import Path
    doc = (Path(__file__).parent.parent / "docs" / "results-format.md").read_text()
    named = set(re.findall(r"`([a-z_0-9]+)`", doc))
    r = raw()
    r.series = [(0.0, 0, {"bitmap": 0}), (1.0, 1000, {"bitmap": 5})]
    w = readout.window(r)
    p = readout.point(designs.resolve("bitmap"), 2, [w], oversubscribed=False)
    keys = set(p) | set(p["locks"][0]) | set(p["breakdown_ns"]) | set(p["disturbance"]) | \
        set(p["series"][0]) | set(p["exposure_ns"]) | set(p["flush_stats"])
    assert keys - named == set()


def test_the_sampled_ios_are_one_in_diag_sample_at_random():
    """One I/O in DIAG_SAMPLE, picked by the loop's generator: not every
    n-th, which would meet a flush every 250 unmaps at a rate set by the
    two periods."""
    rng, picked = 1, []
    for i in range(64_000):
        rng = loop._xorshift.py_func(rng)
        if loop._sampled.py_func(rng):
            picked.append(i)
    assert 3400 < len(picked) < 4600
    # every phase of a 250-unmap period is met (every 16th I/O: even ones only)
    assert len(set((np.array(picked) % 250).tolist())) == 250
    gaps = np.diff(picked)
    assert gaps.min() < 4 and gaps.max() > 40


def test_the_loop_is_a_timed_io_less_its_steps():
    """Hand-derived: 100 sampled I/Os timed whole, each its steps (each
    interval closed by a stamp), the four stamps that open the map, its
    translations, the unmap and close the whole, and 7 ns of the loop's
    own.  The breakdown names those 7 ns, and the tick a read per 16 I/Os."""
    r = raw(threads=1, ops=(16000,))
    r.stamp_cycles, r.clock_read_cycles = 40.0, 20.0        # 20 ns, 10 ns at CPN 2
    s = r.steps
    s["maps"] = s["unmaps"] = s["ios"] = 100
    per = {"hypercall_cycles": 2 * 40, "alloc_cycles": 90 + 40, "map_pte_cycles": 30 + 40,
           "access_cycles": 16 + 40, "unmap_pte_cycles": 24 + 40, "free_cycles": 50 + 40}
    for f, v in per.items():
        s[f] = 100 * v
    s["io_cycles"] = 100 * (sum(per.values()) + 4 * 40 + 14)
    b = readout.breakdown(r, [])
    assert b["loop"] == pytest.approx(7.0)
    assert b["tick"] == pytest.approx(r.cnt["ticks"].sum() * 10.0 / r.cnt["ops"].sum())
    # timed ticks: each interval less its closing stamp, plus the plain
    # read an untimed tick opens with: 100 + 20 cycles a tick
    s["ticks_timed"], s["tick_cycles"] = 10, 10 * (100 + 40)
    b = readout.breakdown(r, [])
    assert b["tick"] == pytest.approx(r.cnt["ticks"].sum() * 120 / 2.0 / r.cnt["ops"].sum())
    # what is left is the total less every part: nothing is named twice
    parts = sum(v for k, v in b.items() if k not in ("total", "lock_wait", "unnamed"))
    assert b["unnamed"] == pytest.approx(max(0.0, b["total"] - parts))


def test_no_io_timed_whole_no_loop():
    """The hand-off and premapped modes time no I/O whole: their loop is
    left in what is not named, not guessed."""
    r = raw(threads=1, ops=(16000,))
    r.steps["maps"] = r.steps["unmaps"] = 100
    r.steps["alloc_cycles"] = 100 * 130
    assert readout.breakdown(r, [])["loop"] == 0.0
