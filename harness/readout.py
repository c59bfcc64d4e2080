"""From raw counters to figures: pure functions, no process, no arena.

`window(raw)` turns what one window left in shared memory (a bench.Raw)
into that window's figures; `point(...)` turns a point's windows into the
point as the results file holds it (docs/results-format.md names every key
and its unit).  Nothing is renamed after this: report, diagnostics, plot
and compare read exactly these keys.
"""
import statistics
from collections import namedtuple

import numpy as np

from harness import dma, stats
from harness.abi import (CTL_ERR_CLAIMANT, CTL_ERR_HOLDER, CTL_ERR_KIND, CTL_ERR_PAGE,
                         CTL_ROGUE_PROBES, CTL_ROGUE_STALE, CTL_T_MEASURE, CTL_T_STOP,
                         DIAG_SAMPLE, E_DEVICE_WAIT, E_HANDOFF_WAIT, E_INV_QUEUE, E_INV_WAIT,
                         E_TICKS, E_UNMAPS, E_WAITED, EDGE_STEPS, ERR_DOUBLE_MAP, ERR_EARLY_REUSE,
                         SAMPLE_OUTLIER_NS, STEPS)
from hwmodel import hist as histmod
from hwmodel import iommu
from hwmodel import locks as lockmod


def ownership_error(ctl, design, threads):
    """What the ownership map found, in words."""
    kind, page = int(ctl[CTL_ERR_KIND]), int(ctl[CTL_ERR_PAGE])
    holder, claimant = int(ctl[CTL_ERR_HOLDER]) - 1, int(ctl[CTL_ERR_CLAIMANT]) - 1
    where = "in %s at %d threads" % (design, threads)
    if kind == ERR_EARLY_REUSE:
        return ("page %d mapped again by worker %d before the invalidation of its unmap "
                "completed, %s" % (page, claimant, where))
    if kind == ERR_DOUBLE_MAP:
        return ("double mapping of page %d %s: held by worker %d, claimed by worker %d"
                % (page, where, holder, claimant))
    return ("unmap of page %d %s by worker %d, which did not hold it (owner word %d)"
            % (page, where, claimant, holder + 1))


# the percentiles of a latency distribution: (key, quantile)
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999))


def distribution(h, cpn, offset=0.0):
    """A latency histogram (hwmodel/hist.py's words, or rows of them to
    sum) as the results file holds it, in ns: `count`, `mean`, the
    QUANTILES (a bucket's upper edge, within 12.5%, never above the
    maximum), `max` (exact), and `buckets`, [upper edge, count] of every
    bucket that holds any.  `offset` cycles, a constant the timing itself
    added (its clock reads), are taken off every figure."""
    count, total, top = histmod.totals(h)
    if not count:
        return {"count": 0}
    b = histmod.merged(h)

    def ns(c):
        return max(0.0, c - offset) / cpn
    out = {"count": count, "mean": ns(total / count)}
    for key, q in QUANTILES:
        out[key] = ns(histmod.percentile(b, q, top))
    out["max"] = ns(top)
    out["buckets"] = [[ns(min(histmod.bucket_upper(k), top)), int(n)]
                      for k, n in enumerate(b) if n]
    return out


def on_cpu_ns(w):
    """A mapping worker's time per I/O on a CPU: with a breakdown, its
    total less the time preempted and the stalls; else the whole."""
    b = w.get("breakdown_ns")
    if b:
        return max(0.0, b["total"] - b.get("preempted", 0.0) - b.get("stalls", 0.0))
    ops = w["per_worker_ops"]
    return w["window_s"] * 1e9 * len(ops) / max(1, sum(ops))


