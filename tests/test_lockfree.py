"""The lock-free allocator: its placement against its reference model
(tests/ref_lockfree.py), request by request; many processes on one shared
state, with exact bookkeeping; and a worker stopped with SIGSTOP in the
middle of an operation, which stalls no one here and everyone under the
red-black tree's lock."""
import mmap
import os
import random
import signal
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from numba import njit

import allocators
from allocators import Params, lockfree as L, rbtree
from harness import compose
from hwmodel.cpu import load, store
from hwmodel.locks import CTL_ABORT
from tests import ref_iova as R
from tests.drivers import drive_lockfree
from tests.ref_lockfree import LockFree, start_hints
from tests.test_magazines import F, run_processes, shared_state

A = lambda cpu, pages, limit=0xFFFFF: (R.OP_ALLOC, cpu, pages, limit)  # noqa: E731


def replay(st, rows):
    ops = np.array(rows, dtype=np.int64).reshape(-1, 4)
    out = np.zeros(len(ops), dtype=np.int64)
    drive_lockfree(st, 0, ops, out)
    return out.tolist()


def reference(p):
    return LockFree(p.pages, p.start_pfn, p.ncpus, p.mag_size)


def compare(p, ops, want):
    st = compose.private(L, p)
    got = replay(st, ops)
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not bad, "row %d %s: allocator %d, reference %d" % (
        bad[0], ops[bad[0]], got[bad[0]], want[bad[0]])
    return st


def test_placement_by_hand():
    """Top-down from each CPU's slice, aligned to the rounded size; a
    freed IOVA comes back from the cache; sizes over 32 pages skip it."""
    p = Params(pages=1024, ncpus=2, mag_size=4)
    # (1024 - 1) // 2 CPUs = 511 pages, in whole words: 448
    assert start_hints(p.pages, p.start_pfn, p.ncpus) == L.start_hints(p) == [1024, 576]
    st = compose.private(L, p)
    assert replay(st, [A(0, 1), A(1, 1), A(0, 3), A(0, 100), A(1, 40)]) == [
        1023, 575, 1016, 896, 512]
    # the next-fit hint: cpu 0 goes on below 896, not back up to 1020
    assert replay(st, [A(0, 4)]) == [892]
    # a freed range goes to the CPU's cache and comes straight back; one over
    # 32 pages goes to the map, and the hint has moved past it
    assert replay(st, [F(0, 1016, 3), A(0, 4), F(0, 896, 100), A(0, 100)]) == [0, 1016, 0, 768]
    # the cache respects the limit: 1023 is cached but above it, so the
    # map gives the next page below the hint
    assert replay(st, [F(0, 1023, 1), A(0, 1, 1000)]) == [0, 767]
    assert L.check(st, p, [(575, 1), (767, 1), (512, 40), (892, 4), (1016, 3), (768, 100)]) == []
    assert sorted(L.cached(st, p)[1].items()) == [(1023, 0)]


def test_wrap():
    """A CPU whose hint is low wraps back to its limit once."""
    p = Params(pages=256, ncpus=1, mag_size=2)
    st = compose.private(L, p)
    rows = [A(0, 64), A(0, 64), A(0, 64), A(0, 32), A(0, 16), F(0, 192, 64), A(0, 64),
            F(0, 128, 64), A(0, 8), A(0, 8)]
    want = reference(p).run(rows)
    got = replay(st, rows)
    assert got == want
    # 64 at 192, 128, 64; 32 at 32; 16 at 16; 192 freed and taken again by
    # the wrap from the limit, since below the hint (16) nothing fits; then
    # on down from there, into what 128 left
    assert got == [192, 128, 64, 32, 16, 0, 192, 0, 184, 176]


LIMITS = [0xFFFFF, 0x3FFF, 0x7FF]


@settings(deadline=None, max_examples=25,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 2**32 - 1), n=hs.integers(1, 500),
       ncpus=hs.integers(1, 4), mag_size=hs.integers(1, 6),
       target=hs.integers(1, 200), pages=hs.sampled_from([1 << 11, 1 << 14, 1 << 20]),
       limits=hs.lists(hs.sampled_from(LIMITS), min_size=1, max_size=3))
