"""Spinlocks on shared words: tas, ttas (with backoff), ticket, mcs, and
qspinlock, the kernel's own (x86's spinlock since Linux 4.2), the default
of every design, since every one models Linux code (`--lock` chooses).

Every lock instance owns one 128-byte block of `Locks.word`, two 64-byte
cache lines that the adjacent-line prefetcher pairs: the lock word's line,
the only one waiters spin on, and the holder's line, written only by
whoever holds the lock: the last holder, the acquisition count, the start
of a timed hold.  Keeping these beside the lock costs an acquisition no
line elsewhere (the holder's line moves with the lock, as the data the lock
guards does), and keeping them off the lock word's line means that the
holder's writes never disturb the waiters.  The contention statistics,
written only on the slow path, are kept per lock class and per worker, one
line per (class, worker), so that counting adds no sharing of its own.  The
kind is a runtime value: one compiled allocator serves all five, at the
cost of one well-predicted branch.

Userspace cannot disable preemption as `spin_lock` does, so a waiter spins
`spin_bound` times and then yields the core: a preempted holder (or, for
ticket and mcs, a preempted next-in-line) needs it back.  Each yield also
looks at the run's abort word, so that no wait outlives a dead holder.

An uncontended acquisition costs what the kernel's does, one atomic, plus
the acquisition count and the last-holder word (`acq_bounces`) in the
holder's line, already in the holder's cache; the wait is
out of line, and only there is the cycle counter read, as lock_stat times
only contentions.  Hold times cost two clock reads per acquisition, so they
are kept only when the timing flag (`C_TIMING`) is set.  `class_stats` says
what each figure means.  With the timing flag, the contended waits and the
timed holds of one acquisition in HIST_PERIOD also go into a log-linear
histogram per (class, worker) (hwmodel/hist.py), for their percentiles:
`class_hists`.

Where the run asks for it (`C_WAITED`), every contended wait is also added
to its worker's line of one count that all the lock sets of a run share,
in their shared control array: what a worker has waited for any lock so
far, in cycles (`waited`).  A caller that times a stretch of code reads it
before and after, and so can leave the waits out of the stretch and count
them whole, every one, where a sample of the stretch would catch them at
its own rate (harness/dma.py, --diag).  It is a word of `ctl`, not an
array of the set's own: a seventh array in every set passed around made
the measured loop's code slower (docs/performance.md).

A replay's locks are `Quiet`: the same words, but no acquisition count, no
last holder, no timed hold, since the kernel keeps none of these and a
replay reads none of them; and their kind is the kernel's, `qspinlock`,
fixed when the code is compiled, as the kernel's spinlock is fixed when it
is built.  Being a type of its own, both choices are made when the code
is compiled (`counted`), so they cost the lock nothing at run time: the
kind's load and branches were an eighth of a one-page magazine hit
(docs/performance.md).
"""
from collections import namedtuple

import numpy as np
from numba.extending import overload

from hwmodel import hist as histmod
from hwmodel.cpu import (cas, cycles, fetch_add, fetch_or, hot, load, out_of_line, pause,
                         sched_yield, store, store8, store16, uidx, xchg, xchg16)

LINE = 16                      # int64 words per 128-byte line
KINDS = ("tas", "ttas", "ticket", "mcs", "qspinlock")
TAS, TTAS, TICKET, MCS, QSPIN = range(5)

# Layout of a lock's block in Locks.word: the lock word's 64-byte line,
# which waiters read, then the holder's.
STRIDE = LINE
HOLDER = LINE // 2
W_STATE = 0                # tas/ttas: 0 free, 1 held; ticket: next ticket; mcs: tail (worker + 1)
W_OWNER = 1                # ticket: now serving
W_LAST = HOLDER            # worker that held it last, for hand-off counts (+1; 0 = never)
W_ACQ = HOLDER + 1         # acquisitions
W_ACQ_BOUNCES = HOLDER + 2  # acquisitions whose last holder was another worker
W_T_ACQ = HOLDER + 3       # when the timed hold now running began (0: none)
W_CLASS = HOLDER + 4       # lock class, the row of lock_stat it counts in