def latency(raw):
    """--diag's latency distributions: the sampled maps and unmaps, each
    timed whole (its steps' stamps, a constant, taken off as dmabench
    does), and per lock class its contended waits and timed holds.  None
    when the window kept none."""
    cpn = raw.cycles_per_ns
    out = {}
    if raw.lat is not None and raw.series is not None:
        lat = raw.lat.reshape(len(raw.lat), 2, histmod.WORDS)
        strict = raw.design.flush == "strict"
        out["map"] = distribution(lat[:, dma.LAT_MAP], cpn, 3 * raw.stamp_cycles)
        out["unmap"] = distribution(lat[:, dma.LAT_UNMAP], cpn,
                                    (3 + strict) * raw.stamp_cycles)
    locks = {}
    classes = raw.design.module().LOCK_CLASSES
    for c, pair in enumerate(raw.alloc_lock_hists or []):
        if c < len(classes):
            locks[classes[c]] = pair
    if raw.fq_lock_hists and raw.design.flush in dma.FQ_CLASS_OF:
        c = dma.FQ_CLASS_OF[raw.design.flush]
        locks[dma.FQ_LOCK_CLASSES[c]] = raw.fq_lock_hists[c]
    if raw.alloc_lock_hists is not None or raw.fq_lock_hists is not None:
        out["locks"] = {name: {"wait": distribution(w, cpn), "hold": distribution(h, cpn)}
                        for name, (w, h) in locks.items()}
    if not out:
        return None
    out["sampling"] = "; ".join(
        (["maps and unmaps: one I/O in %d, at random, each timed whole" % DIAG_SAMPLE]
         if "map" in out else [])
        + (["locks: every contended wait, one hold in %d"
            % max(raw.lock_timing, lockmod.HIST_PERIOD)] if "locks" in out else []))
    out["record_ns"] = raw.record_cycles / cpn
    out["cost_ns_per_io"] = collection_cost(raw, out)
    return out


def collection_cost(raw, lat):
    """What filling the latency histograms cost the window, in ns per
    I/O: each value recorded (the sampled maps and unmaps, the contended
    waits and timed holds) at what one record costs on this machine,
    measured when the run started (hwmodel/hist.py record_cost)."""
    n = lat.get("map", {}).get("count", 0) + lat.get("unmap", {}).get("count", 0)
    n += sum(d["wait"]["count"] + d["hold"]["count"] for d in lat.get("locks", {}).values())
    ops_all = max(1, int(raw.cnt["ops"].sum()))
    return n * raw.record_cycles / ops_all / raw.cycles_per_ns


# ------------------------------------------------------------------ locks

def _sum_lock_rows(rows):
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        if k.endswith("_max"):
            out[k] = max(vals)
        elif k.endswith("_min"):
            nz = [v for v in vals if v]
            out[k] = min(nz) if nz else 0
        else:
            out[k] = sum(vals)
    return out


def _design_lock_rows(classes, alloc_locks, fq_locks, flush):
    """(name, class_stats row) of every lock class of a design: the
    allocator's, summed over domains, then its flush queue's."""
    rows = [(name, _sum_lock_rows([dom[c] for dom in alloc_locks]))
            for c, name in enumerate(classes)]
    if flush in dma.FQ_CLASS_OF:
        c = dma.FQ_CLASS_OF[flush]
        rows.append((dma.FQ_LOCK_CLASSES[c], fq_locks[c]))
    return rows


def lock_waits(classes, alloc_locks, fq_locks):
    """{class name: wait cycles} of every class, for the per-second series."""
    out = {name: _sum_lock_rows([dom[c] for dom in alloc_locks])["wait_total"]
           for c, name in enumerate(classes)}
    for c, r in enumerate(fq_locks):
        out[dma.FQ_LOCK_CLASSES[c]] = r["wait_total"]
    return out


def locks(raw):
    """The lock table's rows, with lock_stat's meaning: counts, and times
    in ns (wait over contended acquisitions, hold over the timed ones)."""
    cpn = raw.cycles_per_ns
    out = []
    for name, r in _design_lock_rows(raw.design.module().LOCK_CLASSES, raw.alloc_locks,
                                     raw.fq_locks, raw.design.flush):
        row = {"name": name}
        for k, v in r.items():
            part, _, stat = k.partition("_")
            if part in ("wait", "hold") and stat in ("total", "min", "max"):
                k, v = "%s_ns_%s" % (part, stat), v / cpn
            row[k] = v
        out.append(row)
    return out


