"""Top-down allocation over a red-black tree of allocated ranges: mainline
`drivers/iommu/iova.c` (Linux 6.7+) `alloc_iova(..., size_aligned=true)`,
`find_iova`, `free_iova` / `__free_iova`, under one global lock
(`iova_rbtree_lock`).

Placement is the kernel's, decision for decision:

* a request of `size` pages below the inclusive `limit` searches down from
  `limit + 1`, the start aligned to `size` rounded up to a power of two;
* the walk starts at a cached node (`cached32_node` for limits at or below
  4 GiB, `cached_node` above), so holes above the cache are invisible until
  a free moves the cache back up;
* when the walk reaches the bottom, it retries once from the top of the
  limit down to just above the node it started from (`iova_find_limit`);
* a failure below 4 GiB remembers its size in `max32_alloc_size`, and every
  later 32-bit request at least that large fails at once, until a free
  below 4 GiB resets it.  The kernel writes the remembered size on every
  failure, 64-bit ones included; so do we.

The tree is a real red-black tree (the insert and erase rebalancing of
lib/rbtree.c, written out over arrays), so its shape, and the number of
nodes an operation walks, are the kernel's too.  Nodes live in one int64
array, eight words (64 bytes) each: the kernel's `struct iova` is 40 bytes
but its slab (`SLAB_HWCACHE_ALIGN`) hands out 64-byte objects, so a node
here occupies a cache line of its own, as there.  Nodes come from a free
list, taken and returned under the tree lock (the kernel allocates outside
the lock; the difference is a few instructions of hold time).

Variant `augmented` (design `rbtree:augmented`) is Peng Zhang's "iommu/iova:
Optimize alloc_iova with rbtree_augmented" (iommu list, v3, September
2022; mainline's iova.c has no such annotations), over the same tree, lock
and cached nodes.  Every node
also keeps `prev_iova` (its in-order predecessor), `allocatable_size` (the
largest size-aligned request its gap, from the predecessor's end to its
own start, can place: __compute_allocatable_size, exact) and
`max_allocatable_size` (the largest in its subtree), maintained as
rbtree_augmented does: on insert and erase, through the rotate, copy and
propagate callbacks of RB_DECLARE_CALLBACKS_MAX.  Its `alloc_iova`:

* keeps the `max32_alloc_size` fast-fail test at the start, as mainline;
* tries first the gap just below the cached node (`cached32_node` or
  `cached_node`, as mainline), cut at the limit: if the request fits
  there, the answer is mainline's, the top of that gap;
* else, for a limit above 4 GiB, tries the gaps down the prev_iova list
  from the anchor, at most 32 (the anchor's first); the first that fits
  takes the request at its top.  Mainline would have walked down from the
  cached node instead, and retried from the top only after reaching the
  bottom, so it takes the first fitting gap below the cache where this
  takes the first below the limit;
* else searches the tree: from the node whose gap or range holds the
  limit (its own `iova_find_limit`) up to the root, looking at each left
  subtree passed on the way (skipped whole when its max is too small) and
  at each ancestor below the limit.  Inside the first subtree that holds a
  fit it descends and takes the first node whose own gap fits, looking at
  a node's own gap before its right subtree: so it takes the highest
  fitting gap below the limit except within that subtree, where a higher
  gap in a right subtree loses to its parent's.  Which gap wins thus
  depends on the shape of the tree;
* on failure, the list walk that ran out sets `max32_alloc_size`; the
  tree search sets it only when `limit_pfn >= dma_32bit_pfn` (the patch's
  test, not mainline's "always"), so a failure under a low 32-bit limit
  no longer fails later 32-bit requests of that size at once;
* has no lower bound of its own: init_iova_domain reserves a node over
  pfns 0 to start_pfn - 1 (`reserve_iova`), which is a node of the tree,
  its gap empty.  It is the domain's, not live: a free of it counts as a
  bad free.

free_iova moves the cached nodes as mainline's does; the freed node's
successor then takes over its predecessor and its gap.  The node
grows by the three words (the kernel's struct iova from 40 to 64 bytes, the
domain by 24 for its anchor); here allocatable_size and max share one word,
each saturated at GAP_SAT pages (requests above that are refused), because
our node keeps the colour in a word of its own where the kernel packs it
into the parent pointer.  The variant is chosen at run time from one meta
word: one loop per allocator serves both.

Kernel `unsigned long` values are int64 here.  The anchor node, which the
kernel places at ~0UL, sits at IOVA_ANCHOR = 2**63 - 1: every comparison
the kernel makes against it comes out the same, and no pfn comes near it.
Where the kernel's unsigned subtraction `high_pfn - size` wraps around,
ours goes negative; both leave the walk at the same step and fail the same
test, so the outcome is identical.
"""
from collections import namedtuple

import numpy as np
from numba import njit

from allocators import PAGE_SHIFT, STAT_LINE
from hwmodel.cpu import fls, hot, inline_into_callers
from hwmodel.locks import acquire, release

NAME = "rbtree"
MAINLINE, AUGMENTED = "mainline", "augmented"
VARIANTS = (MAINLINE, AUGMENTED)
DEFAULT_VARIANT = MAINLINE
LOCK_CLASSES = ("rbtree",)
# "retries": mainline's walks retried from the top; the augmented tree's
# searches of the tree from the limit, after the cached node (and, above
# 4 GiB, the prev list) had no room
STATS = ("allocs", "fails", "frees", "nodes_visited", "retries", "fastfails",
         "bad_frees", "nomem")
S_ALLOCS, S_FAILS, S_FREES, S_VISITED, S_RETRIES, S_FASTFAILS, S_BAD_FREES, \
    S_NOMEM = range(8)

# drivers/iommu/iova.c: the anchor sits above the top of the usable space
IOVA_ANCHOR = np.iinfo(np.int64).max        # ~0UL in the kernel

# Footprint, in bytes of kernel memory (x86-64, no lock debugging):
# include/linux/iova.h struct iova = rb_node (24) + pfn_hi (8) + pfn_lo (8);
# struct iova_domain (6.7+) = iova_rbtree_lock (4, padded to 8) + rbroot 8
# + cached_node 8 + cached32_node 8 + granule 8 + start_pfn 8
# + dma_32bit_pfn 8 + max32_alloc_size 8 + anchor (a struct iova, 40)
# + rcaches 8 + cpuhp_dead (hlist_node, 16) = 128.  The anchor is part of
# the domain, so only the other nodes count at IOVA_BYTES each.
IOVA_BYTES = 40
DOMAIN_BYTES = 128
# The augmented struct iova adds prev_iova, allocatable_size and
# max_allocatable_size (8 bytes each): 64 bytes, still one 64-byte slab
# object; the domain's anchor grows with it.
AUG_IOVA_BYTES = IOVA_BYTES + 24
AUG_DOMAIN_BYTES = DOMAIN_BYTES + 24

