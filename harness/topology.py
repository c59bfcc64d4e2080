"""The machine's CPUs as sysfs describes them: SMT siblings, cores,
packages and NUMA nodes, and the kernel's cpulist syntax ("0-3,8,10-11").

Everything is read under a root directory (normally "/"), so that the
placement policies can be tested on the sysfs trees of machines we do not
have.  A file that is missing is taken as the kernel would have it on a
machine without that feature: no SMT (each CPU its own core), one package,
one NUMA node.
"""
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CPU_DIR = "sys/devices/system/cpu"
NODE_DIR = "sys/devices/system/node"


def parse_cpulist(text):
    """The CPUs of a kernel cpulist ("0-3,8,10-11", "" for none), sorted;
    ValueError saying what is wrong.  Strides ("0-15:2") are the kernel's
    too (bitmap_parselist) and accepted."""
    out = set()
    text = text.strip()
    if not text:
        return []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise ValueError("a CPU list such as \"0-3,8,10-11\", got %r" % part)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        step = int(m.group(3)) if m.group(3) is not None else 1
        if hi < lo or step < 1:
            raise ValueError("a range lo-hi with lo <= hi, got %r" % part)
        if hi >= 1 << 16:
            raise ValueError("CPU numbers below 65536, got %r" % part)
        out.update(range(lo, hi + 1, step))
    return sorted(out)


def format_cpulist(cpus):
    """The shortest cpulist of `cpus`: consecutive runs as lo-hi."""
    cpus = sorted(set(cpus))
    parts = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else "%d-%d" % (cpus[i], cpus[j]))
        i = j + 1
    return ",".join(parts)


def _read(path):
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


@dataclass
class Cpu:
    cpu: int
    package: int = 0
    core: tuple = ()              # its SMT siblings (itself included), sorted
    node: int = 0


@dataclass
class Topology:
    cpus: dict = field(default_factory=dict)        # cpu -> Cpu, online CPUs only
    nodes: dict = field(default_factory=dict)       # node -> [cpus]
    memory_nodes: list = None                       # nodes with memory (None: not known)

    def smt(self):
        """Whether any core has more than one online thread."""
        return any(len(c.core) > 1 for c in self.cpus.values())

    def packages(self):
        return sorted({c.package for c in self.cpus.values()})

    def cores(self):
        return sorted({c.core for c in self.cpus.values()})


def read(root="/"):
    """The topology of the online CPUs under `root`."""
    root = Path(root)
    cpu_dir = root / CPU_DIR
    online = _read(cpu_dir / "online")
    try:
        cpus = parse_cpulist(online) if online else []
    except ValueError:
        cpus = []
    if not cpus:
        cpus = sorted(int(p.name[3:]) for p in _glob(cpu_dir, r"cpu\d+"))
    if not cpus:
        cpus = sorted(os.sched_getaffinity(0)) if str(root) == "/" else []
    topo = Topology()
    for n in cpus:
        t = cpu_dir / ("cpu%d" % n) / "topology"
        pkg = _read(t / "physical_package_id")
        sib = _read(t / "thread_siblings_list") or _read(t / "core_cpus_list")
        try:
            siblings = tuple(c for c in parse_cpulist(sib) if c in cpus) if sib else (n,)
        except ValueError:
            siblings = (n,)
        topo.cpus[n] = Cpu(n, int(pkg) if pkg and pkg.lstrip("-").isdigit() else 0,
                           siblings or (n,))
    node_dir = root / NODE_DIR
    for p in _glob(node_dir, r"node\d+"):
        node = int(p.name[4:])
        text = _read(p / "cpulist")
        try:
            members = [c for c in parse_cpulist(text or "") if c in topo.cpus]
        except ValueError:
            members = []
        topo.nodes[node] = members
        for c in members:
            topo.cpus[c].node = node
    if not topo.nodes:
        topo.nodes[0] = sorted(topo.cpus)
    mem = _read(node_dir / "has_memory")
    if mem is not None:
        try:
            topo.memory_nodes = parse_cpulist(mem)
        except ValueError:
            pass
    topo.nodes = dict(sorted(topo.nodes.items()))
    return topo


def _glob(directory, pattern):
    try:
        return [p for p in Path(directory).iterdir() if re.fullmatch(pattern, p.name)]
    except OSError:
        return []
