"""IOVA allocators, one module each, all of the same shape, and the
registry that lists them.

A module exports:

    NAME                 its name, as the registry and the design names use it
    LOCK_CLASSES         names of its lock classes (the rows of the lock table)
    STATS                names of its counters, kept per worker (a STAT_LINE
                         each) unless `counters` says otherwise; names past
                         the first STAT_LINE must be kept by `counters`
    layout(p)            -> [(array name, dtype, shape)] of its state, locks excluded
    locks(p)             -> the lock class of each lock instance it uses
    make(views, lk)      -> its State namedtuple (views: name -> array)
    init(st, p)          the fresh, empty state
    alloc(st, w, cpu, pages, limit) -> first page of the range, or -1   (@hot)
    free(st, w, cpu, pfn, pages)                                       (@hot)
    check(st, p, live)   -> problems (list of str); live: [(pfn, pages)] held
    footprint(st, p)     -> {"start": bytes, "peak": bytes, ...} of metadata

and may export, with these defaults:

    TRANSLATES = True    False: the bus address is the physical one (no IOMMU:
                         no page table, no flush policy)
    VARIANTS = ()        names of its variants, written `name:variant`; the
                         chosen one reaches it as Params.variant
    DEFAULT_VARIANT      the variant a bare name means (VARIANTS[0])
    LIMIT_IS_MASK = False  True: `limit` is a DMA mask in pages, 0 for none
                         (else: the highest pfn allowed, pages - 1 for none)
    trim(st, w, ncpus)   periodic housekeeping the harness calls every
                         TRIM_PERIOD_MS (the list depot's trim)      (@hot)
    flush_all(st, w)     give every cached range back, before `check` runs
                         on a state that may hold caches
    counters(st)         -> {name: count} of the STATS it keeps elsewhere than
                         in the workers' lines (per CPU, say); added to
                         their sum
    refuse(p, size)      -> why no request of `size` pages could ever be
                         placed, even in a fresh state, or None;
                         the run is refused up front instead of measuring
                         failures (None: every size may fit)

`w` is the worker (its statistics line, its lock queue node), `cpu` the
simulated CPU that per-CPU state is keyed by.  Nothing here does I/O.

A new allocator is one file here plus its name in BUILTIN; or a file in a
directory named in $IOMMU_STRESS_ALLOCATORS (directories separated by
`os.pathsep`), which needs no edit at all.  The harness finds everything
else through `module(name)`.
"""
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from hwmodel import compiled_sources

# include/linux/iova.h
IOVA_RANGE_CACHE_MAX_SIZE = 6      # log of the largest cached size, + 1
# drivers/iommu/iova.c
IOVA_MAG_SIZE = 127                # 128 before 2022 (the 2016 code)
MAX_GLOBAL_MAGS = 32               # depot slots per size class, 2016-2023
# the PCI default segment boundary: 4 GiB (include/linux/dma-mapping.h)
DEFAULT_BOUNDARY_PAGES = 1 << 20
PAGE_SHIFT = 12

STAT_LINE = 16                     # int64 counters per worker line

# The registry: the allocators built in, in the order tables list them.
BUILTIN = ("direct", "bitmap", "pools", "rbtree", "eiovar", "magazines", "lockfree")
PATH_ENV = "IOMMU_STRESS_ALLOCATORS"


@dataclass(frozen=True)
class Params:
    """The sizes an allocator's state is derived from."""
    pages: int = 1 << 20          # IOVA space (aperture, table) in 4 KiB pages
    nworkers: int = 1
    ncpus: int = 1                # simulated CPUs
    boundary: int = DEFAULT_BOUNDARY_PAGES
    max_live: int = 4096          # ranges alive at once, cached ones included
    mag_size: int = IOVA_MAG_SIZE
    variant: str = ""             # one of the module's VARIANTS ("": its default)
    start_pfn: int = 1            # rbtree: the domain's first pfn (iova.c)


