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
    r = Raw(design=d, threads=threads, consumers=consumers, cycles_per_ns=CPN, lock_timing=0,
            ctl=ctl, cnt=cnt, steps=np.zeros(threads, dtype=abi.STEPS), io_stats=io,
            exp=np.zeros((threads, dma.EXP_WORDS), np.int64),
            fq_meta=np.zeros((1, LINE), np.int64), alloc_locks=[lock_rows(500, 5)],
            fq_locks=lock_rows(0, 0) * 2,
            alloc_stats=np.zeros((threads, len(d.module().STATS)), np.int64),
            footprint={"start": 8, "peak": 16}, cores=2, preemptions=[0] * threads,
            edges=np.zeros((threads, 2, abi.EDGE_WORDS), np.int64))
    for w, o in enumerate(ops):
        set_window(r, w, E_UNMAPS=o, E_TICKS=o // 16)
    return r


def set_window(r, w=0, **counts):
    """Worker w's counts over its window, as its closing edge holds them
    (the opening one zero): abi.STEPS fields by name, the others by their
    abi.E_* name (E_WAITED, E_TICKS, E_UNMAPS...)."""
    e = r.edges[w, 1]
    steps = e[:abi.EDGE_STEPS].view(abi.STEPS)
    for k, v in counts.items():
        if k.startswith("E_"):
            e[getattr(abi, k)] = v
        else:
            steps[k] = v


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


def test_every_cycle_of_the_window_is_named_once():
    """Hand-derived, bitmap+strict at one worker, 16,000 I/Os: 6,000 of
    them unsampled between two ticks at 100 ns (200 cycles) each; 100
    sampled ones timed whole, each its thirteen stamps at 30 cycles (the
    unmap's exposure stamp in place of a 20-cycle read); 9,000 between
    ticks beside them; 1,000 between ticks that held 200 µs of stalls.
    The steps are each less one stamp as it cost in place; the loop is the
    unsampled I/O less its steps, its exposure read and the tick; --diag's
    cost what the runs with sampled I/Os cost beyond as many unsampled; the
    stalls what the others cost beyond theirs.  Together: the window."""
    r = raw(threads=1, ops=(16000,))
    r.clock_read_cycles, r.stamp_cycles = 20.0, 99.0       # the calibration is not used
    c, u, k = 30, 200, 13
    s_io = u + k * c - 20                                 # a sampled I/O, less its waits
    raw_steps = {"alloc_cycles": 60, "map_pte_cycles": 20, "access_cycles": 16,
                 "unmap_pte_cycles": 14, "free_cycles": 40, "inv_submit_cycles": 10}
    set_window(r, maps=100, unmaps=100, ios=100, io_cycles=100 * s_io,
               clean_ios=6000, clean_cycles=6000 * u,
               dirty_ios=9000, dirty_cycles=9000 * u + 100 * (s_io - u),
               stall_ios=1000, stall_cycles=1000 * u + 400_000,
               **{f: 100 * (v + c) for f, v in raw_steps.items()})
    cycles = 6000 * u + 9000 * u + 100 * (s_io - u) + 1000 * u + 400_000
    r.cnt["t_end"] = r.cnt["t_start"] + cycles
    b = readout.breakdown(r)
    assert b["allocate"] == pytest.approx(30.0) and b["free"] == pytest.approx(20.0)
    assert b["page_table"] == pytest.approx(17.0) and b["invalidation_submit"] == pytest.approx(5.0)
    assert b["exposure_stamp"] == pytest.approx(10.0)
    assert b["tick"] == pytest.approx(1000 * 20 / 16000 / CPN)
    assert b["loop"] == pytest.approx(100.0 - (30 + 17 + 8 + 5 + 20 + 10 + 0.625))
    assert b["diag_timing"] == pytest.approx(100 * (s_io - u) / CPN / 16000)
    assert b["stalls"] == pytest.approx(200_000 / 16000)
    assert b["total"] == pytest.approx(cycles / CPN / 16000)
    parts = sum(v for key, v in b.items() if key not in ("total", "unnamed"))
    assert parts == pytest.approx(b["total"]) and b["unnamed"] == pytest.approx(0.0, abs=1e-9)
    # timed ticks: each interval less its closing stamp (as it cost in
    # place), plus the plain read an untimed tick opens with
    set_window(r, ticks_timed=10, tick_cycles=10 * (100 + c))
    assert readout.breakdown(r)["tick"] == pytest.approx(1000 * 120 / CPN / 16000)


def test_lock_waits_and_flushes_are_counted_whole_over_the_window():
    """The mapping workers' contended waits and full-queue flushes, every
    one, per I/O of theirs in their windows; an unmap worker's are not
    theirs, nor what came before the window opened."""
    r = raw(threads=3, consumers=1, ops=(1000, 3000))
    for w, (waited, flush) in enumerate([(2000, 400), (6000, 1200), (10 ** 9, 10 ** 9)]):
        set_window(r, w, E_WAITED=waited, flush_cycles=flush)
        r.edges[w, 0, abi.E_WAITED] = 7         # before the window: not its
        r.edges[w, 1, abi.E_WAITED] += 7
    b = readout.breakdown(r)
    assert b["lock_waits"] == pytest.approx(8000 / 4000 / CPN)
    assert b["queue_flush"] == pytest.approx(1600 / 4000 / CPN)


def test_no_io_timed_whole_no_loop():
    """The hand-off and premapped modes time no I/O whole: their loop is
    left in what is not named, not guessed."""
    r = raw(threads=1, ops=(16000,))
    set_window(r, maps=100, unmaps=100, alloc_cycles=100 * 130, clean_ios=1000,
               clean_cycles=1000 * 300)
    assert readout.breakdown(r)["loop"] == 0.0
