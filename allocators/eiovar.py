"""EiovaR: a cache of freed IOVA ranges in front of the red-black tree.

Malka, Amit and Tsafrir, "Efficient Intra-Operating System Protection
Against Harmful DMAs", USENIX FAST 2015.  The paper found that with
strict invalidation the cost of Linux's intra-OS protection was not only
the IOTLB flush but the IOVA allocator: the red-black tree's walk, which a
NIC's long-lived receive-ring ranges, interleaved with short-lived transmit
ones, made linear in the number of ranges allocated.  EiovaR ("efficient
IOVA allocator") keeps the tree and puts a free list in front of it:

* freeing a range does not take it out of the tree; it goes onto the free
  list of its size, and stays allocated as far as the tree knows, so the
  tree never hands it out again while it is cached;
* allocating first looks in the free list of the requested size and hands
  back a cached range; only when that list has nothing usable does the
  request go to the tree (mainline `alloc_iova`, unchanged).

A driver asks for few distinct sizes (a ring's buffers are all alike), so
nearly every request is served in constant time once the rings have cycled
once.

What the paper gives: the cache of freed ranges, kept per size, looked
in before the tree, the ranges staying allocated in the tree while
cached.  What we chose where the paper's text, as we read it, does not
settle a detail (the choice a kernel patch to iova.c of its time would
make, named here as ours):

* Keyed by the exact size in pages (the paper's lists hold one size
  each; the 3.x intel-iommu asked `alloc_iova` for the page count itself,
  with no rounding to a power of two, which came with the 2016 rcache), so
  a cached range is reused only by a request of the same size, and its
  alignment, that size's, is still right.  Ours: the lists form a fixed
  array for sizes 1 to EIOVAR_MAX_PAGES (64 pages, 256 KiB); larger ranges
  are not cached and are freed into the tree as mainline frees them.
* One lock: the lists live in the domain beside the tree and are guarded
  by the tree's own `iova_rbtree_lock`; the per-CPU magazines of Peleg et
  al. (USENIX ATC 2015) are what took such a cache off the global lock.
  So a hit still takes the global lock: EiovaR shortens the walk, not the
  lock's queue.
* LIFO (ours): each list is a stack; a free pushes, an allocation takes
  the most recently freed range first, whose page-table pages and IOTLB
  lines are the likeliest still cached.
* The limit (ours): a device has one DMA mask, but a domain may be asked
  with two (intel-iommu tried 32 bits first).  A cached range is taken
  only if it ends at or below the request's limit: the list is scanned
  from its head and the first range that fits is unlinked (`limit_skips`
  counts the ranges passed over); if none fits, the tree serves the
  request.  An answer is therefore never above the limit, as mainline's
  never is.
* Unbounded lists (ours): what bounds them is the workload, since a
  size's ranges, live and cached, never exceed the most of that size ever
  live at once (with one limit per domain, a size's list is empty
  whenever the tree is asked for that size).  When the tree fails (the
  space is full, or its node pool is), every list is emptied into the
  tree, sizes in increasing order, each list from its head, and the tree
  is tried once more, as alloc_iova_fast does with the magazines.
* The range's node gains one link (`struct iova` 40 -> 48 bytes, still
  one 64-byte slab object) and the domain an array of list heads.  Here
  the links are an array beside the node pool, one word per node, so that
  the tree's node layout is mainline's, word for word.

Where its answers differ from mainline `alloc_iova` / `free_iova`, request
for request (tests/ref_eiovar.py models exactly this):

1. A request of a size that has a cached range at or below its limit gets
   that range (the last freed that fits) before the tree is searched;
   mainline would walk down from its cached node and may place it
   elsewhere (above it, in a hole a free opened).
2. A cached range stays in the tree, so the tree's own answers differ
   too: the hole its free would have opened is not there, and the free
   does not move `cached_node` / `cached32_node` back up nor reset
   `max32_alloc_size` (mainline's `__cached_rbnode_delete_update` and
   `remove_iova` run only when the range really leaves the tree).
3. A request the tree cannot place is retried after the lists are emptied
   into the tree; mainline fails it.

Costs: a hit is one lock round trip, a list head load and an unlink; a
free is the `find_iova` the unmap path pays anyway (the kernel's unmap
looks the range up by its address) and a push, with no erase and no
rebalancing.  A miss is mainline's allocation plus one load.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from allocators import STAT_LINE
from allocators import rbtree
from allocators.rbtree import (ANCHOR, DOMAIN_BYTES, HI, IOVA_BYTES, LO, M_NODES,
                               M_PEAK, NIL, NW, S_BAD_FREES, S_NOMEM, _find, _remove,
                               alloc_locked)
from hwmodel.cpu import hot, inline_into_callers, out_of_line
from hwmodel.cpu import uidx as _u

NAME = "eiovar"
LOCK_CLASSES = ("rbtree",)
STATS = ("hits", "misses", "uncached_allocs", "limit_skips", "cached_frees",
         "uncached_frees", "flush_retries", "flushed")
S_HITS, S_MISSES, S_UNCACHED_ALLOCS, S_SKIPS, S_CACHED_FREES, S_UNCACHED_FREES, \
    S_FLUSH_RETRIES, S_FLUSHED = range(8)

# the largest size with a free list of its own: 64 pages (256 KiB); ours,
# the paper gives none
EIOVAR_MAX_PAGES = 64

# a node's link word: NOT_CACHED when the range is live (or the node is in
# the pool), else the next node of its list or END
NOT_CACHED = -2
END = NIL

# meta words, all under the tree lock
M_CACHED_NOW = 0        # ranges on the lists
M_CACHED_PEAK = 1

# kernel bytes: a `struct iova` gains a next pointer; the domain an array
# of list heads, one pointer per size
LINK_BYTES = 8
HEADS_BYTES = (EIOVAR_MAX_PAGES + 1) * 8

State = namedtuple("State", ["tree", "links", "heads", "meta", "stats", "lk"])


def node_capacity(p):
    """Tree nodes: the live ranges, and as many again cached.  A size's
    ranges, live and cached, never outnumber the most of that size live at
    once (one limit per domain), so twice max_live holds any mix of two
    sizes, as every workload here has, and far more in practice; a pool
    that runs dry is a tree failure (the lists are flushed and the request
    retried) and `check` reports it."""
    return rbtree.node_capacity(p, p.max_live)


def refuse(p, size):
    return rbtree.refuse(p, size)


def layout(p):
    cap = node_capacity(p)
    out = [("tree." + name, dtype, shape)
           for name, dtype, shape in rbtree.layout_nodes(p, cap)]
    out += [("links", np.int64, (cap,)),
            # heads[size] for sizes 1..EIOVAR_MAX_PAGES, on whole lines
            ("heads", np.int64, (-(-(EIOVAR_MAX_PAGES + 1) // STAT_LINE) * STAT_LINE,)),
            ("meta", np.int64, (STAT_LINE,)),
            ("stats", np.int64, (p.nworkers * STAT_LINE,))]
    return out


def locks(p):
    """One lock, the tree's: it guards the lists too."""
    return [0]