# Layout of a (class, worker) statistics line, in the manner of lock_stat
# (kernel/locking/lockdep.c, struct lock_class_stats).
S_CONTENDED = 1      # contentions: acquisitions whose first attempt failed
S_CON_BOUNCES = 2    # contended, and the last holder was another worker
S_WAIT = 4           # cycles, first failed attempt to acquisition, contended ones
S_WAIT_MIN = 5
S_WAIT_MAX = 6
S_HOLD = 7           # cycles, acquisition to release, timed ones
S_HOLD_MIN = 8
S_HOLD_MAX = 9
S_TIMED = 10         # acquisitions whose hold was timed

QUIET_KIND = "qspinlock"  # the one kind of a Quiet lock: the kernel's
QUIET = KINDS.index(QUIET_KIND)

# Layout of Locks.cfg.
C_KIND = 0
C_SPIN = 1
C_TIMING = 2     # 0: off; n: time the hold of one acquisition in n
C_NWORKERS = 3
C_NCLASSES = 4
C_VIRT = 5       # qspinlock: its CPUs can lose their core while they wait
C_HIST = 6       # 0: no histograms; n (a power of two): every contended wait, and the
                 # timed holds of one acquisition in n, go into their class's histograms
C_WAITED = 7     # 0: none; n: index in `ctl` of worker 0's line of the run's count of
                 # contended waits, any lock (`waited`); worker w's is LINE words on

CTL_ABORT = 0    # index in the run's control array that every wait watches

TTAS_BACKOFF_MAX = 1024   # pauses; the kernel's arch spinlocks cap similarly

# The latency histograms (hwmodel/hist.py), one wait and one hold per
# (class, worker), in `hist`: with lock timing on, a run's lock sets of one
# kind share one array big enough for them (hist_words); a set without
# timing, or a Quiet one, has a line that it never writes.
H_WAIT, H_HOLD = 0, 1
NO_HIST = LINE
# The holds recorded: one acquisition in HIST_PERIOD at most.  With one
# hold in 16 timed (--diag) that is every timed one; with every hold timed
# (--lock-timing) a record per acquisition would cost a few percent of a
# short critical section's I/O, for a distribution that one in 16 of
# millions of holds draws as well.
HIST_PERIOD = 16

Locks = namedtuple("Locks", ["word", "qnode", "stats", "cfg", "ctl", "hist"])
Quiet = namedtuple("Quiet", Locks._fields)


def counted(lk):
    """Whether `lk` keeps statistics: Locks do, Quiet locks do not.  In
    compiled code this is a constant of lk's type."""
    return not isinstance(lk, Quiet)


@overload(counted)
def _counted(lk):
    keep = getattr(lk, "instance_class", None) is not Quiet
    return lambda lk: keep


def hist_words(nclasses, nworkers):
    """Words of the wait and hold histograms of every (class, worker)."""
    return nclasses * nworkers * 2 * histmod.WORDS


def layout(nlocks, nworkers, nclasses, hist=False):
    """(name, shape) of every array a set of locks needs; `hist`: room for
    its latency histograms (else a line, and a run that times its locks
    hands it a shared array)."""
    return [("word", (nlocks * STRIDE,)),
            ("qnode", (nworkers * nclasses * LINE,)),
            ("stats", (nclasses * nworkers * LINE,)),
            ("cfg", (LINE,)),
            ("hist", (hist_words(nclasses, nworkers) if hist else NO_HIST,))]


