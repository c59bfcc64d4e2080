"""The compiled loop of a concurrent replay: one worker per traced CPU
replays that CPU's requests, a map through the design's whole dma_map and
an unmap through its dma_unmap under its flush policy, as the synthetic
loops do (harness/loop.py), on whichever worker the trace puts it.

A mapping's address passes from the worker that made it to the one that
unmaps it through a word in shared memory, as a driver passes it in the
descriptor its completion reads: `held[h]` is 0 until the map has happened,
then the IOVA + 1 (HELD_FAILED if the allocator had no room).  An unmap
traced on another CPU waits for that word, spinning then yielding; the
trace's order is a topological order of these waits (a free always comes
after its map), and every worker replays its requests in that order, so
the earliest request not yet done can always proceed: no cycle of waits.
Every wait also watches the abort word, which the parent's watchdog sets.

harness/tracereplay.py builds the request rows and runs the loop as a
point of the bench; harness/entries.py generates each allocator's entry,
one per flush policy.
"""
from collections import namedtuple

from harness import dma, loop
from harness.abi import CTL_T_MEASURE, LINE, MAX_DEPTH, STATUS_ABORTED, STATUS_RAN
from harness.compose import pick
from hwmodel.cpu import cycles, hot, inline_into_callers, load, store
from hwmodel.locks import CTL_ABORT

# the columns of a request row
Q_OP, Q_HOLD, Q_PAGES, Q_DOM, Q_OWNER, Q_AT = range(6)
QROW = 8                     # words per row: one row is a 64-byte half line
OP_MAP, OP_UNMAP = 0, 1      # as harness/trace.py's OP_ALLOC, OP_FREE

HELD_FAILED = -1             # in held[]: the map found no room

# per worker, bounds[w * BOUND_WORDS + B_*]: its rows are begin..end-1, and
# those from `left` on unmap what the trace left mapped at its end
B_BEGIN, B_LEFT, B_END = range(3)
BOUND_WORDS = 4

# per worker, one line of wcnt[w * LINE + W_*]: counts the bench's counter
# lines have no field for
W_WAITS = 0                  # unmaps that waited for the map of another worker
W_WAIT_CYCLES = 1            # ... and their wait
W_PACE_CYCLES = 2            # --pace recorded: waiting for a request's recorded time
W_FAILED_UNMAPS = 3          # unmaps skipped: their map had found no room
W_CROSS = 4                  # unmaps of another worker's maps (waited or not)

# conf[C_*]: the replay's own settings
C_PACE = 0                   # 1: each request waits until its recorded time
CONF_WORDS = LINE

RQ = namedtuple("RQ", ["req", "bounds", "held", "wcnt", "conf"])


@hot(inner=True)
def _wait_mapped(env, rq, w, h):
    """The word of mapping h once its map has happened (spin, then
    yield); 0 if the point is aborted first."""
    v = load(rq.held, h)
    if v != 0:
        return v
    t0 = cycles()
    spins = 0
    while v == 0:
        if load(env.ctl, CTL_ABORT) != 0:
            return 0
        spins = loop.relax(spins)
        v = load(rq.held, h)
    b = w * LINE
    rq.wcnt[b + W_WAITS] += 1
    rq.wcnt[b + W_WAIT_CYCLES] += cycles() - t0
    return v


@hot(inner=True)
def _pace(env, rq, w, at):
    """Wait until cycle `at`; False if the point is aborted first."""
    now = cycles()
    if now >= at:
        return True
    t0 = now
    spins = 0
    while now < at:
        if load(env.ctl, CTL_ABORT) != 0:
            return False
        spins = loop.relax(spins)
        now = cycles()
    rq.wcnt[w * LINE + W_PACE_CYCLES] += now - t0
    return True


