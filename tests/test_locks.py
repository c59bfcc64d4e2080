"""Each lock kind is a real lock: many processes, a plain (non-atomic)
read-modify-write under the lock, and the total must be exact."""
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
from numba import njit

from harness.arena import Arena
from hwmodel import locks
from hwmodel.cpu import atomic_store, calibrate, cycles

WORKERS = 64
ROUNDS = 500           # 32,000 acquisitions a kind: an mcs hand-over waits for its
                       # successor to be scheduled, 64 processes on 2 cores


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


def _make(arena, kind, timing, kind_of_set=locks.Locks, preemptible=False):
    v = arena.views
    lk = kind_of_set(v["word"], v["qnode"], v["stats"], v["cfg"], v["ctl"], v["hist"])
    # the run's count of each worker's contended waits, after 16 words of
    # its own control
    locks.init(lk, kind, [0], spin_bound=50, timing=timing, preemptible=preemptible,
               waited=WAITED if counted(kind_of_set) else 0)
    return lk


WAITED = 16


def _ctl(nworkers):
    return ("ctl", np.int64, (WAITED + nworkers * locks.LINE,))


def counted(kind_of_set):
    return kind_of_set is locks.Locks


def _waited(lk, nworkers):
    """Each worker's count of contended waits."""
    return lk.ctl[WAITED:WAITED + nworkers * locks.LINE].reshape(nworkers, locks.LINE)[:, 0]


