"""The rbtree allocator against drivers/iommu/iova.c (Linux 6.7+): replays
worked out by hand from the kernel source, and comparison with the
independent reference model in ref_iova.py on random sequences."""
import random

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from allocators import Params, rbtree
from harness.compose import private
from tests import ref_iova as R
from tests.drivers import drive_rbtree

DMA32 = 1 << 20            # dma_32bit_pfn with a 4 KiB granule
W = 0                      # the one worker of a single-threaded replay


def stat(st, name):
    return int(st.stats.reshape(-1, 16)[:, rbtree.STATS.index(name)].sum())


def replay(st, rows):
    ops = np.array(rows, dtype=np.int64).reshape(-1, 4)
    out = np.zeros(len(ops), dtype=np.int64)
    drive_rbtree(st, W, ops, out)
    return out


def run_both(p, script):
    """Run (op, a, b, expected) rows on the allocator and the reference;
    both must give `expected`."""
    st = private(rbtree, p)
    d = R.Domain(p.start_pfn)
    rows, refs = [], []
    for op, a, b, want in script:
        if op == "alloc":
            rows.append((R.OP_ALLOC, 0, a, b))
            ref = d.alloc_iova(a, b)
            refs.append(-1 if ref is None else ref)
        else:
            rows.append((R.OP_FREE, 0, a, b))
            refs.append(0 if d.free_iova(a, b) else -2)
    got = replay(st, rows)
    for i, (op, a, b, want) in enumerate(script):
        assert (got[i], refs[i]) == (want, want), "row %d %s(%#x, %#x)" % (i, op, a, b)
    return st, d


def alloc(st, pages, limit):
    return int(replay(st, [(R.OP_ALLOC, 0, pages, limit)])[0])


def free(st, pfn, pages):
    replay(st, [(R.OP_FREE, 0, pfn, pages)])


def test_first_allocations():
    # A fresh domain: both cached nodes on the anchor (~0UL).
    script = [
        # limit 0xFFFFF -> limit_pfn 0x100000 == dma_32bit_pfn, a 32-bit
        # request: start at cached32 (the anchor), high = 0x100000,
        # new = 0x100000 - 1 = 0xFFFFF; nothing below the anchor.
        ("alloc", 1, 0xFFFFF, 0xFFFFF),
        # cached32 = [0xFFFFF]: high = 0xFFFFF, (0xFFFFF - 4) & ~3 = 0xFFFF8
        ("alloc", 4, 0xFFFFF, 0xFFFF8),
        # size 3 aligns to 4: (0xFFFF8 - 3) & ~3 = 0xFFFF4, range 0xFFFF4..6,
        # leaving 0xFFFF7 free
        ("alloc", 3, 0xFFFFF, 0xFFFF4),
        # the walk starts below cached32 = [0xFFFF4]: the hole at 0xFFFF7 is
        # not seen, 0xFFFF3 is handed out
        ("alloc", 1, 0xFFFFF, 0xFFFF3),
        # freeing [0xFFFF8..B], above cached32 = [0xFFFF3]: cached32 moves
        # to its successor, [0xFFFFF]
        ("free", 0xFFFF8, 4, 0),
        # from [0xFFFFF]: high = 0xFFFFF, (0xFFFFF - 2) & ~1 = 0xFFFFC, above
        # [0xFFFF4..6]
        ("alloc", 2, 0xFFFFF, 0xFFFFC),
        # cached32 = [0xFFFFC]: (0xFFFFC - 4) & ~3 = 0xFFFF8 > 0xFFFF6
        ("alloc", 4, 0xFFFFF, 0xFFFF8),
        # now cached32 = [0xFFFF8]: (0xFFFF8 - 1) = 0xFFFF7, the old hole,
        # above [0xFFFF4..6]
        ("alloc", 1, 0xFFFFF, 0xFFFF7),
    ]
    p = Params(max_live=16)
    st, d = run_both(p, script)
    live = [(0xFFFFF, 1), (0xFFFF4, 3), (0xFFFF3, 1), (0xFFFFC, 2),
            (0xFFFF8, 4), (0xFFFF7, 1)]
    assert rbtree.check(st, p, live) == []
    assert sorted(d.ranges()) == sorted(live)


