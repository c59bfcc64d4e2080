"""EiovaR (FAST 2015) against its reference model: replays worked out by
hand (where they differ from mainline, said so), hypothesis sequences, a
long trace, and the checks and footprint the harness reads."""
import random
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from numba import njit

import allocators
from allocators import Params, eiovar as E, rbtree
from harness import compose
from tests import ref_eiovar as RE
from tests import ref_iova as R

allocators.module("eiovar")      # its optional names filled in
W = 0
TOP = 0xFFFFF               # the last pfn of the default 2**20-page space


@njit(cache=True)
def drive_eiovar(st, w, ops, out):
    for i in range(ops.shape[0]):
        op = ops[i, 0]
        if op == R.OP_ALLOC:
            out[i] = E.alloc(st, w, ops[i, 1], ops[i, 2], ops[i, 3])
        elif op == R.OP_FREE:
            E.free(st, w, ops[i, 1], ops[i, 2], ops[i, 3])
            out[i] = 0
        else:
            out[i] = E.flush_all(st, w)


def replay(st, rows):
    ops = np.array(rows, dtype=np.int64).reshape(-1, 4)
    out = np.zeros(len(ops), dtype=np.int64)
    drive_eiovar(st, W, ops, out)
    return out.tolist()


def A(pages, limit=TOP):
    return (R.OP_ALLOC, 0, pages, limit)


def F(pfn, pages):
    return (R.OP_FREE, 0, pfn, pages)


FLUSH = (RE.OP_FLUSH, 0, 0, 0)


def reference(rows, e):
    want = []
    for op, _, a, b in rows:
        if op == R.OP_ALLOC:
            r = e.alloc(a, b)
            want.append(-1 if r is None else r)
        elif op == R.OP_FREE:
            e.free(a, b)
            want.append(0)
        else:
            want.append(e.flush_all())
    return want


def run_both(p, rows):
    """(state, model, results): the allocator and the reference agree."""
    st = compose.private(E, p)
    e = RE.EiovaR(R.Domain(p.start_pfn))
    want = reference(rows, e)
    got = replay(st, rows)
    assert got == want
    return st, e, got


def stats(st):
    return allocators.totals(E, st)


def tree_stat(st, name):
    return int(st.tree.stats.reshape(-1, 16)[:, rbtree.STATS.index(name)].sum())


def test_last_freed_comes_back_first():
    p = Params(max_live=16)
    rows = [A(1), A(1),             # the tree: 0xFFFFF, then 0xFFFFE
            F(TOP, 1), F(TOP - 1, 1),   # both onto list 1: head 0xFFFFE
            A(1),                   # a hit: 0xFFFFE, the last freed
            A(1)]                   # a hit: 0xFFFFF
    st, e, got = run_both(p, rows)
    assert got == [TOP, TOP - 1, 0, 0, TOP - 1, TOP]
    # mainline differs: the two frees take both out of the tree and move
    # cached32 back to the anchor, so the next request walks down from the
    # top and gets 0xFFFFF first
    d = R.Domain()
    a, b = d.alloc_iova(1, TOP), d.alloc_iova(1, TOP)
    d.free_iova(a, 1), d.free_iova(b, 1)
    assert d.alloc_iova(1, TOP) == TOP
    s = stats(st)
    assert (s["hits"], s["misses"], s["cached_frees"]) == (2, 2, 2)
    assert tree_stat(st, "frees") == 0          # nothing left the tree
    assert E.check(st, p, [(TOP, 1), (TOP - 1, 1)]) == []


def test_exact_size_key_and_the_tree_around_a_cached_range():
    p = Params(max_live=16)
    rows = [
        A(3),           # 3 pages aligned to 4: (0x100000 - 3) & ~3 = 0xFFFFC
        F(0xFFFFC, 3),  # onto list 3; still a node of the tree
        # list 4 is empty: the tree, from cached32 = [0xFFFFC] (the cached
        # range is still there): (0xFFFFC - 4) & ~3 = 0xFFFF8.  Mainline
        # would have removed [0xFFFFC], moved cached32 to the anchor, and
        # answered 0xFFFFC
        A(4),
        A(2),           # list 2 empty: (0xFFFF8 - 2) & ~1 = 0xFFFF6
        A(3),           # a hit on list 3: 0xFFFFC
    ]
    st, e, got = run_both(p, rows)
    assert got == [0xFFFFC, 0, 0xFFFF8, 0xFFFF6, 0xFFFFC]
    d = R.Domain()
    d.free_iova(d.alloc_iova(3, TOP), 3)
    assert d.alloc_iova(4, TOP) == 0xFFFFC
    assert E.check(st, p, [(0xFFFFC, 3), (0xFFFF8, 4), (0xFFFF6, 2)]) == []


