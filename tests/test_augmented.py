"""rbtree:augmented against Peng Zhang's patch ("iommu/iova: Optimize
alloc_iova with rbtree_augmented", v3, 2022): cases worked out by hand from
the patch, where its answers and mainline's part, and comparison with the
independent model in ref_augmented.py on random sequences and a long
trace replayed through `iommu-stress replay`."""
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from allocators import Params, rbtree
from harness import replay
from harness.compose import private
from harness.trace import OP_ALLOC, parse, random_trace
from tests import ref_augmented as A
from tests import ref_iova as R
from tests.drivers import drive_rbtree

AUG = "augmented"
W = 0


def domain(pages=1 << 20, max_live=256, start_pfn=1):
    p = Params(pages=pages, max_live=max_live, variant=AUG, start_pfn=start_pfn)
    return p, private(rbtree, p)


def run(st, script):
    """Rows ("a", pages, limit) and ("f", pfn, pages) through the compiled
    allocator: what each allocation got (-1: failed), None for a free."""
    rows = [(R.OP_ALLOC, 0, a, b) if op == "a" else (R.OP_FREE, 0, a, b) for op, a, b in script]
    out = np.zeros(len(rows), dtype=np.int64)
    drive_rbtree(st, W, np.array(rows, dtype=np.int64).reshape(-1, 4), out)
    return [int(x) if op == "a" else None for (op, _, _), x in zip(script, out)]


def model(script, start_pfn=1, kind=A.Domain):
    d = kind(start_pfn)
    out = []
    for op, a, b in script:
        if op == "a":
            pfn = d.alloc_iova(a, b)
            out.append(-1 if pfn is None else pfn)
        else:
            assert d.free_iova(a, b)
            out.append(None)
    return out, d


def shape(st):
    """The compiled tree as ref_augmented.Domain.shape() gives its own."""
    nd = st.nodes

    def walk(n):
        if n == rbtree.NIL:
            return None
        lo = int(nd[n + rbtree.LO])
        return (A.ANCHOR if lo == rbtree.IOVA_ANCHOR else lo, nd[n + rbtree.COLOR] == rbtree.RED,
                walk(nd[n + rbtree.LEFT]), walk(nd[n + rbtree.RIGHT]))
    return walk(st.meta[rbtree.M_ROOT])


def live_of(script, got):
    live = {}
    for (op, a, b), r in zip(script, got):
        if op == "a" and r >= 0:
            live[r] = a
        elif op == "f":
            del live[a]
    return sorted(live.items())


def agree(script, pages=1 << 20, start_pfn=1, want=None):
    """The compiled allocator and the model give the same answers (and
    `want`, if given), build the same tree, and pass the state check."""
    p, st = domain(pages, max(8, len(script)), start_pfn)
    got = run(st, script)
    ref, d = model(script, start_pfn)
    assert got == ref
    if want is not None:
        assert [g for g in got if g is not None] == want
    assert shape(st) == d.shape()
    assert rbtree.check(st, p, live_of(script, got)) == []
    return st, d


# ---------------------------------------------------------------- by hand


def test_allocatable_size_is_the_largest_request_a_gap_places():
    # __compute_allocatable_size steps up from lo by its lowest set bit:
    # [8, 20): 8 fits at 8; 9..12 would need a 16-aligned start, and 16 + 9 > 20
    assert rbtree.allocatable_size(8, 20) == 8
    # [3, 13): 1 at 3, then 4 at 4, then the 5 left at 8 (aligned to 8)
    assert rbtree.allocatable_size(3, 13) == 5
    assert rbtree.allocatable_size(5, 5) == 0
    # a gap from pfn 0 places its whole length
    assert rbtree.allocatable_size(0, 12) == 12
    assert rbtree.allocatable_size(1, rbtree.IOVA_ANCHOR) == rbtree.GAP_SAT
    rnd = random.Random(1)
    for _ in range(2000):
        lo = rnd.randrange(1 << 30)
        hi = lo + rnd.randrange(1 << rnd.randrange(1, 24))
        want = A.allocatable(lo, hi)
        assert rbtree.allocatable_size(lo, hi) == want == A.patch_allocatable(lo, hi)


