"""allocators/bitmap.py against the GART's alloc_iommu/free_iommu: replays
worked out by hand from the kernel source, then the compiled allocator and
the pure-Python model in tests/ref_bitmap.py, line for line."""
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as hst

from allocators import bitmap
from harness import replay
from harness.trace import parse, random_trace
from tests.ref_bitmap import RefGart, replay_lines


def run_bitmap(text, pages, boundary=1 << 20):
    rep = replay.run(parse(text, "t.trace", pages), "bitmap", pages, boundary)
    assert rep.problems == []
    return rep


def lines(text, pages, boundary=1 << 20):
    return run_bitmap(text, pages, boundary).lines()


# The kernel's search covers pages - 1 bits (iommu_area_alloc's `size -= 1`),
# so with 16 pages bits 0..14 are handed out and bit 15 never is.  For the
# same reason a range ends at 15 at most, and alloc_iommu's reset of the
# hint to 0 when it reaches the end of the map never fires: the hint can
# sit at 15, where every search finds nothing, and the wrap happens there.
NEXT_FIT = """
a a 4      # from hint 0: 0..3; hint 4
a b 4      # 4..7; hint 8
a c 4      # 8..11; hint 12
a d 4      # from 12 the run would end at 16 > 15: nothing; wrap (flush) and
           # search from 0: the first clear bit is 12 again: fail, hint stays 12
a e 3      # 12..14 ends exactly at the search size 15: fits; hint 15
a f 1      # from 15 nothing (15 is the unused last bit); from 0 all of
           # 0..14 is set: fail
f b        # 4 < hint 15: the hint stays
a g 2      # from 15 nothing; wrap: 4..5; hint 6
a h 1      # from 6: 6; hint 7
"""


def test_next_fit_wrap_and_unused_last_bit():
    rep = run_bitmap(NEXT_FIT, 16)
    assert rep.lines() == ["a 0", "b 4", "c 8", "d fail", "e 12", "f fail", "g 4", "h 6"]
    assert rep.state.meta[bitmap.M_NEXT_BIT] == 7
    assert rep.state.meta[bitmap.M_NEED_FLUSH] == 1        # raised by the wraps
    assert rep.state.stats[bitmap.S_WRAPS] == 3            # d, f and g
    # bit 15 was never set, though everything below it was at one time
    assert sorted(rep.live) == [(0, 4), (4, 2), (6, 1), (8, 4), (12, 3)]


# free_iommu: a range freed at or above the hint moves the hint past it, so
# that next-fit does not hand it out again before the next wrap.
FREE_MOVES_HINT = """
a a 4      # 0; hint 4
a b 4      # 4; hint 8
a c 4      # 8; hint 12
a d 4      # 12; hint 16
a e 4      # 16; hint 20
f a        # 0 < 20: hint stays 20
a f 8      # 20..27; hint 28
a g 4      # from 28: 28..31 ends at 32 > 31: nothing; wrap: 0..3 (freed a); hint 4
f c        # 8 >= 4: hint moves to 12, past the freed range
a h 2      # from 12: 12..27 set, 28..29 clear: 28 (from the old hint 4 it
           # would have been 8); hint 30
a i 2      # from 30: 30..31 ends at 32 > 31: nothing; wrap: 8..9; hint 10
a j 1      # from 10: 10; hint 11
f b        # 4 < 11: hint stays 11
a k 1      # 11; hint 12
f d        # 12 >= 12: hint moves to 16
a l 2      # from 16: 16..29 set, 30 clear but 30..31 ends past 31: nothing;
           # wrap: 4..5 (freed b); hint 6
"""


def test_free_moves_the_hint():
    rep = run_bitmap(FREE_MOVES_HINT, 32)
    assert rep.lines() == ["a 0", "b 4", "c 8", "d 12", "e 16", "f 20", "g 0",
                           "h 28", "i 8", "j 10", "k 11", "l 4"]
    assert rep.state.meta[bitmap.M_NEXT_BIT] == 6


