"""Each lock kind is a real lock: many processes, a plain (non-atomic)
read-modify-write under the lock, and the total must be exact."""
import multiprocessing as mp
import os

import numpy as np
import pytest
from numba import njit

from harness.arena import Arena
from hwmodel import locks
from hwmodel.cpu import calibrate, cycles

WORKERS = 64
ROUNDS = 1500


@njit(cache=True)
def hammer(lk, counter, w, rounds):
    for _ in range(rounds):
        locks.acquire(lk, 0, w)
        # a racy increment: two words, read then written, so that any
        # overlap of two holders loses an update or tears the pair
        v = counter[0]
        counter[16] = v
        counter[0] = counter[16] + 1
        locks.release(lk, 0, w)


def _child(lk, counter, w, rounds):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[w % len(os.sched_getaffinity(0))]})
    hammer(lk, counter, w, rounds)


def _make(arena, kind, timing):
    v = arena.views
    lk = locks.Locks(v["word"], v["qnode"], v["stats"], v["cfg"], v["ctl"])
    locks.init(lk, kind, [0], spin_bound=50, timing=timing)
    return lk


@pytest.mark.parametrize("kind", locks.KINDS)
def test_lock_counts_exactly(kind, no_leaks):
    specs = [(n, np.int64, s) for n, s in locks.layout(1, WORKERS, 1)]
    specs += [("ctl", np.int64, (16,)), ("counter", np.int64, (32,))]
    with Arena(specs) as arena:
        lk = _make(arena, kind, timing=(kind in ("ticket", "mcs")))
        counter = arena["counter"]
        hammer(lk, counter, 0, 1)           # compile before forking
        counter[:] = 0
        locks.init(lk, kind, [0], spin_bound=50, timing=(kind in ("ticket", "mcs")))
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_child, args=(lk, counter, w, ROUNDS)) for w in range(WORKERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert all(p.exitcode == 0 for p in procs)
        assert counter[0] == WORKERS * ROUNDS
        (st,) = locks.class_stats(lk)
        assert st["acquisitions"] == WORKERS * ROUNDS
        assert 0 <= st["contentions"] <= st["acquisitions"]
        assert st["handoffs"] >= WORKERS - 1     # everyone held it at least once
        if kind in ("ticket", "mcs"):
            assert st["hold_cycles"] > 0 and st["wait_max"] >= st["wait_min"]
        # the lock is free again
        if kind in ("tas", "ttas"):
            assert lk.word[locks.W_STATE] == 0
        elif kind == "ticket":
            assert lk.word[locks.W_STATE] == lk.word[locks.W_OWNER] == WORKERS * ROUNDS + 0
        else:
            assert lk.word[locks.W_STATE] == 0


def test_abort_ends_a_wait():
    """A waiter on a lock whose holder is gone leaves when the run aborts."""
    specs = [(n, np.int64, s) for n, s in locks.layout(1, 2, 1)] + [("ctl", np.int64, (16,))]
    with Arena(specs) as arena:
        v = arena.views
        lk = locks.Locks(v["word"], v["qnode"], v["stats"], v["cfg"], v["ctl"])
        locks.init(lk, "ttas", [0], spin_bound=10)
        locks.acquire(lk, 0, 0)              # held, never released
        v["ctl"][locks.CTL_ABORT] = 1
        with pytest.raises(RuntimeError):
            locks.acquire(lk, 0, 1)


def test_calibration_is_plausible():
    rate = calibrate(0.02)
    assert 0.05 < rate < 20          # cycles per ns: 50 MHz to 20 GHz counters
    a = cycles_now()
    b = cycles_now()
    assert b >= a


@njit(cache=True)
def cycles_now():
    return cycles()
