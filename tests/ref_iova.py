"""A plain-Python model of mainline drivers/iommu/iova.c (Linux 6.7+),
written from the kernel source independently of the numba allocators, to
check them against request by request.

The domain is a sorted list of ranges instead of a red-black tree: the
kernel's walks only ever step to a node's in-order neighbour, so an index
into the sorted list stands for an rb_node.  The cached nodes are kept as
the pfn_lo of the node they point at.  The rcache keeps magazines as Python
objects so that the swaps between per-CPU slots and the depot are the
kernel's pointer swaps.
"""
import bisect

PAGE_SHIFT = 12
ANCHOR = (1 << 64) - 1              # IOVA_ANCHOR, ~0UL
IOVA_RANGE_CACHE_MAX_SIZE = 6
MAX_GLOBAL_MAGS = 32


def fls(x):
    return x.bit_length()


def roundup_pow_of_two(x):
    return 1 << (x - 1).bit_length()


def order_base_2(x):
    return (x - 1).bit_length() if x > 1 else 0


class Domain:
    """struct iova_domain with alloc_iova / free_iova / find_iova."""

    def __init__(self, start_pfn=1):
        self.start_pfn = start_pfn
        self.dma_32bit_pfn = 1 << (32 - PAGE_SHIFT)
        self.max32_alloc_size = self.dma_32bit_pfn
        # the anchor is always the last entry
        self.los = [ANCHOR]
        self.his = [ANCHOR]
        self.cached = ANCHOR        # pfn_lo of cached_node
        self.cached32 = ANCHOR      # pfn_lo of cached32_node
        self.retries = 0
        self.fastfails = 0

    def __len__(self):
        return len(self.los) - 1

    def ranges(self):
        return [(lo, hi - lo + 1) for lo, hi in zip(self.los[:-1], self.his[:-1])]

    def _index(self, lo):
        return bisect.bisect_left(self.los, lo)

    def _first_reaching(self, pfn):
        """Index of the lowest range whose end is at or above pfn: where
        the retry walk may start without changing its outcome."""
        lo, hi = 0, len(self.his) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.his[mid] >= pfn:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def alloc_iova(self, size, limit):
        """alloc_iova(iovad, size, limit, true): pfn_lo or None."""
        limit_pfn = limit + 1
        mask = ~((1 << fls(size - 1)) - 1)
        if limit_pfn <= self.dma_32bit_pfn and size >= self.max32_alloc_size:
            self.fastfails += 1
            return None
        key = self.cached32 if limit_pfn <= self.dma_32bit_pfn else self.cached
        i = self._index(key)
        retry_pfn = self.his[i]
        high, low = limit_pfn, self.start_pfn
        while True:
            # walk down from node i until the gap under it holds the range
            while True:
                high = min(high, self.los[i])
                new = (high - size) & mask
                i -= 1
                if i < 0 or new > self.his[i] or new < low:
                    break
            if high < size or new < low:
                if low == self.start_pfn and retry_pfn < limit_pfn:
                    high, low = limit_pfn, retry_pfn + 1
                    if limit_pfn > self.dma_32bit_pfn:
                        i = len(self.los) - 1
                    else:
                        i = self._first_reaching(limit_pfn)
                    self.retries += 1
                    continue
                self.max32_alloc_size = size
                return None
            break
        j = i + 1       # the new range goes just below node i + 1
        self.los.insert(j, new)
        self.his.insert(j, new + size - 1)
        if new + size - 1 < self.dma_32bit_pfn:
            self.cached32 = new
        else:
            self.cached = new
        return new

    def find(self, pfn):
        """find_iova: (lo, hi) of the range holding pfn, or None."""
        j = bisect.bisect_right(self.los, pfn) - 1
        if j >= 0 and self.his[j] >= pfn and self.los[j] != ANCHOR:
            return self.los[j], self.his[j]
        return None

    def remove(self, lo):
        """remove_iova on the range starting at lo."""
        j = self._index(lo)
        hi = self.his[j]
        nxt = self.los[j + 1]
        if lo == self.cached32 or (hi < self.dma_32bit_pfn and lo >= self.cached32):
            self.cached32 = nxt
        if lo < self.dma_32bit_pfn:
            self.max32_alloc_size = self.dma_32bit_pfn
        if lo >= self.cached:
            self.cached = nxt
        del self.los[j]
        del self.his[j]

    def free_iova(self, pfn, pages=0):
        """free_iova, refusing a range that does not start at pfn (or is
        not `pages` long): True if freed."""
        r = self.find(pfn)
        if r is None or r[0] != pfn or (pages > 0 and r[1] - r[0] + 1 != pages):
            return False
        self.remove(pfn)
        return True


