"""What else had the cores while a window ran: preemptions of its workers
and the hypervisor's steal time.

A kernel spinlock holder runs with preemption off; a worker here can be
preempted anywhere, lock held or not, and a virtual CPU can be taken away
by the hypervisor (steal time).  Either makes a figure the machine's, not
the design's, so each window records both and the table marks it.
"""
import os

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


def steal_ns(cores):
    """Steal time so far of the CPUs `cores`, in ns (0 where the kernel does
    not report it: no hypervisor, or no /proc)."""
    total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                    fields = rest.split()
                    if len(fields) > 7:
                        total += int(fields[7])
    except (OSError, ValueError):
        return 0
    return total * _TICK_NS


class Snapshot:
    """Preemptions of some processes and the steal time of some cores, now."""

    def __init__(self, pids, cores):
        self.pids = list(pids)
        self.cores = set(cores)
        self.switches = [involuntary_switches(p) for p in self.pids]
        self.delays = [run_delay_ns(p) for p in self.pids]
        self.steal = steal_ns(self.cores)

    def since(self, before):
        """(preemptions of each process, ns each waited for a CPU, steal ns)
        from `before` to this one."""
        return ([a - b for a, b in zip(self.switches, before.switches)],
                [a - b for a, b in zip(self.delays, before.delays)],
                self.steal - before.steal)


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
