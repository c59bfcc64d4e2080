"""allocators/pools.py against hand-derived kernel behaviour and against the
independent reference model in tests/ref_pools.py.

Every hand replay works out in its comments what arch/powerpc/kernel/iommu.c
returns step by step.  Entry 0 of every table is reserved at init.
"""
import mmap
import os
import random
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from allocators import Params, STAT_LINE
from allocators import pools
from harness.compose import bind, private, specs
from hwmodel import locks as lockmod
from tests.ref_pools import RefPools, hash_32 as ref_hash_32

GIB_PAGES = 1 << 18            # 1 GiB of 4 KiB pages: the 4-pool threshold


def fresh(pages, boundary=1 << 20, nworkers=1, lock_kind="ttas"):
    p = Params(pages=pages, boundary=boundary, nworkers=nworkers)
    return p, private(pools, p, lock_kind=lock_kind)


def stat(st, name, w=0):
    return int(st.stats[w * STAT_LINE + pools.STATS.index(name)])


def acquisitions(st):
    return lockmod.class_stats(st.lk)[0]["acquisitions"]


def last_holder(st, lock):
    """Worker + 1 that took `lock` last (0: never taken)."""
    return int(st.lk.word[lock * lockmod.STRIDE + lockmod.W_LAST])


def locks_free(st):
    return all(st.lk.word[i * lockmod.STRIDE + lockmod.W_STATE] == 0
               for i in range(pools.NPOOLS_MAX))


# --- the hash and the pool layout --------------------------------------------

def test_hash_32_by_hand():
    # hash_32(cpu, 2) is the top two bits of cpu * 0x61C88647 mod 2**32:
    # 0 -> 0x00000000, 1 -> 0x61C88647, 2 -> 0xC3910C8E, 3 -> 0x255992D5,
    # 4 -> 0x8722191C, 5 -> 0xE8EA9F63, 6 -> 0x4AB325AA, 7 -> 0xAC7BABF1,
    # 1023 -> 0xC05095B9
    expect = [0, 1, 3, 0, 2, 3, 1, 2]
    assert [pools.hash_32(c, 2) for c in range(8)] == expect
    assert pools.hash_32(1023, 2) == 3
    assert pools.hash_32(1, 32) == 0x61C88647
    # the argument is a u32: the high half of a wider value is dropped
    assert pools.hash_32((1 << 32) + 2, 2) == 3


def test_cpu_pool_matches_kernel_for_1024_cpus():
    for cpu in range(1024):
        want = ref_hash_32(cpu, 2)
        assert pools.cpu_pool(cpu, 4) == want, cpu
        assert pools.cpu_pool(cpu, 1) == 0, cpu


def test_cpu_pool_decides_placement_for_1024_cpus():
    # One page from each CPU of a fresh 4-pool table lands in the CPU's pool:
    # 256 CPUs per pool at 16 entries each never fill a 49152-entry pool.
    p, st = fresh(GIB_PAGES)
    bounds = pools.pool_bounds(GIB_PAGES)
    for cpu in range(1024):
        n = pools.alloc(st, 0, cpu, 1, 0)
        s, e = bounds[ref_hash_32(cpu, 2)]
        assert s <= n < e, (cpu, n)
    assert stat(st, "spills") == 0


def test_pool_layout():
    # 1024 pages: one pool over 3/4, the large pool over the rest
    assert pools.pool_bounds(1024) == [(0, 768), (768, 1024)]
    # one page short of 1 GiB: still one pool; (262143 * 3 / 4) / 1 = 196607
    assert pools.pool_bounds(GIB_PAGES - 1) == [(0, 196607), (196607, GIB_PAGES - 1)]
    # exactly 1 GiB: 4 pools of 196608 / 4 = 49152
    assert pools.pool_bounds(GIB_PAGES) == [
        (0, 49152), (49152, 98304), (98304, 147456), (147456, 196608),
        (196608, GIB_PAGES)]
    # 1000 pages: poolsize 750; (4 GiB + 3 pages): 786432 + 2 = 786434 split
    # by 4 leaves the large pool starting at 4 * 196608
    assert pools.pool_bounds(1000) == [(0, 750), (750, 1000)]
    big = (1 << 20) + 3
    assert pools.pool_bounds(big)[-1] == (4 * 196608, big)
    p, st = fresh(GIB_PAGES)
    assert pools.pool_state(st) == [(s, e, s) for s, e in pools.pool_bounds(GIB_PAGES)]
    assert int(st.map[0]) == 1          # entry 0 reserved
    assert pools.check(st, p, []) == []