# ------------------------------------------------------------- throughput

def worker_ops(raw):
    """I/Os each mapping worker completed in its window."""
    nprod = raw.threads - raw.consumers
    c = raw.cnt[:nprod]
    return (c["ops_end"] - c["ops_start"]).astype(np.int64)


def window_seconds(raw):
    """The window's length, as the workers' deadlines set it."""
    return (raw.ctl[CTL_T_STOP] - raw.ctl[CTL_T_MEASURE]) / raw.cycles_per_ns / 1e9


def ops_per_sec(raw):
    """The sum of the mapping workers' rates, each over its own window:
    from the tick at which it saw the window open to the one at which it
    saw it close (the loop looks at the clock one iteration in
    phase_every, so a worker's window is a few I/Os late, never wrong)."""
    nprod = raw.threads - raw.consumers
    c = raw.cnt[:nprod]
    span = (c["t_end"] - c["t_start"]) / raw.cycles_per_ns / 1e9
    ops = c["ops_end"] - c["ops_start"]
    return float(sum(o / s for o, s in zip(ops, span) if s > 0))


def clock_reads_per_io(raw):
    """Reads of the cycle counter per I/O on the measured path, waits and
    diagnostics aside: the loop's ticks, the device's completion stamp and
    its first poll where device time is modelled, the start of every
    unmap's exposure window, and two per invalidation (its submission to
    the unit and its first poll for completion)."""
    ops = int(raw.cnt["ops"].sum())
    if not ops:
        return 0.0
    reads = int(raw.cnt["ticks"].sum()) + 2 * int(raw.io_stats[:, iommu.S_INV].sum())
    if raw.design.translates:
        reads += int(raw.cnt["unmaps"].sum())
    if raw.device_modelled:
        reads += 2 * ops
    return reads / ops


# ------------------------------------------------------------- breakdown

def _tick(ticks, s, read, sread):
    """The loop's `ticks` looks at the clock, every PHASE_EVERY I/Os, in
    cycles: one in DIAG_SAMPLE is timed (its closing stamp taken off, its
    opening one counted as the plain read the others take); without any
    timed, a read's cost each."""
    timed = int(s["ticks_timed"].sum())
    if not timed:
        return ticks * read
    return ticks * max(read, s["tick_cycles"].sum() / timed - sread + read)


def _latency_recorded(raw):
    """Whether the window's sampled maps and unmaps went into their
    latency histograms (--diag, unless turned off to measure the cost)."""
    return raw.lat is not None and bool(
        raw.lat.reshape(len(raw.lat), 2, histmod.WORDS)[:, :, histmod.BUCKETS + histmod.H_COUNT]
        .sum())


# the parts of an I/O that an unsampled one holds, timed between two ticks
# (loop._between_ticks): its steps, its read of the clock at an unmap, the tick
INSIDE = ("hypercall", "allocate", "page_table", "device_access", "invalidation_submit", "free",
          "exposure_stamp", "tick")


def _unsampled(raw, s):
    """ns an I/O costs unsampled, its waits counted elsewhere left out, as
    the ticks time runs of them (loop._between_ticks); None without one."""
    n = int(s["clean_ios"].sum())
    return s["clean_cycles"].sum() / n / raw.cycles_per_ns if n else None


def _loop(raw, s, out, unsampled):
    """The harness's own loop per I/O, ns: what an unsampled I/O costs,
    less the parts it holds (its steps, its reads of the clock, the
    device model's two, the tick's share).  0 where no I/O of the local
    ring is timed whole (the hand-off and premapped modes, whose loop
    stays in what is not named), or none went unsampled between ticks."""
    if unsampled is None or not int(s["ios"].sum()):
        return 0.0
    inside = sum(out[k] for k in INSIDE)
    if raw.device_modelled:
        inside += 2 * raw.clock_read_cycles / raw.cycles_per_ns
    return max(0.0, unsampled - inside)