def make(views, lk):
    tree = rbtree.make({name[5:]: v for name, v in views.items()
                        if name.startswith("tree.")}, lk)
    return State(tree, views["links"], views["heads"], views["meta"], views["stats"], lk)


def init(st, p):
    """An empty domain with every list empty."""
    rbtree.init(st.tree, p)
    st.links[:] = NOT_CACHED
    st.heads[:] = END
    st.meta[:] = 0
    st.stats[:] = 0


# ------------------------------------------------------------ the lists


@hot(inline="always")
def _slot(n):
    """The link word of node n (named, as in rbtree, by its first word)."""
    return np.uint64(n) >> np.uint64(3)         # n // NW, NW = 8


@hot
def _take(st, w, size, limit):
    """With the lock held: unlink and return the first range on size's
    list that ends at or below limit, or -1."""
    nd = st.tree.nodes
    links = st.links
    heads = st.heads
    s = w * STAT_LINE
    prev = END
    n = heads[_u(size)]
    skipped = 0
    while n != END:
        if nd[_u(n + HI)] <= limit:
            nxt = links[_slot(n)]
            if prev == END:
                heads[_u(size)] = nxt
            else:
                links[_slot(prev)] = nxt
            links[_slot(n)] = NOT_CACHED
            st.meta[M_CACHED_NOW] -= 1
            if skipped:
                st.stats[_u(s + S_SKIPS)] += skipped
            return nd[_u(n + LO)]
        prev = n
        n = links[_slot(n)]
        skipped += 1
    if skipped:
        st.stats[_u(s + S_SKIPS)] += skipped
    return -1