def test_footprint():
    p, st = fresh(GIB_PAGES)
    fp = pools.footprint(st, p)
    assert fp["start"] == fp["peak"] == GIB_PAGES // 8 + 5 * 128


def test_bad_params():
    with pytest.raises(ValueError):
        pools.layout(Params(pages=1024, boundary=100))
    with pytest.raises(ValueError):
        pools.layout(Params(pages=2))


# --- hand replays: one pool --------------------------------------------------

def test_replay_one_pool_small_table():
    # 1024 pages = 4 MiB < 1 GiB: nr_pools 1, poolsize 768.
    # pool 0 [0, 768) hint 0; large [768, 1024) hint 768; it_blocksize 16.
    p, st = fresh(1024)
    # 1 page: small, pool hash & 0 = 0; start 0; entry 0 reserved -> 1;
    #   hint = ALIGN(2, 16) = 16
    assert pools.alloc(st, 0, 0, 1, 0) == 1
    # 4 pages from another CPU: still pool 0; from 16 -> 16; hint ALIGN(20) = 32
    assert pools.alloc(st, 0, 5, 4, 0) == 16
    # 16 pages: > 15, large pool; from 768 -> 768; hint = end = 784, unrounded
    assert pools.alloc(st, 0, 0, 16, 0) == 768
    # 20 pages: large; 784; hint 804
    assert pools.alloc(st, 0, 0, 20, 0) == 784
    # 15 pages: still small; 32..46; hint ALIGN(47) = 48
    assert pools.alloc(st, 0, 0, 15, 0) == 32
    # free entry 1; the next page comes from the hint at 48, not from 1
    pools.free(st, 0, 0, 1, 1)
    assert pools.alloc(st, 0, 0, 1, 0) == 48
    assert pools.pool_state(st) == [(0, 768, 64), (768, 1024, 804)]
    assert stat(st, "spills") == stat(st, "pass_retries") == 0
    assert pools.check(st, p, [(16, 4), (768, 16), (784, 20), (32, 15), (48, 1)]) == []


def test_replay_one_pool_large_pool_spills_to_pool_0():
    # large pool [768, 1024), searched below 1023.
    p, st = fresh(1024)
    # 64-page requests pack at 768, 832, 896; hint 960
    assert [pools.alloc(st, 0, 0, 64, 0) for _ in range(3)] == [768, 832, 896]
    # 4th: 960 + 64 = 1024 > 1023, pass 0 fails (large.hint = 768); pass 1
    # from 768 finds 960 again and fails; pass 1 <= nr_pools: next pool is
    # (0 + 1) & 0 = pool 0, hint reset to 0; pass 2: 1..64.  A large request
    # leaves the hint at its end, 65.
    assert pools.alloc(st, 0, 0, 64, 0) == 1
    assert stat(st, "spills") == 1 and stat(st, "pass_retries") == 2
    # 5th: the same way, pool 0 from 0 -> 65; hint 129
    assert pools.alloc(st, 0, 0, 64, 0) == 65
    # a small request continues pool 0 at its hint: 129; hint 144
    assert pools.alloc(st, 0, 0, 1, 0) == 129
    assert pools.pool_state(st) == [(0, 768, 144), (768, 1024, 768)]
    assert pools.check(st, p, [(768, 64), (832, 64), (896, 64), (1, 64),
                               (65, 64), (129, 1)]) == []