def _stalls(raw, s, unsampled, ops_all, preempted):
    """ns per I/O the CPU was taken from a mapping worker in stalls of over
    SAMPLE_OUTLIER_NS, as the ticks find them (loop._between_ticks), every
    one: the runs of I/Os holding one, less what those I/Os cost
    unstalled, less the wait for a CPU that `preempted` counts.  What is
    left is the CPU taken where the worker's own count does not see it (the
    hypervisor's steal, interrupts) or a wait it does not name."""
    if unsampled is None:
        return 0.0
    cpn = raw.cycles_per_ns
    excess = s["stall_cycles"].sum() / cpn - int(s["stall_ios"].sum()) * unsampled
    return max(0.0, excess / ops_all - preempted)


def _stamps_per_io(design):
    """The stamps of a sampled I/O timed whole: its two; with an IOMMU a
    map's four, its translations' two, an unmap's four (a strict one's
    five: the invalidation's end)."""
    if not design.translates:
        return 2
    return 2 + 4 + 2 + 4 + (design.flush == "strict")


def _stamp_in_place(raw, s, unsampled):
    """What a stamp costs where --diag takes it, cycles: a sampled I/O
    timed whole less an unsampled one (both without their waits), less
    its records in the latency histograms, over its stamps (one of them,
    the unmap's exposure stamp, taken instead of a plain read).  Beside
    a loop it came out a few cycles under the cost calibrated apart from
    one (docs/performance.md), which is the fallback where nothing is
    timed whole or nothing went unsampled."""
    ios = int(s["ios"].sum())
    if unsampled is None or not ios:
        return raw.stamp_cycles
    excess = s["io_cycles"].sum() / ios - unsampled * raw.cycles_per_ns
    if _latency_recorded(raw):
        excess -= 2 * raw.record_cycles
    if raw.design.translates:
        excess += raw.clock_read_cycles
    return max(0.0, excess / _stamps_per_io(raw.design))


def _diag_timing(raw, s, unsampled, sread, ops_all, histograms):
    """--diag's stamps, ns per I/O: what the runs of I/Os between two ticks
    that held a sampled I/O or a timed tick cost beyond as many I/Os
    unsampled (loop._between_ticks), less the sampled I/Os' records in
    the latency histograms (a part of their own).  Measured, where the
    stamps' cost calibrated out of context, a dozen of them an I/O, was
    off by a tenth of a fast design's I/O, and where a sampled I/O's wake
    on the I/O after it went unseen.  Without a run unsampled: the
    stamps counted at their calibrated cost (a map's four and its
    translations' two, an unmap's three, a strict one's four, a sampled
    unmap's exposure stamp in order, a timed tick's two)."""
    cpn = raw.cycles_per_ns
    if unsampled is not None:
        excess = s["dirty_cycles"].sum() / cpn - int(s["dirty_ios"].sum()) * unsampled
        return max(0.0, excess / ops_all - histograms)
    read = raw.clock_read_cycles
    maps, unmaps = int(s["maps"].sum()), int(s["unmaps"].sum())
    return ((6 * maps + (3 + (s["inv_submit_cycles"].sum() > 0)) * unmaps) * sread
            + unmaps * max(0.0, sread - read)
            + 2 * (int(s["ios"].sum()) + int(s["ticks_timed"].sum())) * sread) / ops_all / cpn


Window = namedtuple("Window", ["steps", "ops", "cycles", "waited", "inv_wait", "inv_queue",
                               "device_wait", "handoff_wait", "ticks", "unmaps"])