class Magazine:
    def __init__(self):
        self.pfns = []

    def __repr__(self):
        return "Mag(%r)" % self.pfns


class RCache:
    """alloc_iova_fast / free_iova_fast over a Domain, with the depot of
    one of three eras: 'list' (6.7+), 'fixed' (2016-2023, MAX_GLOBAL_MAGS
    array, overflow freed to the tree), 'prealloc' (the 2020 proposal:
    depot slots allocated up front and swapped, never freed)."""

    def __init__(self, domain, ncpus, mag_size=127, depot="list"):
        self.d = domain
        self.ncpus = ncpus
        self.mag_size = mag_size
        self.kind = depot
        self.mags_live = 0
        self.mags_peak = 0
        n = IOVA_RANGE_CACHE_MAX_SIZE
        self.loaded = [[self._new() for _ in range(n)] for _ in range(ncpus)]
        self.prev = [[self._new() for _ in range(n)] for _ in range(ncpus)]
        if depot == "prealloc":
            self.depot = [[self._new() for _ in range(MAX_GLOBAL_MAGS)]
                          for _ in range(n)]
        else:
            self.depot = [[] for _ in range(n)]     # list: head is the end
        self.depot_size = [0] * n
        self.pending = [False] * n
        self.hits = [0] * n
        self.misses = [0] * n
        self.pushes = 0
        self.pops = 0
        self.flushes = 0
        self.trims = 0

    # magazines come from and go back to kmalloc
    def _new(self):
        self.mags_live += 1
        self.mags_peak = max(self.mags_peak, self.mags_live)
        return Magazine()

    def _drop(self, mag):
        self.mags_live -= 1

    def _full(self, mag):
        return len(mag.pfns) == self.mag_size

    def _free_pfns(self, mag):
        for pfn in mag.pfns:
            self.d.free_iova(pfn)
        mag.pfns = []

    @staticmethod
    def _pop(mag, limit_pfn):
        """iova_magazine_pop: the topmost entry at or below the limit, its
        slot filled from the top."""
        i = len(mag.pfns) - 1
        while mag.pfns[i] > limit_pfn:
            if i == 0:
                return 0
            i -= 1
        pfn = mag.pfns[i]
        mag.pfns[i] = mag.pfns[-1]
        mag.pfns.pop()
        return pfn

    def _insert(self, cpu, c, pfn):
        """__iova_rcache_insert."""
        L, P = self.loaded[cpu], self.prev[cpu]
        to_free = None
        ok = False
        if not self._full(L[c]):
            ok = True
        elif self.kind == "prealloc":
            if not P[c].pfns:
                L[c], P[c] = P[c], L[c]
                ok = True
            else:
                ds = self.depot_size[c]
                if ds < MAX_GLOBAL_MAGS:
                    slot = self.depot[c][ds]
                    self.depot[c][ds] = P[c]
                    P[c] = L[c]
                    L[c] = slot
                    self.depot_size[c] = ds + 1
                    self.pushes += 1
                    ok = True
                else:
                    to_free = L[c]
                    L[c] = self._new()
                    ok = True
        elif not self._full(P[c]):
            L[c], P[c] = P[c], L[c]
            ok = True
        else:
            new = self._new()
            if self.kind == "list":
                self.depot[c].append(L[c])
                self.depot_size[c] += 1
                self.pending[c] = True
                self.pushes += 1
            elif self.depot_size[c] < MAX_GLOBAL_MAGS:
                self.depot[c].append(L[c])
                self.depot_size[c] += 1
                self.pushes += 1
            else:
                to_free = L[c]
            L[c] = new
            ok = True
        if ok:
            L[c].pfns.append(pfn)
        if to_free is not None:
            self._free_pfns(to_free)
            self._drop(to_free)
        return ok

    def _get(self, cpu, c, limit_pfn):
        """__iova_rcache_get: a pfn, or 0."""
        L, P = self.loaded[cpu], self.prev[cpu]
        has = False
        if L[c].pfns:
            has = True
        elif (self._full(P[c]) if self.kind == "prealloc" else P[c].pfns):
            L[c], P[c] = P[c], L[c]
            has = True
        elif self.depot_size[c] > 0:
            ds = self.depot_size[c]
            if self.kind == "prealloc":
                slot = self.depot[c][ds - 1]
                self.depot[c][ds - 1] = P[c]
                P[c] = L[c]
                L[c] = slot
            else:
                self._drop(L[c])
                L[c] = self.depot[c].pop()
            self.depot_size[c] = ds - 1
            self.pops += 1
            has = True
        if has:
            return self._pop(L[c], limit_pfn)
        return 0

    def _flush_cpu(self, cpu):
        for c in range(IOVA_RANGE_CACHE_MAX_SIZE):
            self._free_pfns(self.loaded[cpu][c])
            self._free_pfns(self.prev[cpu][c])

    def _flush_global(self):
        for c in range(IOVA_RANGE_CACHE_MAX_SIZE):
            if self.kind == "list":
                while self.depot[c]:
                    mag = self.depot[c].pop()
                    self._free_pfns(mag)
                    self._drop(mag)
            elif self.kind == "fixed":
                for mag in self.depot[c]:
                    self._free_pfns(mag)
                    self._drop(mag)
                self.depot[c] = []
            else:
                for mag in self.depot[c]:
                    self._free_pfns(mag)
            self.depot_size[c] = 0

    def alloc(self, cpu, size, limit):
        """alloc_iova_fast(iovad, size, limit, true): pfn or None."""
        if size < (1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)):
            size = roundup_pow_of_two(size)
        c = order_base_2(size)
        if c < IOVA_RANGE_CACHE_MAX_SIZE:
            lim = limit + 1 - size
            if lim < 0:
                lim = ANCHOR        # the kernel's unsigned subtraction wraps
            pfn = self._get(cpu, c, lim)
            if pfn:
                self.hits[c] += 1
                return pfn
            self.misses[c] += 1
        pfn = self.d.alloc_iova(size, limit)
        if pfn is None:
            self.flushes += 1
            for k in range(self.ncpus):
                self._flush_cpu(k)
            self._flush_global()
            pfn = self.d.alloc_iova(size, limit)
        return pfn

    def free(self, cpu, pfn, pages):
        """free_iova_fast(iovad, pfn, pages)."""
        c = order_base_2(pages)
        if c < IOVA_RANGE_CACHE_MAX_SIZE and self._insert(cpu, c, pfn):
            return
        size = pages if pages >= 32 else roundup_pow_of_two(pages)
        self.d.free_iova(pfn, size)

    def trim(self, ncpus):
        """One run of every rcache's iova_depot_work_func that is pending:
        the number of magazines freed."""
        n = 0
        if self.kind != "list":
            return 0
        for c in range(IOVA_RANGE_CACHE_MAX_SIZE):
            if not self.pending[c]:
                continue
            if self.depot_size[c] > ncpus:
                mag = self.depot[c].pop()
                self.depot_size[c] -= 1
                self._free_pfns(mag)
                self._drop(mag)
                self.trims += 1
                n += 1
            else:
                self.pending[c] = False
        return n

    def flush_all(self):
        """Every cached IOVA back to the tree: the count returned."""
        before = len(self.d)
        for k in range(self.ncpus):
            self._flush_cpu(k)
        self._flush_global()
        return before - len(self.d)

    def run(self, rows):
        """The result of each row (tests/drivers.py's rows): the pfn or -1
        of an allocation, 0 for a free, what a trim or flush returns."""
        out = []
        for op, cpu, a, b in rows:
            if op == OP_ALLOC:
                r = self.alloc(cpu, a, b)
                out.append(-1 if r is None else r)
            elif op == OP_FREE:
                self.free(cpu, a, b)
                out.append(0)
            elif op == OP_TRIM:
                out.append(self.trim(a))
            else:
                out.append(self.flush_all())
        return out

    def cached(self):
        """Every pfn held by a magazine, with its size class."""
        out = []
        for cpu in range(self.ncpus):
            for c in range(IOVA_RANGE_CACHE_MAX_SIZE):
                out += [(pfn, c) for pfn in self.loaded[cpu][c].pfns]
                out += [(pfn, c) for pfn in self.prev[cpu][c].pfns]
        for c in range(IOVA_RANGE_CACHE_MAX_SIZE):
            for mag in self.depot[c]:
                out += [(pfn, c) for pfn in mag.pfns]
        return out