def test_replay_one_pool_full_table_fails():
    # 64 pages: poolsize 48; pool 0 [0, 48) usable 1..46, large [48, 64)
    # usable 48..62 (15 entries).
    p, st = fresh(64)
    # 40 pages: large pool, 48 + 40 > 63 twice; pool 0 from 0 -> 1..40;
    # pool 0 hint = 41 (large request)
    assert pools.alloc(st, 0, 0, 40, 0) == 1
    # 10 pages: pool 0 from 41: 51 > 47; pass 1 from 0: first zero 41, fails;
    # pass 2 pool (0 + 1) & 0 = 0 again, fails; pass 3 (= nr_pools + 2 - 1):
    # large pool from 48 -> 48..57; large hint ALIGN(58, 16) = 64
    retries = stat(st, "pass_retries")
    assert pools.alloc(st, 0, 0, 10, 0) == 48
    assert stat(st, "pass_retries") - retries == 3 and stat(st, "spills") == 2
    # 10 more: pool 0 three times, the large pool from 48 (first zero 58,
    # 68 > 63), then give up
    assert pools.alloc(st, 0, 0, 10, 0) == -1
    assert stat(st, "fails") == 1
    assert pools.pool_state(st) == [(0, 48, 0), (48, 64, 48)]
    # pool 0 from 0: 41..46 ends just below its unused last entry 47;
    # hint ALIGN(47) = 48 = its end
    assert pools.alloc(st, 0, 0, 6, 0) == 41
    # 5 pages: pool 0 restarts at 0, first zero 47, 52 > 47, three times;
    # the large pool from 48: 58..62 ends just below its unused last entry 63
    assert pools.alloc(st, 0, 0, 5, 0) == 58
    # nothing but the two last entries is left
    assert pools.alloc(st, 0, 0, 1, 0) == -1
    assert pools.check(st, p, [(1, 40), (48, 10), (58, 5), (41, 6)]) == []
    assert not (int(st.map[0]) >> 47) & 1 and not (int(st.map[0]) >> 63) & 1


# --- hand replays: four pools -------------------------------------------------

FOUR = [(0, 49152), (49152, 98304), (98304, 147456), (147456, 196608),
        (196608, GIB_PAGES)]


def test_replay_four_pools_by_cpu():
    # 2**18 pages << 12 = 1 GiB: 4 pools of 49152, large [196608, 262144).
    # CPU -> pool (test_hash_32_by_hand): 0->0 1->1 2->3 3->0 4->2 5->3 6->1 7->2
    p, st = fresh(GIB_PAGES)
    assert pools.alloc(st, 0, 0, 1, 0) == 1            # pool 0; hint 16
    assert pools.alloc(st, 0, 1, 1, 0) == 49152        # pool 1; hint 49168
    assert pools.alloc(st, 0, 2, 3, 0) == 147456       # pool 3; hint 147472
    assert pools.alloc(st, 0, 4, 2, 0) == 98304        # pool 2; hint 98320
    assert pools.alloc(st, 0, 3, 1, 0) == 16           # pool 0; hint 32
    assert pools.alloc(st, 0, 6, 9, 0) == 49168        # pool 1; hint ALIGN(49177) = 49184
    assert pools.alloc(st, 0, 7, 16, 0) == 196608      # large; hint 196624
    assert pools.alloc(st, 0, 5, 15, 0) == 147472      # pool 3; end 147487, hint 147488
    assert pools.pool_state(st) == [(0, 49152, 32), (49152, 98304, 49184),
                                    (98304, 147456, 98320), (147456, 196608, 147488),
                                    (196608, GIB_PAGES, 196624)]
    assert stat(st, "spills") == 0