# One node: eight int64 words.  A node is named by the index of its first
# word, as the kernel names it by its address: a walk then loads a link and
# the field it needs at one fixed offset from it, with no multiply between
# the two loads of every step (a shift there made walks a sixth slower).
NW = 8
LO, HI, LEFT, RIGHT, PARENT, COLOR = range(6)
# The augmented tree's two more words.  The kernel packs the colour into
# the parent pointer, which leaves its 64-byte node room for all three
# fields; ours keeps the colour apart, so allocatable_size (low half) and
# max_allocatable_size (high half) share a word, each saturated at
# GAP_SAT pages: every comparison with a request of at most GAP_SAT pages
# (8 TiB; larger ones are refused) comes out as the kernel's.
PREV, GAP = 6, 7
GAP_SHIFT = 32
GAP_MASK = (1 << GAP_SHIFT) - 1
GAP_SAT = (1 << 31) - 1
# drivers/iommu/iova.c (the patch): prev_iova steps tried from the anchor
# before a 64-bit request searches the tree
LIST_TRIES = 32
# lib/rbtree.c colours; UNUSED marks a node on the free list
RED, BLACK, UNUSED = 0, 1, 2
NIL = -1
ANCHOR = 0          # the anchor is the first node

# meta words (all under the tree lock; M_NODES is also read without it)
M_ROOT = 0
M_CACHED = 1        # iovad->cached_node
M_CACHED32 = 2      # iovad->cached32_node
M_MAX32 = 3         # iovad->max32_alloc_size
M_DMA32 = 4         # iovad->dma_32bit_pfn
M_START = 5         # iovad->start_pfn
M_FREE = 6          # head of the node free list
M_NODES = 7         # nodes in the tree, the anchor included
M_PEAK = 8          # most nodes ever in the tree
M_CAP = 9           # nodes in the pool
M_AUG = 10          # 1: the augmented tree (read-only after init)

TREE_LOCK = 0       # lock index of iova_rbtree_lock

State = namedtuple("State", ["nodes", "meta", "stats", "lk"])


def node_capacity(p, cached=0):
    """Nodes the pool must hold: every range alive at once (`p.max_live`),
    plus `cached` ranges a cache above the tree may keep (the magazines
    module computes its own bound), plus the anchor.  No more ranges than
    pages fit in the space, which caps the count for large caches."""
    return 1 + min(p.max_live + cached, p.pages)


def layout_nodes(p, capacity):
    """The arrays of a tree whose pool holds `capacity` nodes."""
    return [("nodes", np.int64, (capacity * NW,)),
            ("meta", np.int64, (STAT_LINE,)),
            ("stats", np.int64, (p.nworkers * STAT_LINE,))]


def augmented(p):
    """Whether Params `p` asks for the augmented tree.  The magazines
    module hands this module its own Params, whose variant names a depot:
    anything but "augmented" is the mainline tree."""
    return p.variant == AUGMENTED


def layout(p):
    # the augmented domain also holds the node reserved below start_pfn
    return layout_nodes(p, node_capacity(p) + (1 if augmented(p) and p.start_pfn else 0))


def aligned_refusal(p, size, placed):
    """Why a range of `placed` pages for a request of `size` never fits in
    an empty tree, or None: it starts on a multiple of `size` rounded up
    to a power of two, at p.start_pfn or above, and ends below p.pages
    (the limit, pages - 1, is inclusive)."""
    align = 1 << max(0, (size - 1).bit_length())
    if (p.pages - placed) // align * align < p.start_pfn:
        return ("a %d-page request, aligned to %d pages from pfn %d up, fits nowhere in "
                "a %d-page space" % (size, align, p.start_pfn, p.pages))
    return None


def refuse(p, size):
    if augmented(p) and size > GAP_SAT:
        return ("a %d-page request is over the %d pages the augmented tree's gap "
                "sizes hold" % (size, GAP_SAT))
    return aligned_refusal(p, size, size)


def locks(p):
    return [0]


def make(views, lk):
    return State(views["nodes"], views["meta"], views["stats"], lk)


def init(st, p):
    """init_iova_domain(iovad, 4 KiB, p.start_pfn): an empty tree holding
    only the anchor, both cached nodes on the anchor."""
    cap = len(st.nodes) // NW
    nd = st.nodes.reshape(cap, NW)
    nd[:] = 0
    nd[:, COLOR] = UNUSED
    nd[:, LEFT] = np.arange(1, cap + 1) * NW    # free list: the 2nd node, the 3rd, ...
    nd[cap - 1, LEFT] = NIL
    nd[ANCHOR] = (IOVA_ANCHOR, IOVA_ANCHOR, NIL, NIL, NIL, BLACK, 0, 0)
    st.meta[:] = 0
    st.stats[:] = 0
    m = st.meta
    m[M_ROOT] = ANCHOR
    m[M_CACHED] = ANCHOR
    m[M_CACHED32] = ANCHOR
    m[M_DMA32] = 1 << (32 - PAGE_SHIFT)     # granule 4 KiB: iova_shift = 12
    m[M_MAX32] = m[M_DMA32]
    m[M_START] = p.start_pfn
    m[M_FREE] = NW if cap > 1 else NIL
    m[M_NODES] = 1
    m[M_PEAK] = 1
    m[M_CAP] = cap
    if augmented(p):
        _init_augmented(st, p)