def test_matches_reference(seed, n, ncpus, mag_size, target, pages, limits):
    rnd = random.Random(seed)
    p = Params(pages=pages, ncpus=ncpus, mag_size=mag_size, max_live=n + 1)
    ops, want, live, ref = R.rcache_trace(rnd, n, ncpus, mag_size, "list", limits,
                                          target=target, max_size=160, p_trim=0.02,
                                          p_flush=0.005, p_switch=0.2, period=151,
                                          rc=reference(p))
    st = compare(p, ops, want)
    assert L.check(st, p, live) == []
    assert sorted(L.cached(st, p)[1].items()) == sorted(ref.cached())
    s = allocators.totals(L, st)
    assert (s["depot_pushes"], s["depot_pops"], s["trims"], s["flush_retries"]) == \
        (ref.pushes, ref.pops, ref.trims, ref.flushes)
    assert [s["hits_%d" % (1 << c)] for c in range(6)] == ref.hits
    assert s["cas_failures"] == 0 and s["bypasses"] == 0      # one worker
    assert L.footprint(st, p)["magazines_peak"] == ref.mags_peak * (8 + 8 * mag_size)
    # everything back: an empty map
    rnd.shuffle(live)
    replay(st, [F(rnd.randrange(ncpus), pfn, size) for pfn, size in live] +
           [(R.OP_FLUSH, 0, 0, 0)])
    assert L.check(st, p, []) == [] and not st.map.any()


def test_long_trace():
    """60k requests on four CPUs, a few thousand outstanding, sizes up
    to 64 pages, two DMA limits, trims and flushes."""
    rnd = random.Random(11)
    p = Params(pages=1 << 16, ncpus=4, mag_size=8, max_live=6000)
    ops, want, live, ref = R.rcache_trace(rnd, 60_000, 4, 8, "list", [0xFFFF, 0xFFFF, 0x7FFF],
                                          target=3000, p_trim=0.002,
                                          p_flush=0.0001, period=5000, rc=reference(p))
    st = compare(p, ops, want)
    assert L.check(st, p, live) == []
    s = allocators.totals(L, st)
    assert s["depot_pushes"] > 50 and s["trims"] > 5 and sum(
        s["hits_%d" % n] for n in L.CLASS_PAGES) > 2000


def test_footprint():
    """A bit per page, plus the magazines: at the start, two per CPU and
    class."""
    p = Params(pages=1 << 20, ncpus=4)
    st = compose.private(L, p)
    fp = L.footprint(st, p)
    assert fp["bitmap"] == (1 << 20) // 8
    assert fp["start"] == fp["bitmap"] + 2 * 4 * 6 * 1024 == fp["now"] == fp["peak"]
    assert fp["depot"] == 0


def test_refuses_what_never_fits():
    p = Params(pages=256)
    assert L.refuse(p, 128) is None and L.refuse(p, 129) is not None
    assert "256-page space" in L.refuse(Params(pages=256), 200)


# --------------------------------------------- many processes, one state

def test_processes_on_shared_state():
    """Sixteen processes on two cores and three CPUs (workers share a CPU's
    cache), in a space tight enough that the map fills and the caches are
    flushed: no page handed out twice, and the map holds exactly what is
    live or cached."""
    p = Params(nworkers=16, ncpus=3, mag_size=2, pages=1 << 14, max_live=16 * 128)
    st, live = run_processes(L, p, "qspinlock", 2000, L.trim, 0x3FFF)
    assert L.check(st, p, live) == []
    s = allocators.totals(L, st)
    assert s["flush_retries"] > 0 and s["depot_pushes"] > 0
    replay(st, [F(0, pfn, pages) for pfn, pages in live] + [(R.OP_FLUSH, 0, 0, 0)])
    assert L.check(st, p, []) == [] and not st.map.any()


# --------------------------------------------------- a worker stopped

STOP = 0          # words of `flags`
GO = 8            # the holder may take what it holds
HOLDING = 16
PROGRESS = 32     # a line per worker from here