def window_counts(raw):
    """The mapping workers' counts over each one's own window, from the tick
    that saw it open to the one that saw it close, as the throughput is
    (loop._edge, --diag): their steps record (abi.STEPS), I/Os, cycles, and
    the waits, ticks and unmaps kept elsewhere.  Not the warm-up, whose
    state the window has left, nor the drain after it."""
    nprod = raw.threads - raw.consumers
    d = raw.edges[:nprod, 1] - raw.edges[:nprod, 0]
    c = raw.cnt[:nprod]
    seen = c["t_end"] > c["t_start"]
    d[~seen] = 0
    return Window(steps=np.ascontiguousarray(d[:, :EDGE_STEPS]).view(STEPS).reshape(-1),
                  ops=int(np.where(seen, c["ops_end"] - c["ops_start"], 0).sum()),
                  cycles=int(np.where(seen, c["t_end"] - c["t_start"], 0).sum()),
                  waited=int(d[:, E_WAITED].sum()), inv_wait=int(d[:, E_INV_WAIT].sum()),
                  inv_queue=int(d[:, E_INV_QUEUE].sum()),
                  device_wait=int(d[:, E_DEVICE_WAIT].sum()),
                  handoff_wait=int(d[:, E_HANDOFF_WAIT].sum()), ticks=int(d[:, E_TICKS].sum()),
                  unmaps=int(d[:, E_UNMAPS].sum()))


def breakdown(raw):
    """ns per I/O of each step of a mapping worker's I/O, over its window:
    the steps of the sampled I/Os (one in DIAG_SAMPLE) per sampled step;
    the timers and the trim, a full queue's flush, the contended lock
    waits, the invalidations, the device and the hand-off waits, the
    stalls counted in full; the loop, what an unsampled I/O costs less its
    steps, and --diag's own cost, what the sampled ones cost beyond it.
    What is left of the worker's wall time per I/O is the time outside
    every run of I/Os between two ticks (loop._between_ticks)."""
    cpn = raw.cycles_per_ns
    win = window_counts(raw)
    s = win.steps
    maps = max(1, int(s["maps"].sum()))
    unmaps = max(1, int(s["unmaps"].sum()))
    ops = max(1, win.ops)
    read = raw.clock_read_cycles
    unsampled = _unsampled(raw, s)
    # each timed step's interval holds one in-order read too much
    sread = _stamp_in_place(raw, s, unsampled)

    def step(field, n):
        return max(0.0, s[field].sum() / n - sread) / cpn

    preempted = sum((raw.run_delay_ns or [])[:raw.threads - raw.consumers]) / ops
    out = {
        "hypercall": step("hypercall_cycles", maps) if raw.hypercalls else 0.0,
        "allocate": step("alloc_cycles", maps),
        "page_table": step("map_pte_cycles", maps) + step("unmap_pte_cycles", unmaps),
        "device_access": step("access_cycles", maps),
        "invalidation_own": (win.inv_wait - win.inv_queue) / ops / cpn,
        "invalidation_submit": step("inv_submit_cycles", unmaps),
        "invalidation_queued": win.inv_queue / ops / cpn,
        "free": step("free_cycles", unmaps),
        # a full queue's flushes, all of them timed
        "queue_flush": s["flush_cycles"].sum() / ops / cpn,
        # every contended wait, whatever the lock and wherever it fell:
        # the steps, the flush and the timers leave them out
        "lock_waits": win.waited / ops / cpn,
        "timers": s["service_cycles"].sum() / ops / cpn,
        # polling for the device, and the model's two reads of the clock
        # per I/O (the completion stamp, the first poll)
        "device": (win.device_wait / ops + (2 * read if raw.device_modelled else 0)) / cpn,
        "handoff_wait": win.handoff_wait / ops / cpn,
        # waiting for a CPU: the mapping workers' run-queue time in the window
        "preempted": preempted,
        "stalls": _stalls(raw, s, unsampled, ops, preempted),
        # the read of the clock that starts every unmap's exposure window
        "exposure_stamp": (win.unmaps * read / ops / cpn if raw.design.translates else 0.0),
        "tick": _tick(win.ticks, s, read, sread) / ops / cpn,
    }
    # the sampled maps' and unmaps' records in their latency histograms,
    # outside every step (the locks' fall inside allocate, free, timers)
    if _latency_recorded(raw):
        n = int(s["maps"].sum() + s["unmaps"].sum() + s["outliers"].sum())
        out["diag_histograms"] = n * raw.record_cycles / ops / cpn
    out["diag_timing"] = _diag_timing(raw, s, unsampled, sread, ops,
                                      out.get("diag_histograms", 0.0))
    out["loop"] = _loop(raw, s, out, unsampled)
    total = win.cycles / cpn / ops
    out["unnamed"] = max(0.0, total - sum(out.values()))
    out["total"] = total
    return {k: float(v) for k, v in out.items()}