def test_replay_four_pools_full_pool_spills_to_next():
    p, st = fresh(GIB_PAGES, nworkers=4)
    # CPU 4 (pool 2) takes 98304..98305; pool 2 hint 98320
    assert pools.alloc(st, 0, 4, 2, 0) == 98304
    # CPU 1 (pool 1) fills pool 1 with 15-page requests, one per 16-entry
    # block: 49152 + 16k for k = 0..3071 (the last, 98288..98302, ends just
    # below pool 1's unused last entry 98303); hint 98304
    got = [pools.alloc(st, 1, 1, 15, 0) for _ in range(3072)]
    assert got == [49152 + 16 * k for k in range(3072)]
    # the next one: hint 98304 >= end, so from 49152; only 1-entry holes:
    # fails, pass 1 fails again; next pool (1 + 1) & 3 = 2, whose hint is
    # reset to 98304: first fit 98306..98320; hint ALIGN(98321) = 98336
    assert pools.alloc(st, 2, 1, 15, 0) == 98306
    assert stat(st, "spills", 2) == 1 and stat(st, "pass_retries", 2) == 2
    # worker 2 took pool 1's lock and handed it over for pool 2's
    assert last_holder(st, 1) == 3 and last_holder(st, 2) == 3
    assert last_holder(st, 0) == 0 and last_holder(st, 3) == 0
    # pool 1's hint was reset to its start by the failed pass 0: a single
    # page fits the first hole, 49167
    assert pools.alloc(st, 0, 1, 1, 0) == 49167
    assert pools.pool_state(st)[1:3] == [(49152, 98304, 49168), (98304, 147456, 98336)]
    live = [(98304, 2), (98306, 15), (49167, 1)] + [(g, 15) for g in got]
    assert pools.check(st, p, live) == []
    # __iommu_free takes the lock of the pool the entry lies in (get_pool),
    # whatever the CPU: worker 3 on CPU 0 frees in pool 2
    pools.free(st, 3, 0, 98306, 15)
    assert last_holder(st, 2) == 4 and last_holder(st, 0) == 0
    assert pools.check(st, p, [x for x in live if x[0] != 98306]) == []


def test_replay_four_pools_large_spills_to_cpu_pool_plus_one():
    p, st = fresh(GIB_PAGES)
    # CPU 2 (pool 3) packs 64-page requests into the large pool:
    # 196608 + 64k, k = 0..1022 (the last ends at 262080 <= 262143)
    got = [pools.alloc(st, 0, 2, 64, 0) for _ in range(1023)]
    assert got == [196608 + 64 * k for k in range(1023)]
    # the 1024th: 262080 + 64 > 262143 twice; the next small pool after the
    # CPU's own is (3 + 1) & 3 = 0, from 0: 1..64, hint 65 (unrounded)
    assert pools.alloc(st, 0, 2, 64, 0) == 1
    assert stat(st, "spills") == 1 and stat(st, "pass_retries") == 2
    # CPU 0's small request continues at pool 0's hint
    assert pools.alloc(st, 0, 0, 1, 0) == 65
    assert pools.pool_state(st)[0] == (0, 49152, 80)


