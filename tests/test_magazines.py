"""The magazine caches against alloc_iova_fast / free_iova_fast of
drivers/iommu/iova.c: replays worked out by hand, comparison with the
reference model for the three depots, the 2020 thread's memory figure, and
a run of real processes on real locks."""
import mmap
import os
import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from numba import njit

import allocators
from allocators import Params, magazines as M, rbtree
from harness import compose
from hwmodel import locks as lockmod
from tests import ref_iova as R
from tests.drivers import drive_magazines

W = 0


def stats(st):
    return allocators.totals(M, st)


def tree_stat(st, name):
    return int(st.tree.stats.reshape(-1, 16)[:, rbtree.STATS.index(name)].sum())


def replay(st, rows):
    ops = np.array(rows, dtype=np.int64).reshape(-1, 4)
    out = np.zeros(len(ops), dtype=np.int64)
    drive_magazines(st, W, ops, out)
    return out.tolist()


def A(cpu, pages, limit=0xFFFFF):
    return (R.OP_ALLOC, cpu, pages, limit)


def F(cpu, pfn, pages):
    return (R.OP_FREE, cpu, pfn, pages)


def run_both(p, rows):
    """Replay rows on the allocator and on the reference: (state, reference,
    results), the two results lists being equal."""
    st = compose.private(M, p)
    rc = R.RCache(R.Domain(p.start_pfn), p.ncpus, p.mag_size, p.variant)
    want = rc.run(rows)
    got = replay(st, rows)
    assert got == want
    return st, rc, got


def test_cache_round_trip():
    p = Params(ncpus=2, max_live=64)
    rows = [
        A(0, 1),                # miss: the tree gives 0xFFFFF
        F(0, 0xFFFFF, 1),       # into CPU 0's class-0 magazine, still a node
        A(1, 1),                # CPU 1's cache is empty: the tree walks
                                # down from cached32 = [0xFFFFF]: 0xFFFFE
        A(0, 1),                # a hit on CPU 0: 0xFFFFF again
        # 3 pages round up to 4: class 2 misses; the tree allocates 4 pages
        # below cached32 = [0xFFFFE]: (0xFFFFE - 4) & ~3 = 0xFFFF8
        A(0, 3),
        F(1, 0xFFFF8, 3),       # order_base_2(3) = 2: into CPU 1's class 2
        A(1, 4),                # a hit: 0xFFFF8
    ]
    st, rc, got = run_both(p, rows)
    assert got == [0xFFFFF, 0, 0xFFFFE, 0xFFFFF, 0xFFFF8, 0, 0xFFFF8]
    s = stats(st)
    assert (s["hits_1"], s["misses_1"], s["hits_4"], s["misses_4"]) == (1, 2, 1, 1)
    # the tree holds the rounded size
    assert M.check(st, p, [(0xFFFFF, 1), (0xFFFFE, 1), (0xFFFF8, 4)]) == []


def test_pop_respects_the_limit():
    p = Params(ncpus=1, max_live=64)
    D, E, F_ = 0xFFFFD, 0xFFFFE, 0xFFFFF
    rows = [
        A(0, 1), A(0, 1), A(0, 1),          # 0xFFFFF, 0xFFFFE, 0xFFFFD
        F(0, D, 1), F(0, F_, 1), F(0, E, 1),  # the magazine: [D, F, E]
        # limit 0xFFFFD: entries up to 0xFFFFD + 1 - 1.  From the top, E
        # and F are too high, D fits; E, the top, fills its slot: [E, F]
        A(0, 1, 0xFFFFD),
        A(0, 1),                            # the top: F; [E]
        A(0, 1),                            # E
        # the magazine is empty and so is the depot: to the tree, below
        # cached32 = [0xFFFFD] (the last node it inserted)
        A(0, 1),
        F(0, E, 1),                         # [E]
        # nothing at or below 0xFFFFD cached: miss though the magazine is
        # not empty; the tree, from cached32 = [0xFFFFC], gives 0xFFFFB
        A(0, 1, 0xFFFFD),
    ]
    st, rc, got = run_both(p, rows)
    assert got[6:9] == [D, F_, E]
    assert got[9] == 0xFFFFC and got[11] == 0xFFFFB
    live = [(F_, 1), (D, 1), (0xFFFFC, 1), (0xFFFFB, 1)]
    assert M.check(st, p, live) == []