def test_fresh_domain_reserves_below_start_pfn():
    p, st = domain()
    # init_iova_domain of the patch: reserve_iova(0, start_pfn - 1) puts a
    # node [0, 0] under the anchor; the anchor's gap starts at pfn 1
    assert shape(st) == (A.ANCHOR, False, (0, True, None, None), None)
    assert rbtree.check(st, p, []) == []
    assert rbtree.footprint(st, p)["start"] == rbtree.AUG_DOMAIN_BYTES + rbtree.AUG_IOVA_BYTES
    assert rbtree.AUG_IOVA_BYTES == 64 and rbtree.AUG_DOMAIN_BYTES == 152
    # a free of the reserved range is refused, as is one of the anchor
    run(st, [("f", 0, 1)])
    assert int(st.stats.reshape(-1, 16)[:, rbtree.STATS.index("bad_frees")].sum()) == 1
    assert rbtree.check(st, p, []) == []


def test_first_allocations_match_mainline():
    # The cached node's own gap is tried first, as mainline's walk does:
    # anchor's gap [1, ~0) cut at limit_pfn 0x100000: 0xFFFFF; then the gap
    # under each new node: (0xFFFFF - 4) & ~3 = 0xFFFF8, (0xFFFF8 - 3) & ~3
    # = 0xFFFF4 (0xFFFF7 left over), 0xFFFF3.
    script = [("a", 1, 0xFFFFF), ("a", 4, 0xFFFFF), ("a", 3, 0xFFFFF), ("a", 1, 0xFFFFF)]
    want = [0xFFFFF, 0xFFFF8, 0xFFFF4, 0xFFFF3]
    agree(script, want=want)
    assert model(script, kind=R.Domain)[0] == want


def test_search_from_the_limit_finds_the_hole_above_the_cache():
    # 16 pfns (limit 15, 32-bit).  15, then 4 pages aligned to 4: 8..11,
    # leaving 12..14 free above it; then 7 down to 1 from the cached node.
    script = [("a", 1, 15), ("a", 4, 15)] + [("a", 1, 15)] * 7
    # Freeing 4 moves cached32 to its successor 5, whose gap takes the
    # next request (both designs); freeing 2 leaves cached32 on the new 4.
    script += [("f", 4, 1), ("a", 1, 15), ("f", 2, 1), ("a", 1, 15)]
    # Last request: the cached node's gap [4, 4) is empty.  Mainline walks
    # down from it and takes pfn 2.  The patch searches from the limit:
    # iova_find_limit(16) stops at node 15 (15 lies in [12, 15]), whose gap
    # [12, 15) takes the page at its top, 14.
    agree(script, pages=16, want=[15, 8, 7, 6, 5, 4, 3, 2, 1, 4, 14])
    assert model(script, kind=R.Domain)[0][-1] == 2


def test_a_failure_under_a_low_limit_does_not_close_the_32bit_space():
    # pfns 1..15 filled under limit 15; the 16th request fails.  Mainline
    # then sets max32_alloc_size = 1 and fails every later 32-bit request
    # of a page at once, here one that would fit at 0xFFFFF.  The patch
    # sets it only when limit_pfn >= dma_32bit_pfn (16 is not), so that
    # request is placed.
    script = [("a", 1, 15)] * 16 + [("a", 1, 0xFFFFF)]
    st, d = agree(script)
    assert d.max32_alloc_size == st.meta[rbtree.M_MAX32] == 1 << 20
    assert model(script)[0][-2:] == [-1, 0xFFFFF]
    assert model(script, kind=R.Domain)[0][-2:] == [-1, -1]
    # at limit_pfn == dma_32bit_pfn a failure does set it
    p, st = domain(pages=1 << 20, max_live=16)
    st.meta[rbtree.M_MAX32] = 3
    assert run(st, [("a", 3, 0xFFFFF)]) == [-1]      # size >= max32: fast fail


