"""The IOMMU model: the IOTLB (fills, hits, stale translations, the two kinds
of invalidation, set-associativity) and the invalidation unit (one serial
resource with a latency that the submitter waits for).

Every function is called directly on arrays built here.  Times are checked
by their lower bounds only: a loaded machine can make anything slower, never
faster.
"""
import mmap
import os
import sys
import time
import traceback

import numpy as np
import pytest
from numba import njit

from hwmodel import iommu
from hwmodel.cpu import calibrate, cycles
from hwmodel.iommu import (LINE, U_BUSY_UNTIL, S_FAULTS, S_FILLS, S_HITS, S_INV, S_INV_ENTRIES,
                           S_INV_QUEUE, S_INV_WAIT)

PAGES = 1024
NDOM = 2


# --- helpers shared with test_flush ----------------------------------------

@njit(cache=True)
def now():
    """The cycle counter, from Python."""
    return cycles()


def shared_arrays(specs):
    """Zeroed named arrays in one anonymous shared mapping, so that a forked
    process works on the same memory as its parent."""
    offsets = []
    off = 0
    for name, dtype, shape in specs:
        count = int(np.prod(shape))
        offsets.append((name, dtype, shape, count, off))
        off += -(-count * np.dtype(dtype).itemsize // 128) * 128
    mm = mmap.mmap(-1, max(off, mmap.PAGESIZE))
    return {name: np.frombuffer(mm, dtype=dtype, count=count, offset=o).reshape(shape)
            for name, dtype, shape, count, o in offsets}


def fork(fn):
    """Run fn() in a forked child; returns its pid.  The child never returns
    into the test runner."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return pid


def wait_child(pid, timeout=60.0):
    """The child's exit code; it is killed if it outlives `timeout`."""
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("child %d did not finish within %.0f s" % (pid, timeout))
        time.sleep(0.002)


def wait_until(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached within %.0f s" % timeout)
        time.sleep(0.0005)


# --- this file's helpers -----------------------------------------------------

@pytest.fixture(scope="module")
def cpn():
    """Cycles per ns."""
    return calibrate()


def make_io(tlb_entries=64, ways=4, inv_page=0, inv_domain=0, nworkers=4):
    io = iommu.make(shared_arrays(iommu.layout(NDOM, PAGES, tlb_entries, ways, nworkers)))
    iommu.init(io, NDOM, PAGES, tlb_entries, ways, inv_page, inv_domain, 0)
    return io


def stat(io, w, k):
    return int(io.stats[w * LINE + k])


def tlb_entries(io, dom):
    """{iova pfn: physical pfn} of the domain's valid IOTLB entries."""
    n = int(io.cfg[iommu.I_SETS] * io.cfg[iommu.I_WAYS])
    out = {}
    for e in io.tlb[dom * n:(dom + 1) * n]:
        if e:
            out[(int(e) >> iommu.TAG_SHIFT) - 1] = int(e) & iommu.PHYS_MASK
    return out


def ms(cpn, x):
    return int(x * 1e6 * cpn)


# --- the IOTLB -----------------------------------------------------------------

def test_translate_walks_fills_then_hits():
    io = make_io()
    iommu.write_ptes(io, 0, 10, 3, 500)
    assert iommu.probe(io, 0, 10) == -1                  # nothing cached yet
    assert iommu.translate(io, 0, 0, 10) == 500          # a walk
    assert (stat(io, 0, S_FILLS), stat(io, 0, S_HITS)) == (1, 0)
    assert iommu.probe(io, 0, 10) == 500                 # ... that filled the IOTLB
    assert iommu.translate(io, 0, 0, 10) == 500          # a hit
    assert (stat(io, 0, S_FILLS), stat(io, 0, S_HITS)) == (1, 1)
    assert iommu.translate(io, 1, 0, 12) == 502          # statistics per worker
    assert (stat(io, 1, S_FILLS), stat(io, 0, S_FILLS)) == (1, 1)
    assert tlb_entries(io, 0) == {10: 500, 12: 502}
    assert tlb_entries(io, 1) == {}
    assert iommu.stale_entries(io, 0) == []


def test_translate_faults_without_a_pte():
    io = make_io()
    iommu.write_ptes(io, 0, 10, 1, 500)
    assert iommu.translate(io, 0, 0, 11) == -1
    assert iommu.translate(io, 0, 1, 10) == -1           # another domain's table
    assert stat(io, 0, S_FAULTS) == 2
    assert stat(io, 0, S_FILLS) == 0
    assert not io.tlb.any()                              # a fault fills nothing


def test_a_hit_outlives_the_pte_until_an_invalidation():
    io = make_io()
    iommu.write_ptes(io, 0, 10, 2, 500)
    iommu.translate(io, 0, 0, 10)
    iommu.translate(io, 0, 0, 11)
    iommu.clear_ptes(io, 0, 10, 2)
    assert iommu.pte(io, 0, 10) == 0
    # the device still reaches the old page: a stale translation
    assert iommu.translate(io, 0, 0, 10) == 500
    assert stat(io, 0, S_HITS) == 1
    assert sorted(iommu.stale_entries(io, 0)) == [10, 11]
    # a new mapping of the same IOVA does not replace the cached one either
    iommu.write_ptes(io, 0, 11, 1, 900)
    assert iommu.translate(io, 0, 0, 11) == 501
    assert sorted(iommu.stale_entries(io, 0)) == [10, 11]
    end = iommu.invalidate(io, 0, 0, 10, 2)
    assert end > 0
    assert iommu.probe(io, 0, 10) == -1 and iommu.probe(io, 0, 11) == -1
    assert iommu.translate(io, 0, 0, 10) == -1           # now a fault
    assert iommu.translate(io, 0, 0, 11) == 900          # now the new mapping
    assert iommu.stale_entries(io, 0) == []


def test_page_selective_invalidation_removes_exactly_those_pages():
    io = make_io()
    for dom in (0, 1):
        iommu.write_ptes(io, dom, 10, 6, 100 * (dom + 1))
        for pfn in range(10, 16):
            iommu.translate(io, 0, dom, pfn)
    assert len(tlb_entries(io, 0)) == len(tlb_entries(io, 1)) == 6
    other = io.tlb.copy()
    iommu.invalidate(io, 2, 0, 11, 3)
    assert tlb_entries(io, 0) == {10: 100, 14: 104, 15: 105}
    assert tlb_entries(io, 1) == {pfn: 200 + pfn - 10 for pfn in range(10, 16)}
    n = io.tlb.size // NDOM
    assert (io.tlb[n:] == other[n:]).all()               # domain 1 untouched
    assert stat(io, 2, S_INV) == 1
    assert stat(io, 2, S_INV_ENTRIES) == 3


def test_domain_invalidation_removes_that_domain_only():
    io = make_io()
    for dom in (0, 1):
        iommu.write_ptes(io, dom, 0, 40, 1000 * (dom + 1))
        for pfn in range(0, 40, 3):
            iommu.translate(io, 0, dom, pfn)
    before0 = tlb_entries(io, 0)
    n1 = len(tlb_entries(io, 1))
    assert n1 > 0
    iommu.invalidate(io, 1, 1, -1, 0)
    assert tlb_entries(io, 1) == {}
    assert tlb_entries(io, 0) == before0
    assert stat(io, 1, S_INV_ENTRIES) == n1


def test_more_pages_than_ways_in_one_set_evict():
    ways, entries = 4, 64
    io = make_io(tlb_entries=entries, ways=ways)
    sets = entries // ways
    pages = [3 + k * sets for k in range(ways + 1)]      # all in set 3
    for k, pfn in enumerate(pages):
        iommu.write_ptes(io, 0, pfn, 1, 700 + k)
        assert iommu.translate(io, 0, 0, pfn) == 700 + k
        assert iommu.probe(io, 0, pfn) == 700 + k        # the newest is always cached
    cached = tlb_entries(io, 0)
    assert 1 <= len(cached) <= ways
    assert set(cached) <= set(pages)
    assert sum(iommu.probe(io, 0, p) >= 0 for p in pages) <= ways
    # the entries sit in set 3's ways and nowhere else
    row = io.tlb[:entries].reshape(sets, ways)
    assert not np.delete(row, 3, axis=0).any()
    # capacity: four times as many pages as entries
    iommu.invalidate(io, 0, 0, -1, 0)
    iommu.write_ptes(io, 0, 0, 4 * entries, 5000)
    for pfn in range(4 * entries):
        assert iommu.translate(io, 0, 0, pfn) == 5000 + pfn
    cached = tlb_entries(io, 0)
    assert 0 < len(cached) <= entries
    assert all(phys == 5000 + pfn for pfn, phys in cached.items())
    assert all(pfn % sets == s for s in range(sets)
               for pfn in (int(e >> iommu.TAG_SHIFT) - 1 for e in row[s] if e))


def test_a_set_fills_its_empty_ways_before_evicting():
    ways, entries = 8, 64
    io = make_io(tlb_entries=entries, ways=ways)
    sets = entries // ways
    pages = [5 + k * sets for k in range(ways)]          # exactly one set's worth
    iommu.write_ptes(io, 0, 0, PAGES, 0)
    for _ in range(10):
        iommu.invalidate(io, 0, 0, -1, 0)
        for pfn in pages:
            iommu.translate(io, 0, 0, pfn)
        assert sorted(tlb_entries(io, 0)) == pages


# --- the invalidation unit ---------------------------------------------------

def test_a_flush_makes_its_submitter_wait_its_latency(cpn):
    lat_page, lat_dom = ms(cpn, 2), ms(cpn, 3)
    io = make_io(inv_page=lat_page, inv_domain=lat_dom)
    iommu.invalidate(io, 0, 0, 0, 1)                     # compiled outside the timing
    io.stats[:] = 0
    c0 = now()
    t0 = time.perf_counter()
    end = iommu.invalidate(io, 0, 0, 5, 1)
    t1 = time.perf_counter()
    c1 = now()
    assert end - c0 >= lat_page
    assert c1 >= end                                     # returned after completion
    assert t1 - t0 >= 0.9 * 2e-3                         # 10% for the calibration
    assert int(io.unit[U_BUSY_UNTIL]) == end
    # an idle unit: the wait is exactly the latency, none of it queueing
    assert stat(io, 0, S_INV_WAIT) == lat_page
    assert stat(io, 0, S_INV_QUEUE) == 0
    c0 = now()
    t0 = time.perf_counter()
    end = iommu.invalidate(io, 0, 0, -1, 0)              # domain-wide: its own latency
    t1 = time.perf_counter()
    assert end - c0 >= lat_dom
    assert t1 - t0 >= 0.9 * 3e-3
    assert stat(io, 0, S_INV_WAIT) == lat_page + lat_dom
    assert stat(io, 0, S_INV) == 2


def test_a_second_flush_queues_behind_the_first(cpn):
    lat = ms(cpn, 2)
    io = make_io(inv_page=lat)
    # CPU 0's flush, accepted by the unit (CPU 0 is polling elsewhere), long
    # enough that CPU 1's submission certainly finds the unit busy
    first = 25 * lat
    t_a, end_a = iommu._occupy_unit(io, 0, first)
    end_b = iommu.invalidate(io, 1, 0, 5, 1)
    assert end_a - t_a == first
    assert end_b == end_a + lat                          # starts when the first completes
    assert now() >= end_b
    queued, waited = stat(io, 1, S_INV_QUEUE), stat(io, 1, S_INV_WAIT)
    assert waited - queued == lat                        # the rest of the wait is queueing
    assert 0 < queued <= first
    assert stat(io, 0, S_INV_QUEUE) == 0
    assert int(io.unit[U_BUSY_UNTIL]) == end_b


def test_the_unit_is_serial_across_processes(cpn):
    lat = ms(cpn, 2)
    nproc, each = 2, 4
    io = make_io(inv_page=lat, inv_domain=lat)
    out = shared_arrays([("ends", np.int64, (nproc * each,)), ("go", np.int64, (1,))])
    iommu.invalidate(io, 0, 0, 0, 1)                     # compiled before forking
    io.stats[:] = 0

    def child(w):
        while out["go"][0] == 0:
            time.sleep(0)
        for k in range(each):
            pfn = -1 if k % 2 else 7 + w                 # both kinds share the unit
            out["ends"][w * each + k] = iommu.invalidate(io, w, w % NDOM, pfn, 1)

    pids = [fork(lambda w=w: child(w)) for w in range(nproc)]
    out["go"][0] = 1
    assert [wait_child(p) for p in pids] == [0] * nproc
    ends = np.sort(out["ends"])
    assert (ends > 0).all()
    assert (np.diff(ends) >= lat).all()                  # never two at once
    assert sum(stat(io, w, S_INV) for w in range(nproc)) == nproc * each
    own = sum(stat(io, w, S_INV_WAIT) - stat(io, w, S_INV_QUEUE) for w in range(nproc))
    assert own == nproc * each * lat


# --- page walks and 2 MiB mappings --------------------------------------------

HP = iommu.HUGE_PAGES


def make_huge_io(walk=0, huge=True, tlb_entries=64, ways=4):
    io = iommu.make(shared_arrays(iommu.layout(NDOM, 4 * HP, tlb_entries, ways, 2)))
    iommu.init(io, NDOM, 4 * HP, tlb_entries, ways, 0, 0, 0, 0, walk, huge)
    return io


def test_every_miss_costs_one_walk_and_a_hit_none(cpn):
    io = make_huge_io(walk=ms(cpn, 0.002), huge=False)     # 2 µs a walk
    walk = int(io.cfg[iommu.I_WALK])
    iommu.write_ptes(io, 0, 10, 3, 500)
    t0 = now()
    for pfn in (10, 11, 10, 12, 11, 13, 10):              # misses: 10, 11, 12, 13 (a fault)
        iommu.translate(io, 1, 0, pfn)
    took = now() - t0
    assert (stat(io, 1, S_FILLS), stat(io, 1, S_HITS), stat(io, 1, S_FAULTS)) == (3, 3, 1)
    assert stat(io, 1, iommu.S_WALK) == 4 * walk          # fills and faults walk, hits do not
    assert took >= 4 * walk
    assert stat(io, 0, iommu.S_WALK) == 0


def test_a_map_takes_2mib_leaves_where_iova_and_phys_are_aligned():
    io = make_huge_io()
    pd0 = iommu.pd_entries(4 * HP)
    # pages up to the first 2 MiB boundary, two leaves, a tail of 3 pages
    iommu.write_ptes(io, 0, HP - 5, 2 * HP + 8, 7 * HP - 5)
    assert np.flatnonzero(io.pt[:4 * HP]).tolist() == list(range(HP - 5, HP)) + \
        list(range(3 * HP, 3 * HP + 3))
    assert np.flatnonzero(io.pd[:pd0]).tolist() == [1, 2]
    assert io.pd[1] & iommu.PTE_LARGE_PAGE and io.pd[1] >> iommu.PAGE_SHIFT == 7 * HP
    # an IOVA and a physical address that differ modulo 2 MiB: pages only
    iommu.write_ptes(io, 1, 0, HP, 3)
    assert np.count_nonzero(io.pd[pd0:]) == 0 and np.count_nonzero(io.pt[4 * HP:]) == HP
    # under 512 pages, or without --huge: pages only
    iommu.clear_ptes(io, 1, 0, HP)
    assert np.count_nonzero(io.pt[4 * HP:]) == 0
    small = make_huge_io(huge=False)
    iommu.write_ptes(small, 0, 0, HP, 0)
    assert np.count_nonzero(small.pd) == 0 and np.count_nonzero(small.pt) == HP
    # the unmap clears what the map wrote, leaves of both sizes
    iommu.clear_ptes(io, 0, HP - 5, 2 * HP + 8)
    assert np.count_nonzero(io.pt) == np.count_nonzero(io.pd) == 0


def test_a_2mib_entry_serves_its_whole_run_with_one_walk():
    io = make_huge_io(walk=7)
    iommu.write_ptes(io, 0, HP, HP, 3 * HP)
    assert iommu.probe(io, 0, HP + 9) == -1
    assert iommu.translate(io, 0, 0, HP + 9) == 3 * HP + 9     # the walk ends at the leaf
    for pfn in (HP, HP + 1, 2 * HP - 1):
        assert iommu.translate(io, 0, 0, pfn) == 3 * HP + pfn - HP
        assert iommu.probe(io, 0, pfn) == 3 * HP + pfn - HP
    assert (stat(io, 0, S_FILLS), stat(io, 0, S_HITS)) == (1, 3)
    assert (stat(io, 0, iommu.S_HUGE_FILLS), stat(io, 0, iommu.S_HUGE_HITS)) == (1, 3)
    assert stat(io, 0, iommu.S_WALK) == 7
    assert iommu.probe(io, 0, 2 * HP) == -1 and iommu.probe(io, 1, HP) == -1
    assert iommu.translate(io, 0, 0, 2 * HP) == -1             # past the run: a fault
    assert iommu.stale_entries(io, 0) == []


def test_a_range_invalidation_drops_entries_of_both_sizes():
    io = make_huge_io()
    iommu.write_ptes(io, 0, HP, HP, 3 * HP)          # a 2 MiB leaf
    iommu.write_ptes(io, 0, 2 * HP, 4, 100)          # pages just past it
    iommu.write_ptes(io, 1, HP, HP, 3 * HP)          # the same run in another domain
    for dom, pfn in ((0, HP + 3), (0, 2 * HP), (0, 2 * HP + 1), (0, 2 * HP + 3), (1, HP)):
        iommu.translate(io, 0, dom, pfn)
    # a range that ends one page into the run drops its 2 MiB entry ...
    iommu.clear_ptes(io, 0, 2 * HP, 2)
    assert sorted(iommu.stale_entries(io, 0)) == [2 * HP, 2 * HP + 1]
    iommu.invalidate(io, 0, 0, HP - 4, HP + 6)
    assert stat(io, 0, S_INV_ENTRIES) == 3                     # the 2 MiB one and two pages
    assert iommu.probe(io, 0, HP + 3) == -1 and iommu.probe(io, 0, 2 * HP) == -1
    # ... and no entry outside it, nor another domain's
    assert iommu.probe(io, 0, 2 * HP + 3) == 103
    assert iommu.probe(io, 1, HP + 5) == 3 * HP + 5
    assert iommu.stale_entries(io, 0) == []


def test_the_stale_check_catches_a_stale_2mib_entry():
    io = make_huge_io()
    iommu.write_ptes(io, 0, 2 * HP, HP, 5 * HP)
    iommu.translate(io, 0, 0, 2 * HP + 100)
    iommu.clear_ptes(io, 0, 2 * HP, HP)
    # unmapped, not yet invalidated: the device can still use it
    assert iommu.probe(io, 0, 2 * HP + 7) == 5 * HP + 7
    assert iommu.stale_entries(io, 0) == [2 * HP]
    # remapped elsewhere: still stale
    iommu.write_ptes(io, 0, 2 * HP, HP, 6 * HP)
    assert iommu.stale_entries(io, 0) == [2 * HP]
    assert iommu.translate(io, 0, 0, 2 * HP + 1) == 5 * HP + 1     # the stale translation
    iommu.invalidate(io, 0, 0, 2 * HP + 511, 1)                  # one page of the run
    assert iommu.stale_entries(io, 0) == []
    assert iommu.translate(io, 0, 0, 2 * HP + 1) == 6 * HP + 1
    # a domain-wide invalidation drops 2 MiB entries too
    iommu.drop_domain(io, 0)
    assert iommu.probe(io, 0, 2 * HP + 1) == -1
