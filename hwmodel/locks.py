"""Spinlocks on shared words: tas, ttas (with backoff), ticket, mcs.

Every lock instance owns one 128-byte line of `Locks.word` (two 64-byte
lines: the adjacent-line prefetcher pairs them).  Statistics are kept per
lock class and per worker, one line per (class, worker), so that counting
adds no sharing of its own.  The kind is a runtime value: one compiled
allocator serves all four, at the cost of one well-predicted branch.

Userspace cannot disable preemption as `spin_lock` does, so a waiter spins
`spin_bound` times and then yields the core: a preempted holder (or, for
ticket and mcs, a preempted next-in-line) needs it back.  Each yield also
looks at the run's abort word, so that no wait outlives a dead holder.
"""
from collections import namedtuple

import numpy as np

from hwmodel.cpu import cas, cycles, fetch_add, hot, load, pause, sched_yield, store, xchg

LINE = 16                      # int64 words per 128-byte line
KINDS = ("tas", "ttas", "ticket", "mcs")
TAS, TTAS, TICKET, MCS = range(4)

# Layout of a lock's line in Locks.word.
W_STATE = 0      # tas/ttas: 0 free, 1 held; ticket: next ticket; mcs: tail (worker + 1)
W_OWNER = 1      # ticket: now serving
W_LAST = 2       # worker that held it last, for hand-off counts (+1; 0 = never)
W_CLASS = 3      # lock class, the row of lock_stat it counts in

# Layout of a (class, worker) statistics line.
S_ACQ = 0
S_CONTENDED = 1
S_WAIT = 2       # cycles, when timing is on
S_HOLD = 3
S_WAIT_MAX = 4
S_HOLD_MAX = 5
S_HANDOFF = 6
S_T_ACQ = 7      # scratch: when the lock was taken
S_WAIT_MIN = 8
S_HOLD_MIN = 9
S_SAMPLES = 10   # acquisitions timed
STAT_FIELDS = ("acquisitions", "contentions", "wait_cycles", "hold_cycles",
               "wait_max", "hold_max", "handoffs")

# Layout of Locks.cfg.
C_KIND = 0
C_SPIN = 1
C_TIMING = 2     # 0: off; n: time one acquisition in n
C_NWORKERS = 3
C_NCLASSES = 4

CTL_ABORT = 0    # index in the run's control array that every wait watches

TTAS_BACKOFF_MAX = 1024   # pauses; the kernel's arch spinlocks cap similarly

Locks = namedtuple("Locks", ["word", "qnode", "stats", "cfg", "ctl"])


def layout(nlocks, nworkers, nclasses):
    """(name, shape) of every array a set of locks needs."""
    return [("word", (nlocks * LINE,)),
            ("qnode", (nworkers * nclasses * LINE,)),
            ("stats", (nclasses * nworkers * LINE,)),
            ("cfg", (LINE,))]


def init(lk, kind, classes, spin_bound=1000, timing=0):
    """Reset every lock to free and every statistic to zero.
    `classes[i]` is the class of lock i; `timing`: 0 off, n to time one
    acquisition in n (True: every one)."""
    lk.word[:] = 0
    lk.qnode[:] = 0
    lk.stats[:] = 0
    nlocks = len(lk.word) // LINE
    for i in range(nlocks):
        lk.word[i * LINE + W_CLASS] = classes[i]
    nworkers_classes = len(lk.qnode) // LINE
    nclasses = max(classes) + 1 if len(classes) else 1
    lk.cfg[C_KIND] = KINDS.index(kind)
    lk.cfg[C_SPIN] = spin_bound
    lk.cfg[C_TIMING] = int(timing)
    lk.cfg[C_NCLASSES] = nclasses
    lk.cfg[C_NWORKERS] = nworkers_classes // nclasses
    # min fields start high so that the first sample wins
    st = lk.stats.reshape(-1, LINE)
    st[:, S_WAIT_MIN] = np.iinfo(np.int64).max
    st[:, S_HOLD_MIN] = np.iinfo(np.int64).max


@hot(inline="always")
def _stat_base(lk, cls, w):
    return (cls * lk.cfg[C_NWORKERS] + w) * LINE


@hot
def _relax(lk, spins):
    """One step of a wait: pause, and every spin_bound steps yield the core
    and check that the run is still alive."""
    spins += 1
    if spins >= lk.cfg[C_SPIN]:
        sched_yield()
        if load(lk.ctl, CTL_ABORT) != 0:
            raise RuntimeError("lock wait aborted")
        return 0
    pause()
    return spins


@hot
def _acquire_tas(lk, b):
    if xchg(lk.word, b + W_STATE, 1) == 0:
        return False
    spins = 0
    while xchg(lk.word, b + W_STATE, 1) != 0:
        spins = _relax(lk, spins)
    return True


@hot
def _acquire_ttas(lk, b):
    if load(lk.word, b + W_STATE) == 0 and cas(lk.word, b + W_STATE, 0, 1) == 0:
        return False
    spins = 0
    backoff = 1
    while True:
        while load(lk.word, b + W_STATE) != 0:
            spins = _relax(lk, spins)
        if cas(lk.word, b + W_STATE, 0, 1) == 0:
            return True
        for _ in range(backoff):
            spins = _relax(lk, spins)
        if backoff < TTAS_BACKOFF_MAX:
            backoff *= 2