def test_replay_dma_limit():
    # 4 pools; limits are DMA masks in pages.
    p, st = fresh(GIB_PAGES)
    # CPU 0 fills [0, 16383) with 15-page requests: 1, then 16k for
    # k = 1..1023 (16368..16382 is the last); pool 0 hint 16384.  Holes of
    # one entry remain at 16k + 15 (31, 47, ..., 16367).
    got = [pools.alloc(st, 0, 0, 15, 0) for _ in range(1024)]
    assert got == [1] + [16 * k for k in range(1, 1024)]
    live = [(g, 15) for g in got]
    # CPU 1 (pool 1), 2 pages below mask 0x3FFF: pool 1's end 98304 > mask,
    # so the limit becomes 0x4000 and pass 0 starts at 49152 & 0x3FFF = 0:
    # no 2-entry hole below 16383.  Pool 1 hint := 49152.  Every later pass
    # moves to pool 0 (from 0) and fails the same way; the pass sequence
    # still walks pools 2, 3, 0, 1, then the large pool, resetting each one's
    # hint, then gives up: 6 retries and 12 lock acquisitions (1 + 5 moves to
    # the next pool + 6 moves to pool 0).
    a0 = acquisitions(st)
    assert pools.alloc(st, 0, 1, 2, 0x3FFF) == -1
    assert acquisitions(st) - a0 == 12 and stat(st, "pass_retries") == 6
    assert [h for _, _, h in pools.pool_state(st)] == [0, 49152, 98304, 147456, 196608]
    # free 1..15; CPU 1 takes 49152 (unlimited), pool 1 hint 49168
    pools.free(st, 0, 0, 1, 15)
    live.remove((1, 15))
    assert pools.alloc(st, 0, 1, 1, 0) == 49152
    # limited again: pass 0 starts at 49168 & 0x3FFF = 16: only 1-entry
    # holes above 16, fails, pool 1 hint := 49152; pass 1 moves to pool 0
    # from 0 and finds 1..2; pool 0 hint ALIGN(3) = 16.  A spill.
    assert pools.alloc(st, 0, 1, 2, 0x3FFF) == 1
    assert stat(st, "spills") == 1
    assert pools.pool_state(st)[0][2] == 16 and pools.pool_state(st)[1][2] == 49152
    # CPU 2 (pool 3, hint 147456) below mask 0xFFFF: starts at
    # 147456 & 0xFFFF = 16384, inside pool 0's range, and takes it under
    # pool 3's lock; pool 3's hint becomes 16400
    assert pools.alloc(st, 0, 2, 1, 0xFFFF) == 16384
    assert pools.pool_state(st)[3] == (147456, 196608, 16400)
    # so CPU 2's next unlimited request starts at 16400 (< pool 3's end) too
    assert pools.alloc(st, 0, 2, 1, 0) == 16400
    # a limit at or above the table changes nothing: pool 1 from 49152 finds
    # 49153; -1 and 0 mean no limit
    assert pools.alloc(st, 0, 1, 1, 0xFFFFF) == 49153
    assert pools.alloc(st, 0, 1, 1, -1) == 49168
    live += [(49152, 1), (1, 2, 0x3FFF), (16384, 1, 0xFFFF), (16400, 1),
             (49153, 1, 0xFFFFF), (49168, 1)]
    assert pools.check(st, p, live) == []


def test_dma_limit_hands_out_a_pools_last_entry():
    # 1024 pages: pool 0 [0, 768), large [768, 1024).  Pool 0 gets 15-page
    # ranges at 1 and 16k, k = 1..47 (752..766 is the last; hint 768), the
    # large pool 768, 832, 896 (64 each) and 960..1007 (48; hint 1008).
    p, st = fresh(1024)
    got = [pools.alloc(st, 0, 0, 15, 0) for _ in range(48)]
    assert got == [1] + [16 * k for k in range(1, 48)]
    assert [pools.alloc(st, 0, 0, n, 0) for n in (64, 64, 64, 48)] == [768, 832, 896, 960]
    pools.free(st, 0, 0, 752, 15)
    live = [(g, 15) for g in got if g != 752] + [(768, 64), (832, 64), (896, 64), (960, 48)]
    # 751..767 is free now, but 767 is pool 0's last entry: unlimited, 17
    # pages find no room (large pool: 1008..1022 is 15; pool 0 is searched
    # below 767), so the request fails after every pass
    assert pools.alloc(st, 0, 0, 17, 0) == -1
    # under mask 0x3FF the large pool's end 1024 exceeds the mask: the limit
    # becomes 0x400 and pass 0 (from 768 & 0x3FF) fails the same way; pass 1
    # moves to pool 0 and searches [0, 1023), across pool 0's end: 751..767
    assert pools.alloc(st, 0, 0, 17, 0x3FF) == 751
    assert pools.pool_state(st)[0][2] == 768            # a large request's end
    assert pools.check(st, p, live + [(751, 17, 0x3FF)]) == []
    assert int(st.pool[pools.P_STRAY]) == 1