def test_flush_and_retry():
    # A 7-page window: limit 7, start_pfn 1.
    p = Params(ncpus=2, max_live=16)
    rows = [A(0, 1, 7) for _ in range(7)]                  # 7, 6, ..., 1
    # full: the tree walks, retries from the top, fails and records
    # max32_alloc_size = 1; the flush finds nothing cached, and the second
    # try fails fast
    rows.append(A(0, 1, 7))
    rows += [F(1, pfn, 1) for pfn in range(7, 0, -1)]      # cached on CPU 1
    # CPU 0 has nothing cached: the tree fails fast (max32 is still 1);
    # flushing CPU 1 frees 7, 6, ..., 1 in magazine order; freeing [7],
    # above cached32 = [1], moves cached32 to the anchor and resets
    # max32_alloc_size; the retry then starts from the top: 7
    rows.append(A(0, 1, 7))
    st, rc, got = run_both(p, rows)
    assert got[:8] == [7, 6, 5, 4, 3, 2, 1, -1]
    assert got[-1] == 7
    assert stats(st)["flush_retries"] == 2
    assert tree_stat(st, "fastfails") == 2
    assert M.check(st, p, [(7, 1)]) == []


def singles(n, cpu=0, pages=1):
    """n allocations then n frees of `pages` pages, on one CPU."""
    return [A(cpu, pages)] * n


def test_fixed_depot_overflows_into_the_tree():
    p = Params(ncpus=1, mag_size=2, variant="fixed", max_live=128)
    st = compose.private(M, p)
    pfns = replay(st, singles(70))
    replay(st, [F(0, pfn, 1) for pfn in pfns])
    # 2 + 2 fill loaded and prev; each 2 more push a magazine: the 32nd
    # at free 67; at free 69 the depot is full and the loaded magazine's two
    # IOVAs go back to the tree
    s = stats(st)
    assert s["depot_pushes"] == 32
    assert tree_stat(st, "frees") == 2
    assert M.footprint(st, p)["depot"] == 32 * (8 + 2 * 8)
    assert M.check(st, p, []) == []
    assert replay(st, [(R.OP_FLUSH, 0, 0, 0)]) == [68]
    assert M.check(st, p, []) == []
    assert st.tree.meta[rbtree.M_NODES] == 1


def test_fixed_depot_footprint_of_the_2020_thread():
    """32 magazines x 6 classes x (1 + 128) words x 8 bytes = 198144 bytes,
    Cong Wang's figure for a full 2016-era depot."""
    p = Params(ncpus=1, mag_size=128, variant="fixed", max_live=6 * 4225)
    st = compose.private(M, p)
    # per class: 128 + 128 fill loaded and prev, then 32 magazines of 128
    # reach the depot by the 256 + 31 * 128 + 1 = 4225th free
    rows = []
    for c in range(6):
        rows += singles(4225, pages=1 << c)
    pfns = replay(st, rows)
    assert -1 not in pfns
    replay(st, [F(0, pfn, n) for pfn, (_, _, n, _) in zip(pfns, rows)])
    fp = M.footprint(st, p)
    assert fp["depot"] == 32 * 6 * 129 * 8 == 198144
    assert stats(st)["depot_pushes"] == 32 * 6
    assert M.check(st, p, []) == []


def test_list_depot_trim():
    p = Params(ncpus=2, mag_size=2, variant="list", max_live=64)
    # 40 single pages from the top down, then all freed on CPU 0: 2 + 2 fill
    # loaded and prev, each 2 more push a magazine: 18 in the depot
    rows = singles(40) + [F(0, 0xFFFFF - i, 1) for i in range(40)]
    # each run of the work frees one magazine while more than 2 (the CPUs)
    # remain; then it finds nothing to do and stops until the next push
    rows += [(R.OP_TRIM, 0, 2, 0)] * 19
    st, rc, got = run_both(p, rows)
    assert got[:40] == [0xFFFFF - i for i in range(40)]
    assert stats(st)["depot_pushes"] == 18
    assert got[-19:] == [1] * 16 + [0, 0, 0]
    assert stats(st)["trims"] == 16
    assert M.footprint(st, p)["depot"] == 2 * (8 + 2 * 8)
    assert M.check(st, p, []) == []


def test_prealloc_recycles_magazines():
    p = Params(ncpus=1, mag_size=2, variant="prealloc", max_live=256)
    st = compose.private(M, p)
    start = M.footprint(st, p)
    assert start["magazines"] == (2 * 6 + 32 * 6) * 24
    pfns = replay(st, singles(100))
    replay(st, [F(0, pfn, 1) for pfn in pfns])
    pfns = replay(st, singles(100))
    replay(st, [F(0, pfn, 1) for pfn in pfns[::-1]])
    fp = M.footprint(st, p)
    # the overflow path swaps a fresh magazine for the full one it frees:
    # never more than one above the preallocated set
    assert fp["magazines"] == start["magazines"]
    assert fp["magazines_peak"] <= start["magazines"] + 24
    assert M.check(st, p, []) == []