def test_a_cached_range_above_the_limit_is_passed_over():
    p = Params(max_live=16)
    D, E_, F_ = TOP - 2, TOP - 1, TOP
    rows = [A(1), A(1), A(1),                   # F, E, D from the tree
            F(D, 1), F(F_, 1), F(E_, 1),        # list 1, from its head: E, F, D
            A(1, D),                            # E and F end above D: D
            A(1),                               # the head: E
            A(1),                               # F
            # list 1 empty: the tree, below cached32 = [D]: 0xFFFFC
            A(1),
            F(E_, 1),                           # list 1: E
            # E is above the limit, so the tree: below cached32 = [0xFFFFC]
            A(1, D)]
    st, e, got = run_both(p, rows)
    assert got[6:] == [D, E_, F_, TOP - 3, 0, TOP - 4]
    assert stats(st)["limit_skips"] == 2 + 1
    assert E.check(st, p, [(F_, 1), (D, 1), (TOP - 3, 1), (TOP - 4, 1)]) == []


def test_a_failing_tree_takes_the_lists_back_and_retries():
    # a 7-page window: limit 7, start_pfn 1
    p = Params(max_live=16)
    rows = [A(1, 7) for _ in range(7)]           # 7, 6, ..., 1
    rows += [F(pfn, 1) for pfn in range(7, 0, -1)]  # list 1, head [1]
    # list 2 is empty.  The tree walks down from cached32 = [1], finds no
    # room, retries from the limit: 2-page slots at 6, 4, 2 all hold cached
    # ranges; it fails and sets max32_alloc_size = 2.  Seven ranges are
    # cached, so they leave the tree, [1] first: cached32 follows each to
    # its successor and ends on the anchor, max32_alloc_size is reset, and
    # the retry from the top places (8 - 2) & ~1 = 6.  Mainline, having
    # freed them, answers 6 at once
    rows.append(A(2, 7))
    st, e, got = run_both(p, rows)
    assert got[:7] == [7, 6, 5, 4, 3, 2, 1]
    assert got[-1] == 6
    s = stats(st)
    assert (s["flush_retries"], s["flushed"]) == (1, 7)
    assert tree_stat(st, "retries") == 1
    assert E.check(st, p, [(6, 2)]) == []


def test_a_full_space_with_nothing_cached_fails_as_mainline():
    p = Params(max_live=16)
    rows = [A(1, 3), A(1, 3), A(1, 3), A(1, 3)]   # 3, 2, 1, then nothing
    st, e, got = run_both(p, rows)
    assert got == [3, 2, 1, -1]
    assert stats(st)["flush_retries"] == 0


def test_sizes_past_the_lists_go_to_the_tree():
    p = Params(max_live=16)
    n = E.EIOVAR_MAX_PAGES + 1
    rows = [A(n), F(0xFFF80, n), A(n)]   # 65 pages aligned to 128: 0xFFF80
    st, e, got = run_both(p, rows)
    assert got == [0xFFF80, 0, 0xFFF80]
    s = stats(st)
    assert (s["uncached_allocs"], s["uncached_frees"], s["hits"]) == (2, 1, 0)
    assert tree_stat(st, "frees") == 1
    assert E.check(st, p, [(0xFFF80, n)]) == []


def test_bad_and_double_frees_change_nothing():
    p = Params(max_live=16)
    rows = [A(2), F(0xFFFFE, 2),
            F(0xFFFFE, 2),        # already cached: a double free
            F(0xFFFFE, 1),        # wrong length
            F(0x1234, 1)]         # nothing there
    st, e, got = run_both(p, rows)
    assert tree_stat(st, "bad_frees") == 3
    assert E.check(st, p, []) == []
    assert E.flush_all(st, W) == 1
    assert E.check(st, p, []) == []
    assert st.tree.meta[rbtree.M_NODES] == 1


def test_check_finds_a_cached_range_that_is_live():
    p = Params(max_live=16)
    st, _, _ = run_both(p, [A(1), F(TOP, 1)])
    assert E.check(st, p, []) == []
    assert any("also live" in x for x in E.check(st, p, [(TOP, 1)]))
    st.links[3] = 99 * rbtree.NW     # a node not on any list carries a link
    assert E.check(st, p, []) != []


