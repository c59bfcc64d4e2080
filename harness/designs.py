"""Design names: an allocator, its variant, and a flush policy.

A design is written `allocator[:variant]+flush[@premapped]`, e.g.
`magazines:fixed+percpu`; a bare allocator name means `+strict`; `@premapped`
is the driver-side optimisation of the seeds (map a buffer pool once,
recycle it).  The names users know from the literature resolve to a spec.
"""
import importlib
from dataclasses import dataclass, replace

from harness.errors import UsageError

ALLOCATORS = ("direct", "bitmap", "pools", "rbtree", "magazines")
FLUSHES = ("strict", "batched", "percpu")
DEPOTS = ("fixed", "list", "prealloc")

# the seeds' designs
NAMED = {
    "linux-2008": "rbtree+batched",            # intel-iommu, Gross's batched flush
    "peleg-2015": "magazines:fixed+percpu",    # Peleg et al., USENIX ATC 2015
    "linux-6.7": "magazines:list+percpu",      # the list depot of 6.7
    "fujita-bitmap": "bitmap+batched",         # Fujita's bitmap intel-iommu, 2008
    "power-pools": "pools+strict",             # arch/powerpc's pooled table
}


@dataclass(frozen=True)
class Design:
    name: str                 # as the user wrote it
    allocator: str
    flush: str = "strict"
    depot: str = "list"
    premapped: bool = False

    @property
    def spec(self):
        if self.allocator == "direct":
            return "direct"
        alloc = self.allocator
        if alloc == "magazines":
            alloc += ":" + self.depot
        return "%s+%s%s" % (alloc, self.flush, "@premapped" if self.premapped else "")

    def module(self):
        return allocator_module(self.allocator)


def allocator_module(name):
    return importlib.import_module("allocators." + name)


def resolve(name):
    """The Design a name stands for, or a UsageError listing the valid ones."""
    text = name.strip()
    base, at, modifier = text.partition("@")
    if at:
        if modifier != "premapped":
            raise UsageError("design %r: unknown modifier @%s; valid: @premapped" % (text, modifier))
        d = resolve(base)
        if d.allocator == "direct":
            raise UsageError("design %r: direct maps nothing, so nothing to pre-map" % text)
        return replace(d, name=text, premapped=True)
    spec = NAMED.get(text, text)
    alloc, _, flush = spec.partition("+")
    alloc, _, variant = alloc.partition(":")
    if alloc not in ALLOCATORS:
        raise UsageError("unknown design %r: write allocator[:depot]+flush with an allocator of "
                         "%s and a flush of %s, or a named design: %s"
                         % (text, ", ".join(ALLOCATORS), ", ".join(FLUSHES), ", ".join(NAMED)))
    if alloc == "direct":
        if flush or variant:
            raise UsageError("design %r: direct has no IOMMU, so no flush policy or variant" % text)
        return Design(text, "direct", "none")
    flush = flush or "strict"
    if flush not in FLUSHES:
        raise UsageError("design %r: unknown flush policy %r; valid: %s"
                         % (text, flush, ", ".join(FLUSHES)))
    if not variant:
        return Design(text, alloc, flush)
    if alloc != "magazines" or variant not in DEPOTS:
        raise UsageError("design %r: only magazines takes a variant, one of %s"
                         % (text, ", ".join(DEPOTS)))
    return Design(text, alloc, flush, variant)
