"""The machine's state that moves the figures: frequency governor and
boost, SMT, transparent huge pages, isolated and nohz_full CPUs, automatic
NUMA balancing, a hypervisor, the load already there.  Read from sysfs and
procfs under a root directory (tests give fake trees), recorded in the
results and checked as pyperf's `system show` checks: a warning for each
setting that makes a figure less trustworthy, said above the table.
"""
import os
import re
from pathlib import Path

from harness import topology

CPU_DIR = "sys/devices/system/cpu"
THP_DIR = "sys/kernel/mm/transparent_hugepage"
DMI_DIR = "sys/class/dmi/id"
# what DMI's sys_vendor or product_name says under the usual hypervisors
VM_DMI = ("QEMU", "KVM", "VMware", "VirtualBox", "innotek", "Xen", "Microsoft Corporation",
          "Amazon EC2", "Google Compute Engine", "Parallels", "Bochs", "OpenStack",
          "Cloud Hypervisor", "Firecracker")
BUSY_LOAD = 0.5          # a load average, per CPU allowed, that is someone else's work


def _read(root, rel):
    try:
        return (Path(root) / rel).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _selected(text):
    """The bracketed choice of a sysfs selector ("always [madvise] never")."""
    if text is None:
        return None
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else text


def _cpulist(text):
    try:
        return topology.parse_cpulist(text or "")
    except ValueError:
        return []


def read(root="/", cpus=None):
    """The state, as a dict the results file holds: `cpus` are the CPUs
    whose governor is read (default: the online ones)."""
    topo = topology.read(root)
    cpus = sorted(cpus) if cpus is not None else sorted(topo.cpus)
    governors, drivers = {}, set()
    for c in cpus:
        g = _read(root, "%s/cpu%d/cpufreq/scaling_governor" % (CPU_DIR, c))
        if g:
            governors.setdefault(g, []).append(c)
        d = _read(root, "%s/cpu%d/cpufreq/scaling_driver" % (CPU_DIR, c))
        if d:
            drivers.add(d)
    state = {
        "governor": {g: topology.format_cpulist(cs) for g, cs in sorted(governors.items())},
        "cpufreq_driver": ",".join(sorted(drivers)) or None,
        "boost": _boost(root),
        "smt": _read(root, CPU_DIR + "/smt/control"),
        "smt_active": _read(root, CPU_DIR + "/smt/active") == "1" or topo.smt(),
        "thp": _selected(_read(root, THP_DIR + "/enabled")),
        "thp_defrag": _selected(_read(root, THP_DIR + "/defrag")),
        "thp_shmem": _selected(_read(root, THP_DIR + "/shmem_enabled")),
        "isolated": topology.format_cpulist(_cpulist(_read(root, CPU_DIR + "/isolated"))),
        "nohz_full": topology.format_cpulist(_cpulist(_read(root, CPU_DIR + "/nohz_full"))),
        "numa_nodes": len(topo.nodes),
        "numa_balancing": _int(_read(root, "proc/sys/kernel/numa_balancing")),
        "hypervisor": _hypervisor(root),
        "load_average": _loadavg(root),
        "cpus_online": len(topo.cpus),
    }
    return state


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _boost(root):
    """True or False where the machine says whether the CPUs may run
    above their base clock; None where it does not."""
    b = _read(root, CPU_DIR + "/cpufreq/boost")             # acpi-cpufreq, amd-pstate
    if b in ("0", "1"):
        return b == "1"
    nt = _read(root, CPU_DIR + "/intel_pstate/no_turbo")     # intel_pstate
    if nt in ("0", "1"):
        return nt == "0"
    return None


def _hypervisor(root):
    """What says that the machine is virtual, or None: the CPU's
    `hypervisor` flag (set by every x86 hypervisor that says so in CPUID),
    /sys/hypervisor/type (Xen), DMI's vendor or product name."""
    seen = []
    cpuinfo = _read(root, "proc/cpuinfo") or ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and "hypervisor" in line.split(":", 1)[-1].split():
            seen.append("the CPU's hypervisor flag")
            break
    t = _read(root, "sys/hypervisor/type")
    if t:
        seen.append("/sys/hypervisor/type %s" % t)
    for key in ("sys_vendor", "product_name"):
        v = _read(root, "%s/%s" % (DMI_DIR, key))
        if v and any(v.startswith(x) for x in VM_DMI):
            seen.append("DMI %s %s" % (key, v))
            break
    return "; ".join(seen) or None


def _loadavg(root):
    text = _read(root, "proc/loadavg")
    try:
        return float(text.split()[0])
    except (AttributeError, ValueError, IndexError):
        return None