# ------------------------------------------------------------------ traces
# A trace is built by running the reference, so that every free names a
# range the reference handed out; the numba allocator then replays the same
# rows and must give the same result on every one.

OP_ALLOC, OP_FREE, OP_TRIM, OP_FLUSH = range(4)


def _target(rnd, i, target, period):
    """An outstanding-count goal that moves between phases, so that caches
    fill and drain."""
    if target is None:
        return None
    return int(target * (0.25 + 1.5 * rnd.random())) if i % period == 0 else -1


def tree_trace(rnd, n, limits, target=64, max_size=64, period=2000):
    """(ops, results, live, domain): n requests against a Domain."""
    d = Domain()
    live, ops, res = [], [], []
    goal = target
    for i in range(n):
        g = _target(rnd, i, target, period)
        if g is not None and g >= 0:
            goal = g
        p_free = min(0.9, len(live) / (2.0 * max(goal, 1)))
        if live and rnd.random() < p_free:
            k = rnd.randrange(len(live))
            live[k], live[-1] = live[-1], live[k]
            pfn, size = live.pop()
            assert d.free_iova(pfn, size)
            ops.append((OP_FREE, 0, pfn, size))
            res.append(0)
        else:
            size = rnd.randint(1, max_size)
            limit = rnd.choice(limits)
            pfn = d.alloc_iova(size, limit)
            ops.append((OP_ALLOC, 0, size, limit))
            res.append(-1 if pfn is None else pfn)
            if pfn is not None:
                live.append((pfn, size))
    return ops, res, live, d