def init(lk, kind, classes, spin_bound=1000, timing=0, preemptible=False, histograms=True,
         waited=0):
    """Reset every lock to free and every statistic to zero.
    `classes[i]` is the class of lock i; `timing`: 0 off, n (a power of
    two) to time one acquisition in n (True: every one).  `preemptible`:
    the workers outnumber their cores, so a waiter can lose its core; a
    qspinlock then waits as the kernel's does where that is so
    (virt_spin_lock, below).  With timing on and room for them in
    `lk.hist`, waits and timed holds also fill the latency histograms,
    unless `histograms` is False (to measure what they cost).  `waited`:
    where in `lk.ctl` the run's count of contended waits starts (C_WAITED;
    0 for none), a line per worker; the caller zeroes it."""
    timing = int(timing)
    if not counted(lk) and kind != QUIET_KIND:
        raise ValueError("a Quiet lock is %s, not %s" % (QUIET_KIND, kind))
    if timing < 0 or timing & (timing - 1):
        raise ValueError("lock timing %d: 0, or a power of two" % timing)
    lk.word[:] = 0
    lk.qnode[:] = 0
    lk.stats[:] = 0
    nlocks = len(lk.word) // STRIDE
    for i in range(nlocks):
        lk.word[i * STRIDE + W_CLASS] = classes[i]
    nworkers_classes = len(lk.qnode) // LINE
    nclasses = max(classes) + 1 if len(classes) else 1
    lk.cfg[C_KIND] = KINDS.index(kind)
    lk.cfg[C_SPIN] = spin_bound
    lk.cfg[C_TIMING] = timing
    lk.cfg[C_VIRT] = int(bool(preemptible))
    lk.cfg[C_NCLASSES] = nclasses
    lk.cfg[C_NWORKERS] = nworkers_classes // nclasses
    if waited and len(lk.ctl) < waited + lk.cfg[C_NWORKERS] * LINE:
        raise ValueError("the wait count at %d needs %d control words, not %d"
                         % (waited, waited + lk.cfg[C_NWORKERS] * LINE, len(lk.ctl)))
    lk.cfg[C_WAITED] = waited
    room = len(lk.hist) >= hist_words(nclasses, lk.cfg[C_NWORKERS])
    lk.cfg[C_HIST] = max(timing, HIST_PERIOD) if histograms and timing and counted(lk) and room \
        else 0
    if lk.cfg[C_HIST]:
        lk.hist[:] = 0
    if kind == "qspinlock" and lk.cfg[C_NWORKERS] > Q_TAIL_CPU_MAX:
        raise ValueError("a qspinlock's tail names at most %d CPUs, not %d"
                         % (Q_TAIL_CPU_MAX, lk.cfg[C_NWORKERS]))
    # min fields start high so that the first sample wins
    st = lk.stats.reshape(-1, LINE)
    st[:, S_WAIT_MIN] = np.iinfo(np.int64).max
    st[:, S_HOLD_MIN] = np.iinfo(np.int64).max


@hot(inline="always")
def _stat_base(lk, cls, w):
    return (cls * lk.cfg[C_NWORKERS] + w) * LINE


@hot(inline="always")
def _hist_base(lk, cls, w, which):
    return ((cls * lk.cfg[C_NWORKERS] + w) * 2 + which) * histmod.WORDS


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


# Each kind has an uncontended attempt, inlined into every caller: one
# atomic, as the kernel's queued_spin_lock fast path is one cmpxchg.  It
# returns 0 when it took the lock, else what the wait needs to go on (the
# ticket drawn + 1, the mcs predecessor); the wait is out of line.

@hot(inline="always")
def _trylock_tas(lk, b):
    return xchg(lk.word, b + W_STATE, 1)


@hot(inline="always")
def _trylock_ttas(lk, b):
    if load(lk.word, b + W_STATE) == 0 and cas(lk.word, b + W_STATE, 0, 1) == 0:
        return 0
    return 1


@hot(inline="always")
def _trylock_ticket(lk, b):
    me = fetch_add(lk.word, b + W_STATE, 1)
    if load(lk.word, b + W_OWNER) == me:
        return 0
    return me + 1


@hot(inline="always")
def _qnode(lk, cls, w):
    return (w * lk.cfg[C_NCLASSES] + cls) * LINE


@hot(inline="always")
def _trylock_mcs(lk, b, cls, w):
    node = _qnode(lk, cls, w)
    store(lk.qnode, node + 1, 0)          # next
    store(lk.qnode, node, 1)              # locked: wait for the hand-over
    return xchg(lk.word, b + W_STATE, w + 1)


@hot
def _wait_tas(lk, b):
    spins = 0
    while xchg(lk.word, b + W_STATE, 1) != 0:
        spins = _relax(lk, spins)


@hot
def _wait_ttas(lk, b):
    spins = 0
    backoff = 1
    while True:
        while load(lk.word, b + W_STATE) != 0:
            spins = _relax(lk, spins)
        if cas(lk.word, b + W_STATE, 0, 1) == 0:
            return
        for _ in range(backoff):
            spins = _relax(lk, spins)
        if backoff < TTAS_BACKOFF_MAX:
            backoff *= 2


@hot
def _wait_ticket(lk, b, me):
    spins = 0
    while load(lk.word, b + W_OWNER) != me:
        spins = _relax(lk, spins)


