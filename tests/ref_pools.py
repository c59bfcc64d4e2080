"""A reference model of powerpc's pooled TCE allocator, written from
arch/powerpc/kernel/iommu.c, lib/iommu-helper.c, lib/bitmap.c and
include/linux/hash.h independently of allocators/pools.py: one byte per
table entry, Python integers, no locks, straightforward loops.  It keeps a
tally of the lock acquisitions the kernel would make, so that the lock
hand-over pattern can be compared too.

Same modelling choices as allocators/pools.py (its docstring): it_offset 0,
4 KiB IOMMU pages, align_order 0, entry 0 reserved, `limit` a DMA mask in
pages (<= 0: none), a request wider than the segment boundary fails.
"""

HASHBITS = 2                  # IOMMU_POOL_HASHBITS
NR_POOLS = 1 << HASHBITS      # IOMMU_NR_POOLS
GOLDEN = 0x61C88647           # GOLDEN_RATIO_32
BLOCKSIZE = 16                # it_blocksize on pseries and powernv
PAGE_SHIFT = 12


def hash_32(val, bits):
    return ((val % (1 << 32)) * GOLDEN % (1 << 32)) >> (32 - bits)


class Pool:
    def __init__(self, index, start, end):
        self.index = index        # 0..3, or "large"
        self.start = start
        self.end = end
        self.hint = start


class RefPools:
    def __init__(self, pages, boundary=1 << 20):
        self.size = pages
        self.boundary = boundary
        self.map = bytearray(pages)
        self.map[0] = 1           # entry 0 is never mapped
        if pages * (1 << PAGE_SHIFT) >= 1024 * 1024 * 1024:
            self.nr_pools = NR_POOLS
        else:
            self.nr_pools = 1
        self.poolsize = (pages * 3 // 4) // self.nr_pools
        self.pools = []
        for i in range(self.nr_pools):
            self.pools.append(Pool(i, i * self.poolsize, (i + 1) * self.poolsize))
        self.large = Pool("large", self.nr_pools * self.poolsize, pages)
        self.allocs = self.fails = self.spills = self.retries = self.frees = 0
        self.lock_acquisitions = 0

    # lib/bitmap.c, lib/iommu-helper.c -------------------------------------

    def _first(self, value, start, end):
        """First entry in [start, end) equal to value, or end."""
        if start >= end:
            return end
        i = self.map.find(value, start, end)
        return end if i < 0 else i

    def _zero_area(self, size, start, nr):
        while True:
            index = self._first(0, start, size)
            stop = index + nr
            if stop > size:
                return stop
            busy = self._first(1, index, stop)
            if busy == stop:
                return index
            start = busy + 1

    def area_alloc(self, size, start, nr):
        if nr > self.boundary:
            return -1
        size = size - 1
        while True:
            index = self._zero_area(size, start, nr)
            if index >= size:
                return -1
            if index % self.boundary + nr > self.boundary:
                start = -(-index // self.boundary) * self.boundary   # ALIGN
                continue
            for i in range(index, index + nr):
                self.map[i] = 1
            return index

    # arch/powerpc/kernel/iommu.c -----------------------------------------

    def cpu_pool(self, cpu):
        return hash_32(cpu, HASHBITS) % self.nr_pools

    def alloc(self, cpu, npages, limit=0):
        if npages <= 0:
            self.fails += 1
            return -1
        large = npages > 15
        pool_nr = self.cpu_pool(cpu)
        pool = self.large if large else self.pools[pool_nr]
        tried_first = pool
        self.lock_acquisitions += 1
        attempt = 0
        while True:
            start = pool.hint
            top = pool.end
            if start >= top:
                start = pool.start
            if limit > 0 and top > limit:
                top = limit + 1
                if (start & limit) >= top or attempt > 0:
                    pool = self.pools[0]
                    self.lock_acquisitions += 1
                    start = pool.start
                else:
                    start = start & limit
            got = self.area_alloc(top, start, npages)
            if got != -1:
                break
            if attempt == 0:
                pool.hint = pool.start
            elif attempt <= self.nr_pools:
                pool_nr = (pool_nr + 1) % self.nr_pools
                pool = self.pools[pool_nr]
                self.lock_acquisitions += 1
                pool.hint = pool.start
            elif attempt == self.nr_pools + 1:
                pool = self.large
                self.lock_acquisitions += 1
                pool.hint = pool.start
            else:
                self.fails += 1
                return -1
            attempt += 1
            self.retries += 1
        stop = got + npages
        if large:
            pool.hint = stop
        else:
            pool.hint = -(-stop // BLOCKSIZE) * BLOCKSIZE
        self.allocs += 1
        if pool is not tried_first:
            self.spills += 1
        return got

    def free(self, entry, npages):
        if entry < 0 or npages <= 0 or entry + npages > self.size:
            return
        self.lock_acquisitions += 1
        for i in range(entry, entry + npages):
            self.map[i] = 0
        self.frees += 1

    def get_pool(self, entry):
        if entry >= self.large.start:
            return self.large
        return self.pools[entry // self.poolsize]

    def pool_state(self):
        return [(q.start, q.end, q.hint) for q in self.pools + [self.large]]

    def bits(self):
        return bytes(self.map)