LIMITS = [0xFFFFF, 0xFFFFF, 0x3FFF, 0x7FF, 0xFF]


@pytest.mark.parametrize("depot", M.DEPOTS)
@settings(deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.function_scoped_fixture])
@given(seed=hs.integers(0, 2**32 - 1), n=hs.integers(1, 600),
       ncpus=hs.integers(1, 4), mag_size=hs.integers(1, 6),
       target=hs.integers(1, 300),
       limits=hs.lists(hs.sampled_from(LIMITS), min_size=1, max_size=3))
def test_matches_reference(depot, seed, n, ncpus, mag_size, target, limits):
    rnd = random.Random(seed)
    p = Params(ncpus=ncpus, mag_size=mag_size, variant=depot, max_live=n + 1)
    ops, res, live, rc = R.rcache_trace(rnd, n, ncpus, mag_size, depot, limits,
                                        target=target, p_trim=0.02,
                                        p_flush=0.005, p_switch=0.2, period=151)
    st = compose.private(M, p)
    got = replay(st, ops)
    bad = [i for i, (g, w) in enumerate(zip(got, res)) if g != w]
    assert not bad, "row %d %s: allocator %d, reference %d" % (
        bad[0], ops[bad[0]], got[bad[0]], res[bad[0]])
    for (op, cpu, size, limit), pfn in zip(ops, got):
        if op == R.OP_ALLOC and pfn != -1:
            rounded = size if size >= 32 else 1 << (size - 1).bit_length()
            align = 1 << (rounded - 1).bit_length()
            assert pfn % align == 0 and pfn >= 1 and pfn + rounded - 1 <= limit
    assert M.check(st, p, live) == []
    assert sorted(M.cached(st, p)[1].items()) == sorted(rc.cached())
    mb = 8 + 8 * mag_size
    assert M.footprint(st, p)["magazines_peak"] == rc.mags_peak * mb
    s = stats(st)
    assert s["depot_pushes"] == rc.pushes and s["depot_pops"] == rc.pops
    assert s["trims"] == rc.trims and s["flush_retries"] == rc.flushes
    # every cache back to the tree, then every range freed: a fresh tree
    replay(st, [(R.OP_FLUSH, 0, 0, 0)])
    assert M.check(st, p, live) == []
    assert rbtree.check(st.tree, p, [(pfn, 1 << (s - 1).bit_length() if s < 32 else s)
                                     for pfn, s in live]) == []
    rnd.shuffle(live)
    replay(st, [F(rnd.randrange(ncpus), pfn, size) for pfn, size in live])
    replay(st, [(R.OP_FLUSH, 0, 0, 0)])
    assert M.check(st, p, []) == []
    assert st.tree.meta[rbtree.M_NODES] == 1
    assert tree_stat(st, "bad_frees") == 0


def test_long_trace():
    """100k requests on four CPUs, a few thousand outstanding, the 6.7+
    list depot trimmed now and then."""
    rnd = random.Random(7)
    limits = [0xFFFFF] * 3 + [0x3FFFF]
    ops, res, live, rc = R.rcache_trace(rnd, 100_000, 4, 16, "list", limits,
                                        target=3000, p_trim=0.002,
                                        p_flush=0.0001, period=5000)
    p = Params(ncpus=4, mag_size=16, variant="list", max_live=8000)
    st = compose.private(M, p)
    got = replay(st, ops)
    bad = [i for i, (g, w) in enumerate(zip(got, res)) if g != w]
    assert not bad, "row %d %s: allocator %d, reference %d" % (
        bad[0], ops[bad[0]], got[bad[0]], res[bad[0]])
    assert M.check(st, p, live) == []
    outstanding = np.cumsum([(1 if r != -1 else 0) if op[0] == R.OP_ALLOC else
                             -1 if op[0] == R.OP_FREE else 0
                             for op, r in zip(ops, res)])
    assert len(ops) >= 100_000 and outstanding.max() >= 2000
    s = stats(st)
    assert s["depot_pushes"] > 100 and s["trims"] > 10
    assert sum(s["hits_%d" % n] for n in M.CLASS_PAGES) > 10_000