def _init_augmented(st, p):
    """The patch's init_iova_domain: the anchor's gap is everything below
    it, and a node is reserved over pfns 0 to start_pfn - 1
    (reserve_iova), so that the search, which has no lower bound of its
    own, never places a range below start_pfn."""
    cap = len(st.nodes) // NW
    nd = st.nodes.reshape(cap, NW)
    m = st.meta
    m[M_AUG] = 1
    a = allocatable_size(0, IOVA_ANCHOR)
    nd[ANCHOR, PREV] = NIL
    nd[ANCHOR, GAP] = (a << GAP_SHIFT) | a
    if p.start_pfn:
        if m[M_FREE] == NIL:
            raise ValueError("the augmented tree needs a node for its reserved range")
        # iova_insert_rbtree into a tree of the anchor alone: the reserved
        # node is its left child, red, and its predecessor
        r = int(m[M_FREE])
        m[M_FREE] = nd[r // NW, LEFT]
        nd[r // NW] = (0, p.start_pfn - 1, NIL, NIL, ANCHOR, RED, NIL, 0)
        nd[ANCHOR, LEFT] = r
        nd[ANCHOR, PREV] = r
        a = allocatable_size(p.start_pfn, IOVA_ANCHOR)
        nd[ANCHOR, GAP] = (a << GAP_SHIFT) | a
        m[M_NODES] = 2
        m[M_PEAK] = 2


# ---------------------------------------------------------------- the tree


@hot(inline="always")
def _ix(n, field):
    """The index of a field of node n, unsigned: numba indexes with a signed
    integer through a test for a negative index (Python's wraparound), three
    more instructions between loading a link and loading the node it names,
    on every step of a walk that is all such steps."""
    return np.uint64(n + field)


@hot
def _rb_prev(nd, n):
    """The in-order predecessor of n, or NIL."""
    c = nd[_ix(n, LEFT)]
    if c != NIL:
        n = c
        c = nd[_ix(n, RIGHT)]
        while c != NIL:
            n = c
            c = nd[_ix(n, RIGHT)]
        return n
    p = nd[_ix(n, PARENT)]
    while p != NIL and n == nd[_ix(p, LEFT)]:
        n = p
        p = nd[_ix(n, PARENT)]
    return p


@hot
def _rb_next(nd, n):
    """The in-order successor of n, or NIL."""
    c = nd[_ix(n, RIGHT)]
    if c != NIL:
        n = c
        c = nd[_ix(n, LEFT)]
        while c != NIL:
            n = c
            c = nd[_ix(n, LEFT)]
        return n
    p = nd[_ix(n, PARENT)]
    while p != NIL and n == nd[_ix(p, RIGHT)]:
        n = p
        p = nd[_ix(n, PARENT)]
    return p


@hot
def _change_child(nd, meta, old, new, parent):
    """Make `new` take `old`'s place under `parent` (or at the root)."""
    if parent != NIL:
        if nd[_ix(parent, LEFT)] == old:
            nd[_ix(parent, LEFT)] = new
        else:
            nd[_ix(parent, RIGHT)] = new
    else:
        meta[M_ROOT] = new


@hot
def _rotate_set_parents(nd, meta, old, new, color):
    """After a rotation: `new` takes over `old`'s parent and colour, `old`
    goes under `new` with the given colour."""
    parent = nd[_ix(old, PARENT)]
    nd[_ix(new, PARENT)] = parent
    nd[_ix(new, COLOR)] = nd[_ix(old, COLOR)]
    nd[_ix(old, PARENT)] = new
    nd[_ix(old, COLOR)] = color
    _change_child(nd, meta, old, new, parent)


@hot
def _insert_color(nd, meta, node, aug):
    """Rebalance after linking a red leaf (lib/rbtree.c __rb_insert).  As in
    _erase_color, one body serves both mirror cases: `far` is the uncle's
    side, `near` the parent's.  With `aug`, each rotation is followed by
    the augmented tree's rotate callback (lib/rbtree.c's augment_rotate;
    the plain tree's callbacks are no-ops: one predictable branch here)."""
    parent = nd[_ix(node, PARENT)]
    while True:
        if parent == NIL:
            # the root is black
            nd[_ix(node, COLOR)] = BLACK
            return
        if nd[_ix(parent, COLOR)] == BLACK:
            return
        gparent = nd[_ix(parent, PARENT)]   # a red parent is never the root
        if parent != nd[_ix(gparent, RIGHT)]:
            far, near = RIGHT, LEFT          # parent is the left child
        else:
            far, near = LEFT, RIGHT
        tmp = nd[_ix(gparent, far)]
        if tmp != NIL and nd[_ix(tmp, COLOR)] == RED:
            # red uncle: push the blackness down, continue from gparent
            nd[_ix(tmp, COLOR)] = BLACK
            nd[_ix(parent, COLOR)] = BLACK
            node = gparent
            parent = nd[_ix(node, PARENT)]
            nd[_ix(node, COLOR)] = RED
            continue
        tmp = nd[_ix(parent, far)]
        if node == tmp:
            # inner grandchild: rotate it outside, at parent
            tmp = nd[_ix(node, near)]
            nd[_ix(parent, far)] = tmp
            nd[_ix(node, near)] = parent
            if tmp != NIL:
                nd[_ix(tmp, PARENT)] = parent
                nd[_ix(tmp, COLOR)] = BLACK
            nd[_ix(parent, PARENT)] = node
            nd[_ix(parent, COLOR)] = RED
            if aug:
                _aug_rotate(nd, parent, node)
            parent = node
            tmp = nd[_ix(node, far)]
        # outer grandchild: rotate at gparent
        nd[_ix(gparent, near)] = tmp
        nd[_ix(parent, far)] = gparent
        if tmp != NIL:
            nd[_ix(tmp, PARENT)] = gparent
            nd[_ix(tmp, COLOR)] = BLACK
        _rotate_set_parents(nd, meta, gparent, parent, RED)
        if aug:
            _aug_rotate(nd, gparent, parent)
        return


@hot
def _erase_color(nd, meta, parent, aug):
    """Restore the black heights after a black node left from under
    `parent` (lib/rbtree.c ____rb_erase_color).  The kernel writes the two
    mirror cases out; here `far` is the sibling's side and `near` the
    node's, so one body serves both."""
    node = NIL
    while True:
        if node != nd[_ix(parent, RIGHT)]:
            far, near = RIGHT, LEFT         # node is the left child (possibly NIL)
        else:
            far, near = LEFT, RIGHT
        sibling = nd[_ix(parent, far)]
        if nd[_ix(sibling, COLOR)] == RED:
            # red sibling: rotate at parent so the sibling is black
            tmp1 = nd[_ix(sibling, near)]
            nd[_ix(parent, far)] = tmp1
            nd[_ix(sibling, near)] = parent
            nd[_ix(tmp1, PARENT)] = parent
            nd[_ix(tmp1, COLOR)] = BLACK
            _rotate_set_parents(nd, meta, parent, sibling, RED)
            if aug:
                _aug_rotate(nd, parent, sibling)
            sibling = tmp1
        tmp1 = nd[_ix(sibling, far)]
        if tmp1 == NIL or nd[_ix(tmp1, COLOR)] == BLACK:
            tmp2 = nd[_ix(sibling, near)]
            if tmp2 == NIL or nd[_ix(tmp2, COLOR)] == BLACK:
                # black sibling with black children: recolour, and go up
                # unless the parent can absorb the missing black
                nd[_ix(sibling, PARENT)] = parent
                nd[_ix(sibling, COLOR)] = RED
                if nd[_ix(parent, COLOR)] == RED:
                    nd[_ix(parent, COLOR)] = BLACK
                else:
                    node = parent
                    parent = nd[_ix(node, PARENT)]
                    if parent != NIL:
                        continue
                return
            # red inner nephew: rotate at the sibling
            tmp1 = nd[_ix(tmp2, far)]
            nd[_ix(sibling, near)] = tmp1
            nd[_ix(tmp2, far)] = sibling
            nd[_ix(parent, far)] = tmp2
            if tmp1 != NIL:
                nd[_ix(tmp1, PARENT)] = sibling
                nd[_ix(tmp1, COLOR)] = BLACK
            if aug:
                _aug_rotate(nd, sibling, tmp2)
            tmp1 = sibling
            sibling = tmp2
        # red outer nephew: rotate at parent and recolour
        tmp2 = nd[_ix(sibling, near)]
        nd[_ix(parent, far)] = tmp2
        nd[_ix(sibling, near)] = parent
        nd[_ix(tmp1, PARENT)] = sibling
        nd[_ix(tmp1, COLOR)] = BLACK
        if tmp2 != NIL:
            nd[_ix(tmp2, PARENT)] = parent
        _rotate_set_parents(nd, meta, parent, sibling, BLACK)
        if aug:
            _aug_rotate(nd, parent, sibling)
        return


@hot
def _erase(nd, meta, node, aug):
    """Unlink `node` and rebalance (lib/rbtree.c rb_erase; with `aug`,
    rb_erase_augmented: the copy callback as the successor takes the
    erased node's place, propagation up from where a subtree lost a node,
    and the rotate callback in _erase_color)."""
    child = nd[_ix(node, RIGHT)]
    tmp = nd[_ix(node, LEFT)]
    if tmp == NIL:
        # no left child: the right child (red, if any) takes its place
        parent = nd[_ix(node, PARENT)]
        color = nd[_ix(node, COLOR)]
        _change_child(nd, meta, node, child, parent)
        if child != NIL:
            nd[_ix(child, PARENT)] = parent
            nd[_ix(child, COLOR)] = color
            rebalance = NIL
        else:
            rebalance = parent if color == BLACK else NIL
        top = parent
    elif child == NIL:
        # only a left child, necessarily red: it takes node's place
        parent = nd[_ix(node, PARENT)]
        nd[_ix(tmp, PARENT)] = parent
        nd[_ix(tmp, COLOR)] = nd[_ix(node, COLOR)]
        _change_child(nd, meta, node, tmp, parent)
        rebalance = NIL
        top = parent
    else:
        # two children: the successor takes node's place
        successor = child
        tmp = nd[_ix(child, LEFT)]
        if tmp == NIL:
            # the successor is the right child itself
            parent = successor
            child2 = nd[_ix(successor, RIGHT)]
            if aug:
                _aug_copy(nd, node, successor)
        else:
            # the successor is the leftmost node of the right subtree
            while True:
                parent = successor
                successor = tmp
                tmp = nd[_ix(tmp, LEFT)]
                if tmp == NIL:
                    break
            child2 = nd[_ix(successor, RIGHT)]
            nd[_ix(parent, LEFT)] = child2
            nd[_ix(successor, RIGHT)] = child
            nd[_ix(child, PARENT)] = successor
            if aug:
                _aug_copy(nd, node, successor)
                _aug_propagate(nd, parent, successor)
        tmp = nd[_ix(node, LEFT)]
        nd[_ix(successor, LEFT)] = tmp
        nd[_ix(tmp, PARENT)] = successor
        up = nd[_ix(node, PARENT)]
        up_color = nd[_ix(node, COLOR)]
        _change_child(nd, meta, node, successor, up)
        if child2 != NIL:
            nd[_ix(child2, PARENT)] = parent
            nd[_ix(child2, COLOR)] = BLACK
            rebalance = NIL
        else:
            rebalance = parent if nd[_ix(successor, COLOR)] == BLACK else NIL
        nd[_ix(successor, PARENT)] = up
        nd[_ix(successor, COLOR)] = up_color
        top = successor
    if aug:
        _aug_propagate(nd, top, NIL)
    if rebalance != NIL:
        _erase_color(nd, meta, rebalance, aug)


# ------------------------------------------------------------- iova.c logic


@hot
def _find(nd, meta, pfn):
    """private_find_iova: the node whose range holds pfn, or NIL."""
    n = meta[M_ROOT]
    while n != NIL:
        if pfn < nd[_ix(n, LO)]:
            n = nd[_ix(n, LEFT)]
        elif pfn > nd[_ix(n, HI)]:
            n = nd[_ix(n, RIGHT)]
        else:
            return n
    return NIL


@hot
def _find_limit(nd, meta, limit_pfn, stats, s):
    """iova_find_limit: where the retry walk starts.  For a 32-bit limit,
    the lowest node at or above the limit that a short descent finds (the
    walk then steps over any others above the limit harmlessly); above
    4 GiB simply the anchor."""
    if limit_pfn > meta[M_DMA32]:
        return ANCHOR
    # nodes visited are counted in a local and stored once: stats may
    # alias the nodes, so a store per node would stay in the loop
    visited = 0
    node = meta[M_ROOT]
    while nd[_ix(node, HI)] < limit_pfn:
        node = nd[_ix(node, RIGHT)]
        visited += 1
    while True:
        left = nd[_ix(node, LEFT)]
        while left != NIL and nd[_ix(left, LO)] >= limit_pfn:
            node = left
            left = nd[_ix(node, LEFT)]
            visited += 1
        if left == NIL:
            break
        nxt = left
        moved = False
        while nd[_ix(nxt, RIGHT)] != NIL:
            nxt = nd[_ix(nxt, RIGHT)]
            visited += 1
            if nd[_ix(nxt, LO)] >= limit_pfn:
                node = nxt
                moved = True
                break
        if not moved:
            break
    stats[s + S_VISITED] += visited
    return node


@hot
def _insert(nd, meta, new, start, stats, s):
    """iova_insert_rbtree from `start` (the node above the gap): link as a
    red leaf and rebalance."""
    if _link(nd, new, start, stats, s):
        _insert_color(nd, meta, new, False)


@hot
def _link(nd, new, start, stats, s):
    """The descent of iova_insert_rbtree from `start`, and rb_link_node:
    `new` becomes a red leaf, the tree not yet rebalanced.  False (nothing
    linked) for a key already in the tree."""
    key = nd[_ix(new, LO)]
    parent = NIL
    n = start
    go_left = False
    visited = 0
    while n != NIL:
        parent = n
        visited += 1
        k = nd[_ix(n, LO)]
        if key < k:
            n = nd[_ix(n, LEFT)]
            go_left = True
        elif key > k:
            n = nd[_ix(n, RIGHT)]
            go_left = False
        else:
            stats[s + S_VISITED] += visited
            return False        # the kernel WARNs; unreachable from alloc
    stats[s + S_VISITED] += visited
    nd[_ix(new, PARENT)] = parent
    nd[_ix(new, COLOR)] = RED
    nd[_ix(new, LEFT)] = NIL
    nd[_ix(new, RIGHT)] = NIL
    if go_left:
        nd[_ix(parent, LEFT)] = new
    else:
        nd[_ix(parent, RIGHT)] = new
    return True


@hot
def alloc_locked(t, w, size, limit):
    """alloc_iova(iovad, size, limit, true) with iova_rbtree_lock already
    held: the first pfn of the new range, or -1."""
    nd = t.nodes
    meta = t.meta
    stats = t.stats
    s = w * STAT_LINE
    if size < 1:
        stats[s + S_FAILS] += 1
        return -1
    if meta[M_FREE] == NIL:
        # alloc_iova_mem() failed: the kernel gives up before searching
        stats[s + S_NOMEM] += 1
        stats[s + S_FAILS] += 1
        return -1
    limit_pfn = limit + 1           # __alloc_and_insert_iova_range's bound
    dma32 = meta[M_DMA32]
    start_pfn = meta[M_START]
    align_mask = np.int64(-1) << fls(size - 1)
    if limit_pfn <= dma32 and size >= meta[M_MAX32]:
        stats[s + S_FASTFAILS] += 1
        stats[s + S_FAILS] += 1
        return -1
    curr = meta[M_CACHED32] if limit_pfn <= dma32 else meta[M_CACHED]
    retry_pfn = nd[_ix(curr, HI)]
    high_pfn = limit_pfn
    low_pfn = start_pfn
    new_pfn = 0
    prev = curr
    visited = 0
    while True:
        while True:
            visited += 1
            lo = nd[_ix(curr, LO)]
            if lo < high_pfn:
                high_pfn = lo
            new_pfn = (high_pfn - size) & align_mask
            prev = curr
            curr = _rb_prev(nd, curr)
            if curr == NIL or new_pfn > nd[_ix(curr, HI)] or new_pfn < low_pfn:
                break
        if high_pfn < size or new_pfn < low_pfn:
            if low_pfn == start_pfn and retry_pfn < limit_pfn:
                # nothing below the cached node: once more from the top
                high_pfn = limit_pfn
                low_pfn = retry_pfn + 1
                curr = _find_limit(nd, meta, limit_pfn, stats, s)
                stats[s + S_RETRIES] += 1
                continue
            meta[M_MAX32] = size
            stats[s + S_VISITED] += visited
            stats[s + S_FAILS] += 1
            return -1
        break
    stats[s + S_VISITED] += visited
    new = meta[M_FREE]
    meta[M_FREE] = nd[_ix(new, LEFT)]
    nd[_ix(new, LO)] = new_pfn
    nd[_ix(new, HI)] = new_pfn + size - 1
    _insert(nd, meta, new, prev, stats, s)
    meta[M_NODES] += 1
    if meta[M_NODES] > meta[M_PEAK]:
        meta[M_PEAK] = meta[M_NODES]
    # __cached_rbnode_insert_update
    if new_pfn + size - 1 < dma32:
        meta[M_CACHED32] = new
    else:
        meta[M_CACHED] = new
    stats[s + S_ALLOCS] += 1
    return new_pfn


@hot
def _remove(t, w, n):
    """remove_iova: move the cached nodes off n, unlink it, and return it
    to the pool."""
    nd = t.nodes
    meta = t.meta
    dma32 = meta[M_DMA32]
    lo = nd[_ix(n, LO)]
    hi = nd[_ix(n, HI)]
    # __cached_rbnode_delete_update, before n leaves the tree
    nxt = _rb_next(nd, n)
    c32 = meta[M_CACHED32]
    if n == c32 or (hi < dma32 and lo >= nd[_ix(c32, LO)]):
        meta[M_CACHED32] = nxt
    if lo < dma32:
        meta[M_MAX32] = dma32
    if lo >= nd[_ix(meta[M_CACHED], LO)]:
        meta[M_CACHED] = nxt
    _erase(nd, meta, n, False)
    nd[_ix(n, COLOR)] = UNUSED
    nd[_ix(n, LEFT)] = meta[M_FREE]
    meta[M_FREE] = n
    meta[M_NODES] -= 1
    t.stats[w * STAT_LINE + S_FREES] += 1


@hot
def free_locked(t, w, pfn, pages):
    """free_iova(iovad, pfn) with the lock held: the range must start at
    pfn and, when pages > 0, be that long.  Anything else is counted as a
    bad free and leaves the tree as it was.  Returns True if freed."""
    nd = t.nodes
    n = _find(nd, t.meta, pfn)
    if n == NIL or n == ANCHOR or nd[_ix(n, LO)] != pfn or \
            (pages > 0 and nd[_ix(n, HI)] - pfn + 1 != pages):
        t.stats[w * STAT_LINE + S_BAD_FREES] += 1
        return False
    _remove(t, w, n)
    return True


@hot
def find_locked(t, pfn):
    """find_iova with the lock held: (pfn_lo, pfn_hi) of the range holding
    pfn, or (-1, -1)."""
    n = _find(t.nodes, t.meta, pfn)
    if n == NIL or n == ANCHOR:
        return -1, -1
    return t.nodes[_ix(n, LO)], t.nodes[_ix(n, HI)]


# ------------------------------------------- the augmented tree (Zhang 2022)


@hot(inline="always")
def _asize(nd, n):
    """allocatable_size of n: the largest request its gap can place."""
    return nd[_ix(n, GAP)] & GAP_MASK


@hot(inline="always")
def _max(nd, n):
    """max_allocatable_size of n: the largest allocatable_size in its
    subtree."""
    return nd[_ix(n, GAP)] >> GAP_SHIFT


@hot(inline="always")
def _set_max(nd, n, m):
    nd[_ix(n, GAP)] = (m << GAP_SHIFT) | (nd[_ix(n, GAP)] & GAP_MASK)


@hot
def allocatable_size(lo, hi):
    """__compute_allocatable_size: the largest size-aligned request that
    fits between pfn lo (inclusive) and hi (exclusive), found by stepping
    up from lo by its lowest set bit.  The kernel's own loop, paid on every
    update of a gap; saturated at GAP_SAT."""
    if lo == 0:
        a = hi
    else:
        a = np.int64(0)
        while lo < hi:
            delta = lo & -lo
            if hi - lo <= delta:
                if hi - lo > a:
                    a = hi - lo
                break
            if delta > a:
                a = delta
            lo += delta
    return min(a, GAP_SAT)


@hot(inline="always")
def _prev_high(nd, n):
    """prev_iova_high: the first pfn above n's predecessor (0 for none)."""
    p = nd[_ix(n, PREV)]
    if p == NIL:
        return np.int64(0)
    return nd[_ix(p, HI)] + 1


@hot(inline="always")
def _gap_update(nd, n):
    """iova_compute_allocatable_size, stored."""
    a = allocatable_size(_prev_high(nd, n), nd[_ix(n, LO)])
    nd[_ix(n, GAP)] = (nd[_ix(n, GAP)] & ~GAP_MASK) | a


@hot
def _compute_max(nd, n, stop_if_same):
    """RB_DECLARE_CALLBACKS_MAX's compute: n's max from its own gap and its
    children's; with stop_if_same, True (and nothing written) when that is
    what n holds already."""
    m = _asize(nd, n)
    c = nd[_ix(n, LEFT)]
    if c != NIL and _max(nd, c) > m:
        m = _max(nd, c)
    c = nd[_ix(n, RIGHT)]
    if c != NIL and _max(nd, c) > m:
        m = _max(nd, c)
    if stop_if_same and _max(nd, n) == m:
        return True
    _set_max(nd, n, m)
    return False


@hot
def _aug_propagate(nd, n, stop):
    """iova_gap_callbacks_propagate: recompute up from n, stopping below
    `stop` or at the first node whose max does not change."""
    while n != stop:
        if _compute_max(nd, n, True):
            break
        n = nd[_ix(n, PARENT)]


@hot
def _aug_copy(nd, old, new):
    _set_max(nd, new, _max(nd, old))


@hot
def _aug_rotate(nd, old, new):
    """The rotation callback: `new` took `old`'s place, so its subtree
    now is old's; old's is recomputed."""
    _set_max(nd, new, _max(nd, old))
    _compute_max(nd, old, False)


@hot(inline="always")
def _fits(lo, hi, limit_pfn, size, align_mask):
    """check_interval: a request of `size` fits at the top of the gap
    [lo, hi) cut at limit_pfn."""
    if hi > limit_pfn:
        hi = limit_pfn
    if lo >= hi:
        return False
    return hi >= size and ((hi - size) & align_mask) >= lo


@hot
def _find_limit_aug(nd, meta, limit_pfn, stats, s):
    """The patch's iova_find_limit: descend to the node whose gap, or the
    node itself, holds limit_pfn - 1."""
    visited = 0
    n = meta[M_ROOT]
    while n != NIL:
        visited += 1
        if limit_pfn - 1 > nd[_ix(n, HI)]:
            n = nd[_ix(n, RIGHT)]
        elif limit_pfn <= _prev_high(nd, n):
            n = nd[_ix(n, LEFT)]
        else:
            break
    stats[s + S_VISITED] += visited
    return n


@hot
def _search_tree_aug(nd, meta, size, limit_pfn, align_mask, stats, s):
    """The patch's search_rbtree: from the node at the limit, up the tree,
    looking at each left subtree passed on the way (skipped whole when its
    max is too small) and at each ancestor below the limit; into the first
    subtree that holds a fit, down to a node whose own gap fits, taking
    that node's own gap before its right subtree.  The node whose gap
    takes the request, or NIL."""
    curr = _find_limit_aug(nd, meta, limit_pfn, stats, s)
    if _fits(_prev_high(nd, curr), nd[_ix(curr, LO)], limit_pfn, size, align_mask):
        return curr
    visited = 0
    ignore = False
    found = NIL
    while True:
        if not ignore:
            left = nd[_ix(curr, LEFT)]
            if left != NIL and _max(nd, left) >= size:
                found = left
                break
        parent = nd[_ix(curr, PARENT)]
        if parent == NIL:
            stats[s + S_VISITED] += visited
            return NIL
        # a node reached from its left child lies above the limit, and so
        # does its right subtree
        ignore = nd[_ix(parent, LEFT)] == curr
        curr = parent
        visited += 1
        if not ignore and _asize(nd, curr) >= size:
            stats[s + S_VISITED] += visited
            return curr
    # check_subtree: a fit is below, by the max just read
    curr = found
    while True:
        visited += 1
        if _asize(nd, curr) >= size:
            break
        right = nd[_ix(curr, RIGHT)]
        if right != NIL and _max(nd, right) >= size:
            curr = right
        else:
            curr = nd[_ix(curr, LEFT)]
    stats[s + S_VISITED] += visited
    return curr


@hot
def alloc_aug_locked(t, w, size, limit):
    """__alloc_and_insert_iova_range of the patch, with iova_rbtree_lock
    held: the first pfn of the new range, or -1."""
    nd = t.nodes
    meta = t.meta
    stats = t.stats
    s = w * STAT_LINE
    if size < 1 or size > GAP_SAT:
        stats[s + S_FAILS] += 1
        return -1
    if meta[M_FREE] == NIL:
        stats[s + S_NOMEM] += 1
        stats[s + S_FAILS] += 1
        return -1
    limit_pfn = limit + 1
    dma32 = meta[M_DMA32]
    align_mask = np.int64(-1) << fls(size - 1)
    if limit_pfn <= dma32 and size >= meta[M_MAX32]:
        stats[s + S_FASTFAILS] += 1
        stats[s + S_FAILS] += 1
        return -1
    curr = meta[M_CACHED32] if limit_pfn <= dma32 else meta[M_CACHED]
    stats[s + S_VISITED] += 1
    if not _fits(_prev_high(nd, curr), nd[_ix(curr, LO)], limit_pfn, size, align_mask):
        search = True
        if limit_pfn > dma32:
            # the 32 gaps nearest the top, down the prev_iova list
            curr = ANCHOR
            count = 0
            while curr != NIL:
                if _fits(_prev_high(nd, curr), nd[_ix(curr, LO)], limit_pfn, size,
                         align_mask):
                    search = False
                    break
                count += 1
                if count >= LIST_TRIES:
                    break
                curr = nd[_ix(curr, PREV)]
            stats[s + S_VISITED] += count
            if curr == NIL:
                # the whole list seen, none fits
                meta[M_MAX32] = size
                stats[s + S_FAILS] += 1
                return -1
        if search:
            stats[s + S_RETRIES] += 1
            curr = _search_tree_aug(nd, meta, size, limit_pfn, align_mask, stats, s)
            if curr == NIL:
                if limit_pfn >= dma32:      # sic: the patch's test
                    meta[M_MAX32] = size
                stats[s + S_FAILS] += 1
                return -1
    high = nd[_ix(curr, LO)]
    if high > limit_pfn:
        high = limit_pfn
    new_pfn = (high - size) & align_mask
    new = meta[M_FREE]
    meta[M_FREE] = nd[_ix(new, LEFT)]
    nd[_ix(new, LO)] = new_pfn
    nd[_ix(new, HI)] = new_pfn + size - 1
    _insert_aug(nd, meta, new, curr, stats, s)
    meta[M_NODES] += 1
    if meta[M_NODES] > meta[M_PEAK]:
        meta[M_PEAK] = meta[M_NODES]
    if new_pfn + size - 1 < dma32:
        meta[M_CACHED32] = new
    else:
        meta[M_CACHED] = new
    stats[s + S_ALLOCS] += 1
    return new_pfn


@hot
def _insert_aug(nd, meta, new, start, stats, s):
    """The patch's iova_insert_rbtree: link below `start`, splice into the
    prev_iova list before its successor, size both gaps, propagate both,
    then rb_insert_augmented."""
    if not _link(nd, new, start, stats, s):
        return
    nxt = _rb_next(nd, new)
    nd[_ix(new, PREV)] = nd[_ix(nxt, PREV)]
    nd[_ix(nxt, PREV)] = new
    nd[_ix(new, GAP)] = 0               # kmem_cache_zalloc: max 0
    _gap_update(nd, new)
    _gap_update(nd, nxt)
    # the new node first: it lies below its successor, whose walk is then
    # shorter (the patch's comment)
    _aug_propagate(nd, new, NIL)
    _aug_propagate(nd, nxt, NIL)
    _insert_color(nd, meta, new, True)


@hot
def _remove_aug(t, w, n):
    """The patch's remove_iova: the cached nodes as mainline, the successor
    takes over n's predecessor and gap, then rb_erase_augmented."""
    nd = t.nodes
    meta = t.meta
    dma32 = meta[M_DMA32]
    lo = nd[_ix(n, LO)]
    hi = nd[_ix(n, HI)]
    nxt = _rb_next(nd, n)
    c32 = meta[M_CACHED32]
    if n == c32 or (hi < dma32 and lo >= nd[_ix(c32, LO)]):
        meta[M_CACHED32] = nxt
    if lo < dma32:
        meta[M_MAX32] = dma32
    if lo >= nd[_ix(meta[M_CACHED], LO)]:
        meta[M_CACHED] = nxt
    nd[_ix(nxt, PREV)] = nd[_ix(n, PREV)]
    _gap_update(nd, nxt)
    _aug_propagate(nd, nxt, NIL)
    _erase(nd, meta, n, True)
    nd[_ix(n, COLOR)] = UNUSED
    nd[_ix(n, LEFT)] = meta[M_FREE]
    meta[M_FREE] = n
    meta[M_NODES] -= 1
    t.stats[w * STAT_LINE + S_FREES] += 1


@hot
def free_aug_locked(t, w, pfn, pages):
    """free_locked for the augmented tree.  The node the domain reserves
    below start_pfn is no caller's to free: a free of it is a bad free."""
    nd = t.nodes
    n = _find(nd, t.meta, pfn)
    if n == NIL or n == ANCHOR or nd[_ix(n, LO)] != pfn or pfn < t.meta[M_START] or \
            (pages > 0 and nd[_ix(n, HI)] - pfn + 1 != pages):
        t.stats[w * STAT_LINE + S_BAD_FREES] += 1
        return False
    _remove_aug(t, w, n)
    return True


@hot
def lock(t, w):
    acquire(t.lk, TREE_LOCK, w)


@hot
def unlock(t, w):
    release(t.lk, TREE_LOCK, w)


@hot
def alloc(st, w, cpu, pages, limit):
    """alloc_iova(iovad, pages, limit, true)->pfn_lo, or -1."""
    inline_into_callers()
    acquire(st.lk, TREE_LOCK, w)
    if st.meta[M_AUG]:
        pfn = alloc_aug_locked(st, w, pages, limit)
    else:
        pfn = alloc_locked(st, w, pages, limit)
    release(st.lk, TREE_LOCK, w)
    return pfn


@hot
def free(st, w, cpu, pfn, pages):
    """free_iova(iovad, pfn), checking that the range is pfn+pages."""
    inline_into_callers()
    acquire(st.lk, TREE_LOCK, w)
    if st.meta[M_AUG]:
        free_aug_locked(st, w, pfn, pages)
    else:
        free_locked(st, w, pfn, pages)
    release(st.lk, TREE_LOCK, w)


@njit(cache=True)
def find(st, w, pfn):
    """find_iova: (pfn_lo, pfn_hi) of the range holding pfn, or (-1, -1)."""
    acquire(st.lk, TREE_LOCK, w)
    r = find_locked(st, pfn)
    release(st.lk, TREE_LOCK, w)
    return r


# ------------------------------------------------------------------ checks


@njit(cache=True)
def _audit(nodes, meta, los, his):
    """Walk the tree in order, checking the red-black rules and the links.
    Fills los/his with the ranges in order; returns (count, error code,
    node at fault).  Error codes are explained in AUDIT_ERRORS."""
    root = meta[M_ROOT]
    end = nodes.shape[0]
    if root == NIL:
        return 0, 1, NIL
    if nodes[root + PARENT] != NIL:
        return 0, 2, root
    if nodes[root + COLOR] != BLACK:
        return 0, 3, root
    # explicit stack of (node, black height above it)
    stack = np.empty(2 * 130, dtype=np.int64)
    sp = 0
    n = root
    depth_black = 0
    leaf_black = -1
    count = 0
    last_hi = np.int64(-1)
    while sp > 0 or n != NIL:
        while n != NIL:
            if n < 0 or n >= end or n % NW != 0:
                return count, 4, n
            c = nodes[n + COLOR]
            if c != RED and c != BLACK:
                return count, 5, n
            if c == BLACK:
                depth_black += 1
            left = nodes[n + LEFT]
            right = nodes[n + RIGHT]
            for ch in (left, right):
                if ch != NIL:
                    if ch < 0 or ch >= end or ch % NW != 0:
                        return count, 4, n
                    if nodes[ch + PARENT] != n:
                        return count, 6, ch
                    if c == RED and nodes[ch + COLOR] == RED:
                        return count, 7, ch
                else:
                    # a NIL leaf: every path must count the same blacks
                    if leaf_black < 0:
                        leaf_black = depth_black
                    elif leaf_black != depth_black:
                        return count, 8, n
            if sp >= stack.shape[0]:
                return count, 9, n
            stack[sp] = n
            stack[sp + 1] = depth_black
            sp += 2
            n = left
        sp -= 2
        n = stack[sp]
        depth_black = stack[sp + 1]
        lo = nodes[n + LO]
        hi = nodes[n + HI]
        if hi < lo:
            return count, 10, n
        if lo <= last_hi:
            return count, 11, n
        last_hi = hi
        if count >= los.shape[0]:
            return count, 12, n
        los[count] = lo
        his[count] = hi
        count += 1
        n = nodes[n + RIGHT]
    return count, 0, NIL


AUDIT_ERRORS = {
    1: "the tree has no root",
    2: "the root has a parent",
    3: "the root is red",
    4: "a link points outside the node pool",
    5: "a node in the tree is marked free",
    6: "a child's parent link does not point back",
    7: "a red node has a red child",
    8: "black heights differ between paths",
    9: "the tree is deeper than a red-black tree of this size can be",
    10: "a node's range ends before it starts",
    11: "ranges out of order or overlapping",
    12: "more nodes in the tree than in the pool",
}


@njit(cache=True)
def _audit_gaps(nodes, meta):
    """The augmented tree's annotations, over a tree that passed _audit:
    each node's prev_iova is its in-order predecessor, its
    allocatable_size is its gap's, and its max_allocatable_size the
    largest in its subtree.  (error code, node at fault) as GAP_ERRORS."""
    stack = np.empty(130, dtype=np.int64)
    sp = 0
    n = meta[M_ROOT]
    last = NIL
    while sp > 0 or n != NIL:
        while n != NIL:
            stack[sp] = n
            sp += 1
            n = nodes[n + LEFT]
        sp -= 1
        n = stack[sp]
        if nodes[n + PREV] != last:
            return 1, n
        lo = np.int64(0) if last == NIL else nodes[last + HI] + 1
        g = nodes[n + GAP]
        if g & GAP_MASK != allocatable_size(lo, nodes[n + LO]):
            return 2, n
        m = g & GAP_MASK
        for c in (nodes[n + LEFT], nodes[n + RIGHT]):
            if c != NIL and nodes[c + GAP] >> GAP_SHIFT > m:
                m = nodes[c + GAP] >> GAP_SHIFT
        if g >> GAP_SHIFT != m:
            return 3, n
        last = n
        n = nodes[n + RIGHT]
    return 0, NIL


GAP_ERRORS = {
    1: "a node's prev_iova is not its predecessor",
    2: "a node's allocatable_size is not its gap's",
    3: "a node's max_allocatable_size is not its subtree's largest",
}


@njit(cache=True)
def _free_list(nodes, head, cap):
    """(length of the free list, the first node on it that is in use or
    NIL); compiled, as the pool of a 1024-CPU magazine domain holds a
    million nodes."""
    free = 0
    n = head
    while n != NIL and free <= cap:
        if nodes[n + COLOR] != UNUSED:
            return free, n
        free += 1
        n = nodes[n + LEFT]
    return free, NIL


def audit(st, p):
    """(problems, ranges): the structural problems of the tree, and its
    ranges in order as (pfn_lo, pages), the anchor left out."""
    problems = []
    cap = len(st.nodes) // NW
    los = np.empty(cap, dtype=np.int64)
    his = np.empty(cap, dtype=np.int64)
    count, err, at = _audit(st.nodes, st.meta, los, his)
    if err:
        problems.append("rbtree: %s (node %d)" % (AUDIT_ERRORS[err], at // NW))
        return problems, []
    m = st.meta
    if count != m[M_NODES]:
        problems.append("rbtree: %d nodes in the tree, the count says %d"
                        % (count, m[M_NODES]))
    if count == 0 or los[count - 1] != IOVA_ANCHOR or his[count - 1] != IOVA_ANCHOR:
        problems.append("rbtree: the anchor is not the last node")
    nd = st.nodes.reshape(cap, NW)
    free, bad = _free_list(st.nodes, int(m[M_FREE]), cap)
    if bad != NIL:
        problems.append("rbtree: node %d is on the free list but in use" % (bad // NW))
    elif free + count != cap:
        problems.append("rbtree: %d free + %d used nodes, the pool has %d"
                        % (free, count, cap))
    for name, word in (("cached_node", M_CACHED), ("cached32_node", M_CACHED32)):
        c = int(m[word])
        if not 0 <= c < cap * NW or c % NW or nd[c // NW, COLOR] == UNUSED:
            problems.append("rbtree: %s is not a node in the tree" % name)
    if not 0 < m[M_MAX32] <= m[M_DMA32]:
        problems.append("rbtree: max32_alloc_size %d out of range" % m[M_MAX32])
    first = 0
    if m[M_AUG]:
        err, at = _audit_gaps(st.nodes, m)
        if err:
            problems.append("rbtree: %s (node %d)" % (GAP_ERRORS[err], at // NW))
        if m[M_START]:
            # the range reserved below start_pfn is the domain's, not live
            if count < 2 or los[0] != 0 or his[0] != m[M_START] - 1:
                problems.append("rbtree: the range reserved below start_pfn is missing")
            else:
                first = 1
    elif nd[ANCHOR, PREV] or nd[ANCHOR, GAP]:
        problems.append("rbtree: a mainline tree holds gap annotations")
    ranges = []
    top = p.pages - 1
    for i in range(first, count - 1):
        lo, hi = int(los[i]), int(his[i])
        if lo < m[M_START] or hi > top:
            problems.append("rbtree: range %#x-%#x outside the domain [%#x, %#x]"
                            % (lo, hi, m[M_START], top))
        ranges.append((lo, hi - lo + 1))
    return problems, ranges



def check(st, p, live):
    """The red-black rules hold, the node counts add up, and the tree holds
    exactly the live ranges (plus the anchor)."""
    problems, got = audit(st, p)
    if problems:
        return problems
    want = sorted((int(pfn), int(pages)) for pfn, pages in live)
    if got != want:
        gs, ws = set(got), set(want)
        extra = sorted(gs - ws)
        missing = sorted(ws - gs)
        problems.append("rbtree: the tree holds %d ranges, %d are live; %d not "
                        "live (first %s), %d live not in the tree (first %s)"
                        % (len(got), len(want), len(extra),
                           extra[:1], len(missing), missing[:1]))
    nomem = int(st.stats.reshape(-1, STAT_LINE)[:, S_NOMEM].sum())
    if nomem:
        problems.append("rbtree: the node pool ran out %d time(s); raise "
                        "max_live" % nomem)
    return problems


def footprint(st, p):
    """Kernel bytes: the domain (anchor included) and one struct iova per
    other node (the augmented tree's range reserved below start_pfn is
    one), at the start and at the peak.  An augmented node is 64 bytes, a
    mainline one 40 (both take a 64-byte slab object)."""
    m = st.meta
    dom, node = (AUG_DOMAIN_BYTES, AUG_IOVA_BYTES) if m[M_AUG] else (DOMAIN_BYTES, IOVA_BYTES)
    start = 2 if m[M_AUG] and m[M_START] else 1
    return {"start": dom + (start - 1) * node,
            "peak": dom + int(m[M_PEAK] - 1) * node,
            "now": dom + int(m[M_NODES] - 1) * node}


def node_bytes(nodes):
    """Kernel bytes of a tree of `nodes` nodes, the anchor included."""
    return DOMAIN_BYTES + (nodes - 1) * IOVA_BYTES