def series(raw):
    """The per-second series: ops/s and the lock class waited on longest."""
    if not raw.series:
        return None
    cpn = raw.cycles_per_ns
    out = []
    for (t0, ops0, w0), (t1, ops1, w1) in zip(raw.series, raw.series[1:]):
        grew = {name: w1[name] - w0.get(name, 0) for name in w1}
        top = max(grew, key=grew.get) if grew else ""
        out.append({"t": round(t1, 3),
                    "ops_per_sec": (ops1 - ops0) / (t1 - t0) if t1 > t0 else 0.0,
                    "top_lock": top if grew.get(top) else "",
                    "top_lock_wait_ns": grew.get(top, 0) / cpn})
    return out


# ------------------------------------------------------------ the window

def _exposure(raw):
    cpn = raw.cycles_per_ns
    n, total, top = histmod.totals(raw.exp)
    return {"count": n,
            "mean": float(total / n / cpn) if n else 0.0,
            "p99": histmod.percentile(histmod.merged(raw.exp), 0.99) / cpn,
            "max": float(top / cpn) if n else 0.0}


def _flush(raw):
    cpn = raw.cycles_per_ns
    ios, meta = raw.io_stats, raw.fq_meta
    out = {"invalidations": int(ios[:, iommu.S_INV].sum()),
           "invalidation_wait_ns": float(ios[:, iommu.S_INV_WAIT].sum() / cpn),
           "invalidation_queue_ns": float(ios[:, iommu.S_INV_QUEUE].sum() / cpn),
           "queue_flushes": int(meta[:, dma.M_FLUSHES].sum()),
           "timer_flushes": int(meta[:, dma.M_TIMER_FLUSHES].sum()),
           "flushed_entries": int(meta[:, dma.M_FLUSHED_ENTRIES].sum())}
    out["mean_batch"] = (out["flushed_entries"] / out["queue_flushes"]
                         if out["queue_flushes"] else 0.0)
    return out


def disturbance(raw):
    """What else had the cores during the window."""
    pre = raw.preemptions or []
    return {"busy_processes": raw.threads + (1 if raw.rogue else 0), "cores": raw.cores,
            "preemptions": int(sum(pre)), "preempted": int(sum(1 for n in pre if n)),
            "steal_ns": float(raw.steal_ns), **(raw.other_load or {})}


# A worker that went this share of its window without completing anything
# is marked stalled: with a core for every busy process no lock convoy or
# time slice comes near it (they last micro- to milliseconds), and a worker
# stopped (SIGSTOP) or starved for half the window makes the sum of rates a
# figure of fewer workers.
STALL_SHARE = 0.5
# ... or one that completed under this share of the median mapping worker's
# I/Os, when it also lost STARVED_LOST_SHARE of the window waiting for a CPU
# or without progress: the machine took its time.  A worker left behind by an
# unfair lock (it spins, on its core) is the design's figure and not marked.
STARVED_SHARE = 0.25
STARVED_LOST_SHARE = 0.25