@hot
def _wait_mcs(lk, cls, w, pred):
    node = _qnode(lk, cls, w)
    store(lk.qnode, _qnode(lk, cls, pred - 1) + 1, w + 1)
    spins = 0
    while load(lk.qnode, node) != 0:
        spins = _relax(lk, spins)


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


# ------------------------------------------------------------- qspinlock
#
# kernel/locking/qspinlock.c and include/asm-generic/qspinlock_types.h, for
# NR_CPUS < 16K: the lock is a 32-bit word of the locked byte (bits 0-7),
# the pending byte (bit 8) and the tail (bits 16-31: the queue's last
# waiter as CPU + 1 and the index of its per-CPU node).  The first
# contender sets pending and spins on the word; the next ones queue as in
# an MCS lock, each spinning on its own node, and the queue's head spins on
# the word until owner and pending are gone.  A worker is a CPU here.

Q_LOCKED_VAL = 1                  # _Q_LOCKED_VAL
Q_LOCKED_MASK = 0xFF              # _Q_LOCKED_MASK
Q_PENDING_VAL = 1 << 8            # _Q_PENDING_VAL
Q_PENDING_MASK = 0xFF << 8        # _Q_PENDING_MASK
Q_LOCKED_PENDING_MASK = 0xFFFF    # _Q_LOCKED_PENDING_MASK
Q_TAIL_IDX_OFFSET = 16            # _Q_TAIL_IDX_OFFSET
Q_TAIL_CPU_OFFSET = 18            # _Q_TAIL_CPU_OFFSET
Q_TAIL_CPU_MAX = (1 << 14) - 1    # CPUs the tail can name (_Q_TAIL_CPU_BITS)
Q_TAIL_MASK = 0xFFFF << 16        # _Q_TAIL_MASK
Q_PENDING_BYTE = 1                # byte offsets in the word: lock->pending
Q_TAIL_BYTE = 2                   # lock->tail
Q_PENDING_LOOPS = 1 << 9          # _Q_PENDING_LOOPS (arch/x86/include/asm/qspinlock.h)
MAX_NODES = 4                     # per CPU: task, softirq, hardirq, NMI
# A worker's nodes (qnodes[], one 64-byte line in the kernel): node k's
# `locked` and `next` words at 2k and 2k + 1 of its first line, and the
# nesting count (qnodes[0].mcs.count) after them.
QN_COUNT = 2 * MAX_NODES


@hot(inline="always")
def _trylock_qspin(lk, b):
    """queued_spin_lock's fast path, one cmpxchg: 0, or the word it found."""
    return cas(lk.word, b + W_STATE, 0, Q_LOCKED_VAL)


@hot(inline="always")
def _release_qspin(lk, b):
    """queued_spin_unlock: a release store to the locked byte alone."""
    store8(lk.word, b + W_STATE, 0, 0)


@hot(inline="always")
def _queued_trylock(word, i):
    """queued_spin_trylock: a read first, the cmpxchg only if it is free."""
    return load(word, i) == 0 and cas(word, i, 0, Q_LOCKED_VAL) == 0


@hot(inline="always")
def _qspin_nodes(lk, w):
    return _qnode(lk, 0, w)


@hot
def _wait_qspin(lk, b, w, val):
    """queued_spin_lock_slowpath, from the word the fast path found."""
    word = lk.word
    i = b + W_STATE
    spins = 0
    if lk.cfg[C_VIRT] != 0:
        # virt_spin_lock (arch/x86/include/asm/qspinlock.h): where its CPUs
        # can be preempted (a guest without paravirt spinlocks) the kernel
        # falls back to test-and-set on the same word, "because fair locks
        # have horrible lock 'holder' preemption issues": a queue hands the
        # lock to the next waiter even when that one has lost its core, and
        # everyone behind waits for it to be scheduled again.  A point with
        # more workers than cores is such a machine.
        while not _queued_trylock(word, i):
            spins = _relax(lk, spins)
        return
    # wait, a bounded while, for a pending -> locked hand-over in progress
    if val == Q_PENDING_VAL:
        cnt = Q_PENDING_LOOPS
        while True:
            val = load(word, i)
            if val != Q_PENDING_VAL or cnt == 0:
                break
            cnt -= 1
            spins = _relax(lk, spins)
    if val & ~Q_LOCKED_MASK == 0:
        # trylock or pending: x86's queued_fetch_set_pending_acquire, a
        # `lock bts` on the pending bit, then a read of the rest
        val = (fetch_or(word, i, Q_PENDING_VAL) & Q_PENDING_VAL) | \
            (load(word, i) & ~Q_PENDING_MASK)
        if val & ~Q_LOCKED_MASK == 0:
            # pending is ours: wait for the owner, then take the lock and
            # clear pending in one 16-bit store (clear_pending_set_locked)
            if val & Q_LOCKED_MASK:
                while load(word, i) & Q_LOCKED_MASK:
                    spins = _relax(lk, spins)
            store16(word, i, 0, Q_LOCKED_VAL)
            return
        if val & Q_PENDING_MASK == 0:
            store8(word, i, Q_PENDING_BYTE, 0)        # clear_pending: undo ours
    _queue_qspin(lk, word, i, w, spins)