REQUIRED = ("NAME", "LOCK_CLASSES", "STATS", "layout", "locks", "make", "init", "alloc",
            "free", "check", "footprint")
DEFAULTS = {"TRANSLATES": True, "VARIANTS": (), "LIMIT_IS_MASK": False, "trim": None,
            "flush_all": None, "counters": None, "refuse": None}


def _plugin_dirs():
    return [Path(d) for d in os.environ.get(PATH_ENV, "").split(os.pathsep) if d]


def _plugins():
    """Names of the allocator modules in $IOMMU_STRESS_ALLOCATORS."""
    out = []
    for d in _plugin_dirs():
        for f in sorted(d.glob("*.py")):
            if not f.name.startswith("_") and f.stem not in BUILTIN + tuple(out):
                out.append(f.stem)
    return out


# a user's directory is searched as part of this package, and its files key
# the compiled-code cache like ours
__path__ += [str(d) for d in _plugin_dirs() if d.is_dir()]
compiled_sources([f for f in Path(__file__).resolve().parent.glob("*.py")]
                 + [f for d in _plugin_dirs() for f in d.glob("*.py")])


def names():
    """Every allocator the registry knows: the built-in ones, then the user's."""
    return BUILTIN + tuple(_plugins())


_loaded = {}


def module(name):
    """The allocator module called `name`, its optional names filled in with
    their defaults; KeyError for a name the registry does not know."""
    if name not in _loaded:
        if name not in names():
            raise KeyError(name)
        mod = importlib.import_module("allocators." + name)
        for key, value in DEFAULTS.items():
            if not hasattr(mod, key):
                setattr(mod, key, value)
        if not hasattr(mod, "DEFAULT_VARIANT"):
            mod.DEFAULT_VARIANT = mod.VARIANTS[0] if mod.VARIANTS else ""
        _loaded[name] = mod
    return _loaded[name]


def variant(mod, p):
    """The variant Params `p` asks of `mod` (its default for "")."""
    v = p.variant or mod.DEFAULT_VARIANT
    if v not in mod.VARIANTS and (v or mod.VARIANTS):
        raise ValueError("%s has no variant %r; valid: %s"
                         % (mod.NAME, v, ", ".join(mod.VARIANTS) or "none"))
    return v


def contract_problems(mod):
    """How `mod` breaks the contract above: [] when it keeps it."""
    problems = ["lacks %s" % k for k in REQUIRED if not hasattr(mod, k)]
    if problems:
        return problems
    if mod.NAME != mod.__name__.rpartition(".")[2]:
        problems.append("NAME %r is not its module's name" % mod.NAME)
    if not mod.LOCK_CLASSES:
        problems.append("LOCK_CLASSES is empty (name one class even if it takes no lock)")
    if mod.VARIANTS and mod.DEFAULT_VARIANT not in mod.VARIANTS:
        problems.append("DEFAULT_VARIANT %r is not one of VARIANTS" % mod.DEFAULT_VARIANT)
    for k in ("alloc", "free", "trim"):
        if getattr(mod, k) is not None and not hasattr(getattr(mod, k), "py_func"):
            problems.append("%s is not compiled (@hot)" % k)
    return problems


def refusal(mod, p, sizes):
    """Why `mod` can never place a request of one of `sizes` pages under
    Params `p`, or None (also when it does not say)."""
    if mod.refuse is None:
        return None
    return next(filter(None, (mod.refuse(p, s) for s in sorted(set(sizes)))), None)


def totals(mod, st):
    """{name: count} of every counter in mod.STATS for one state: the
    workers' lines summed, plus what `counters` keeps elsewhere."""
    n = min(len(mod.STATS), STAT_LINE)
    rows = st.stats.reshape(-1, STAT_LINE)[:, :n]
    out = {name: int(rows[:, k].sum()) if k < n else 0 for k, name in enumerate(mod.STATS)}
    if mod.counters is not None:
        for name, v in mod.counters(st).items():
            out[name] += int(v)
    return out