def stalled(raw):
    """The workers of a window that were stopped or starved: [{worker,
    longest_stall_s, ops, median_ops, cpu_wait_s}].  In an oversubscribed
    window workers wait for a CPU by design: only the part of a stall that
    waiting does not explain counts there (a stopped worker waits for no
    CPU), and the comparison with the median is left out."""
    if not raw.longest_stall_s:
        return []
    seconds = window_seconds(raw)
    ops = worker_ops(raw)
    med = float(statistics.median(ops)) if len(ops) else 0.0
    waits = list(raw.run_delay_ns or [])
    over = raw.threads + (1 if raw.rogue else 0) > raw.cores
    out = []
    for w, stall in enumerate(raw.longest_stall_s[:raw.threads]):
        wait = waits[w] / 1e9 if w < len(waits) else 0.0
        mine = int(ops[w]) if w < len(ops) else None
        if over:
            hit = stall - wait >= STALL_SHARE * seconds
        else:
            starved = (mine is not None and len(ops) > 1 and mine < STARVED_SHARE * med
                       and max(stall, wait) >= STARVED_LOST_SHARE * seconds)
            hit = stall >= STALL_SHARE * seconds or starved
        if hit:
            out.append({"worker": w, "longest_stall_s": round(float(stall), 3), "ops": mine,
                        "median_ops": med, "cpu_wait_s": round(wait, 3)})
    return out


def stall_warning(point):
    """The stderr line for a point whose workers stalled, or None."""
    ws = point.get("stalled_workers") or []
    if not ws:
        return None
    w = max(ws, key=lambda s: s["longest_stall_s"])
    return ("warning: %s at %d threads: %d worker%s stalled or starved (worker %d: %.1f s of a "
            "%.1f s window without progress, %s I/Os against a median of %.0f); the figure "
            "is marked" % (point["design"], point["threads"], len({s["worker"] for s in ws}),
                           "" if len({s["worker"] for s in ws}) == 1 else "s", w["worker"],
                           w["longest_stall_s"], point.get("window_s", 0.0),
                           "-" if w["ops"] is None else w["ops"], w["median_ops"]))


def disturbed(w):
    """Whether a window's workers (or its rogue device) lost their core."""
    d = w.get("disturbance") or {}
    return bool(d.get("preemptions") or d.get("steal_ns"))


def machine_load(windows):
    """Steal time and the machine's other load over every window of a
    point (a point's `disturbance` is its median window's alone)."""
    ds = [w.get("disturbance") or {} for w in windows]
    other = [d.get("other_cpus", 0.0) for d in ds]
    return {"windows": len(ds), "steal_ns": float(sum(d.get("steal_ns", 0.0) for d in ds)),
            "other_cpus_mean": float(statistics.fmean(other)) if other else 0.0,
            "other_cpus_max": float(max(other, default=0.0)),
            "machine_other_cpus_max": float(max((d.get("machine_other_cpus", 0.0) for d in ds),
                                                default=0.0))}