@hot
def _queue_qspin(lk, word, i, w, spins):
    """The MCS queue of the slow path: take a node, publish it as the tail,
    wait behind the previous one, then at the head for owner and pending
    to leave; take the lock and hand the head on to the next node."""
    q = lk.qnode
    base = _qspin_nodes(lk, w)
    idx = q[base + QN_COUNT]
    q[base + QN_COUNT] = idx + 1
    if idx >= MAX_NODES:
        # nesting deeper than the nodes: spin on the lock word itself
        while not _queued_trylock(word, i):
            spins = _relax(lk, spins)
        q[base + QN_COUNT] = idx
        return
    node = base + 2 * idx
    tail = ((w + 1) << Q_TAIL_CPU_OFFSET) | (idx << Q_TAIL_IDX_OFFSET)
    store(q, node, 0)                   # locked: 0 until the hand-over
    store(q, node + 1, 0)               # next: none
    if _queued_trylock(word, i):
        q[base + QN_COUNT] = idx
        return
    old = xchg16(word, i, Q_TAIL_BYTE, tail >> Q_TAIL_IDX_OFFSET) << Q_TAIL_IDX_OFFSET
    nxt = 0
    if old & Q_TAIL_MASK:
        cpu = (old >> Q_TAIL_CPU_OFFSET) - 1
        prev = _qspin_nodes(lk, cpu) + 2 * ((old >> Q_TAIL_IDX_OFFSET) & (MAX_NODES - 1))
        store(q, prev + 1, node + 1)    # link behind it (next: node + 1)
        while load(q, node) == 0:       # arch_mcs_spin_lock_contended
            spins = _relax(lk, spins)
        nxt = load(q, node + 1)
    while True:                         # the head: owner and pending away
        val = load(word, i)
        if val & Q_LOCKED_PENDING_MASK == 0:
            break
        spins = _relax(lk, spins)
    if val & Q_TAIL_MASK == tail and cas(word, i, val, Q_LOCKED_VAL) == val:
        q[base + QN_COUNT] = idx        # alone in the queue: tail cleared too
        return
    store8(word, i, 0, Q_LOCKED_VAL)    # set_locked
    while nxt == 0:
        nxt = load(q, node + 1)
        if nxt == 0:
            spins = _relax(lk, spins)
    store(q, nxt - 1, 1)                # arch_mcs_spin_unlock_contended
    q[base + QN_COUNT] = idx


@hot
def _contended(lk, b, cls, w, kind, token):
    """The slow path of an acquisition whose first attempt failed: wait,
    and count it as lock_stat counts a contention (the wait from the failed
    attempt to the acquisition, and whether the lock came from another
    worker).  Only here is the clock read without the timing flag."""
    out_of_line()
    t0 = cycles()
    if kind == TAS:
        _wait_tas(lk, b)
    elif kind == TTAS:
        _wait_ttas(lk, b)
    elif kind == TICKET:
        _wait_ticket(lk, b, token - 1)
    elif kind == QSPIN:
        _wait_qspin(lk, b, w, token)
    else:
        _wait_mcs(lk, cls, w, token)
    wait = cycles() - t0
    if lk.cfg[C_WAITED] != 0:
        lk.ctl[uidx(lk.cfg[C_WAITED] + w * LINE)] += wait
    st = lk.stats
    s = _stat_base(lk, cls, w)
    st[s + S_CONTENDED] += 1
    _account(st, s + S_WAIT, s + S_WAIT_MIN, s + S_WAIT_MAX, wait)
    if lk.cfg[C_HIST] != 0:
        histmod.record(lk.hist, _hist_base(lk, cls, w, H_WAIT), wait)
    last = lk.word[b + W_LAST]
    if last != 0 and last != w + 1:
        st[s + S_CON_BOUNCES] += 1