def warnings(state, placement=None, cores=None):
    """One line per setting that makes the figures less trustworthy.
    `placement` is the run's (a results document's record), `cores` the
    number of CPUs the run may use."""
    out = []
    run = set((placement or {}).get("cpus") or [])
    gov = state.get("governor") or {}
    slow = {g: cs for g, cs in gov.items() if g != "performance"}
    if slow:
        out.append("CPU frequency governor %s, not performance: the clock follows the load, "
                   "and a figure with it" % ", ".join("%s on CPUs %s" % (g, cs)
                                                      for g, cs in slow.items()))
    if state.get("boost"):
        out.append("turbo boost is on: the clock depends on how many cores are busy and how "
                   "hot they are, so 1 worker runs faster than each of many; turn it off "
                   "for scaling figures")
    if state.get("hypervisor"):
        out.append("a virtual machine (%s): a virtual CPU can be descheduled (steal time, "
                   "the `!` mark) and two of them may be one physical core's threads"
                   % state["hypervisor"])
    iso = set(topology.parse_cpulist(state.get("isolated") or ""))
    if run and iso and run & iso and run - iso:
        out.append("CPUs %s of the run are isolated and %s are not: workers on the others "
                   "share their CPUs with the rest of the system"
                   % (topology.format_cpulist(run & iso), topology.format_cpulist(run - iso)))
    nohz = set(topology.parse_cpulist(state.get("nohz_full") or ""))
    if run and nohz and run & nohz and run - nohz:
        out.append("CPUs %s of the run are nohz_full and %s are not: the timer tick "
                   "interrupts some workers and not others"
                   % (topology.format_cpulist(run & nohz), topology.format_cpulist(run - nohz)))
    if state.get("numa_balancing") and (state.get("numa_nodes") or 1) > 1:
        out.append("automatic NUMA balancing is on (kernel.numa_balancing): the kernel may "
                   "unmap and move the shared segment's pages while a window runs")
    load = state.get("load_average")
    n = cores or state.get("cpus_online") or 1
    if load is not None and load >= BUSY_LOAD * n:
        out.append("the machine was busy before the run: load average %.2f over the last "
                   "minute on %d CPU%s" % (load, n, "" if n == 1 else "s"))
    return out


def notes(state, placement=None):
    """Lines that describe without warning: what `system` prints too."""
    out = []
    gov = state.get("governor") or {}
    out.append("frequency: %s" % (
        ", ".join("governor %s on CPUs %s" % (g, cs) for g, cs in gov.items())
        + (" (%s)" % state["cpufreq_driver"] if state.get("cpufreq_driver") else "")
        if gov else "no cpufreq (no driver, or a virtual machine's CPUs)"))
    b = state.get("boost")
    out.append("boost: %s" % ("on" if b else "off" if b is not None else "not reported"))
    out.append("SMT: %s%s" % (state.get("smt") or "not reported",
                              ", active" if state.get("smt_active") else ", no core has two "
                              "threads online"))
    out.append("transparent huge pages: %s (defrag %s), shared memory %s"
               % (state.get("thp") or "-", state.get("thp_defrag") or "-",
                  state.get("thp_shmem") or "-"))
    out.append("isolated CPUs: %s; nohz_full CPUs: %s"
               % (state.get("isolated") or "none", state.get("nohz_full") or "none"))
    nb = state.get("numa_balancing")
    out.append("NUMA: %d node%s; automatic balancing %s"
               % (state.get("numa_nodes") or 1, "" if state.get("numa_nodes") == 1 else "s",
                  "on" if nb else "off" if nb is not None else "not reported"))
    out.append("hypervisor: %s" % (state.get("hypervisor") or "none seen"))
    la = state.get("load_average")
    out.append("load average (1 min): %s" % ("%.2f" % la if la is not None else "-"))
    if placement:
        from harness.placement import describe
        out.append(describe(placement))
    return out


def current(cpus=None):
    """The state of this machine now, over the CPUs `cpus`."""
    return read("/", cpus if cpus is not None else sorted(os.sched_getaffinity(0)))


def record(state, placement, cores):
    """As the results document holds it: the state and its warnings."""
    return dict(state, warnings=warnings(state, placement, cores))


def add_arguments(p):
    p.add_argument("--placement", metavar="POLICY",
                   help="the placement to show: cores-first (default), compact, spread, none")
    p.add_argument("--cpus", metavar="LIST", help="the CPUs a run would use")
    p.add_argument("--node", metavar="N", help="the NUMA node a run would use")


def command(args, out):
    """`iommu-stress system`: the check on its own, for the placement a
    run with these options would have."""
    from harness import config, placement
    opts = {}
    for name in ("placement", "cpus", "node"):
        v = getattr(args, name)
        if v is not None:
            opts[name] = config.convert(name, v, "--" + name)
    where = placement.choose(opts, os.sched_getaffinity(0))
    state = current(where.order)
    for line in notes(state, where.record()):
        print(line, file=out)
    found = warnings(state, where.record(), len(where.order))
    for line in found:
        print("warning: " + line, file=out)
    if not found:
        print("no setting found that makes the figures less trustworthy", file=out)
    return 0