def test_retry_and_max32():
    # A 16-page window: limit 15 -> limit_pfn 16; start_pfn 1.
    script = [
        ("alloc", 8, 15, 8),        # from the anchor: (16 - 8) & ~7 = 8
        ("alloc", 4, 15, 4),        # below [8..15]: (8 - 4) & ~3 = 4
        ("alloc", 2, 15, 2),        # below [4..7]
        ("alloc", 1, 15, 1),        # below [2..3]: 1 >= start_pfn
        # below [1]: new = 0 < start_pfn.  retry_pfn = 1 < 16, so retry from
        # iova_find_limit(16) (the anchor) with low = 2: the walk passes
        # [8..15], [4..7], [2..3] and stops at 1 < low.  Fail, and
        # max32_alloc_size = 1.
        ("alloc", 1, 15, -1),
        # now any 32-bit request of 1 page or more fails at once
        ("alloc", 1, 15, -1),
        # limit 0xFFFFF gives limit_pfn 0x100000 <= dma_32bit_pfn: 32-bit too
        ("alloc", 1, 0xFFFFF, -1),
        # a free below 4 GiB resets max32_alloc_size; [4..7] is above
        # cached32 = [1], so cached32 moves to its successor [8..15]
        ("free", 4, 4, 0),
        ("alloc", 2, 15, 6),        # below [8..15]: (8 - 2) & ~1 = 6
        # below [6..7]: (6 - 4) & ~3 = 0 < 1; retry from the top with
        # low = retry_pfn + 1 = 8: (8 - 4) & ~3 = 4 < 8.  No aligned 4-block
        # is free (4..5 is only two pages): fail, max32_alloc_size = 4.
        ("alloc", 4, 15, -1),
        # 2 < 4: searched, from [6..7]: (6 - 2) & ~1 = 4
        ("alloc", 2, 15, 4),
    ]
    p = Params(max_live=16)
    st, d = run_both(p, script)
    assert stat(st, "retries") == 2 and d.retries == 2
    assert stat(st, "fastfails") == 2 and d.fastfails == 2
    assert st.meta[rbtree.M_MAX32] == 4 == d.max32_alloc_size
    assert rbtree.check(st, p, [(8, 8), (2, 2), (1, 1), (6, 2), (4, 2)]) == []


def test_64bit_limit():
    # 8 GiB of space: limits above dma_32bit_pfn use cached_node.
    top = (1 << 21) - 1
    script = [
        ("alloc", 1, top, top),               # cached_node = [0x1FFFFF]
        ("alloc", 1, 0xFFFFF, 0xFFFFF),       # cached32 still the anchor
        # from cached_node: (0x1FFFFF - 2) & ~1 = 0x1FFFFC
        ("alloc", 2, top, 0x1FFFFC),
        # 2^20 pages: from [0x1FFFFC], (0x1FFFFC - 2^20) & ~(2^20 - 1) = 0
        # < 1; retry from the anchor (limit above 4 GiB) with low =
        # 0x1FFFFE: 0x100000 < low.  Fail; the kernel records the size in
        # max32_alloc_size although the request was a 64-bit one.
        ("alloc", 1 << 20, top, -1),
        # so a 32-bit request of that size now fails without a search
        ("alloc", 1 << 20, 0xFFFFF, -1),
    ]
    p = Params(pages=1 << 21, max_live=16)
    st, d = run_both(p, script)
    assert st.meta[rbtree.M_MAX32] == 1 << 20 == d.max32_alloc_size
    assert stat(st, "fastfails") == 1
    # a free above 4 GiB leaves it; one below resets it
    free(st, 0x1FFFFC, 2)
    assert st.meta[rbtree.M_MAX32] == 1 << 20
    free(st, 0xFFFFF, 1)
    assert st.meta[rbtree.M_MAX32] == DMA32
    assert rbtree.check(st, p, [(top, 1)]) == []


def test_bad_frees_leave_the_tree_alone():
    p = Params(max_live=16)
    st = private(rbtree, p)
    a = alloc(st, 4, 0xFFFFF)
    b = alloc(st, 1, 0xFFFFF)
    free(st, 12345, 1)        # nothing there
    free(st, a + 1, 3)        # inside a range, not its start
    free(st, a, 2)            # wrong length
    assert stat(st, "bad_frees") == 3
    assert rbtree.check(st, p, [(a, 4), (b, 1)]) == []
    assert tuple(rbtree.find(st, W, a + 2)) == (a, a + 3)
    assert tuple(rbtree.find(st, W, 5)) == (-1, -1)