def rcache_trace(rnd, n, ncpus, mag_size, depot, limits, target=64,
                 max_size=64, p_trim=0.005, p_flush=0.0005, p_switch=0.1,
                 period=2000, rc=None):
    """(ops, results, live, rcache): n requests against an RCache (a new
    one over a Domain unless `rc` is given), the CPU changing now and
    then, with trims and full flushes sprinkled in."""
    if rc is None:
        rc = RCache(Domain(), ncpus, mag_size, depot)
    live, ops, res = [], [], []
    cpu = 0
    goal = target
    for i in range(n):
        g = _target(rnd, i, target, period)
        if g is not None and g >= 0:
            goal = g
        if rnd.random() < p_switch:
            cpu = rnd.randrange(ncpus)
        x = rnd.random()
        if x < p_trim:
            ops.append((OP_TRIM, 0, ncpus, 0))
            res.append(rc.trim(ncpus))
            continue
        if x < p_trim + p_flush:
            ops.append((OP_FLUSH, 0, 0, 0))
            res.append(rc.flush_all())
            continue
        p_free = min(0.9, len(live) / (2.0 * max(goal, 1)))
        if live and rnd.random() < p_free:
            k = rnd.randrange(len(live))
            live[k], live[-1] = live[-1], live[k]
            pfn, size = live.pop()
            rc.free(cpu, pfn, size)
            ops.append((OP_FREE, cpu, pfn, size))
            res.append(0)
        else:
            size = rnd.randint(1, max_size)
            limit = rnd.choice(limits)
            pfn = rc.alloc(cpu, size, limit)
            ops.append((OP_ALLOC, cpu, size, limit))
            res.append(-1 if pfn is None else pfn)
            if pfn is not None:
                live.append((pfn, size))
    return ops, res, live, rc