def test_footprint_counts_cached_ranges_as_nodes():
    p = Params(max_live=16)
    st, _, _ = run_both(p, [A(1), A(1), F(TOP, 1)])
    f = E.footprint(st, p)
    node = rbtree.IOVA_BYTES + E.LINK_BYTES
    assert f["start"] == rbtree.DOMAIN_BYTES + E.HEADS_BYTES
    assert f["peak"] == f["start"] + 2 * node
    assert f["now"] == f["start"] + 2 * node
    assert (f["cached"], f["cached_peak"]) == (node, node)


def test_registry_and_contract():
    mod = allocators.module("eiovar")
    assert allocators.contract_problems(mod) == []
    assert "eiovar" in allocators.names()
    assert mod.refuse(Params(pages=64), 64) is not None
    assert mod.refuse(Params(pages=64), 4) is None


LIMITS = [TOP, (1 << 16) - 1, 0xFFF]

ops_strategy = hs.lists(
    hs.one_of(hs.tuples(hs.just("a"), hs.integers(1, 70), hs.sampled_from(LIMITS)),
              hs.tuples(hs.just("f"), hs.integers(0, 1 << 30), hs.just(0)),
              hs.tuples(hs.just("x"), hs.just(0), hs.just(0))),
    max_size=120)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops_strategy, hs.sampled_from([1 << 12, 1 << 20]))
def test_matches_the_reference(script, pages):
    """Allocations, frees of a live range (picked by index), flushes."""
    top = pages - 1
    p = Params(pages=pages, max_live=len(script) + 1)
    st = compose.private(E, p)
    e = RE.EiovaR(R.Domain())
    live = []
    for kind, a, b in script:
        if kind == "a":
            limit = min(b, top)
            row, want = A(a, limit), e.alloc(a, limit)
            want = -1 if want is None else want
            if want != -1:
                live.append((want, a))
        elif kind == "f" and live:
            pfn, size = live.pop(a % len(live))
            e.free(pfn, size)
            row, want = F(pfn, size), 0
        elif kind == "x":
            row, want = FLUSH, e.flush_all()
        else:
            continue
        assert replay(st, [row]) == [want]
    assert E.check(st, p, live) == []
    E.flush_all(st, W)
    assert E.check(st, p, live) == []


def test_long_trace_answer_for_answer():
    """Over 100,000 requests, a few sizes dominating and a few past the
    lists, three limits, thousands outstanding at times."""
    rnd = random.Random(2015)
    limits = [TOP, (1 << 18) - 1, (1 << 14) - 1]
    t0 = time.perf_counter()
    ops, res, live, e = RE.eiovar_trace(rnd, 110_000, limits, target=3000)
    n_alloc = sum(1 for o in ops if o[0] == R.OP_ALLOC)
    assert len(ops) > 100_000 and n_alloc > 50_000
    assert e.hits > 10_000
    p = Params(max_live=1 << 16)
    st = compose.private(E, p)
    got = replay(st, ops)
    assert got == res
    assert E.check(st, p, live) == []
    assert stats(st)["hits"] == e.hits
    assert time.perf_counter() - t0 < 30


def test_ring_interplay_walks_the_tree_not_the_lists():
    """The paper's pathology: a receive ring re-posted one buffer at a time
    with a transmit buffer mapped and unmapped between.  Freeing the ring's
    oldest buffer moves mainline's cached32 to the node above it, the
    re-post takes the hole and becomes cached32, and the next transmit
    allocation walks down through the ring to the gap below it.  Both
    designs give the same addresses here (the transmit page always lands
    just below the ring, the re-post in its own hole); EiovaR answers both
    from its lists once the ring has cycled, and walks nothing."""
    from tests.drivers import drive_rbtree
    ring, rounds = 64, 256
    pfns = list(range(TOP, TOP - ring, -1))
    script = [A(1)] * ring
    for k in range(rounds):
        script += [A(1), F(TOP - ring, 1), F(pfns[k % ring], 1), A(1)]
    want = list(pfns)
    for k in range(rounds):
        want += [TOP - ring, 0, 0, pfns[k % ring]]
    p = Params(max_live=4 * ring)
    mainline = compose.private(rbtree, p)
    out = np.zeros(len(script), dtype=np.int64)
    drive_rbtree(mainline, W, np.array(script, dtype=np.int64), out)
    assert out.tolist() == want
    s = mainline.stats.reshape(-1, 16)
    walked = s[:, rbtree.S_VISITED].sum() / s[:, rbtree.S_ALLOCS].sum()
    assert walked > ring / 4            # about half the ring per allocation
    st, e, got = run_both(p, script)
    assert got == want
    assert stats(st)["misses"] == ring + 1      # the ring's fill, the first transmit
    assert tree_stat(st, "allocs") == ring + 1
    assert tree_stat(st, "nodes_visited") < 4 * (ring + 1)