def test_hint_rounding_to_blocksize():
    # small requests leave the hint on a multiple of 16, large ones at their end
    p, st = fresh(1024)
    for n, want_hint in [(1, 16), (15, 32), (2, 48), (14, 64), (3, 80)]:
        pools.alloc(st, 0, 0, n, 0)
        assert pools.pool_state(st)[0][2] == want_hint
    for n, want_hint in [(17, 785), (16, 801), (33, 834)]:
        pools.alloc(st, 0, 0, n, 0)
        assert pools.pool_state(st)[1][2] == want_hint


def test_boundary_respected():
    # 1024 pages, boundary 32: small requests of at most 15 pages start on
    # 16-entry blocks and never cross; large ones pack and do.
    p, st = fresh(1024, boundary=32)
    assert pools.alloc(st, 0, 0, 1, 0) == 1
    assert pools.alloc(st, 0, 0, 15, 0) == 16
    # the large pool: 20 pages at 768 (768 % 32 = 0) fit; the next 20 from
    # 788 would cross 800 -> 800
    assert pools.alloc(st, 0, 0, 20, 0) == 768
    assert pools.alloc(st, 0, 0, 20, 0) == 800
    # a request wider than the boundary never fits
    assert pools.alloc(st, 0, 0, 33, 0) == -1
    assert pools.check(st, p, [(1, 1), (16, 15), (768, 20), (800, 20)]) == []


@pytest.mark.parametrize("kind", lockmod.KINDS)
def test_lock_handover_every_kind(kind):
    # a spill drops and takes locks; every kind must end up with all free
    p, st = fresh(64, lock_kind=kind)
    assert pools.alloc(st, 0, 0, 40, 0) == 1
    assert pools.alloc(st, 0, 0, 10, 0) == 48
    assert pools.alloc(st, 0, 0, 10, 0) == -1
    pools.free(st, 0, 0, 48, 10)
    pools.free(st, 0, 0, 1, 40)
    if kind in ("tas", "ttas", "qspinlock"):
        assert locks_free(st)
    assert pools.alloc(st, 0, 0, 1, 0) == 1
    assert pools.check(st, p, [(1, 1)]) == []


def test_check_finds_problems():
    p, st = fresh(1024)
    a = pools.alloc(st, 0, 0, 4, 0)
    b = pools.alloc(st, 0, 0, 4, 0)
    assert pools.check(st, p, [(a, 4), (b, 4)]) == []
    assert pools.check(st, p, [(a, 4)])                         # bitmap has more
    assert pools.check(st, p, [(a, 4), (b, 4), (a + 1, 2)])     # overlap
    assert pools.check(st, p, [(a, 4), (b, 4), (760, 16)])      # straddles pools
    assert pools.check(st, p, [(a, 4), (b, 4), (1020, 8)])      # outside
    assert pools.check(st, p, [(a, 4), (b, 4, 10)])             # beyond its limit
    p2, st2 = fresh(1024, boundary=16)
    c = pools.alloc(st2, 0, 0, 4, 0)
    st2.map[0] |= np.uint64(0xF << 14)
    assert any("boundary" in x for x in pools.check(st2, p2, [(c, 4), (14, 4)]))


# --- against the reference model ---------------------------------------------

LIMITS = [0, -1, 0xFF, 0x3FF, 0xFFF, 0x3FFF, 0xFFFF, 0x1FFFF, 0xFFFFF]


def run_both(pages, boundary, ops, nworkers=1, every_step=True):
    """Apply ops to both models; compare every result (and the pools'
    hints when every_step), then the bitmap, statistics and lock count."""
    p, st = fresh(pages, boundary, nworkers=nworkers)
    ref = RefPools(pages, boundary)
    live = []
    for i, op in enumerate(ops):
        if op[0] == "a":
            _, cpu, n, limit, w = op
            got = pools.alloc(st, w, cpu, n, limit)
            want = ref.alloc(cpu, n, limit)
            assert got == want, (i, op, got, want)
            if got != -1:
                live.append((got, n, limit) if limit > 0 else (got, n))
        else:
            _, k, w = op
            if not live:
                continue
            item = live.pop(k % len(live))
            pools.free(st, w, 0, item[0], item[1])
            ref.free(item[0], item[1])
        if every_step:
            assert pools.pool_state(st) == ref.pool_state(), (i, op)
    assert pools.pool_state(st) == ref.pool_state()
    bits = np.unpackbits(st.map.view(np.uint8), bitorder="little")[:pages]
    assert bits.tobytes() == ref.bits()
    for name, value in [("allocs", ref.allocs), ("fails", ref.fails),
                        ("spills", ref.spills), ("pass_retries", ref.retries),
                        ("frees", ref.frees)]:
        assert sum(stat(st, name, w) for w in range(nworkers)) == value, name
    assert acquisitions(st) == ref.lock_acquisitions
    assert locks_free(st)
    assert pools.check(st, p, live) == []
    return st, ref, live