def test_a_subtree_gives_its_root_gap_before_its_right_subtree():
    # pfns 1..63 (limit 63, 32-bit), a sequence found by search and worked
    # through on the tree it builds (the model's and the compiled tree's
    # shapes must agree, and do):
    script = [("a", 1, 63), ("a", 1, 63), ("f", 62, 1), ("a", 1, 63), ("a", 1, 63),
              ("f", 63, 1), ("f", 61, 1), ("a", 2, 63), ("a", 2, 63), ("a", 1, 63),
              ("a", 2, 63), ("f", 62, 1), ("a", 1, 63), ("f", 63, 1), ("f", 60, 2),
              ("a", 1, 63), ("a", 2, 63)]
    st, d = agree(script, pages=64)
    # Live: [0] (reserved), 54..55, 57, 58..59, 60..61, 63; 56 was skipped
    # by the aligned 54..55 and 62 is free.  cached32 is [60..61], whose
    # gap is empty.  Mainline walks down from it to [57]'s gap: 56.  The
    # patch searches from the limit: iova_find_limit(64) stops at [63],
    # whose gap [62, 63) takes the page: 62.
    one = [("a", 1, 63)]
    assert run(st, one) == [62] and d.alloc_iova(1, 63) == 62
    assert model(script + one, kind=R.Domain)[0][-1] == 56
    # The tree: root [58..59] (black); its left [54..55] (black), under
    # it [0] and [57]; its right [63], under it [60..61] (with [62]) and
    # the anchor.
    assert shape(st) == d.shape()
    root = shape(st)
    assert root[:2] == (58, False) and root[2][:2] == (54, False)
    assert root[2][2][0] == 0 and root[2][3][0] == 57 and root[3][0] == 63
    # One more page.  The cached node [62]'s gap is empty; from [63]
    # (find_limit), its left subtree [60..61] has max 0; up to [58], reached
    # from its right: its own gap [58, 58) is empty; then its left
    # subtree, [54..55], max 53.  check_subtree takes [54..55]'s own gap
    # 1..53 first, at 53, although [57]'s gap (pfn 56) in the right
    # subtree of [54..55] is higher and free.
    assert run(st, one) == [53] and d.alloc_iova(1, 63) == 53
    assert (56, 1) not in d.ranges() and (57, 1) in d.ranges()
    assert shape(st) == d.shape()


def test_64bit_requests_walk_the_prev_list_from_the_top():
    # limit 2**21 - 1 is above 4 GiB.  1 page at top; 2 pages aligned to 2
    # at top - 3, leaving top - 1 free above the cache; then 40 single
    # pages down to top - 43.
    top = (1 << 21) - 1
    script = [("a", 1, top), ("a", 2, top)] + [("a", 1, top)] * 40
    # freeing top - 20 moves the cache above it, and the next request
    # takes it from the cached node's gap (both designs); freeing top - 30,
    # below the cache, leaves the cache on the new top - 20
    script += [("f", top - 20, 1), ("a", 1, top), ("f", top - 30, 1)]
    # The cached node's gap is empty.  Mainline walks down from it to the
    # hole at top - 30.  The patch walks the prev_iova list from the
    # anchor: the anchor's gap is above the limit, [top]'s is empty, the
    # third, under [top] and above [top - 3], holds top - 1.
    script += [("a", 1, top)]
    # Next, the cached node [top - 1]'s gap is empty again; down the list,
    # top - 30's hole is the 31st gap from the anchor: still within the 32
    # the patch tries before searching the tree.
    script += [("a", 1, top)]
    agree(script, pages=1 << 21)
    got = [top - g for g in model(script)[0] if g is not None]
    assert got[:3] == [0, 3, 4] and got[-3:] == [20, 1, 30]
    main = [top - g for g in model(script, kind=R.Domain)[0] if g is not None]
    assert main[-3:] == [20, 30, 44]