@njit
def _churn(alloc, free, st, w, cpu, flags):
    """Allocate and free until told to stop, counting in `flags`."""
    n = 0
    while load(flags, STOP) == 0:
        pages = 1 + (n & 7)
        pfn = alloc(st, w, cpu, pages, 0xFFFFF)
        if pfn >= 0:
            free(st, w, cpu, pfn, pages)
        n += 1
        store(flags, PROGRESS + 16 * w, n)


@njit
def _hold_tree(st, w, cpu, flags):
    """rbtree's alloc_iova, stopped inside: the tree lock held."""
    while load(flags, GO) == 0:
        pass
    rbtree.lock(st, w)
    store(flags, HOLDING, 1)
    while load(flags, STOP) == 0:
        pass
    rbtree.unlock(st, w)


@njit
def _hold_cpu_cache(st, w, cpu, flags):
    """The lock-free alloc, stopped inside: its CPU's cache line taken."""
    while load(flags, GO) == 0:
        pass
    pc = L._take(st, w, cpu, 0)
    while pc == -1:
        # a churner on this CPU holds the line for the moment: that failed
        # take is not one of the bypasses the test counts
        st.stats[w * L.STAT_LINE + L.S_BYPASS] -= 1
        pc = L._take(st, w, cpu, 0)
    store(flags, HOLDING, 1)
    while load(flags, STOP) == 0:
        pass
    L._give_back(st, pc)


def _stopped_holder(mod, hold, nworkers=4):
    """Worker 0 stops holding what it holds mid-operation; the others
    (worker 1 on its CPU) churn.  Returns each churner's I/Os while worker
    0 stays stopped, over half a second, and the allocator's counters."""
    p = Params(nworkers=nworkers, ncpus=nworkers - 1, max_live=1024)
    st, buf, ctl = shared_state(mod, p, "qspinlock")
    fbuf = mmap.mmap(-1, (PROGRESS + 16 * nworkers) * 8)
    flags = np.ndarray(PROGRESS + 16 * nworkers, dtype=np.int64, buffer=fbuf)
    # compiled here, once, not in every child: each loop returns at once
    flags[:] = 0
    flags[STOP] = flags[GO] = 1
    hold(st, 0, 0, flags)
    _churn(mod.alloc, mod.free, st, 1, 0, flags)
    flags[:] = 0
    pids = []
    try:
        for w in range(nworkers):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    if w == 0:
                        hold(st, 0, 0, flags)
                    else:
                        _churn(mod.alloc, mod.free, st, w, (w - 1) % p.ncpus, flags)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        deadline = time.time() + 60
        while min(flags[PROGRESS + 16 * w] for w in range(1, nworkers)) == 0:
            assert time.time() < deadline, "the workers never started"
            time.sleep(0.01)
        flags[GO] = 1
        while flags[HOLDING] == 0:
            assert time.time() < deadline, "worker 0 never took what it holds"
            time.sleep(0.01)
        os.kill(pids[0], signal.SIGSTOP)
        time.sleep(0.2)
        before = [int(flags[PROGRESS + 16 * w]) for w in range(1, nworkers)]
        time.sleep(0.5)
        after = [int(flags[PROGRESS + 16 * w]) for w in range(1, nworkers)]
        os.kill(pids[0], signal.SIGCONT)
        flags[STOP] = 1
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert status == 0
        pids = []
        return ([a - b for a, b in zip(after, before)],
                allocators.totals(allocators.module(mod.NAME), st))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
            ctl[CTL_ABORT] = 1
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_a_stopped_worker_stalls_no_one():
    """SIGSTOP a worker while it owns its CPU's cache line in the middle
    of an allocation: every other worker, the one on the same CPU too,
    keeps completing I/Os.  Under rbtree's lock, a stopped holder stops
    them all."""
    progress, counts = _stopped_holder(L, _hold_cpu_cache)
    assert all(n > 100 for n in progress), progress
    assert counts["bypasses"] > 100            # worker 1, on the stopped one's CPU
    stalled, _ = _stopped_holder(rbtree, _hold_tree)
    assert stalled == [0] * len(stalled)