def _expand(raw, nworkers):
    """Bursts become runs of plain requests."""
    ops = []
    for op in raw:
        if op[0] == "burst":
            _, cpu, n, count, limit = op
            ops += [("a", cpu, n, limit, cpu % nworkers)] * count
        elif op[0] == "a":
            _, cpu, n, limit = op
            ops.append(("a", cpu, n, limit, cpu % nworkers))
        else:
            ops.append(("f", op[1], op[1] % nworkers))
    return ops


_cpu = hs.one_of(hs.integers(0, 7), hs.integers(0, 1023))
_op = hs.one_of(
    hs.tuples(hs.just("a"), _cpu, hs.integers(1, 64), hs.sampled_from(LIMITS)),
    hs.tuples(hs.just("a"), _cpu, hs.integers(1, 64), hs.just(0)),
    hs.tuples(hs.just("f"), hs.integers(0, 1 << 30)),
    hs.tuples(hs.just("f"), hs.integers(0, 1 << 30)),
    hs.tuples(hs.just("burst"), _cpu, hs.integers(1, 64), hs.integers(1, 1500),
              hs.sampled_from(LIMITS)),
)


@settings(deadline=None, max_examples=100,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pages=hs.sampled_from([16, 64, 100, 1024, 4096, GIB_PAGES - 1, GIB_PAGES]),
       boundary=hs.sampled_from([1 << 20, 64, 128]),
       raw=hs.lists(_op, max_size=60))
def test_matches_reference_random(pages, boundary, raw):
    run_both(pages, boundary, _expand(raw, 3), nworkers=3)


@settings(deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pages=hs.sampled_from([64, 256, 1024]),
       raw=hs.lists(hs.one_of(
           hs.tuples(hs.just("a"), _cpu, hs.integers(1, 64), hs.sampled_from(LIMITS)),
           hs.tuples(hs.just("f"), hs.integers(0, 1 << 30))), max_size=300))
def test_matches_reference_small_tables(pages, raw):
    # tables that fill up: every pass of the kernel's search order is taken
    run_both(pages, 1 << 20, _expand(raw, 1))


def _trace(seed, count, pages, cpus, target_live, large_share, limit_share):
    rng = random.Random(seed)
    ops = []
    outstanding = 0
    for _ in range(count):
        if outstanding > target_live and rng.random() < 0.55 or \
                outstanding and rng.random() < 0.3:
            ops.append(("f", rng.randrange(1 << 30), 0))
            outstanding -= 1
            continue
        n = rng.randint(16, 64) if rng.random() < large_share else rng.randint(1, 15)
        limit = rng.choice(LIMITS[2:]) if rng.random() < limit_share else 0
        ops.append(("a", rng.randrange(cpus), n, limit, 0))
        outstanding += 1
    return ops


def test_long_trace_four_pools():
    # 100k requests on a 1 GiB table from 64 CPUs, about 4000 ranges held;
    # enough large ones to overflow the large pool into the small pools.  No
    # limits, so every range must stay inside one pool (check()).  Hints are
    # compared at the end only.
    ops = _trace(1, 100_000, GIB_PAGES, 64, 4000, 0.45, 0.0)
    st, ref, live = run_both(GIB_PAGES, 1 << 20, ops, every_step=False)
    assert len(live) > 2000
    assert ref.spills > 1000 and ref.retries > 1000
    assert not any(st.pool[i * STAT_LINE + pools.P_STRAY] for i in range(pools.NPOOLS_MAX))


