"""First fit over a byte per page, lowest address first, under one lock: the
smallest allocator that keeps the contract of allocators/__init__.py.  The
tests load it from outside the package ($IOMMU_STRESS_ALLOCATORS) to show
that a design of one's own needs no edit anywhere else."""
from collections import namedtuple

import numpy as np

from allocators import STAT_LINE
from hwmodel.cpu import hot
from hwmodel.locks import acquire, release

NAME = "firstfit"
LOCK_CLASSES = ("firstfit",)
STATS = ("allocs", "frees")

State = namedtuple("State", ["used", "stats", "lk"])


def layout(p):
    return [("used", np.int64, (p.pages,)), ("stats", np.int64, (p.nworkers * STAT_LINE,))]


def locks(p):
    return [0]


def make(views, lk):
    return State(views["used"], views["stats"], lk)


def init(st, p):
    st.used[:] = 0
    st.used[0] = 1          # pfn 0 is never handed out, as in the kernel's allocators
    st.stats[:] = 0


@hot
def alloc(st, w, cpu, pages, limit):
    acquire(st.lk, 0, w)
    run = 0
    found = -1
    for pfn in range(min(limit + 1, st.used.shape[0])):
        run = run + 1 if st.used[pfn] == 0 else 0
        if run == pages:
            found = pfn - pages + 1
            break
    if found >= 0:
        st.used[found:found + pages] = 1
        st.stats[w * STAT_LINE] += 1
    release(st.lk, 0, w)
    return found


@hot
def free(st, w, cpu, pfn, pages):
    acquire(st.lk, 0, w)
    st.used[pfn:pfn + pages] = 0
    st.stats[w * STAT_LINE + 1] += 1
    release(st.lk, 0, w)


def check(st, p, live):
    want = np.zeros(p.pages, dtype=np.int64)
    want[0] = 1
    for pfn, pages in live:
        want[pfn:pfn + pages] = 1
    bad = np.flatnonzero(want != st.used)
    return ["firstfit: %d pages differ, first %d" % (len(bad), bad[0])] if len(bad) else []


def footprint(st, p):
    return {"start": st.used.nbytes, "peak": st.used.nbytes}