@hot
def _flush_locked(st, w):
    """With the lock held: every cached range out of its list and out of
    the tree, sizes in increasing order, each list from its head.  Returns
    how many."""
    t = st.tree
    links = st.links
    heads = st.heads
    count = 0
    for size in range(1, EIOVAR_MAX_PAGES + 1):
        n = heads[size]
        while n != END:
            nxt = links[_slot(n)]
            links[_slot(n)] = NOT_CACHED
            _remove(t, w, n)
            count += 1
            n = nxt
        heads[size] = END
    st.meta[M_CACHED_NOW] = 0
    st.stats[w * STAT_LINE + S_FLUSHED] += count
    return count


@hot
def _from_tree(st, w, pages, limit):
    """With the lock held: mainline's allocation; if it fails with ranges
    cached, the lists emptied into the tree and one more try."""
    out_of_line()
    t = st.tree
    pfn = alloc_locked(t, w, pages, limit)
    if pfn == -1 and st.meta[M_CACHED_NOW] > 0:
        st.stats[w * STAT_LINE + S_FLUSH_RETRIES] += 1
        _flush_locked(st, w)
        pfn = alloc_locked(t, w, pages, limit)
    return pfn


@hot
def alloc(st, w, cpu, pages, limit):
    """The free list of this size, then alloc_iova(iovad, pages, limit,
    true): the first pfn of the range, or -1.  `cpu` is unused: the lists
    are the domain's."""
    inline_into_callers()
    s = w * STAT_LINE
    rbtree.lock(st.tree, w)
    pfn = -1
    if np.uint64(pages - 1) < np.uint64(EIOVAR_MAX_PAGES):     # 1 <= pages <= max
        if st.heads[_u(pages)] != END:
            pfn = _take(st, w, pages, limit)
        if pfn != -1:
            st.stats[_u(s + S_HITS)] += 1
        else:
            st.stats[_u(s + S_MISSES)] += 1
    else:
        st.stats[_u(s + S_UNCACHED_ALLOCS)] += 1
    if pfn == -1:
        pfn = _from_tree(st, w, pages, limit)
    rbtree.unlock(st.tree, w)
    return pfn


@hot
def free(st, w, cpu, pfn, pages):
    """Look the range up (find_iova) and push it on its size's list, or,
    past the largest cached size, free it into the tree.  A pfn that starts
    no live range of `pages` pages (a cached one included: a double free)
    is counted as a bad free and changes nothing."""
    inline_into_callers()
    t = st.tree
    nd = t.nodes
    rbtree.lock(t, w)
    n = _find(nd, t.meta, pfn)
    if n == NIL or n == ANCHOR or nd[_u(n + LO)] != pfn or \
            (pages > 0 and nd[_u(n + HI)] - pfn + 1 != pages) or \
            st.links[_slot(n)] != NOT_CACHED:
        t.stats[w * STAT_LINE + S_BAD_FREES] += 1
    else:
        size = nd[_u(n + HI)] - pfn + 1
        if size <= EIOVAR_MAX_PAGES:
            st.links[_slot(n)] = st.heads[_u(size)]
            st.heads[_u(size)] = n
            now = st.meta[M_CACHED_NOW] + 1
            st.meta[M_CACHED_NOW] = now
            if now > st.meta[M_CACHED_PEAK]:
                st.meta[M_CACHED_PEAK] = now
            st.stats[w * STAT_LINE + S_CACHED_FREES] += 1
        else:
            _remove(t, w, n)
            st.stats[w * STAT_LINE + S_UNCACHED_FREES] += 1
    rbtree.unlock(t, w)


