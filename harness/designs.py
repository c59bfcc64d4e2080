"""Design names: an allocator, a flush policy and its variants.

A design is written `allocator[:variant]+flush`, e.g. `magazines:fixed+percpu`;
a bare allocator name means its default flush.  The names users look for in
the literature resolve to such a spec.
"""
import importlib
from dataclasses import dataclass, replace

from harness.errors import UsageError

ALLOCATORS = ("direct", "bitmap", "pools", "rbtree", "magazines")
FLUSHES = ("none", "strict", "batched", "percpu")
DEPOTS = ("fixed", "list", "prealloc")

# the names of the seeds' designs
NAMED = {
    "linux-2008": "rbtree+batched",
    "peleg-2015": "magazines:fixed+percpu",
    "linux-6.7": "magazines:list+percpu",
    "fujita-bitmap": "bitmap+batched",
    "power-pools": "pools+strict",
}


@dataclass(frozen=True)
class Design:
    name: str                 # as the user wrote it
    allocator: str
    flush: str = "strict"
    depot: str = "list"

    @property
    def spec(self):
        if self.allocator == "direct":
            return "direct"
        alloc = self.allocator
        if self.allocator == "magazines":
            alloc += ":" + self.depot
        return "%s+%s" % (alloc, self.flush)

    def module(self):
        return allocator_module(self.allocator)


def allocator_module(name):
    return importlib.import_module("allocators." + name)


def resolve(name):
    """The Design a name stands for, or a UsageError listing the valid ones."""
    text = name.strip()
    spec = NAMED.get(text, text)
    alloc, _, flush = spec.partition("+")
    alloc, _, variant = alloc.partition(":")
    if alloc not in ALLOCATORS:
        raise UsageError("unknown design %r: valid allocators are %s, named designs %s "
                         "(write allocator+flush, flush one of %s)"
                         % (text, ", ".join(ALLOCATORS), ", ".join(NAMED), ", ".join(FLUSHES)))
    if alloc == "direct":
        if flush not in ("", "none"):
            raise UsageError("design %r: direct has no IOMMU, so no flush policy" % text)
        return Design(text, "direct", "none")
    flush = flush or "strict"
    if flush not in FLUSHES or flush == "none":
        raise UsageError("design %r: unknown flush policy %r; valid: %s"
                         % (text, flush, ", ".join(FLUSHES[1:])))
    d = Design(text, alloc, flush)
    if variant:
        if alloc != "magazines" or variant not in DEPOTS:
            raise UsageError("design %r: variant %r is only for magazines, one of %s"
                             % (text, variant, ", ".join(DEPOTS)))
        d = replace(d, depot=variant)
    return d


def resolve_list(text):
    names = [n for n in (s.strip() for s in text.split(",")) if n]
    if not names:
        raise UsageError("--designs: give at least one design")
    designs = [resolve(n) for n in names]
    seen = set()
    for d in designs:
        if d.name in seen:
            raise UsageError("--designs: %r given twice" % d.name)
        seen.add(d.name)
    return designs
