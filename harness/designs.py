"""Design names: an allocator, its variant, and a flush policy.

A design is written `allocator[:variant]+flush[@premapped][@huge]`, e.g.
`magazines:fixed+percpu`; a bare allocator name means `+strict`; `@premapped`
is the driver-side optimisation of the seeds (map a buffer pool once,
recycle it); `@huge` maps buffers of 2 MiB or more with 2 MiB IOVA
mappings where aligned (--huge for every design of a run).  The names users know from the literature resolve to a spec.
Allocators and their variants come from the registry (allocators/), the
flush policies from harness/dma.py, the lock kinds from hwmodel/locks.py;
the named designs are listed here, and only here.
"""
from dataclasses import dataclass, replace

import allocators
from harness.dma import FLUSHES
from harness.errors import UsageError

# the seeds' designs
NAMED = {
    "linux-2008": "rbtree+batched",            # intel-iommu, Gross's batched flush
    "peleg-2015": "magazines:fixed+percpu",    # Peleg et al., USENIX ATC 2015
    "linux-6.7": "magazines:list+percpu",      # the list depot of 6.7
    "schnelle-2023": "magazines:list+single",  # 6.7's single flush queue (s390 guests)
    "fujita-bitmap": "bitmap+batched",         # Fujita's bitmap intel-iommu, 2008
    "power-pools": "pools+strict",             # arch/powerpc's pooled table
}


@dataclass(frozen=True)
class Design:
    name: str                 # as the user wrote it
    allocator: str
    flush: str = "strict"     # "none" for an allocator that does not translate
    variant: str = ""         # "" for an allocator without variants
    premapped: bool = False
    huge: bool = False

    @property
    def spec(self):
        if self.flush == "none":
            return self.allocator
        alloc = self.allocator + (":" + self.variant if self.variant else "")
        return "%s+%s%s%s" % (alloc, self.flush, "@premapped" if self.premapped else "",
                              "@huge" if self.huge else "")

    def module(self):
        return allocators.module(self.allocator)

    @property
    def translates(self):
        return self.module().TRANSLATES


def _unknown(text):
    return UsageError("unknown design %r: write allocator[:variant]+flush with an allocator of "
                      "%s and a flush of %s, or a named design: %s"
                      % (text, ", ".join(allocators.names()), ", ".join(FLUSHES),
                         ", ".join(NAMED)))


def resolve(name):
    """The Design a name stands for, or a UsageError listing the valid ones."""
    text = name.strip()
    base, at, modifiers = text.partition("@")
    if at:
        mods = modifiers.split("@")
        for m in mods:
            if m not in MODIFIERS or mods.count(m) > 1:
                raise UsageError("design %r: %s modifier @%s; valid: %s"
                                 % (text, "unknown" if m not in MODIFIERS else "repeated", m,
                                    ", ".join("@" + x for x in MODIFIERS)))
        d = resolve(base)
        for m in mods:
            d = MODIFIERS[m](d, text)
        return d
    spec = NAMED.get(text, text)
    alloc, _, flush = spec.partition("+")
    alloc, _, variant = alloc.partition(":")
    if alloc not in allocators.names():
        raise _unknown(text)
    mod = allocators.module(alloc)
    if not mod.TRANSLATES:
        if flush or variant:
            raise UsageError("design %r: %s has no IOMMU, so no flush policy or variant"
                             % (text, alloc))
        return Design(text, alloc, "none")
    flush = flush or "strict"
    if flush not in FLUSHES:
        raise UsageError("design %r: unknown flush policy %r; valid: %s"
                         % (text, flush, ", ".join(FLUSHES)))
    if variant and variant not in mod.VARIANTS:
        if not mod.VARIANTS:
            raise UsageError("design %r: %s has no variants" % (text, alloc))
        raise UsageError("design %r: %s has no variant %r; valid: %s"
                         % (text, alloc, variant, ", ".join(mod.VARIANTS)))
    return Design(text, alloc, flush, variant or mod.DEFAULT_VARIANT)


def premapped(design, name=None):
    """The design with the driver's pre-mapped buffer pool (`@premapped`,
    --premapped), or a UsageError for one that maps nothing."""
    name = name or design.name
    if not design.translates:
        raise UsageError("design %r: %s maps nothing, so nothing to pre-map"
                         % (name, design.allocator))
    return replace(design, name=name, premapped=True)


def huge(design, name=None):
    """The design with 2 MiB IOVA mappings for buffers of 512 pages or
    more (`@huge`, --huge), or a UsageError for one that maps nothing."""
    name = name or design.name
    if not design.translates:
        raise UsageError("design %r: %s maps nothing, so no 2 MiB mappings"
                         % (name, design.allocator))
    return replace(design, name=name, huge=True)


MODIFIERS = {"premapped": premapped, "huge": huge}


def listing():
    """[(spec, what it is)] of every allocator with its variants, then the
    named designs: what `iommu-stress designs` prints."""
    rows = []
    for name in allocators.names():
        mod = allocators.module(name)
        doc = (mod.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        rows.append((name, doc))
        for v in mod.VARIANTS:
            rows.append(("%s:%s" % (name, v), "variant%s" % (" (default)" if v == mod.DEFAULT_VARIANT
                                                          else "")))
    rows += [(n, "named: " + spec) for n, spec in NAMED.items()]
    return rows