# iommu_area_alloc: a candidate crossing a segment boundary restarts the
# search at that boundary (16 pages here; the bus base is boundary-aligned).
BOUNDARY = """
a a 10     # 0..9; hint 10
a b 10     # from 10: 10 % 16 + 10 = 20 > 16 crosses 16: restart at 16: 16..25; hint 26
a c 6      # 26 % 16 + 6 = 16: touches the boundary without crossing: 26..31; hint 32
a d 16     # a whole segment: 32..47; hint 48
a e 16     # from 48: the run would end at 64 > 63 (last bit unused): nothing;
           # wrap: 10..15 is too short, the next clear bit is 48 again: fail
a f 17     # longer than a segment: fails (the kernel would search forever)
a g 15     # from 48: 48..62 ends at 63, the search size: fits; hint 63
a h 6      # from 63 nothing; wrap: 10..15 fits its segment exactly; hint 16
a i 1      # from 16: the next clear bit is 63, past the search: nothing;
           # wrap: nothing clear below 63: fail
"""


def test_segment_boundary():
    assert lines(BOUNDARY, 64, 16) == ["a 0", "b 16", "c 26", "d 32", "e fail", "f fail",
                                       "g 48", "h 10", "i fail"]


def test_boundary_of_one_page():
    # every 2-page request crosses a boundary; single pages fill 0..6 (7 is unused)
    text = "a x 2\n" + "".join("a p%d 1\n" % i for i in range(8))
    assert lines(text, 8, 1) == ["x fail"] + ["p%d %d" % (i, i) for i in range(7)] + ["p7 fail"]


def test_two_page_space():
    # only bit 0 is ever handed out
    text = "a x 1\na y 1\nf x\na z 1\na w 2\n"
    assert lines(text, 2) == ["x 0", "y fail", "z 0", "w fail"]


def test_whole_space_request():
    # pages - 1 fits exactly, pages never does
    assert lines("a x 63\nf x\na y 64\n", 64) == ["x 0", "y fail"]


def test_reference_model_agrees_on_the_hand_cases():
    # the model is checked against the same hand derivations
    assert replay_lines(NEXT_FIT, 16, 1 << 20) == lines(NEXT_FIT, 16)
    assert replay_lines(FREE_MOVES_HINT, 32, 1 << 20) == lines(FREE_MOVES_HINT, 32)
    assert replay_lines(BOUNDARY, 64, 16) == lines(BOUNDARY, 64, 16)


def ref_driven_trace(rng, n, pages, boundary, max_live, sizes, ncpus=1):
    """A valid trace for the model: frees only what the model says is held,
    so allocations may fail (a full space, the boundary) without making the
    trace invalid.  Returns (text, expected lines, the model)."""
    g = RefGart(pages, boundary)
    held = []                     # (tag, pfn, nr)
    spare = []
    out, expect = [], []
    serial = 0
    for _ in range(n):
        if ncpus > 1 and rng.random() < 0.05:
            out.append("cpu %d" % rng.randrange(ncpus))
        if held and (len(held) >= max_live or rng.random() < 0.45):
            k = rng.randrange(len(held))
            tag, pfn, nr = held[k]
            held[k] = held[-1]
            held.pop()
            g.free(pfn, nr)
            out.append("f %s" % tag)
            spare.append(tag)
        else:
            if spare and rng.random() < 0.3:
                tag = spare.pop(rng.randrange(len(spare)))
            else:
                tag = "t%d" % serial
                serial += 1
            nr = rng.choice(sizes)
            pfn = g.alloc(nr)
            out.append("a %s %d" % (tag, nr))
            if pfn >= 0:
                held.append((tag, pfn, nr))
                expect.append("%s %d" % (tag, pfn))
            else:
                expect.append("%s fail" % tag)
                spare.append(tag)     # a failed tag is not live: re-usable
    return "\n".join(out) + "\n", expect, g


def compare_with_model(rep, g):
    """The compiled allocator's whole state equals the model's."""
    st = rep.state
    bits = np.unpackbits(st.map.view(np.uint8), bitorder="little")[:g.pages].astype(bool)
    assert bits.tolist() == [b == 1 for b in g.used]
    assert st.meta[bitmap.M_NEXT_BIT] == g.next_bit
    assert bool(st.meta[bitmap.M_NEED_FLUSH]) == g.need_flush
    assert st.stats[bitmap.S_WRAPS] == g.wraps