def test_long_trace_one_pool_under_pressure():
    # 100k requests on a 4 MiB table held nearly full, 1% under DMA limits:
    # fails and every pass of the search order
    ops = _trace(2, 100_000, 1024, 16, 60, 0.2, 0.01)
    st, ref, live = run_both(1024, 1 << 20, ops, every_step=False)
    assert ref.fails > 0 and ref.spills > 0


def test_drained_table_is_fresh():
    # after every range is freed, the bitmap is as init left it, limited
    # requests (whose hints stray) included
    ops = _trace(3, 20_000, GIB_PAGES, 32, 2000, 0.3, 0.01)
    st, ref, live = run_both(GIB_PAGES, 1 << 20, ops, every_step=False)
    for item in live:
        pools.free(st, 0, 0, item[0], item[1])
    p, clean = fresh(GIB_PAGES)
    assert np.array_equal(st.map, clean.map)
    assert pools.check(st, p, []) == []


# --- real concurrency -----------------------------------------------------------

def _shared_state(p, lock_kind):
    """The allocator's arrays in one anonymous shared mapping, inherited by
    forked children."""
    spec = specs(pools, p, "")
    offsets, size = [], 0
    for name, dtype, shape in spec:
        size = (size + 127) & ~127
        offsets.append(size)
        size += int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, size)
    views = {name: np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape)),
                                 offset=off).reshape(shape)
             for (name, dtype, shape), off in zip(spec, offsets)}
    ctl = np.zeros(16, dtype=np.int64)
    return buf, bind(pools, p, views, "", ctl, lock_kind)


def _child(st, w, cpu, seed, count):
    """Random map/unmap on one CPU; before each free, the range must still be
    set (nobody else was handed it and cleared it).  Returns an exit code."""
    rng = random.Random(seed)
    held = []
    bits = st.map
    for _ in range(count):
        if held and (len(held) > 1500 or rng.random() < 0.45):
            pfn, n = held.pop(rng.randrange(len(held)))
            for i in range(pfn, pfn + n):
                if not (int(bits[i >> 6]) >> (i & 63)) & 1:
                    return 3
            pools.free(st, w, cpu, pfn, n)
        else:
            n = rng.randint(16, 64) if rng.random() < 0.5 else rng.randint(1, 15)
            pfn = pools.alloc(st, w, cpu, n, 0)
            if pfn != -1:
                held.append((pfn, n))
    for pfn, n in held:
        pools.free(st, w, cpu, pfn, n)
    return 0


@pytest.mark.parametrize("kind", ["ttas", "mcs", "qspinlock"])
def test_concurrent_workers_leave_a_fresh_table(kind):
    nworkers = 4
    p = Params(pages=GIB_PAGES, nworkers=nworkers)
    _buf, st = _shared_state(p, kind)
    pools.alloc(st, 0, 0, 1, 0)        # compile before forking
    pools.free(st, 0, 0, 1, 1)
    st.stats[:] = 0
    # CPUs 0, 1, 4, 2 start in pools 0, 1, 2, 3
    cpus = [0, 1, 4, 2]
    pids = []
    for w in range(nworkers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(st, w, cpus[w], w, 15_000)
            finally:
                os._exit(code)
        pids.append(pid)
    codes = {}
    deadline = time.monotonic() + 120
    while len(codes) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    for pid in pids:
        if pid not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert len(codes) == len(pids), "workers did not finish: a lock never came back"
    assert list(codes.values()) == [0] * nworkers
    assert pools.check(st, p, []) == []
    if kind in ("ttas", "qspinlock"):
        assert locks_free(st)
    assert sum(stat(st, "spills", w) for w in range(nworkers)) > 0
    allocs = sum(stat(st, "allocs", w) for w in range(nworkers))
    assert allocs == sum(stat(st, "frees", w) for w in range(nworkers))