@njit(cache=True)
def flush_all(st, w):
    """Every cached range back into the tree; returns how many."""
    rbtree.lock(st.tree, w)
    n = _flush_locked(st, w)
    rbtree.unlock(st.tree, w)
    return n


# ---------------------------------------------------------------- checks


def cached(st):
    """(problems, {pfn: size}): the ranges on the lists, the lists'
    bookkeeping checked on the way."""
    problems = []
    nd = st.tree.nodes.reshape(-1, NW)
    cap = nd.shape[0]
    out = {}
    seen = set()
    for size in range(1, EIOVAR_MAX_PAGES + 1):
        n = int(st.heads[size])
        k = 0
        while n != END:
            if not 0 <= n < cap * NW or n % NW or n == ANCHOR:
                problems.append("eiovar: list %d names node word %d" % (size, n))
                break
            if n in seen:
                problems.append("eiovar: node %d is on a list twice" % (n // NW))
                break
            seen.add(n)
            if nd[n // NW, rbtree.COLOR] == rbtree.UNUSED:
                problems.append("eiovar: list %d holds node %d, which is not in the tree"
                                % (size, n // NW))
            lo, hi = int(nd[n // NW, LO]), int(nd[n // NW, HI])
            if hi - lo + 1 != size:
                problems.append("eiovar: list %d holds a %d-page range at %#x"
                                % (size, hi - lo + 1, lo))
            out[lo] = hi - lo + 1
            k += 1
            n = int(st.links[n // NW])
    if len(seen) != st.meta[M_CACHED_NOW]:
        problems.append("eiovar: %d ranges on the lists, the count says %d"
                        % (len(seen), st.meta[M_CACHED_NOW]))
    marked = int(np.count_nonzero(st.links != NOT_CACHED))
    if marked != len(seen):
        problems.append("eiovar: %d nodes carry a link, %d are on the lists"
                        % (marked, len(seen)))
    return problems, out


def check(st, p, live):
    """The tree is sound and holds exactly the live ranges and the cached
    ones; no cached range is live; the lists' counts add up."""
    problems, tree = rbtree.audit(st.tree, p)
    more, pfns = cached(st)
    problems += more
    if problems:
        return problems
    want = {int(pfn): int(pages) for pfn, pages in live}
    both = [pfn for pfn in pfns if pfn in want]
    if both:
        problems.append("eiovar: %d cached range(s) also live, first %#x"
                        % (len(both), both[0]))
    want.update(pfns)
    got = dict(tree)
    if got != want:
        extra = sorted(set(got.items()) - set(want.items()))
        missing = sorted(set(want.items()) - set(got.items()))
        problems.append("eiovar: the tree holds %d ranges, %d are live or cached; %d "
                        "unaccounted for (first %s), %d missing from the tree (first %s)"
                        % (len(got), len(want), len(extra), extra[:1],
                           len(missing), missing[:1]))
    nomem = int(st.tree.stats.reshape(-1, STAT_LINE)[:, S_NOMEM].sum())
    if nomem:
        problems.append("eiovar: the node pool ran out %d time(s); raise max_live" % nomem)
    return problems


def footprint(st, p):
    """Kernel bytes: the domain with its list heads, and a `struct iova`
    with its link per node other than the anchor, cached ones included
    (they stay in the tree); at the start, the peak and now, and the
    cached ranges' share now."""
    m = st.tree.meta
    node = IOVA_BYTES + LINK_BYTES
    base = DOMAIN_BYTES + HEADS_BYTES
    return {"start": base,
            "peak": base + int(m[M_PEAK] - 1) * node,
            "now": base + int(m[M_NODES] - 1) * node,
            "cached": int(st.meta[M_CACHED_NOW]) * node,
            "cached_peak": int(st.meta[M_CACHED_PEAK]) * node}
