"""Which CPU each worker runs on.

The CPUs a run may use are those it is allowed (its affinity mask), cut to
`--cpus` and to the CPUs of `--node`.  A policy puts them in an order, and
worker w runs on the order's CPU w mod n: a point of t workers uses the
first t, and beyond n the order starts again, so that oversubscribed
workers stack evenly (every CPU holds the floor or the ceiling of t/n of
them).

- `cores-first` (the default, as will-it-scale places its tasks): one
  worker per physical core, package by package, before any core gets a
  second: an SMT sibling is shared only once every core is busy.
- `compact`: a core's SMT siblings next to each other, then the next core
  of the package, then the next package: two workers share a core from the
  second one on, and cache and memory stay local as long as they can.
- `spread`: as far apart as the machine allows: round-robin over the
  packages, and within each over its NUMA nodes, one core at a time; the
  siblings last, in the same order.  Two workers are on two packages.
- `none`: not pinned.  Every worker may run on any of the CPUs, where the
  scheduler puts it and moves it.

A core whose siblings are not all among the run's CPUs counts by those
that are: its first CPU in the set is its first thread.
"""
from dataclasses import dataclass

from harness import topology
from harness.errors import UsageError

POLICIES = ("cores-first", "compact", "spread", "none")
DEFAULT = "cores-first"


SHOWN_CPUS = 8                # CPUs of the order a header names, before "..."


@dataclass
class Placement:
    policy: str
    order: list                 # the CPUs in the order workers take them
    node: int = None            # --node: workers and memory bound to it
    shared_from: int = None     # workers from which two share a physical core

    @property
    def pinned(self):
        return self.policy != "none"

    def cpu_of(self, worker):
        """The CPU worker `worker` is pinned to (None: not pinned)."""
        return self.order[worker % len(self.order)] if self.pinned else None

    def record(self):
        """As the results document holds it."""
        return {"policy": self.policy, "cpus": list(self.order), "node": self.node,
                "pinned": self.pinned, "shared_core_from": self.shared_from}


def describe(record):
    """The table header's words for a placement as the results hold it."""
    order = record.get("cpus") or []
    node = record.get("node")
    where = "CPUs %s" % topology.format_cpulist(order)
    if node is not None:
        where += " (node %d, its memory too)" % node
    if record.get("policy") == "none":
        return "placement none: unpinned over %s" % where
    shown = ",".join(str(c) for c in order[:SHOWN_CPUS]) + (",..." if len(order) > SHOWN_CPUS
                                                            else "")
    shared = record.get("shared_core_from")
    return ("placement %s over %s, in the order %s%s"
            % (record.get("policy"), where, shown,
               "; SMT siblings shared from %d workers" % shared if shared else ""))


def _cores_of(topo, cpus):
    """{core key: its CPUs among `cpus`, sorted}, each core keyed by its
    first sibling among them."""
    out = {}
    for c in sorted(cpus):
        core = topo.cpus[c].core if c in topo.cpus else (c,)
        out.setdefault(core, []).append(c)
    return {members[0]: members for members in out.values()}


def _interleave(lists):
    """Round-robin over `lists`: the first of each, then the second, ..."""
    out = []
    for k in range(max((len(x) for x in lists), default=0)):
        out += [x[k] for x in lists if k < len(x)]
    return out


def order(topo, cpus, policy):
    """The CPUs `cpus` in the order policy `policy` gives workers."""
    cpus = sorted(set(cpus))
    if policy == "none":
        return cpus
    info = lambda c: topo.cpus.get(c) or topology.Cpu(c, 0, (c,), 0)    # noqa: E731
    cores = _cores_of(topo, cpus)
    # the cores in the order the policy walks them, by their first CPU
    firsts = sorted(cores, key=lambda f: (info(f).package, info(f).node, f))
    if policy == "compact":
        return [c for f in firsts for c in cores[f]]
    if policy == "spread":
        per_package = []
        for pkg in sorted({info(f).package for f in firsts}):
            nodes = sorted({info(f).node for f in firsts if info(f).package == pkg})
            per_package.append(_interleave([[f for f in firsts if info(f).package == pkg
                                             and info(f).node == n] for n in nodes]))
        firsts = _interleave(per_package)
    elif policy != "cores-first":
        raise ValueError("one of %s, got %r" % (", ".join(POLICIES), policy))
    # one thread of every core, then the second of each, in the same order
    return _interleave([cores[f] for f in firsts])


def choose(opts, allowed, root="/"):
    """The run's Placement from its options `placement`, `cpus` and
    `node`, over the CPUs it is `allowed`; UsageError (one line) when the
    CPUs asked for are not there."""
    policy = opts.get("placement") or DEFAULT
    allowed = sorted(allowed)
    topo = topology.read(root)
    cpus = allowed
    if opts.get("cpus"):
        asked = topology.parse_cpulist(opts["cpus"])
        missing = [c for c in asked if c not in allowed]
        if missing:
            raise UsageError("--cpus %s: CPU%s %s not among the CPUs this run may use (%s)"
                             % (opts["cpus"], "s" if len(missing) > 1 else "",
                                topology.format_cpulist(missing),
                                topology.format_cpulist(allowed)))
        cpus = asked
    node = opts.get("node")
    if node is not None:
        if node not in topo.nodes:
            raise UsageError("--node %d: no such NUMA node; this machine has node%s %s"
                             % (node, "s" if len(topo.nodes) > 1 else "",
                                topology.format_cpulist(topo.nodes)))
        if topo.memory_nodes is not None and node not in topo.memory_nodes:
            raise UsageError("--node %d: the node has no memory (nodes with memory: %s)"
                             % (node, topology.format_cpulist(topo.memory_nodes)))
        mine = [c for c in cpus if c in topo.nodes[node]]
        if not mine:
            raise UsageError("--node %d: none of its CPUs (%s) is among the CPUs this run "
                             "may use (%s)" % (node, topology.format_cpulist(topo.nodes[node])
                                               or "none", topology.format_cpulist(cpus)))
        cpus = mine
    out = order(topo, cpus, policy)
    return Placement(policy, out, node, _shared_from(topo, out) if policy != "none" else None)


def _shared_from(topo, order_):
    """The number of workers from which two share a physical core (None:
    no two of the order's CPUs are siblings)."""
    seen = set()
    for w, c in enumerate(order_):
        core = topo.cpus[c].core if c in topo.cpus else (c,)
        if core in seen:
            return w + 1
        seen.add(core)
    return None


def convert_policy(v):
    if v not in POLICIES:
        raise ValueError("one of %s, got %r" % (", ".join(POLICIES), v))
    return v


def convert_cpus(v):
    """--cpus as the options hold it: the canonical cpulist."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str):
        raise ValueError("a CPU list such as \"0-3,8,10-11\"")
    cpus = topology.parse_cpulist(v)
    if not cpus:
        raise ValueError("at least one CPU")
    return topology.format_cpulist(cpus)