@hot(inline="always")
def waited(ctl, at, w):
    """Cycles worker w has waited for contended locks so far, any lock of
    the run, from the count that starts at `ctl[at]` (C_WAITED)."""
    return ctl[uidx(at + w * LINE)]


@hot(inline="always")
def _account(st, total, lo, hi, v):
    """A time into its total, min and max words."""
    st[total] += v
    if v > st[hi]:
        st[hi] = v
    if v < st[lo]:
        st[lo] = v


@hot(inline="always")
def _hold_begin(lk, b):
    """With the timing flag: start timing this hold, one in C_TIMING (a
    power of two, so that choosing costs a mask, not a division)."""
    if lk.word[uidx(b + W_ACQ)] & (lk.cfg[C_TIMING] - 1) == 0:
        lk.word[uidx(b + W_T_ACQ)] = cycles()


@hot(inline="always")
def _hold_end(lk, b, w):
    t0 = lk.word[uidx(b + W_T_ACQ)]
    if t0 != 0:
        _hold_account(lk, b, w, t0)


@hot
def _hold_account(lk, b, w, t0):
    """A timed hold into its class's statistics.  Not kept out of line:
    with --lock-timing every release comes here."""
    hold = cycles() - t0
    lk.word[b + W_T_ACQ] = 0
    st = lk.stats
    cls = lk.word[b + W_CLASS]
    s = _stat_base(lk, cls, w)
    st[s + S_TIMED] += 1
    _account(st, s + S_HOLD, s + S_HOLD_MIN, s + S_HOLD_MAX, hold)
    period = lk.cfg[C_HIST]
    if period != 0 and lk.word[b + W_ACQ] & (period - 1) == 0:
        histmod.record(lk.hist, _hist_base(lk, cls, w, H_HOLD), hold)


@hot(inline="always")
def _kind(lk):
    """The lock's kind: a Quiet lock's is a constant of its type."""
    return lk.cfg[C_KIND] if counted(lk) else QUIET


@hot(inline="always")
def _attempt(lk, b, w):
    """One uncontended attempt of the lock's kind: 0 when it took the lock
    at block b, else what its wait needs (> 0)."""
    kind = _kind(lk)
    if kind == TTAS:
        token = _trylock_ttas(lk, b)
    elif kind == TAS:
        token = _trylock_tas(lk, b)
    elif kind == TICKET:
        token = _trylock_ticket(lk, b)
    elif kind == QSPIN:
        token = _trylock_qspin(lk, b)
    else:
        token = _trylock_mcs(lk, b, lk.word[uidx(b + W_CLASS)], w)
    return token


@hot(inline="always")
def _acquired(lk, b, w):
    """A counted lock's acquisition, once it is held."""
    if counted(lk):
        word = lk.word
        word[uidx(b + W_ACQ)] += 1
        last = word[uidx(b + W_LAST)]
        if last != w + 1:
            if last != 0:
                word[uidx(b + W_ACQ_BOUNCES)] += 1
            word[uidx(b + W_LAST)] = w + 1
        if lk.cfg[C_TIMING] != 0:
            _hold_begin(lk, b)


@hot(inline="always")
def acquire_fast(lk, i, w):
    """spin_lock split in two: its uncontended attempt at lock i as worker
    w, inlined, gives 0 when it took the lock (the acquisition counted),
    else a token (> 0) that `acquire_wait` finishes the acquisition with.
    For a caller that gathers every slow path of an operation in one
    out-of-line call: `acquire` puts a call of its own, the contended wait,
    on the caller's common path, and with it the stack slots numba zeroes
    for every call (allocators/magazines.py)."""
    b = i * STRIDE
    token = _attempt(lk, b, w)
    if token == 0:
        _acquired(lk, b, w)
    return token


@hot(inline="always")
def acquire_wait(lk, i, w, token):
    """The rest of an acquisition whose `acquire_fast` gave `token` (> 0): wait
    for lock i, then count the contention and the acquisition."""
    b = i * STRIDE
    _contended(lk, b, lk.word[uidx(b + W_CLASS)], w, _kind(lk), token)
    _acquired(lk, b, w)


