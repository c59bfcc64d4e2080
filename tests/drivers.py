"""Single-threaded request drivers for the allocator tests: one request per
row of `ops` (the rows of tests/ref_iova.py), the result of row i in out[i].
The harness's own replay (harness/replay.py) reads traces, which have no
verbs for the magazines' trim and flush; these rows do."""
import numpy as np
from numba import njit

from allocators import lockfree, magazines, rbtree
from tests.ref_iova import OP_ALLOC, OP_FREE, OP_TRIM


# the first row, as a value numba types plainly: a 0 written in the call
# would be compiled for on its own, _drive_cache's second call for the int
FIRST = np.int64(0)


@njit
def _drive(alloc, free, st, w, ops, out, i):
    """Allocations and frees from row i on; the index of the first row
    that is neither (or of the end)."""
    while i < ops.shape[0]:
        op = ops[i, 0]
        if op == OP_ALLOC:
            out[i] = alloc(st, w, ops[i, 1], ops[i, 2], ops[i, 3])
        elif op == OP_FREE:
            free(st, w, ops[i, 1], ops[i, 2], ops[i, 3])
            out[i] = 0
        else:
            return i
        i += 1
    return i


# one cached entry each: see harness/entries.py on numba's cache
@njit(cache=True)
def drive_rbtree(st, w, ops, out):
    _drive(rbtree.alloc, rbtree.free, st, w, ops, out, FIRST)


@njit
def _drive_cache(alloc, free, trim, flush_all, st, w, ops, out):
    """_drive, with the rows for a cache's trim and flush too."""
    i = _drive(alloc, free, st, w, ops, out, FIRST)
    while i < ops.shape[0]:
        if ops[i, 0] == OP_TRIM:
            out[i] = trim(st, w, ops[i, 2])
        else:
            out[i] = flush_all(st, w)
        i = _drive(alloc, free, st, w, ops, out, i + 1)


@njit(cache=True)
def drive_magazines(st, w, ops, out):
    _drive_cache(magazines.alloc, magazines.free, magazines.trim, magazines.flush_all,
                 st, w, ops, out)


@njit(cache=True)
def drive_lockfree(st, w, ops, out):
    _drive_cache(lockfree.alloc, lockfree.free, lockfree.trim, lockfree.flush_all,
                 st, w, ops, out)
