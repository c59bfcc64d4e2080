"""A plain-Python model of Peng Zhang's "iommu/iova: Optimize alloc_iova
with rbtree_augmented" (iommu list, v3, September 2022), written from the
patch independently of the numba allocator, to check it against request by
request.

Unlike mainline's (tests/ref_iova.py), the patch's answers depend on the
shape of the tree: inside a subtree its search takes a node's own gap
before the gaps of its right subtree, which lie higher.  So this model is
a real red-black tree, rebalanced case by case as lib/rbtree.c does, with
both mirror cases written out.  The subtree maxima are not kept through
the kernel's callbacks: every node whose children change is marked, and
after each operation the marked nodes and their ancestors are recomputed,
deepest first.  A gap's allocatable size is computed from its definition
(the largest request that fits at the top of the gap, aligned), not with
the patch's loop; tests check that the two agree.
"""
PAGE_SHIFT = 12
ANCHOR = (1 << 64) - 1              # IOVA_ANCHOR, ~0UL
LIST_TRIES = 32


def fls(x):
    return x.bit_length()


def allocatable(lo, hi):
    """The largest request that the gap [lo, hi) places, size-aligned:
    for an alignment A (sizes A/2+1 .. A, or 1), the lowest multiple of A
    at or above lo starts it, so up to hi - that many pages fit."""
    if lo == 0:
        return hi               # pfn 0 is aligned for every size
    best = 0
    # no request is larger than the gap, nor aligned to more than twice it
    for k in range((hi - lo).bit_length() + 1):
        a = 1 << k
        start = -(-lo // a) * a
        s = min(a, hi - start)
        if s > a // 2 and s > best:
            best = s
    return best


def patch_allocatable(lo, hi):
    """__compute_allocatable_size as the patch writes it."""
    if lo == 0:
        return hi
    out = 0
    while lo < hi:
        delta = lo & -lo
        if hi - lo <= delta:
            out = max(out, hi - lo)
            break
        out = max(out, delta)
        lo += delta
    return out


class Node:
    __slots__ = ("lo", "hi", "left", "right", "parent", "red", "prev", "asize", "max")

    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi
        self.left = self.right = self.parent = self.prev = None
        self.red = True
        self.asize = self.max = 0


class Domain:
    """struct iova_domain with the patch's alloc_iova / free_iova."""

    def __init__(self, start_pfn=1):
        self.start_pfn = start_pfn
        self.dma_32bit_pfn = 1 << (32 - PAGE_SHIFT)
        self.max32_alloc_size = self.dma_32bit_pfn
        self.anchor = Node(ANCHOR, ANCHOR)
        self.anchor.red = False
        self.root = self.anchor
        self.cached = self.cached32 = self.anchor
        self.dirty = set()
        self._gap(self.anchor)
        self._fix()
        if start_pfn:
            # reserve_iova(iovad, 0, start_pfn - 1)
            self._insert(Node(0, start_pfn - 1), None)

    # ------------------------------------------------------------ the tree

    def _set(self, node, side, child):
        setattr(node, side, child)
        self.dirty.add(node)

    def _replace(self, old, new, parent):
        """__rb_change_child."""
        if parent is None:
            self.root = new
        elif parent.left is old:
            self._set(parent, "left", new)
        else:
            self._set(parent, "right", new)

    def _rotate_left(self, x):
        y = x.right
        self._set(x, "right", y.left)
        if y.left:
            y.left.parent = x
        y.parent = x.parent
        self._replace(x, y, x.parent)
        self._set(y, "left", x)
        x.parent = y

    def _rotate_right(self, x):
        y = x.left
        self._set(x, "left", y.right)
        if y.right:
            y.right.parent = x
        y.parent = x.parent
        self._replace(x, y, x.parent)
        self._set(y, "right", x)
        x.parent = y

    @staticmethod
    def _red(n):
        return n is not None and n.red

    def _insert_fixup(self, node):
        """lib/rbtree.c __rb_insert, both mirror cases."""
        while True:
            parent = node.parent
            if parent is None:
                node.red = False
                return
            if not parent.red:
                return
            g = parent.parent
            if parent is g.left:
                uncle = g.right
                if self._red(uncle):
                    uncle.red = parent.red = False
                    g.red = True
                    node = g
                    continue
                if node is parent.right:
                    self._rotate_left(parent)
                    parent = node
                self._rotate_right(g)
                parent.red, g.red = False, True
                return
            uncle = g.left
            if self._red(uncle):
                uncle.red = parent.red = False
                g.red = True
                node = g
                continue
            if node is parent.left:
                self._rotate_right(parent)
                parent = node
            self._rotate_left(g)
            parent.red, g.red = False, True
            return

    def _erase_fixup(self, parent, node):
        """lib/rbtree.c ____rb_erase_color: `node` (None or black) has one
        black too few below `parent`."""
        while True:
            if node is parent.left:
                s = parent.right
                if s.red:
                    s.red, parent.red = False, True
                    self._rotate_left(parent)
                    s = parent.right
                if not self._red(s.left) and not self._red(s.right):
                    s.red = True
                    if parent.red:
                        parent.red = False
                        return
                    node, parent = parent, parent.parent
                    if parent is None:
                        return
                    continue
                if not self._red(s.right):
                    s.left.red, s.red = False, True
                    self._rotate_right(s)
                    s = parent.right
                s.red, parent.red = parent.red, False
                s.right.red = False
                self._rotate_left(parent)
                return
            s = parent.left
            if s.red:
                s.red, parent.red = False, True
                self._rotate_right(parent)
                s = parent.left
            if not self._red(s.left) and not self._red(s.right):
                s.red = True
                if parent.red:
                    parent.red = False
                    return
                node, parent = parent, parent.parent
                if parent is None:
                    return
                continue
            if not self._red(s.left):
                s.right.red, s.red = False, True
                self._rotate_left(s)
                s = parent.left
            s.red, parent.red = parent.red, False
            s.left.red = False
            self._rotate_right(parent)
            return

    def _erase(self, node):
        """lib/rbtree.c rb_erase: a node with two children is replaced by
        its successor, which takes its place and colour."""
        if node.left is not None and node.right is not None:
            succ = node.right
            while succ.left is not None:
                succ = succ.left
            child, parent = succ.right, succ.parent
            missing = not succ.red and child is None
            if parent is node:
                parent = succ
            else:
                self._set(parent, "left", child)
                if child:
                    child.parent = parent
                self._set(succ, "right", node.right)
                node.right.parent = succ
            self._set(succ, "left", node.left)
            node.left.parent = succ
            succ.parent = node.parent
            self._replace(node, succ, node.parent)
            succ.red = node.red
            self.dirty.add(succ)
            if child is not None:
                child.red = False
            elif missing:
                self._erase_fixup(parent, None)
            return
        child = node.left if node.left is not None else node.right
        parent = node.parent
        self._replace(node, child, parent)
        if child is not None:
            child.parent = parent
            child.red = False       # a lone child is red; it takes the black
        elif not node.red and parent is not None:
            self._erase_fixup(parent, None)

    def _fix(self):
        """Recompute the max of every marked node and its ancestors,
        deepest first."""
        todo = {}
        for n in self.dirty:
            while n is not None and n not in todo:
                d, m = 0, n
                while m.parent is not None:
                    d, m = d + 1, m.parent
                todo[n] = d
                n = n.parent
        for n in sorted(todo, key=todo.get, reverse=True):
            n.max = max([n.asize] + [c.max for c in (n.left, n.right) if c is not None])
        self.dirty = set()

    def _gap(self, n):
        lo = n.prev.hi + 1 if n.prev else 0
        n.asize = allocatable(lo, n.lo)
        self.dirty.add(n)

    @staticmethod
    def _next(n):
        if n.right:
            n = n.right
            while n.left:
                n = n.left
            return n
        while n.parent and n is n.parent.right:
            n = n.parent
        return n.parent

    def _insert(self, new, start):
        """iova_insert_rbtree: descend from `start` (or the root), link,
        splice into the prev list, and rebalance."""
        n, parent = start or self.root, None
        while n is not None:
            parent = n
            n = n.left if new.lo < n.lo else n.right
        new.parent = parent
        self._set(parent, "left" if new.lo < parent.lo else "right", new)
        nxt = self._next(new)
        new.prev, nxt.prev = nxt.prev, new
        self._gap(new)
        self._gap(nxt)
        self._insert_fixup(new)
        self._fix()

    # -------------------------------------------------------- the search

    @staticmethod
    def _prev_high(n):
        return n.prev.hi + 1 if n.prev else 0

    def _check(self, n, limit_pfn, size, mask):
        """check_interval on n's gap."""
        lo, hi = self._prev_high(n), min(n.lo, limit_pfn)
        return lo < hi and hi >= size and ((hi - size) & mask) >= lo

    def _find_limit(self, limit_pfn):
        n = self.root
        while n:
            if limit_pfn - 1 > n.hi:
                n = n.right
            elif limit_pfn <= self._prev_high(n):
                n = n.left
            else:
                break
        return n

    def _search(self, limit_pfn, size, mask):
        """search_rbtree and check_subtree: the node whose gap is used."""
        curr = self._find_limit(limit_pfn)
        if self._check(curr, limit_pfn, size, mask):
            return curr
        came_from_left = False
        while True:
            if not came_from_left and curr.left and curr.left.max >= size:
                n = curr.left
                while n.asize < size:
                    n = n.right if n.right and n.right.max >= size else n.left
                return n
            parent = curr.parent
            if parent is None:
                return None
            came_from_left = parent.left is curr
            curr = parent
            if not came_from_left and curr.asize >= size:
                return curr

    def alloc_iova(self, size, limit):
        """alloc_iova(iovad, size, limit, true) of the patch: pfn_lo or None."""
        limit_pfn = limit + 1
        mask = ~((1 << fls(size - 1)) - 1)
        dma32 = self.dma_32bit_pfn
        if limit_pfn <= dma32 and size >= self.max32_alloc_size:
            return None
        curr = self.cached32 if limit_pfn <= dma32 else self.cached
        if not self._check(curr, limit_pfn, size, mask):
            curr = None
            if limit_pfn > dma32:
                n, tries = self.anchor, 0
                while n is not None and tries < LIST_TRIES:
                    if self._check(n, limit_pfn, size, mask):
                        curr = n
                        break
                    tries += 1
                    n = n.prev
                if n is None:
                    self.max32_alloc_size = size
                    return None
            if curr is None:
                curr = self._search(limit_pfn, size, mask)
                if curr is None:
                    if limit_pfn >= dma32:
                        self.max32_alloc_size = size
                    return None
        pfn = (min(curr.lo, limit_pfn) - size) & mask
        new = Node(pfn, pfn + size - 1)
        self._insert(new, curr)
        if new.hi < dma32:
            self.cached32 = new
        else:
            self.cached = new
        return pfn

    def _find(self, pfn):
        n = self.root
        while n:
            if pfn < n.lo:
                n = n.left
            elif pfn > n.hi:
                n = n.right
            else:
                return n
        return None

    def free_iova(self, pfn, pages=0):
        """free_iova of a range starting at pfn (`pages` long, if given):
        True if freed.  The range reserved below start_pfn is refused."""
        n = self._find(pfn)
        if n is None or n is self.anchor or n.lo != pfn or pfn < self.start_pfn or \
                (pages and n.hi - n.lo + 1 != pages):
            return False
        nxt = self._next(n)
        dma32 = self.dma_32bit_pfn
        if n is self.cached32 or (n.hi < dma32 and n.lo >= self.cached32.lo):
            self.cached32 = nxt
        if n.lo < dma32:
            self.max32_alloc_size = dma32
        if n.lo >= self.cached.lo:
            self.cached = nxt
        nxt.prev = n.prev
        self._gap(nxt)
        self._erase(n)
        self.dirty.discard(n)
        self._fix()
        return True

    # ---------------------------------------------------------- views

    def nodes(self):
        """Every node in order, the anchor last."""
        out, stack, n = [], [], self.root
        while stack or n:
            while n:
                stack.append(n)
                n = n.left
            n = stack.pop()
            out.append(n)
            n = n.right
        return out

    def ranges(self):
        """The live ranges: (pfn_lo, pages), the reserved one and the
        anchor left out."""
        return [(n.lo, n.hi - n.lo + 1) for n in self.nodes()[:-1] if n.lo >= self.start_pfn]

    def shape(self):
        """The tree as nested (lo, red, left, right) tuples."""
        def walk(n):
            return None if n is None else (n.lo, n.red, walk(n.left), walk(n.right))
        return walk(self.root)
