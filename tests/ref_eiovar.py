"""A plain-Python model of EiovaR (Malka, Amit, Tsafrir, FAST 2015) over
the mainline domain of ref_iova.py, written from allocators/eiovar.py's
docstring, to check the numba allocator against request by request.

Each size's list is a Python list whose last element is its head: a free
appends, an allocation takes the last element that ends at or below its
limit.  Cached ranges stay in the Domain, as they stay in the kernel's
tree."""
from tests.ref_iova import Domain, OP_ALLOC, OP_FREE

MAX_PAGES = 64
OP_FLUSH = 3


class EiovaR:
    def __init__(self, domain=None, max_pages=MAX_PAGES):
        self.d = Domain() if domain is None else domain
        self.max_pages = max_pages
        self.lists = {s: [] for s in range(1, max_pages + 1)}
        self.ncached = 0
        self.cset = set()
        self.hits = self.misses = self.flush_retries = 0

    def cached(self):
        return {lo: s for s, lst in self.lists.items() for lo in lst}

    def alloc(self, size, limit):
        """The list of `size`, then alloc_iova: pfn_lo or None."""
        if 1 <= size <= self.max_pages:
            lst = self.lists[size]
            for i in range(len(lst) - 1, -1, -1):
                if lst[i] + size - 1 <= limit:
                    self.hits += 1
                    self.ncached -= 1
                    self.cset.discard(lst[i])
                    return lst.pop(i)
            self.misses += 1
        if size < 1:
            return None
        pfn = self.d.alloc_iova(size, limit)
        if pfn is None and self.ncached:
            self.flush_retries += 1
            self.flush_all()
            pfn = self.d.alloc_iova(size, limit)
        return pfn

    def free(self, pfn, pages):
        """True if the range pfn..pfn+pages-1 was live and is now cached
        (or freed into the tree, past the largest cached size)."""
        r = self.d.find(pfn)
        if r is None or r[0] != pfn or (pages > 0 and r[1] - r[0] + 1 != pages):
            return False
        size = r[1] - r[0] + 1
        if size <= self.max_pages:
            lst = self.lists[size]
            if pfn in self.cset:
                return False            # a double free
            lst.append(pfn)
            self.cset.add(pfn)
            self.ncached += 1
        else:
            self.d.remove(pfn)
        return True

    def flush_all(self):
        n = 0
        for s in range(1, self.max_pages + 1):
            lst = self.lists[s]
            for lo in reversed(lst):    # from the head
                self.d.remove(lo)
                n += 1
            lst.clear()
        self.ncached = 0
        self.cset.clear()
        return n


def eiovar_trace(rnd, n, limits, target=64, max_size=80, p_flush=0.0005,
                 period=2000, e=None):
    """(ops, results, live, model): n requests (rows as in ref_iova.py,
    OP_FLUSH for a full flush) against an EiovaR model; the outstanding
    count drifts between phases so that lists fill and drain, and sizes
    past the cached ones go through to the tree."""
    if e is None:
        e = EiovaR()
    live, ops, res = [], [], []
    goal = target
    for i in range(n):
        if i % period == 0:
            goal = int(target * (0.25 + 1.5 * rnd.random()))
        if rnd.random() < p_flush:
            ops.append((OP_FLUSH, 0, 0, 0))
            res.append(e.flush_all())
            continue
        p_free = min(0.9, len(live) / (2.0 * max(goal, 1)))
        if live and rnd.random() < p_free:
            k = rnd.randrange(len(live))
            live[k], live[-1] = live[-1], live[k]
            pfn, size = live.pop()
            assert e.free(pfn, size)
            ops.append((OP_FREE, 0, pfn, size))
            res.append(0)
        else:
            # a few sizes dominate, as a driver's rings make them
            size = rnd.choice((1, 1, 1, 2, 4, 3)) if rnd.random() < 0.9 \
                else rnd.randint(1, max_size)
            limit = rnd.choice(limits)
            pfn = e.alloc(size, limit)
            ops.append((OP_ALLOC, 0, size, limit))
            res.append(-1 if pfn is None else pfn)
            if pfn is not None:
                live.append((pfn, size))
    return ops, res, live, e
