"""What else had the cores while a window ran: preemptions of its workers,
the hypervisor's steal time and the machine's other load.

A kernel spinlock holder runs with preemption off; a worker here can be
preempted anywhere, lock held or not, and a virtual CPU can be taken away
by the hypervisor (steal time).  Either makes a figure the machine's, not
the design's, so each window records both and the table marks it.
"""
import os
import time

_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def involuntary_switches(pid):
    """The times process `pid` was preempted so far (0 once it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_delay_ns(pid):
    """How long process `pid` has waited on a run queue for a CPU so far
    (the second field of /proc/PID/schedstat; 0 where it is not kept)."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def exec_ns(pid):
    """CPU time process `pid` has had so far (the first field of
    /proc/PID/schedstat, the scheduler's sum_exec_runtime; 0 where it is
    not kept or the process is gone)."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


# /proc/stat's columns after the name (Documentation/filesystems/proc.rst):
# user nice system idle iowait irq softirq steal guest guest_nice.  guest
# time is counted in user too; idle and iowait are not busy.
BUSY_FIELDS = (0, 1, 2, 5, 6)
STEAL_FIELD = 7


def cpu_times(cores, proc="/proc"):
    """(steal ns of the CPUs `cores`, busy ns of those CPUs, busy ns of
    every CPU) so far, from /proc/stat, to a tick (USER_HZ) a CPU; zeros
    where it cannot be read."""
    steal = busy = every = 0
    try:
        with open("%s/stat" % proc) as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if not name.startswith("cpu"):
                    continue
                fields = [int(x) for x in rest.split()]
                work = sum(fields[k] for k in BUSY_FIELDS if k < len(fields))
                if name == "cpu":
                    every = work
                elif name[3:].isdigit() and int(name[3:]) in cores:
                    busy += work
                    if len(fields) > STEAL_FIELD:
                        steal += fields[STEAL_FIELD]
    except (OSError, ValueError):
        return 0.0, 0.0, 0.0
    return steal * _TICK_NS, busy * _TICK_NS, every * _TICK_NS


def steal_ns(cores):
    """Steal time so far of the CPUs `cores`, in ns (0 where the kernel does
    not report it: no hypervisor, or no /proc)."""
    return cpu_times(cores)[0]


class Snapshot:
    """Preemptions of some processes, the steal time of some cores and
    the busy time of the machine, now.  `pids` are the processes that
    keep a core busy (the workers, a rogue device); the run's own process
    is ours too, and neither is the machine's other load."""

    def __init__(self, pids, cores):
        self.pids = list(pids)
        self.cores = set(cores)
        self.switches = [involuntary_switches(p) for p in self.pids]
        self.delays = [run_delay_ns(p) for p in self.pids]
        self.ours = sum(exec_ns(p) for p in self.pids + [os.getpid()])
        self.t = time.monotonic_ns()
        self.steal, self.busy, self.busy_all = cpu_times(self.cores)

    def since(self, before):
        """(preemptions of each process, ns each waited for a CPU, steal ns,
        the other load) from `before` to this one.  The other load is the
        CPU time that neither the run's processes nor the hypervisor took,
        in CPUs' worth over the interval: `other_cpus` on the run's CPUs,
        `machine_other_cpus` on every CPU (what shares caches, memory
        bandwidth and the package's power budget with the run)."""
        wall = max(1, self.t - before.t)
        ours = self.ours - before.ours
        load = {"other_cpus": max(0.0, (self.busy - before.busy - ours) / wall),
                "machine_other_cpus": max(0.0, (self.busy_all - before.busy_all - ours) / wall)}
        return ([a - b for a, b in zip(self.switches, before.switches)],
                [a - b for a, b in zip(self.delays, before.delays)],
                self.steal - before.steal, load)


class StallWatch:
    """The longest stretch each worker went without progress in a window,
    from looks at its live counters a few times a second.  Between two
    looks that saw the same count the worker certainly did nothing; a
    stretch is counted from the look that first saw a count to the last
    look that still saw it, so it is never longer than the real one."""

    def __init__(self, t, progress):
        self.last = progress.copy()
        self.since = [t] * len(progress)        # when each count was first seen
        self.prev_t = t                         # the look before this one
        self.longest = [0.0] * len(progress)

    def see(self, t, progress):
        for w in (progress != self.last).nonzero()[0]:
            self.longest[w] = max(self.longest[w], self.prev_t - self.since[w])
            self.since[w] = t
        self.last = progress.copy()
        self.prev_t = t

    def end(self):
        """The longest stretches, in s, up to the last look."""
        return [max(lg, self.prev_t - s) for lg, s in zip(self.longest, self.since)]