@hot
def _acquire_ticket(lk, b):
    me = fetch_add(lk.word, b + W_STATE, 1)
    if load(lk.word, b + W_OWNER) == me:
        return False
    spins = 0
    while load(lk.word, b + W_OWNER) != me:
        spins = _relax(lk, spins)
    return True


@hot(inline="always")
def _qnode(lk, cls, w):
    return (w * lk.cfg[C_NCLASSES] + cls) * LINE


@hot
def _acquire_mcs(lk, b, cls, w):
    node = _qnode(lk, cls, w)
    store(lk.qnode, node + 1, 0)          # next
    store(lk.qnode, node, 1)              # locked: wait for the hand-over
    pred = xchg(lk.word, b + W_STATE, w + 1)
    if pred == 0:
        return False
    store(lk.qnode, _qnode(lk, cls, pred - 1) + 1, w + 1)
    spins = 0
    while load(lk.qnode, node) != 0:
        spins = _relax(lk, spins)
    return True


@hot
def _release_mcs(lk, b, cls, w):
    node = _qnode(lk, cls, w)
    nxt = load(lk.qnode, node + 1)
    if nxt == 0:
        if cas(lk.word, b + W_STATE, w + 1, 0) == w + 1:
            return
        spins = 0
        while True:
            nxt = load(lk.qnode, node + 1)
            if nxt != 0:
                break
            spins = _relax(lk, spins)
    store(lk.qnode, _qnode(lk, cls, nxt - 1), 0)


@hot
def acquire(lk, i, w):
    """Take lock i as worker w."""
    b = i * LINE
    cls = lk.word[b + W_CLASS]
    s = _stat_base(lk, cls, w)
    st = lk.stats
    every = lk.cfg[C_TIMING]
    timed = every != 0 and st[s + S_ACQ] % every == 0
    t0 = cycles() if timed else 0
    kind = lk.cfg[C_KIND]
    if kind == TAS:
        contended = _acquire_tas(lk, b)
    elif kind == TTAS:
        contended = _acquire_ttas(lk, b)
    elif kind == TICKET:
        contended = _acquire_ticket(lk, b)
    else:
        contended = _acquire_mcs(lk, b, cls, w)
    st[s + S_ACQ] += 1
    if contended:
        st[s + S_CONTENDED] += 1
    last = lk.word[b + W_LAST]
    if last != w + 1:
        if last != 0:
            st[s + S_HANDOFF] += 1
        lk.word[b + W_LAST] = w + 1
    if timed:
        t1 = cycles()
        wait = t1 - t0
        st[s + S_WAIT] += wait
        st[s + S_SAMPLES] += 1
        if wait > st[s + S_WAIT_MAX]:
            st[s + S_WAIT_MAX] = wait
        if wait < st[s + S_WAIT_MIN]:
            st[s + S_WAIT_MIN] = wait
        st[s + S_T_ACQ] = t1


@hot
def release(lk, i, w):
    """Drop lock i, held by worker w."""
    b = i * LINE
    cls = lk.word[b + W_CLASS]
    s = _stat_base(lk, cls, w)
    st = lk.stats
    if st[s + S_T_ACQ] != 0:
        hold = cycles() - st[s + S_T_ACQ]
        st[s + S_T_ACQ] = 0
        st[s + S_HOLD] += hold
        if hold > st[s + S_HOLD_MAX]:
            st[s + S_HOLD_MAX] = hold
        if hold < st[s + S_HOLD_MIN]:
            st[s + S_HOLD_MIN] = hold
    kind = lk.cfg[C_KIND]
    if kind == TAS or kind == TTAS:
        store(lk.word, b + W_STATE, 0)
    elif kind == TICKET:
        store(lk.word, b + W_OWNER, lk.word[b + W_OWNER] + 1)
    else:
        _release_mcs(lk, b, cls, w)


def class_stats(lk):
    """Per class, the sum over workers: dict of field -> int, plus min/max
    (of the timed acquisitions)."""
    ncls = int(lk.cfg[C_NCLASSES])
    nw = int(lk.cfg[C_NWORKERS])
    st = lk.stats.reshape(ncls, nw, LINE)
    out = []
    big = np.iinfo(np.int64).max
    for c in range(ncls):
        rows = st[c]
        wmin = rows[:, S_WAIT_MIN].min()
        hmin = rows[:, S_HOLD_MIN].min()
        acq = int(rows[:, S_ACQ].sum())
        timed = int(rows[:, S_SAMPLES].sum())
        # totals of the timed acquisitions, scaled to all of them
        scale = acq / timed if timed else 0.0
        out.append({
            "acquisitions": acq,
            "contentions": int(rows[:, S_CONTENDED].sum()),
            "handoffs": int(rows[:, S_HANDOFF].sum()),
            "timed": timed,
            "wait_cycles": int(rows[:, S_WAIT].sum() * scale),
            "hold_cycles": int(rows[:, S_HOLD].sum() * scale),
            "wait_max": int(rows[:, S_WAIT_MAX].max()),
            "hold_max": int(rows[:, S_HOLD_MAX].max()),
            "wait_min": 0 if wmin == big else int(wmin),
            "hold_min": 0 if hmin == big else int(hmin),
        })
    return out