# ------------------------------------------------- processes on real locks


def shared_state(mod, p, lock_kind):
    """mod's State in one anonymous shared mapping, inherited by fork."""
    specs = compose.specs(mod, p, "") + [("ctl", np.int64, (16,))]
    sizes = [np.dtype(dt).itemsize * int(np.prod(shape)) for _, dt, shape in specs]
    offs = np.cumsum([0] + [(s + 127) // 128 * 128 for s in sizes])
    buf = mmap.mmap(-1, int(offs[-1]))
    views = {name: np.ndarray(shape, dtype=dt, buffer=buf, offset=int(o))
             for (name, dt, shape), o in zip(specs, offs)}
    ctl = views.pop("ctl")
    ctl[:] = 0
    return compose.bind(mod, p, views, "", ctl, lock_kind), buf, ctl


@njit
def _no_trim(st, w, ncpus):
    return 0


@njit
def hammer(alloc, free, trim, st, w, cpu, n, held, limit, ncpus, seed):
    """n random requests as worker w on CPU cpu, holding at most
    len(held) ranges; returns how many it holds at the end."""
    np.random.seed(seed)
    nheld = 0
    for i in range(n):
        if w == 0 and i % 256 == 0:
            trim(st, w, ncpus)
        if nheld > 0 and (nheld == held.shape[0] or np.random.random() < 0.5):
            k = np.random.randint(nheld)
            free(st, w, cpu, held[k, 0], held[k, 1])
            nheld -= 1
            held[k, 0] = held[nheld, 0]
            held[k, 1] = held[nheld, 1]
        else:
            pages = np.random.randint(1, 65)
            pfn = alloc(st, w, cpu, pages, limit)
            if pfn >= 0:
                held[nheld, 0] = pfn
                held[nheld, 1] = pages
                nheld += 1
    return nheld


def run_processes(mod, p, lock_kind, n, trim, limit):
    st, buf, ctl = shared_state(mod, p, lock_kind)
    hbuf = mmap.mmap(-1, p.nworkers * (1 + 2 * 128) * 8)
    held = np.ndarray((p.nworkers, 1 + 2 * 128), dtype=np.int64, buffer=hbuf)
    scratch = np.zeros((128, 2), dtype=np.int64)
    hammer(mod.alloc, mod.free, trim, st, 0, 0, 0, scratch, limit, p.ncpus, 0)
    pids = []
    for w in range(p.nworkers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                mine = held[w, 1:].reshape(128, 2)
                held[w, 0] = hammer(mod.alloc, mod.free, trim, st, w, w % p.ncpus,
                                    n, mine, limit, p.ncpus, 1000 + w)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    deadline = time.time() + 120
    codes = {}
    while len(codes) < len(pids) and time.time() < deadline:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = status
        time.sleep(0.01)
    if len(codes) < len(pids):
        ctl[lockmod.CTL_ABORT] = 1
        for pid in pids:
            if pid not in codes:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        pytest.fail("workers did not finish: a lock or the magazine pool hangs")
    assert all(c == 0 for c in codes.values())
    live = []
    for w in range(p.nworkers):
        k = int(held[w, 0])
        live += [tuple(r) for r in held[w, 1:].reshape(128, 2)[:k].tolist()]
    return st, live


@pytest.mark.parametrize("lock_kind", ["ttas", "mcs", "qspinlock"])
def test_processes_on_shared_state(lock_kind):
    """Three processes, one CPU each, on shared state in a space tight
    enough that the tree fails and the caches are flushed: no range handed
    out twice, the bookkeeping adds up, and freeing everything leaves a
    fresh tree."""
    p = Params(nworkers=3, ncpus=3, mag_size=8, variant="list", max_live=3 * 128)
    st, live = run_processes(M, p, lock_kind, 20_000, M.trim, 0x1FFF)
    assert M.check(st, p, live) == []
    ops = [F(0, pfn, pages) for pfn, pages in live] + [(R.OP_FLUSH, 0, 0, 0)]
    replay(st, ops)
    assert M.check(st, p, []) == []
    assert st.tree.meta[rbtree.M_NODES] == 1
    s = stats(st)
    assert s["flush_retries"] > 0 and s["depot_pushes"] > 0


def test_rbtree_processes_on_shared_state():
    p = Params(nworkers=3, ncpus=3, max_live=3 * 128)
    st, live = run_processes(rbtree, p, "ticket", 20_000, _no_trim, 0x3FFF)
    assert rbtree.check(st, p, live) == []