def test_node_pool_exhaustion_fails_cleanly():
    p = Params(max_live=3)
    st = private(rbtree, p)
    got = [int(alloc(st, 1, 0xFFFFF)) for _ in range(4)]
    assert got[3] == -1 and -1 not in got[:3]
    assert stat(st, "nomem") == 1
    assert any("ran out" in s for s in rbtree.check(st, p, [(x, 1) for x in got[:3]]))


def test_footprint():
    p = Params(max_live=64)
    st = private(rbtree, p)
    assert rbtree.footprint(st, p)["start"] == rbtree.DOMAIN_BYTES == 128
    pfns = [alloc(st, 1, 0xFFFFF) for _ in range(10)]
    for pfn in pfns:
        free(st, pfn, 1)
    fp = rbtree.footprint(st, p)
    assert fp["peak"] == 128 + 10 * 40 and fp["now"] == 128


def check_trace(p, ops, res, live):
    st = private(rbtree, p)
    ops = np.array(ops, dtype=np.int64).reshape(-1, 4)
    out = np.zeros(len(ops), dtype=np.int64)
    drive_rbtree(st, W, ops, out)
    want = np.array(res, dtype=np.int64)
    bad = np.flatnonzero(out != want)
    assert len(bad) == 0, "row %d %s: allocator %d, reference %d" % (
        bad[0], ops[bad[0]].tolist(), out[bad[0]], want[bad[0]])
    # the kernel's promises, checked directly
    for (op, _, size, limit), pfn in zip(ops.tolist(), out.tolist()):
        if op == R.OP_ALLOC and pfn != -1:
            align = 1 << (size - 1).bit_length()
            assert pfn % align == 0 and p.start_pfn <= pfn
            assert pfn + size - 1 <= limit
    assert rbtree.check(st, p, live) == []
    return st


LIMITS = [(1 << 21) - 1, 0xFFFFF, 0x7FFF, 0xFFF, 0x3FF, 63]


@settings(deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 2**32 - 1), n=hs.integers(1, 400),
       target=hs.integers(1, 200), limits=hs.lists(hs.sampled_from(LIMITS),
                                                    min_size=1, max_size=4))
def test_matches_reference(seed, n, target, limits):
    rnd = random.Random(seed)
    p = Params(pages=1 << 21, max_live=n + 1)
    ops, res, live, d = R.tree_trace(rnd, n, limits, target=target, period=97)
    st = check_trace(p, ops, res, live)
    # freeing the rest, in a random order, returns the space
    rnd.shuffle(live)
    replay(st, [(R.OP_FREE, 0, pfn, size) for pfn, size in live])
    assert rbtree.check(st, p, []) == []
    assert st.meta[rbtree.M_NODES] == 1 and stat(st, "bad_frees") == 0


def test_long_trace():
    """120k requests, a few thousand outstanding in a quarter of the space:
    fragmentation, retries and 32-bit fast failures all happen."""
    rnd = random.Random(20240601)
    limits = [0x3FFFF] * 6 + [0x1FFFF] * 3 + [0xFFFFF, (1 << 21) - 1]
    ops, res, live, d = R.tree_trace(rnd, 120_000, limits, target=3000,
                                     period=5000)
    p = Params(pages=1 << 21, max_live=10_000)
    st = check_trace(p, ops, res, live)
    assert stat(st, "retries") == d.retries > 100
    assert stat(st, "fastfails") == d.fastfails > 10
    outstanding = np.cumsum([(1 if r != -1 else 0) if op[0] == R.OP_ALLOC else -1
                             for op, r in zip(ops, res)])
    assert len(ops) >= 100_000 and outstanding.max() >= 2000


def test_red_black_rules_hold_after_every_request():
    rnd = random.Random(3)
    ops, res, live, d = R.tree_trace(rnd, 1500, [0xFFFFF, 0x3FFF, 0x7FF],
                                     target=150, period=300)
    p = Params(max_live=1500)
    st = private(rbtree, p)
    held = set()
    for row, want in zip(ops, res):
        assert replay(st, [row])[0] == want
        if row[0] == R.OP_ALLOC and want != -1:
            held.add((want, row[2]))
        elif row[0] == R.OP_FREE:
            held.discard((row[2], row[3]))
        problems, ranges = rbtree.audit(st, p)
        assert problems == [] and sorted(ranges) == sorted(held)