@hot(inline="always")
def acquire(lk, i, w):
    """spin_lock: take lock i as worker w.  Not written as acquire_fast
    then acquire_wait: so written, rbtree's I/O took 1.6 times as long in
    benchmarks/cost_per_io.py, three runs out of three (the cause not
    found)."""
    b = i * STRIDE
    token = _attempt(lk, b, w)
    if token != 0:
        _contended(lk, b, lk.word[uidx(b + W_CLASS)], w, _kind(lk), token)
    _acquired(lk, b, w)


@hot(inline="always")
def release(lk, i, w):
    """spin_unlock: drop lock i, held by worker w."""
    b = i * STRIDE
    if counted(lk) and lk.cfg[C_TIMING] != 0:
        _hold_end(lk, b, w)
    kind = _kind(lk)
    if kind <= TTAS:                       # TAS or TTAS
        store(lk.word, b + W_STATE, 0)
    elif kind == TICKET:
        store(lk.word, b + W_OWNER, lk.word[uidx(b + W_OWNER)] + 1)
    elif kind == QSPIN:
        _release_qspin(lk, b)
    else:
        _release_mcs(lk, b, lk.word[uidx(b + W_CLASS)], w)


def class_hists(lk):
    """Per class, (wait, hold): each the WORDS of a hwmodel/hist.py
    histogram summed over workers; None when the set kept none."""
    if not lk.cfg[C_HIST]:
        return None
    ncls = int(lk.cfg[C_NCLASSES])
    nw = int(lk.cfg[C_NWORKERS])
    h = np.asarray(lk.hist)[:hist_words(ncls, nw)].reshape(ncls, nw, 2, histmod.WORDS)
    out = []
    for c in range(ncls):
        pair = []
        for which in (H_WAIT, H_HOLD):
            rows = h[c, :, which]
            one = rows.sum(axis=0)
            one[histmod.BUCKETS + histmod.H_MAX] = rows[:, histmod.BUCKETS + histmod.H_MAX].max()
            pair.append(one)
        out.append(tuple(pair))
    return out


def class_stats(lk):
    """Per class, the sum over workers, as a dict with lock_stat's names
    (cycles are the cycle counter's):

    acquisitions   every acquisition
    contentions    acquisitions whose first attempt found the lock taken
    con_bounces    contentions where the last holder was another worker
    acq_bounces    acquisitions where the last holder was another worker
    wait_total, wait_min, wait_max
                   cycles from the first failed attempt to the acquisition,
                   over the contentions only (always measured; 0 without any)
    timed          acquisitions whose hold was timed: all of them with the
                   timing flag at 1, one in n at n, none when it is off
    hold_total     cycles from acquisition to release, summed over the timed
                   holds and scaled up to all acquisitions (exact at 1)
    hold_min, hold_max
                   of the timed holds
    """
    ncls = int(lk.cfg[C_NCLASSES])
    nw = int(lk.cfg[C_NWORKERS])
    st = lk.stats.reshape(ncls, nw, LINE)
    held = lk.word.reshape(-1, STRIDE)
    out = []
    big = np.iinfo(np.int64).max
    for c in range(ncls):
        rows = st[c]
        mine = held[held[:, W_CLASS] == c]
        wmin = rows[:, S_WAIT_MIN].min()
        hmin = rows[:, S_HOLD_MIN].min()
        acq = int(mine[:, W_ACQ].sum())
        timed = int(rows[:, S_TIMED].sum())
        scale = acq / timed if timed else 0.0
        out.append({
            "acquisitions": acq,
            "contentions": int(rows[:, S_CONTENDED].sum()),
            "con_bounces": int(rows[:, S_CON_BOUNCES].sum()),
            "acq_bounces": int(mine[:, W_ACQ_BOUNCES].sum()),
            "wait_total": int(rows[:, S_WAIT].sum()),
            "wait_min": 0 if wmin == big else int(wmin),
            "wait_max": int(rows[:, S_WAIT_MAX].max()),
            "timed": timed,
            "hold_total": int(rows[:, S_HOLD].sum() * scale),
            "hold_min": 0 if hmin == big else int(hmin),
            "hold_max": int(rows[:, S_HOLD_MAX].max()),
        })
    return out