def window(raw):
    """The figures of one window."""
    cpn = raw.cycles_per_ns
    seconds = window_seconds(raw)
    mod = raw.design.module()
    lock_rows = locks(raw)
    ios = raw.io_stats
    out = {
        "ops_per_sec": ops_per_sec(raw),
        "window_s": seconds,
        "per_worker_ops": worker_ops(raw).tolist(),
        "unmap_workers": raw.consumers,
        "alloc_fails": int(raw.cnt["fails"].sum()),
        "ops_total": int(raw.cnt["ops"].sum()),
        "locks": lock_rows,
        "alloc_stats": {n: int(raw.alloc_stats[:, k].sum()) for k, n in enumerate(mod.STATS)},
        "footprint_bytes": dict(raw.footprint),
        "exposure_ns": _exposure(raw),
        "flush_stats": _flush(raw),
        "iotlb": {"hits": int(ios[:, iommu.S_HITS].sum()),
                  "fills": int(ios[:, iommu.S_FILLS].sum()),
                  "faults": int(ios[:, iommu.S_FAULTS].sum()),
                  "walk_ns": float(ios[:, iommu.S_WALK].sum() / cpn),
                  "huge_hits": int(ios[:, iommu.S_HUGE_HITS].sum()),
                  "huge_fills": int(ios[:, iommu.S_HUGE_FILLS].sum())},
        "unmaps": int(raw.cnt["unmaps"].sum()),
        "device_wait_ns": float(raw.cnt["device_wait_cycles"].sum() / cpn),
        "handoff_wait_ns": float(raw.cnt["handoff_wait_cycles"].sum() / cpn),
        "clock_reads_per_io": clock_reads_per_io(raw),
    }
    out["disturbance"] = disturbance(raw)
    out["stalled_workers"] = stalled(raw)
    out["concurrent_runs"] = list(raw.concurrent_runs or [])
    if raw.rogue:
        out["stale_hits"] = int(raw.ctl[CTL_ROGUE_STALE])
        out["rogue_probes"] = int(raw.ctl[CTL_ROGUE_PROBES])
        out["stale_hits_per_sec"] = out["stale_hits"] / seconds if seconds > 0 else 0.0
    lat = latency(raw)
    if raw.series is not None:
        out["series"] = series(raw)
        out["breakdown_ns"] = breakdown(raw)
        timing = ("every lock hold timed" if raw.lock_timing == 1 else
                  "one lock hold in %d timed, totals scaled" % raw.lock_timing)
        st = raw.steps
        out["diag"] = {"timing": "on: %s; one I/O in %d, at random, timed step by step"
                                 % (timing, DIAG_SAMPLE),
                       "sampled": int(st["maps"].sum() + st["unmaps"].sum()),
                       "outliers": int(st["outliers"].sum()),
                       "outlier_ns": SAMPLE_OUTLIER_NS}
    if getattr(raw, "replay", None) is not None:
        # a trace's concurrent replay (harness/tracereplay.py)
        out["replay"] = dict(raw.replay)
    if lat is not None:
        # its cost, as a share of a mapping worker's time per I/O, and of
        # that time on a CPU (preempted, it costs nothing: the first share
        # shrinks with the machine's load) where the wait for a CPU, read
        # around the window, leaves enough of it to divide by
        ops = worker_ops(raw)
        total = seconds * 1e9 * len(ops) / max(1, int(ops.sum()))
        lat["cost_share"] = lat["cost_ns_per_io"] / total if total else 0.0
        on_cpu = on_cpu_ns(out)
        if on_cpu > 0.1 * total:
            lat["cost_share_on_cpu"] = lat["cost_ns_per_io"] / on_cpu
        out["latency_ns"] = lat
    if mod.TRANSLATES:
        # a window whose check fails raises: one kept says so
        out["state_checked"] = ("allocator state fresh, page tables empty, no page owned, "
                                "no stale IOTLB entry")
    return out


def point(design, threads, windows, oversubscribed):
    """A point as the results file holds it: the median of its windows'
    throughputs, every window's figure, and the detail of the window
    closest to the median."""
    runs = [w["ops_per_sec"] for w in windows]
    med = statistics.median(runs)
    detail = min(windows, key=lambda w: abs(w["ops_per_sec"] - med))
    stalls = [dict(s, window=k) for k, w in enumerate(windows)
              for s in w.get("stalled_workers", [])]
    doc = {"design": design.name, "spec": design.spec, "allocator": design.allocator,
           "variant": design.variant, "flush": design.flush, "threads": threads,
           "ops_per_sec": med, "runs": runs, "oversubscribed": oversubscribed,
           "disturbed": any(disturbed(w) for w in windows), "stalled": bool(stalls),
           "stalled_workers": stalls,
           "concurrent_runs": sorted({p for w in windows for p in w.get("concurrent_runs", [])}),
           "machine_load": machine_load(windows), "ci": stats.point_ci(runs)}
    doc.update((k, v) for k, v in detail.items() if k not in doc)
    return doc
