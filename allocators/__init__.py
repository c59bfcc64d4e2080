"""IOVA allocators, one module each, all of the same shape.

A module exports:

    NAME, LOCK_CLASSES (names of its lock classes), STATS (names of its
    per-worker counters)
    layout(p)            -> [(array name, dtype, shape)] of its state, locks excluded
    locks(p)             -> the lock class of each lock instance it uses
    make(views, lk)      -> its State namedtuple (views: name -> array)
    init(st, p)          the fresh, empty state
    alloc(st, w, cpu, pages, limit) -> first page of the range, or -1   (njit)
    free(st, w, cpu, pfn, pages)                                       (njit)
    check(st, p, live)   -> problems (list of str); live: [(pfn, pages)] held
    footprint(st, p)     -> {"start": bytes, "peak": bytes} of metadata

`w` is the worker (its statistics line, its lock queue node), `cpu` the
simulated CPU that per-CPU state is keyed by.  Nothing here does I/O.
"""
from dataclasses import dataclass

# include/linux/iova.h
IOVA_RANGE_CACHE_MAX_SIZE = 6      # log of the largest cached size, + 1
# drivers/iommu/iova.c
IOVA_MAG_SIZE = 127                # 128 before 2022 (the 2016 code)
MAX_GLOBAL_MAGS = 32               # depot slots per size class, 2016-2023
# the PCI default segment boundary: 4 GiB (include/linux/dma-mapping.h)
DEFAULT_BOUNDARY_PAGES = 1 << 20
PAGE_SHIFT = 12

STAT_LINE = 16                     # int64 counters per worker line


@dataclass(frozen=True)
class Params:
    """The sizes an allocator's state is derived from."""
    pages: int = 1 << 20          # IOVA space (aperture, table) in 4 KiB pages
    nworkers: int = 1
    ncpus: int = 1                # simulated CPUs
    boundary: int = DEFAULT_BOUNDARY_PAGES
    max_live: int = 4096          # ranges alive at once, cached ones included
    mag_size: int = IOVA_MAG_SIZE
    depot: str = "list"           # fixed | list | prealloc
    start_pfn: int = 1            # rbtree: the domain's first pfn (iova.c)