@hot(inner=True)
def _service_tick(free, trim, sts, env, w, cpu, ops, policy):
    """The synthetic loops' tick less the phase: the replay's end is its
    last request, not a deadline.  Expired flush timers, the trim."""
    inline_into_callers()
    c = env.cnt[w]
    now = cycles()
    c.ops_live = ops
    c.ticks += 1
    if dma.timer_due(env, now, policy) or (w == 0 and now >= c.next_trim):
        loop._service(free, trim, sts, env, w, cpu, now, policy, env.cfg[0].diag)


@hot(inner=True)
def _request(alloc, free, sts, env, rq, w, cpu, i, phys, sample, policy):
    """Request row i: 1 a map done, 0 a map that found no room, 2 an
    unmap done, 3 an unmap skipped (its map found no room), -1 aborted."""
    inline_into_callers()
    req = rq.req
    h = req[i, Q_HOLD]
    dom = req[i, Q_DOM]
    if req[i, Q_OP] == OP_MAP:
        iova = dma.dma_map(alloc, pick(sts, dom), env, w, cpu, dom, req[i, Q_PAGES], phys,
                           sample)
        if iova < 0:
            store(rq.held, h, HELD_FAILED)
            return 0
        store(rq.held, h, iova + 1)
        return 1
    owner = req[i, Q_OWNER]
    v = _wait_mapped(env, rq, w, h)
    if v == 0:
        return -1
    if owner != w:
        rq.wcnt[w * LINE + W_CROSS] += 1
    if v == HELD_FAILED:
        rq.wcnt[w * LINE + W_FAILED_UNMAPS] += 1
        return 3
    dma.dma_unmap(free, sts, env, w, cpu, owner, dom, v - 1, req[i, Q_PAGES], sample, policy)
    return 2


@hot(inner=True)
def replay_worker(alloc, free, trim, sts, env, rq, w, cpu, policy):
    """Worker w's share of a concurrent replay: the start line, its rows
    in order, the mappings the trace left open unmapped, the queues
    drained by the last one out.  Its window runs from its first request
    to the end of its last traced one (the harness takes the union of the
    workers' windows); ops are its maps."""
    c = env.cnt[w]
    if not loop.attach(env):
        c.status = STATUS_ABORTED
        return
    cfg = env.cfg[0]
    diag = cfg.diag != 0
    mask = cfg.phase_every - 1
    stride = cfg.slot_pages
    phys0 = w * MAX_DEPTH * stride
    pace = rq.conf[C_PACE] != 0
    base = env.ctl[CTL_T_MEASURE]
    bw = w * BOUND_WORDS
    begin = rq.bounds[bw + B_BEGIN]
    left = rq.bounds[bw + B_LEFT]
    end = rq.bounds[bw + B_END]
    rng = loop._seed(env, w)
    ops = 0
    fails = 0
    unmaps = 0
    aborted = False
    c.ops_start = 0
    c.t_start = cycles()
    for i in range(begin, end):
        if i == left:
            c.ops_end = ops
            c.t_end = cycles()
        if (i - begin) & mask == 0:
            _service_tick(free, trim, sts, env, w, cpu, ops, policy)
        rng = loop._xorshift(rng)
        sample = diag and i < left and loop._sampled(rng)
        if pace and i < left and not _pace(env, rq, w, base + rq.req[i, Q_AT]):
            aborted = True
            break
        got = _request(alloc, free, sts, env, rq, w, cpu, i,
                       phys0 + (ops % MAX_DEPTH) * stride, sample, policy)
        if got < 0:
            aborted = True
            break
        if got == 1:
            ops += 1
        elif got == 0:
            fails += 1
        elif got == 2:
            unmaps += 1
    if left >= end and not aborted:
        c.ops_end = ops
        c.t_end = cycles()
    c.ops = ops
    c.fails = fails
    c.unmaps += unmaps
    if aborted:
        c.status = STATUS_ABORTED
        return
    loop._finish(free, sts, env, w, cpu, policy)
    c.status = STATUS_RAN
