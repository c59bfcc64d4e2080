"""A slow, obviously-correct model of the x86 GART allocator, to check
allocators/bitmap.py against.  Written from the mainline kernel sources,
one byte per bit, no word tricks:

- arch/x86/kernel/amd_gart_64.c alloc_iommu / free_iommu: a next-fit hint
  (`next_bit`); a search from the hint, and when it finds nothing a second
  one from 0 that raises need_flush; after a success the hint moves to the
  end of the range, back to 0 (with need_flush) when that is the end of the
  map; a free at or above the hint moves the hint to the end of the freed
  range (and never back).
- lib/iommu-helper.c iommu_area_alloc: the search size is one less than the
  map (the last bit is never handed out); a candidate that straddles a
  segment boundary restarts the search at that boundary.
- lib/bitmap.c bitmap_find_next_zero_area_off: the first clear bit at or
  after start; if the run of nr bits from there reaches past size, nothing
  fits; if a bit inside it is set, start again just after that bit.
- include/linux/iommu-helper.h iommu_is_span_boundary.

The bus base is taken as aligned to the boundary (base_index 0 modulo the
boundary), streaming mappings (no alignment), as the model does.  A request
longer than the boundary is failed: the kernel would search forever.
"""


class RefGart:
    def __init__(self, pages, boundary):
        assert pages >= 2 and boundary >= 1 and boundary & (boundary - 1) == 0
        self.pages = pages
        self.boundary = boundary
        self.used = bytearray(pages)       # 1: allocated
        self.next_bit = 0
        self.need_flush = False
        self.wraps = 0

    # lib/bitmap.c
    def _first(self, value, start, end):
        """The first bit in [start, end) equal to value, or end."""
        if start >= end:
            return end
        i = self.used.find(b"\1" if value else b"\0", start, end)
        return end if i < 0 else i

    def _zero_area(self, size, start, nr):
        while True:
            index = self._first(False, start, size)
            end = index + nr
            if end > size:
                return end                      # >= size: the caller's "none"
            busy = self._first(True, index, end)
            if busy == end:
                return index
            start = busy + 1

    def _spans(self, index, nr):
        return index % self.boundary + nr > self.boundary

    # lib/iommu-helper.c
    def _area_alloc(self, start, nr):
        if nr > self.boundary:
            return -1
        size = self.pages - 1
        while True:
            index = self._zero_area(size, start, nr)
            if index >= size:
                return -1
            if self._spans(index, nr):
                start = (index // self.boundary + 1) * self.boundary
                continue
            self.used[index:index + nr] = b"\1" * nr
            return index

    # arch/x86/kernel/amd_gart_64.c
    def alloc(self, nr):
        offset = self._area_alloc(self.next_bit, nr)
        if offset == -1:
            self.need_flush = True
            self.wraps += 1
            offset = self._area_alloc(0, nr)
        if offset != -1:
            self.next_bit = offset + nr
            if self.next_bit >= self.pages:
                self.next_bit = 0
                self.need_flush = True
        return offset

    def free(self, offset, nr):
        assert self.used[offset:offset + nr] == b"\1" * nr, "freeing a clear bit"
        self.used[offset:offset + nr] = bytes(nr)
        if offset >= self.next_bit:
            self.next_bit = offset + nr


def replay_lines(text, pages, boundary):
    """Replay trace text (format v1, trusted: no validation) on the model:
    the lines `iommu-stress replay --allocator bitmap` must print."""
    g = RefGart(pages, boundary)
    held = {}
    out = []
    for raw in text.split("\n"):
        f = raw.split("#", 1)[0].split()
        if not f or f[0] == "cpu":
            continue
        if f[0] == "a":
            nr = int(f[2], 0)
            pfn = g.alloc(nr)
            if pfn >= 0:
                held[f[1]] = (pfn, nr)
            else:
                held.pop(f[1], None)
            out.append("%s %s" % (f[1], pfn if pfn >= 0 else "fail"))
        else:
            pfn, nr = held.pop(f[1])
            g.free(pfn, nr)
    return out
