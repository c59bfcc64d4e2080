"""The rogue device: a process that keeps reading through the IOTLB at
IOVAs whose unmap has returned, and counts the translations it still gets.
Under `strict` it must get none; the deferred policies trade some for
throughput, and this is how many."""
from harness.abi import (CTL_PHASE, CTL_ROGUE_PROBES, CTL_ROGUE_READY, CTL_ROGUE_STALE,
                         PH_MEASURE)
from harness.dma import R_INDEX, RECENT
from hwmodel import iommu
from hwmodel.cpu import hot, load, sched_yield, store
from hwmodel.locks import CTL_ABORT


@hot(cache=True)
def rogue_loop(env):
    """Probe the most recently unmapped IOVAs, then further back, for the
    whole window; the counts go to the control words at its end."""
    ctl = env.ctl
    io = env.io
    store(ctl, CTL_ROGUE_READY, 1)
    while load(ctl, CTL_PHASE) < PH_MEASURE:
        if load(ctl, CTL_ABORT) != 0:
            return
        sched_yield()
    probes = 0
    stale = 0
    k = 0
    while load(ctl, CTL_PHASE) == PH_MEASURE:
        n = load(env.recent, R_INDEX)
        if n == 0:
            sched_yield()
            continue
        k = (k + 1) % 64
        i = (n - 1 - k) % RECENT
        e = load(env.recent, 2 * i)
        gen = load(env.recent, 2 * i + 1)
        if e == 0 or load(env.recent, 2 * i) != e:
            continue
        dom = e >> 40
        iova = (e & ((1 << 40) - 1)) - 1
        probes += 1
        phys = iommu.probe(io, dom, iova)
        # a hit counts if the IOVA has not been mapped again since: its
        # translation is the one whose unmap returned
        if phys >= 0 and load(env.gen, dom * env.cfg[0].pages + iova) == gen:
            stale += 1
    ctl[CTL_ROGUE_PROBES] = probes
    ctl[CTL_ROGUE_STALE] = stale