def test_check_sees_wrong_annotations():
    p, st = domain(pages=64, max_live=16)
    script = [("a", 1, 63)] * 6 + [("f", 61, 1)]
    got = run(st, script)
    live = live_of(script, got)
    assert rbtree.check(st, p, live) == []
    nd = st.nodes
    root = int(st.meta[rbtree.M_ROOT])
    saved = int(nd[root + rbtree.GAP])
    nd[root + rbtree.GAP] = saved - (1 << rbtree.GAP_SHIFT)
    assert any("max_allocatable_size" in s for s in rbtree.check(st, p, live))
    nd[root + rbtree.GAP] = saved + 1
    assert any("allocatable_size is not" in s for s in rbtree.check(st, p, live))
    nd[root + rbtree.GAP] = saved
    prev = int(nd[root + rbtree.PREV])
    nd[root + rbtree.PREV] = rbtree.NIL
    assert any("prev_iova" in s for s in rbtree.check(st, p, live))
    nd[root + rbtree.PREV] = prev
    assert rbtree.check(st, p, live) == []


def test_footprint_counts_64_byte_nodes():
    p, st = domain(pages=1 << 12, max_live=64)
    run(st, [("a", 1, 4095)] * 10 + [("f", 4095, 1)])
    fp = rbtree.footprint(st, p)
    # the domain (anchor of 64 bytes), the reserved node, then 10 at peak
    assert fp["start"] == 152 + 64
    assert fp["peak"] == 152 + 11 * 64 and fp["now"] == 152 + 10 * 64


def test_refusals():
    p = Params(pages=1 << 20, variant=AUG)
    assert rbtree.refuse(p, rbtree.GAP_SAT + 1) is not None
    assert rbtree.refuse(p, 1 << 19) is None
    assert rbtree.refuse(Params(pages=16, variant=AUG), 16) is not None


def test_start_pfn_zero_has_no_reserved_node():
    script = [("a", 4, 7), ("a", 2, 7), ("a", 2, 7), ("a", 1, 7)]
    st, d = agree(script, pages=8, start_pfn=0, want=[4, 2, 0, -1])


# ------------------------------------------------------- against the model

limits = hs.sampled_from([None, 0xFFFFF, 0x3FFF, (1 << 21) - 1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32 - 1), hs.integers(50, 400), hs.integers(1, 80),
       hs.lists(limits, min_size=1, max_size=3))
def test_matches_model(seed, n, target, lims):
    pages = 1 << 21
    rnd = random.Random(seed)
    lims = [pages - 1 if x is None else x for x in lims]
    live, script = [], []
    d = A.Domain()
    for _ in range(n):
        if live and rnd.random() < min(0.9, len(live) / (2.0 * target)):
            pfn, size = live.pop(rnd.randrange(len(live)))
            script.append(("f", pfn, size))
            d.free_iova(pfn, size)
        else:
            size = rnd.choice([1, 1, 1, 2, 3, 4, 8, rnd.randint(1, 64)])
            script.append(("a", size, rnd.choice(lims)))
            got = d.alloc_iova(size, script[-1][2])
            if got is not None:
                live.append((got, size))
    agree(script, pages=pages)