@settings(deadline=None, max_examples=300, database=None)
@given(seed=hst.integers(0, 2**32 - 1),
       pages=hst.integers(2, 300),
       boundary_log=hst.integers(0, 9),
       max_live=hst.integers(1, 40),
       max_size=hst.integers(1, 80),
       n=hst.integers(0, 300))
def test_property_matches_model(seed, pages, boundary_log, max_live, max_size, n):
    rng = random.Random(seed)
    sizes = [rng.randint(1, min(max_size, pages)) for _ in range(4)]
    text, expect, g = ref_driven_trace(rng, n, pages, 1 << boundary_log, max_live, sizes,
                                       ncpus=3)
    rep = run_bitmap(text, pages, 1 << boundary_log)
    assert rep.lines() == expect
    compare_with_model(rep, g)


def check_invariants(text, out, pages, boundary):
    """No two live ranges overlap, none crosses a boundary, none reaches the
    unused last bit; replayed from the output alone."""
    occ = bytearray(pages)
    where = {}
    it = iter(out)
    for raw in text.split("\n"):
        f = raw.split("#", 1)[0].split()
        if not f or f[0] == "cpu":
            continue
        if f[0] == "a":
            tag, res = next(it).split()
            assert tag == f[1]
            if res == "fail":
                continue
            pfn, nr = int(res), int(f[2])
            assert 0 <= pfn and pfn + nr <= pages - 1
            assert pfn // boundary == (pfn + nr - 1) // boundary
            assert occ[pfn:pfn + nr].count(1) == 0, "overlap at %d+%d" % (pfn, nr)
            occ[pfn:pfn + nr] = b"\1" * nr
            where[tag] = (pfn, nr)
        else:
            pfn, nr = where.pop(f[1])
            occ[pfn:pfn + nr] = bytes(nr)
    assert next(it, None) is None


def test_long_trace_matches_model():
    # 100k requests, a few thousand ranges outstanding, a space small enough
    # that it fills: wraps, boundary skips and failures all happen
    rng = random.Random(20240601)
    pages, boundary = 1 << 16, 1 << 9
    sizes = [1] * 8 + [2, 3, 4, 8, 16, 31, 64, 200]
    text, expect, g = ref_driven_trace(rng, 100_000, pages, boundary, 3000, sizes, ncpus=8)
    rep = run_bitmap(text, pages, boundary)
    out = rep.lines()
    assert len(out) == len(expect) > 50_000
    for i, (got, want) in enumerate(zip(out, expect)):
        assert got == want, "allocation %d: %s, the kernel gives %s" % (i, got, want)
    compare_with_model(rep, g)
    fails = sum(1 for x in expect if x.endswith("fail"))
    assert 0 < fails < len(expect) // 2
    assert g.wraps > 10
    assert max(len(rep.live), 1) > 1000
    check_invariants(text, out, pages, boundary)


def test_random_trace_matches_model():
    # the generator's traces, on a space where nothing fails
    text = random_trace(7, 20_000, 500, 48, ncpus=4)
    pages = 8 * 500 * 48
    out = lines(text, pages)
    assert out == replay_lines(text, pages, 1 << 20)
    assert not any(x.endswith("fail") for x in out)
    check_invariants(text, out, pages, 1 << 20)


def test_state_is_fresh_after_freeing_everything():
    rng = random.Random(3)
    text, expect, g = ref_driven_trace(rng, 2000, 1000, 64, 50, [1, 2, 5, 9])
    rep = run_bitmap(text, 1000, 64)
    assert rep.live and rep.state.map.any()
    t = rep.trace
    held = [t.tags[t.tag[i]] for i in range(len(t))
            if t.op[i] == 0 and rep.result[i] >= 0 and not (t.ref == i).any()]
    assert len(held) == len(rep.live)
    rep = run_bitmap(text + "".join("f %s\n" % tag for tag in held), 1000, 64)
    assert rep.live == []
    assert not rep.state.map.any()
    assert rep.state.meta[bitmap.M_LIVE] == 0