def _hammered(kind, kind_of_set=locks.Locks, preemptible=False):
    """WORKERS processes through lock 0, ROUNDS times each: the counter
    the lock guards (exact if it excludes), and the lock's statistics."""
    timing = kind in ("ticket", "mcs")
    specs = [(n, np.int64, s) for n, s in locks.layout(1, WORKERS, 1)]
    specs += [_ctl(WORKERS), ("counter", np.int64, (32,))]
    with Arena(specs) as arena:
        lk = _make(arena, kind, timing, kind_of_set, preemptible)
        counter = arena["counter"]
        hammer(lk, counter, 0, 1)           # compile before forking
        counter[:] = 0
        locks.init(lk, kind, [0], spin_bound=50, timing=timing, preemptible=preemptible,
                   waited=lk.cfg[locks.C_WAITED])
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_child, args=(lk, counter, w, ROUNDS)) for w in range(WORKERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert all(p.exitcode == 0 for p in procs)
        st = locks.class_stats(lk)[0]
        # every contended wait is counted twice: in its class's row, and
        # in its worker's line of the run's count (which --diag reads)
        st["waited"] = int(_waited(lk, WORKERS).sum())
        return int(counter[0]), st, lk.word.copy()


@pytest.mark.parametrize("kind", locks.KINDS)
def test_lock_counts_exactly(kind, no_leaks):
    count, st, word = _hammered(kind)
    assert count == WORKERS * ROUNDS
    assert st["acquisitions"] == WORKERS * ROUNDS
    assert 0 <= st["contentions"] <= st["acquisitions"]
    assert st["acq_bounces"] >= WORKERS - 1  # everyone held it at least once
    assert st["con_bounces"] <= st["contentions"]
    assert st["con_bounces"] <= st["acq_bounces"]
    if st["contentions"]:
        assert st["wait_total"] > 0 and st["wait_max"] >= st["wait_min"] > 0
    assert st["waited"] == st["wait_total"]
    if kind in ("ticket", "mcs"):
        assert st["timed"] == WORKERS * ROUNDS
        assert st["hold_total"] > 0 and st["hold_max"] >= st["hold_min"] > 0
    else:
        assert st["timed"] == st["hold_total"] == st["hold_max"] == 0
    # the lock is free again
    if kind == "ticket":
        assert word[locks.W_STATE] == word[locks.W_OWNER] == WORKERS * ROUNDS
    else:
        assert word[locks.W_STATE] == 0


def test_qspinlock_on_preemptible_cpus_excludes_exactly(no_leaks):
    """64 processes on fewer cores: the kernel's virt_spin_lock path,
    test-and-set on the lock word, still one holder at a time."""
    count, st, word = _hammered("qspinlock", preemptible=True)
    assert count == st["acquisitions"] == WORKERS * ROUNDS
    assert st["waited"] == st["wait_total"]
    assert word[locks.W_STATE] == 0


def test_quiet_lock_excludes_exactly(no_leaks):
    """A replay's lock is as real as a run's: its kind fixed when compiled,
    it still excludes 64 processes, and counts nothing while it does."""
    count, st, word = _hammered(locks.QUIET_KIND, locks.Quiet)
    assert count == WORKERS * ROUNDS
    assert st["acquisitions"] == st["acq_bounces"] == st["timed"] == st["waited"] == 0
    assert word[locks.W_STATE] == 0


@njit(cache=True)
def _take_and_drop(lk, i, w):
    locks.acquire(lk, i, w)
    locks.release(lk, i, w)


@njit(cache=True)
def _take(lk, i, w):
    locks.acquire(lk, i, w)


@njit(cache=True)
def _drop(lk, i, w):
    locks.release(lk, i, w)


def _private_locks(nworkers, kind, timing=0, kind_of_set=locks.Locks):
    v = {n: np.zeros(s, dtype=np.int64) for n, s in locks.layout(1, nworkers, 1)}
    lk = kind_of_set(v["word"], v["qnode"], v["stats"], v["cfg"], np.zeros(16, dtype=np.int64),
                     v["hist"])
    locks.init(lk, kind, [0], spin_bound=10, timing=timing)
    return lk


def test_quiet_locks_lock_but_count_nothing():
    """A replay's locks: taken and dropped as any, no statistics kept,
    even with the timing flag; the same code counts with Locks."""
    quiet = _private_locks(2, locks.QUIET_KIND, timing=1, kind_of_set=locks.Quiet)
    loud = _private_locks(2, locks.QUIET_KIND, timing=1)
    for w in (0, 1, 0):
        _take_and_drop(quiet, 0, w)
        _take_and_drop(loud, 0, w)
    assert locks.class_stats(quiet)[0]["acquisitions"] == 0
    assert locks.class_stats(quiet)[0]["timed"] == 0
    assert locks.class_stats(loud)[0]["acquisitions"] == 3
    assert locks.class_stats(loud)[0]["timed"] == 3
    # free again: the state word is back where it started
    assert quiet.word[locks.W_STATE] == loud.word[locks.W_STATE]
    assert not locks.counted(quiet) and locks.counted(loud)


@pytest.mark.parametrize("kind", [k for k in locks.KINDS if k != locks.QUIET_KIND])
def test_a_quiet_lock_has_one_kind(kind):
    """Its kind is compiled in: another would be taken as that one, so it
    is refused, not quietly changed."""
    with pytest.raises(ValueError, match="a Quiet lock is qspinlock, not %s" % kind):
        _private_locks(1, kind, kind_of_set=locks.Quiet)


def test_lock_timing_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        _private_locks(1, "ttas", timing=3)


@pytest.mark.parametrize("kind", locks.KINDS)
def test_uncontended_records_no_wait(kind):
    """As lock_stat: acquisitions that find the lock free are counted, but
    have no wait and are no contention; a change of holder is a bounce."""
    lk = _private_locks(2, kind)
    for w in (0, 0, 1, 1, 0):
        _take_and_drop(lk, 0, w)
    (st,) = locks.class_stats(lk)
    assert st["acquisitions"] == 5
    assert st["contentions"] == st["con_bounces"] == 0
    assert st["wait_total"] == st["wait_min"] == st["wait_max"] == 0
    assert st["acq_bounces"] == 2                # 0 -> 1 and 1 -> 0
    assert st["timed"] == st["hold_total"] == 0  # timing off


def test_hold_is_timed_with_the_flag():
    lk = _private_locks(1, "ttas", timing=1)
    for _ in range(3):
        _take_and_drop(lk, 0, 0)
    (st,) = locks.class_stats(lk)
    assert st["timed"] == 3 and st["hold_total"] > 0
    assert st["hold_max"] >= st["hold_min"] > 0
    assert st["wait_total"] == 0


@njit(cache=True)
def _announce_and_take(lk, flag, w):
    atomic_store(flag, 0, 1)
    locks.acquire(lk, 0, w)
    locks.release(lk, 0, w)


@pytest.mark.parametrize("kind", locks.KINDS)
def test_contended_records_a_wait(kind, no_leaks):
    """A worker that finds the lock held waits until the holder drops it:
    one contention, a wait of about the time the holder kept it, and a
    bounce, since the lock comes from another worker."""
    specs = [(n, np.int64, s) for n, s in locks.layout(1, 2, 1)]
    specs += [_ctl(3), ("flag", np.int64, (16,))]
    with Arena(specs) as arena:
        lk = _make(arena, kind, timing=0)
        flag = arena["flag"]
        _take(lk, 0, 0)                      # compile before forking
        _drop(lk, 0, 0)
        _announce_and_take(lk, flag, 0)
        flag[0] = 0
        locks.init(lk, kind, [0], spin_bound=50, waited=WAITED)
        _take(lk, 0, 0)                      # worker 0 holds it
        waiter = mp.get_context("fork").Process(target=_announce_and_take, args=(lk, flag, 1))
        waiter.start()
        while flag[0] == 0:
            time.sleep(0.001)
        t0 = cycles_now()
        time.sleep(0.1)
        held = cycles_now() - t0
        _drop(lk, 0, 0)
        waiter.join(60)
        assert waiter.exitcode == 0
        (st,) = locks.class_stats(lk)
        assert st["acquisitions"] == 2
        assert st["contentions"] == 1
        assert st["con_bounces"] == 1 and st["acq_bounces"] == 1
        assert st["wait_total"] == st["wait_min"] == st["wait_max"] >= held // 2
        # the wait is the waiter's, in its line of the run's count
        assert list(_waited(lk, 2)) == [0, st["wait_total"]]


def _word_becomes(lk, value, timeout=30.0):
    end = time.monotonic() + timeout
    while lk.word[locks.W_STATE] != value:
        assert time.monotonic() < end, "lock word %#x, expected %#x" % (
            lk.word[locks.W_STATE], value)
        time.sleep(0.001)


def test_qspinlock_goes_through_the_kernels_states(no_leaks):
    """Held by worker 0, the first contender takes the pending bit and
    spins on the word (0,1,1); the second queues: the tail names worker 2
    and its node 0 (n,1,1).  On release the pending one takes the lock
    (n,0,1), the queue's head next, clearing the tail as the last one
    (0,0,1), and the word is free again (kernel/locking/qspinlock.c)."""
    specs = [(n, np.int64, s) for n, s in locks.layout(1, 3, 1)]
    specs += [_ctl(3), ("flag", np.int64, (16,))]
    with Arena(specs) as arena:
        lk = _make(arena, "qspinlock", timing=0)
        flag = arena["flag"]
        _take(lk, 0, 0)                      # compile before forking
        _drop(lk, 0, 0)
        _announce_and_take(lk, flag, 0)
        locks.init(lk, "qspinlock", [0], spin_bound=1 << 30)   # spin, never yield
        _take(lk, 0, 0)
        assert lk.word[locks.W_STATE] == locks.Q_LOCKED_VAL
        ctx = mp.get_context("fork")
        first = ctx.Process(target=_announce_and_take, args=(lk, flag, 1))
        first.start()
        _word_becomes(lk, locks.Q_PENDING_VAL | locks.Q_LOCKED_VAL)
        second = ctx.Process(target=_announce_and_take, args=(lk, flag, 2))
        second.start()
        tail = (2 + 1) << locks.Q_TAIL_CPU_OFFSET
        _word_becomes(lk, tail | locks.Q_PENDING_VAL | locks.Q_LOCKED_VAL)
        _drop(lk, 0, 0)
        for p in (first, second):
            p.join(60)
            assert p.exitcode == 0
        assert lk.word[locks.W_STATE] == 0
        (st,) = locks.class_stats(lk)
        assert st["acquisitions"] == 3 and st["contentions"] == 2
        # each worker's nodes are free again
        q = lk.qnode.reshape(3, locks.LINE)
        assert (q[:, locks.QN_COUNT] == 0).all()


def test_qspinlock_on_preemptible_cpus_never_queues(no_leaks):
    """Where a waiter can lose its core, a contender neither sets pending
    nor queues (virt_spin_lock): the word shows the holder alone while it
    waits, and it takes the lock once the holder drops it."""
    specs = [(n, np.int64, s) for n, s in locks.layout(1, 2, 1)]
    specs += [_ctl(3), ("flag", np.int64, (16,))]
    with Arena(specs) as arena:
        lk = _make(arena, "qspinlock", timing=0, preemptible=True)
        flag = arena["flag"]
        _take(lk, 0, 0)                      # compile before forking
        _drop(lk, 0, 0)
        _announce_and_take(lk, flag, 0)
        flag[0] = 0
        _take(lk, 0, 0)
        waiter = mp.get_context("fork").Process(target=_announce_and_take, args=(lk, flag, 1))
        waiter.start()
        while flag[0] == 0:
            time.sleep(0.001)
        time.sleep(0.05)
        assert lk.word[locks.W_STATE] == locks.Q_LOCKED_VAL
        _drop(lk, 0, 0)
        waiter.join(60)
        assert waiter.exitcode == 0
        assert locks.class_stats(lk)[0]["contentions"] == 1
        assert lk.word[locks.W_STATE] == 0


def test_qspinlock_tail_names_a_bounded_number_of_cpus():
    v = {n: np.zeros(s, dtype=np.int64) for n, s in locks.layout(1, 1 << 14, 1)}
    lk = locks.Locks(v["word"], v["qnode"], v["stats"], v["cfg"], np.zeros(16, np.int64), v["hist"])
    with pytest.raises(ValueError, match="names at most 16383 CPUs, not 16384"):
        locks.init(lk, "qspinlock", [0])


def test_the_wait_count_fits_in_the_control_words():
    lk = _private_locks(2, "ttas")                   # 16 control words
    with pytest.raises(ValueError, match="the wait count at 16 needs 48 control words, not 16"):
        locks.init(lk, "ttas", [0], waited=16)


def test_abort_ends_a_wait():
    """A waiter on a lock whose holder is gone leaves when the run aborts."""
    specs = [(n, np.int64, s) for n, s in locks.layout(1, 2, 1)] + [("ctl", np.int64, (16,))]
    with Arena(specs) as arena:
        v = arena.views
        lk = locks.Locks(v["word"], v["qnode"], v["stats"], v["cfg"], v["ctl"], v["hist"])
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