def test_long_trace_replays_as_the_model_answers():
    """Over 100,000 requests with thousands live, replayed by `iommu-stress
    replay`'s own code: every answer is the model's."""
    pages = 1 << 21
    text = random_trace(7, 104_000, 3000, 48, limits=[0xFFFFF, 0x7FFFF])
    trace = parse(text, pages=pages)
    assert len(trace) > 100_000
    rep = replay.run(trace, "rbtree", pages, variant=AUG)
    assert rep.problems == []
    d = A.Domain()
    held = {}
    want = np.full(len(trace), -1, dtype=np.int64)
    for i in range(len(trace)):
        k = int(trace.slot[i])
        if trace.op[i] == OP_ALLOC:
            lim = int(trace.limit[i])
            pfn = d.alloc_iova(int(trace.pages[i]), pages - 1 if lim < 0 else lim)
            held[k] = pfn
            want[i] = -1 if pfn is None else pfn
        else:
            pfn = held.pop(k)
            assert d.free_iova(pfn, int(trace.pages[i]))
            want[i] = pfn
    allocs = trace.op == OP_ALLOC
    assert np.array_equal(rep.result[allocs], want[allocs])
    assert sorted(rep.live) == d.ranges()
    # the mainline tree answers otherwise on this trace
    main = replay.run(trace, "rbtree", pages)
    assert not np.array_equal(main.result[allocs], rep.result[allocs])


@pytest.mark.parametrize("variant", ["mainline", AUG])
def test_rbtree_variants_are_design_names(variant):
    from harness import designs
    d = designs.resolve("rbtree:%s+percpu" % variant)
    assert (d.allocator, d.variant, d.flush) == ("rbtree", variant, "percpu")
    assert designs.resolve("rbtree").variant == "mainline"


# ------------------------------------------------------- the replay preset


def test_prefill_trace():
    from harness.trace import OP_FREE, prefill_trace
    t = parse(prefill_trace(3, 5, 4, pages=2, limit=99), pages=128)
    assert len(t) == 5 + 2 * 4 and t.peak_live == 5
    assert list(t.op[:5]) == [OP_ALLOC] * 5 and list(t.op[5::2]) == [OP_FREE] * 4
    assert set(t.pages) == {2} and set(t.limit[t.op == OP_ALLOC]) == {99}
    with pytest.raises(ValueError):
        prefill_trace(1, 0, 1)


def test_replay_preset(tmp_path, capsys):
    """A [replay] preset: its trace generated, replayed timed under each
    variant, the published figures beside ours; a sweep refuses it, and
    replay --preset refuses a sweep preset."""
    import argparse

    from harness import cli
    path = tmp_path / "tiny.toml"
    path.write_text('description = "a tiny one"\n[replay]\nallocator = "rbtree"\n'
                    'variants = ["mainline", "augmented"]\npages = 65536\nlive = 2000\n'
                    'pairs = 50\n[published]\nmetric = "alloc_ns"\n'
                    '"rbtree:augmented" = [661, 4.79, "ns"]\n')
    args = replay.add_arguments(argparse.ArgumentParser()).parse_args(["--preset", str(path)])
    out = __import__("io").StringIO()
    assert replay.command(args, out, None) == 0
    text = out.getvalue()
    assert "a tiny one" in text and "2100 requests" in text
    assert "rbtree:mainline" in text and "661 ns" in text and "ours: mean alloc" in text
    assert cli.main(["sweep", "--preset", str(path)]) == 2
    assert "is a replay" in capsys.readouterr().err
    assert cli.main(["replay", "--preset", "wang2020"]) == 2
    assert "is a sweep" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[replay]\nallocator = "rbtree"\nvariants = ["mainline"]\npages = 64\n'
                   'live = 0\npairs = 1\n')
    assert cli.main(["replay", "--preset", str(bad)]) == 2
    assert "replay.live: expected an integer >= 1" in capsys.readouterr().err


def test_op_timing_prints_means(tmp_path, capsys):
    from harness import cli
    from harness.trace import prefill_trace
    path = tmp_path / "t.trace"
    path.write_text(prefill_trace(1, 100, 20))
    assert cli.main(["replay", str(path), "--variant", AUG, "--op-timing"]) == 0
    err = capsys.readouterr().err
    assert "mean allocation" in err and "mean free" in err and "rbtree:augmented" in err
