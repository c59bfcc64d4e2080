"""A plain-Python model of allocators/lockfree.py's placement, written from
its docstring: the list depot's rcache (tests/ref_iova.py's RCache, which
the lock-free cache follows rule for rule) over a bitmap searched downward
from a per-CPU hint.  Run one request at a time, the lock-free allocator
must answer exactly this."""
from tests.ref_iova import RCache


def start_hints(pages, start_pfn, ncpus):
    span = (pages - start_pfn) // ncpus // 64 * 64
    return [pages - cpu * span for cpu in range(ncpus)]


class Bitmap:
    """One bit per page; a request takes the highest free aligned run
    below the asking CPU's hint, else, once, from its limit down to where
    that search began; the hint moves to the range taken."""

    def __init__(self, pages, start_pfn, ncpus):
        self.pages = pages
        self.lo = start_pfn
        self.used = bytearray(pages)
        self.hint = start_hints(pages, start_pfn, ncpus)
        self.ranges = {}            # pfn -> size, for frees that give no size
        self.cpu = 0                # the CPU asking, set before alloc_iova

    def __len__(self):
        return len(self.ranges)

    def _highest(self, top, lo, size, align):
        pfn = (top - size) // align * align
        while pfn >= lo:
            if not any(self.used[pfn:pfn + size]):
                return pfn
            pfn -= align
        return None

    def alloc_iova(self, size, limit):
        top = self.pages if limit >= self.pages - 1 else limit + 1
        align = 1 << (size - 1).bit_length()
        start = min(self.hint[self.cpu], top)
        pfn = self._highest(start, self.lo, size, align)
        if pfn is None and start < top:
            pfn = self._highest(top, max(self.lo, start - size + 1), size, align)
        if pfn is None:
            return None
        self.used[pfn:pfn + size] = b"\x01" * size
        self.ranges[pfn] = size
        self.hint[self.cpu] = pfn
        return pfn

    def free_iova(self, pfn, pages=0):
        size = self.ranges.pop(pfn)
        assert pages in (0, size), (pfn, pages, size)
        self.used[pfn:pfn + size] = bytes(size)
        return True


class LockFree(RCache):
    """The lock-free allocator, one request at a time."""

    def __init__(self, pages, start_pfn, ncpus, mag_size):
        super().__init__(Bitmap(pages, start_pfn, ncpus), ncpus, mag_size, "list")

    def alloc(self, cpu, size, limit):
        self.d.cpu = cpu
        return super().alloc(cpu, size, limit)
