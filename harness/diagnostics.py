"""Diagnostics of one point, as text: a lock table in the manner of
/proc/lock_stat, the time per I/O broken down, allocator, flush and
exposure statistics, fairness between workers, and the per-second series.

Every renderer takes a point dict as written to the results file and
returns a string, or None when the point holds nothing for it, so that
results written before a field existed still render.
"""
import statistics

from tabulate import tabulate

TIMING_HINT = "run with --lock-timing (or --diag) to measure them"

# the invalidation unit is a serial resource: shown beside the locks because
# a queue behind it stalls CPUs exactly as a contended lock does
INVALIDATION_UNIT = "invalidation unit"

BREAKDOWN_PARTS = (
    ("hypercall", "hypercalls (PVDMA)"),
    ("allocate", "allocate IOVA"),
    ("page_table", "page table (write, clear)"),
    ("device_access", "device's translations (IOTLB)"),
    ("invalidation_own", "invalidation, own"),
    ("invalidation_queued", "invalidation, queued"),
    ("invalidation_submit", "invalidation, submit and poll"),
    ("free", "free IOVA, or queue it"),
    ("queue_flush", "a full queue's flush and its frees"),
    ("timers", "flush timers and depot trim"),
    ("lock_waits", "lock waits, contended (every one timed)"),
    ("device", "device (polling it; its model's clock reads)"),
    ("handoff_wait", "hand-off wait"),
    ("preempted", "waiting for a CPU (preempted)"),
    ("stalls", "stalls of over 100 µs between two ticks, less preemption (the CPU taken)"),
    ("exposure_stamp", "the exposure window's start (a clock read per unmap)"),
    ("diag_timing", "timing the sampled steps (--diag's own cost)"),
    ("diag_histograms", "recording the sampled maps and unmaps (--diag's own cost)"),
    ("loop", "the harness's loop, between the steps (unsampled I/Os less their steps)"),
    ("tick", "the loop's look at the clock, one I/O in 16"),
    ("unnamed", "not named (the loop where it is not timed)"),
    ("harness", "harness (the loop; direct's cost)"),   # results of versions 1 to 4
)
# what the named steps leave: not a step
UNNAMED = ("unnamed", "harness")
# files of version 8 and older: the lock waits inside allocate, free and
# the timers, a share of them (version 9 counts them apart, `lock_waits`)
NESTED_PARTS = (("lock_wait", "lock wait (within allocate, free, timers)"),)


# ---------------------------------------------------------------- formatting

def fmt_ops(v):
    """Ops/s for a person: 3 significant figures with a k or M suffix."""
    if v is None:
        return "-"
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e3:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def fmt_us(ns):
    """Nanoseconds as microseconds, with precision where the value is small:
    lock waits span from tens of ns to seconds in one table."""
    if ns is None:
        return "-"
    us = ns / 1e3
    if us == 0:
        return "0"
    if us < 10:
        return "%.3f" % us
    if us < 10000:
        return "%.2f" % us
    return "%.0f" % us


def fmt_count(n):
    return "-" if n is None else "%d" % n


def fmt_ratio(num, den, pattern="%.2f"):
    return pattern % (num / den) if den else "-"


def fmt_pct(num, den):
    if not den:
        return "-"
    pct = 100.0 * num / den
    if 0 < pct < 0.01:
        return "<0.01%"
    return "%.2f%%" % pct


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return "%.1f %s" % (n / size, unit)
    return "%d B" % n


def _table(rows, headers, fmt, right_from=1):
    align = ["left"] * right_from + ["right"] * (len(headers) - right_from)
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True, colalign=align)


# -------------------------------------------------------------------- timing

def timing(point, options=None):
    """(on, text): whether the hold columns were measured (the wait of every
    contention always is, in files of this version).

    The point's own `diag.timing` says so when present; otherwise its run's
    options, and failing that whether any hold time was recorded at all."""
    diag = point.get("diag")
    if isinstance(diag, dict) and isinstance(diag.get("timing"), str):
        text = diag["timing"]
        return text.strip().lower().startswith("on"), text
    opts = options or {}
    if opts.get("lock_timing") or opts.get("diag"):
        return True, "on"
    if any(l.get("hold_ns_total") for l in point.get("locks", [])):
        return True, "on"
    if options is None and not point.get("locks"):
        return False, "unknown"
    return False, "off"


def timing_line(point, options=None):
    on, text = timing(point, options)
    if on:
        return "lock timing: %s (hold columns are measured; wait is, on every contention)" % text
    return ("lock timing: %s: hold columns are not measured (wait is, on every "
            "contention); %s" % (text, TIMING_HINT))


# --------------------------------------------------------------------- locks

def _lock_rows(point, timed):
    rows = []
    for l in point.get("locks", []):
        acq = l.get("acquisitions", 0)
        if not acq:
            continue             # a class the design never took (direct's "none")
        con = l.get("contentions", 0)
        # lock_stat's meaning: wait over contentions, always measured; files
        # of version 1 timed every acquisition, when timing was on
        per_con = l.get("wait_scope") != "all acquisitions"
        row = {"name": l.get("name", "?"), "acq": acq, "con": con,
               "acq_bounces": l.get("acq_bounces"), "con_bounces": l.get("con_bounces"),
               "sort": (l.get("wait_ns_total", 0) if timed or per_con else 0, con)}
        for k in ("wait", "hold"):
            if timed or (k == "wait" and per_con):
                total = l.get("%s_ns_total" % k, 0)
                n = con if k == "wait" and per_con else acq
                row[k] = (l.get("%s_ns_min" % k), total / n if n else 0.0,
                          l.get("%s_ns_max" % k), total)
            else:
                row[k] = None
        rows.append(row)
    fl = point.get("flush_stats")
    if isinstance(fl, dict) and fl.get("invalidations"):
        n = fl["invalidations"]
        queued = fl.get("invalidation_queue_ns", 0.0)
        own = max(fl.get("invalidation_wait_ns", 0.0) - queued, 0.0)
        rows.append({"name": INVALIDATION_UNIT, "acq": n, "con": None, "acq_bounces": None,
                     "con_bounces": None, "sort": (queued, -1),
                     "wait": (None, queued / n, None, queued),
                     "hold": (None, own / n, None, own)})
    rows.sort(key=lambda r: r["sort"], reverse=True)
    return rows


def lock_table(point, fmt="simple", options=None):
    """The lock classes in the manner of /proc/lock_stat, times in µs, the
    class with the most contended wait first (then the most contentions)."""
    timed, _ = timing(point, options)
    rows = _lock_rows(point, timed)
    if not rows:
        return None
    heads = ["class", "con-bounces", "contentions", "con%",
             "wait-min", "wait-avg", "wait-max", "wait-total",
             "acq-bounces", "acquisitions", "hold-min", "hold-avg", "hold-max", "hold-total"]
    out = []
    for r in rows:
        line = [r["name"], fmt_count(r["con_bounces"]), fmt_count(r["con"]),
                fmt_pct(r["con"], r["acq"]) if r["con"] is not None else "-"]
        line += [fmt_us(v) for v in r["wait"]] if r["wait"] else ["-"] * 4
        line += [fmt_count(r["acq_bounces"]), fmt_count(r["acq"])]
        line += [fmt_us(v) for v in r["hold"]] if r["hold"] else ["-"] * 4
        out.append(line)
    notes = ["times in µs, as lock_stat means them: wait runs from the first failed attempt "
             "to holding, over contended acquisitions only (wait-avg is per contention); "
             "hold over the timed acquisitions, totals scaled up to all; bounces: the "
             "acquisition found the lock last held by another worker"]
    if any(r["sort"][0] and r.get("con") is not None for r in rows) and \
            any(l.get("wait_scope") == "all acquisitions" for l in point.get("locks", [])):
        notes.append("this file is of format version 1: its wait counts every acquisition")
    if any(r["name"] == INVALIDATION_UNIT for r in rows):
        notes.append("%s: one acquisition per invalidation; wait: queued behind other CPUs' "
                     "flushes; hold: its own latency (measured even without lock timing)"
                     % INVALIDATION_UNIT)
    return _table(out, heads, fmt) + "\n" + "\n".join(notes)


# ----------------------------------------------------------------- breakdown

def breakdown_parts(b):
    """[(key, label, ns)] of the parts that add up to the total (zero ones
    left out), and [(key, label, ns)] of the nested ones."""
    known = dict(BREAKDOWN_PARTS)
    nested = dict(NESTED_PARTS)
    parts = [(k, label, b[k]) for k, label in BREAKDOWN_PARTS if b.get(k)]
    parts += [(k, k.replace("_", " "), v) for k, v in b.items()
              if k not in known and k not in nested and k != "total" and v]
    inner = [(k, label, b[k]) for k, label in NESTED_PARTS if b.get(k)]
    return parts, inner


def breakdown_table(point, fmt="simple"):
    """Mean ns per I/O by where it went, and the share of the total."""
    b = point.get("breakdown_ns")
    if not isinstance(b, dict) or not b:
        return None
    parts, inner = breakdown_parts(b)
    summed = sum(v for _, _, v in parts)
    total = b.get("total") or summed
    notes = []
    rows = [[label, "%.1f" % v, fmt_pct(v, total)] for _, label, v in parts]
    gap = total - summed
    if total and gap > 0.005 * total:
        rows.append(["other (total less the parts)", "%.1f" % gap, fmt_pct(gap, total)])
    elif total and gap < -0.01 * total:
        notes.append("the parts add up to %.0f ns, more than the total: some overlap" % summed)
    rows.append(["total", "%.1f" % total, "100.00%" if total else "-"])
    rows += [[label, "%.1f" % v, fmt_pct(v, total)] for _, label, v in inner]
    d = point.get("diag") if isinstance(point.get("diag"), dict) else {}
    if d.get("outliers"):
        notes.append("%d of %d sampled maps and unmaps left out of the steps: longer than "
                     "%.0f µs, they held a preemption or a wait on a preempted holder "
                     "(counted in 'waiting for a CPU', 'stalls' and the lock waits)"
                     % (d["outliers"], d.get("sampled", 0) + d["outliers"],
                        d.get("outlier_ns", 0) / 1e3))
    share = attributed(b)
    if share is not None:
        notes.append("named steps: %.1f%% of the total%s" % (
            100 * share, "" if share <= 1 else
            ": over 100%, the sampled steps ran slower than the unsampled I/Os"))
    return _table(rows, ["per I/O", "ns", "share"], fmt) + ("\n" + "\n".join(notes) if notes else "")


def attributed(b):
    """The share of a breakdown's total that named steps account for, the
    harness's loop among them where it was timed; None without a total."""
    total = b.get("total")
    if not total:
        return None
    parts, _ = breakdown_parts(b)
    return sum(v for k, _, v in parts if k not in UNNAMED) / total


# ------------------------------------------------------------------ latency

LATENCY_COLUMNS = (("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p99_9", "p99.9"),
                   ("max", "max"))


def latency_rows(point):
    """[(label, distribution)] of a point's latency distributions: the map,
    the unmap, then each lock class's wait and hold.  [] when the point has
    none (a file of format version 6 or older, or a run without --diag)."""
    lat = point.get("latency_ns")
    if not isinstance(lat, dict):
        return []
    rows = [(k, lat[k]) for k in ("map", "unmap") if isinstance(lat.get(k), dict)]
    for name, d in sorted((lat.get("locks") or {}).items()):
        if not any(isinstance(d.get(k), dict) and d[k].get("count") for k in ("wait", "hold")):
            continue                # a class the design never took, or never timed
        for k in ("wait", "hold"):
            if isinstance(d.get(k), dict):
                rows.append(("%s %s" % (name, k), d[k]))
    return rows


def latency_table(point, fmt="simple"):
    """Percentiles of the sampled maps and unmaps and of each lock class's
    waits and holds, in µs, with what collecting them cost; None when the
    point has none."""
    rows = latency_rows(point)
    if not rows:
        if isinstance(point.get("diag"), dict):
            return "not recorded: this point was written before results format version 7"
        return None
    out = []
    for label, d in rows:
        n = d.get("count", 0)
        out.append([label, fmt_count(n)]
                   + [fmt_us(d.get(k)) if n else "-" for k, _ in LATENCY_COLUMNS])
    lat = point["latency_ns"]
    notes = ["µs; a percentile is its histogram bucket's upper edge (within 12.5%), never "
             "above the max; samples over 100 µs (preemptions) are kept; wait: contended "
             "acquisitions only, from the first failed attempt; '-': none in the point"]
    if lat.get("sampling"):
        notes.append("sampled: %s" % lat["sampling"])
    if "cost_ns_per_io" in lat:
        share = lat.get("cost_share")
        notes.append("collecting them cost %.2f ns per I/O%s: %s value(s) recorded at %.1f ns "
                     "each (one record measured at the run's start, out of level-1 cache: a "
                     "floor; benchmarks/histogram_cost.py measures them where they run)"
                     % (lat["cost_ns_per_io"], "" if share is None else
                        " (%.2f%% of the I/O's time%s)" % (100 * share, "" if
                        lat.get("cost_share_on_cpu") is None else ", %.2f%% of its time on "
                        "a CPU" % (100 * lat["cost_share_on_cpu"])),
                        fmt_count(sum(d.get("count", 0) for _, d in rows)),
                        lat.get("record_ns", 0.0)))
    b = point.get("breakdown_ns")
    if isinstance(b, dict) and b.get("total") and "cost_ns_per_io" in lat:
        own = b.get("diag_timing", 0.0) + lat["cost_ns_per_io"]
        on_cpu = b["total"] - b.get("preempted", 0.0) - b.get("stalls", 0.0)
        notes.append("--diag's own cost in all, its clock reads and these records: %.1f ns per "
                     "I/O, %s of the I/O's time%s" % (
                         own, fmt_pct(own, b["total"]), "" if on_cpu <= 0.1 * b["total"] else
                         ", %s of its time on a CPU" % fmt_pct(own, on_cpu)))
    return (_table(out, ["", "samples"] + [h for _, h in LATENCY_COLUMNS], fmt)
            + "\n" + "\n".join(notes))


# ---------------------------------------------------------------- allocators

def _magazine_classes(stats):
    sizes = sorted({int(k.split("_", 1)[1]) for k in stats
                    if k.startswith(("hits_", "misses_")) and k.split("_", 1)[1].isdigit()})
    return sizes


def magazine_table(point, fmt="simple"):
    """Per-CPU cache hits and misses by size class (Peleg et al.'s magazines)."""
    st = point.get("alloc_stats") or {}
    sizes = _magazine_classes(st)
    if not sizes:
        return None
    rows = []
    th = tm = 0
    for n in sizes:
        h, m = st.get("hits_%d" % n, 0), st.get("misses_%d" % n, 0)
        th, tm = th + h, tm + m
        if h or m:
            rows.append(["%d page%s" % (n, "" if n == 1 else "s"), fmt_count(h), fmt_count(m),
                         fmt_pct(h, h + m)])
    rows.append(["all", fmt_count(th), fmt_count(tm), fmt_pct(th, th + tm)])
    return _table(rows, ["size class", "hits", "misses", "hit rate"], fmt)


def _allocs(st):
    if "allocs" in st:
        return st["allocs"]
    sizes = _magazine_classes(st)
    if sizes:
        return sum(st.get("hits_%d" % n, 0) + st.get("misses_%d" % n, 0) for n in sizes)
    return 0


def _derived_alloc(key, v, st, allocs, ios):
    per_alloc = lambda: fmt_ratio(v, allocs) + " per alloc"     # noqa: E731
    if key in ("cas_failures", "bypasses"):
        # an I/O is one allocation and one free
        if not (v and ios):
            return ""
        if v < 2 * ios / 100:
            return "one per %s allocs or frees" % fmt_ratio(2 * ios, v, "%.0f")
        return fmt_ratio(v, 2 * ios, "%.3f") + " per alloc or free"
    share = lambda: fmt_pct(v, allocs) + " of allocs"           # noqa: E731
    if key in ("nodes_visited", "words_scanned"):
        return per_alloc()
    if key in ("fails", "retries", "fastfails", "spills", "pass_retries", "flush_retries"):
        return share() if v else ""
    if key == "wraps":
        return ("one per %s allocs" % fmt_ratio(allocs, v, "%.0f")) if v else ""
    if key in ("depot_pushes", "depot_pops"):
        return fmt_ratio(1000.0 * v, allocs, "%.2f") + " per 1k allocs"
    if key == "frees" and allocs:
        return fmt_ratio(v, allocs, "%.3f") + " per alloc"
    return ""


STAT_LABELS = {
    "nodes_visited": "rbtree nodes visited",
    "words_scanned": "bitmap words scanned",
    "wraps": "bitmap wraps (each flushes)",
    "spills": "pool spill-overs",
    "pass_retries": "pool passes retried",
    "retries": "retries from the top",
    "fastfails": "32-bit fast-fails",
    "depot_pushes": "depot pushes",
    "depot_pops": "depot pops",
    "flush_retries": "flush-all-and-retry",
    "trims": "depot trims",
    "cas_failures": "compare-and-swap failures (retried)",
    "bypasses": "per-CPU cache owned by another worker (bypassed)",
}


def alloc_table(point, fmt="simple"):
    """The allocator's own counters, with ratios for the ones we know;
    per-size-class magazine counters go to magazine_table."""
    st = point.get("alloc_stats") or {}
    mags = set("hits_%d" % n for n in _magazine_classes(st)) | \
        set("misses_%d" % n for n in _magazine_classes(st))
    allocs = _allocs(st)
    rows = []
    for k, v in st.items():
        if k in mags:
            continue
        rows.append([STAT_LABELS.get(k, k.replace("_", " ")), fmt_count(v),
                     _derived_alloc(k, v, st, allocs, point.get("ops_total") or 0)])
    if point.get("alloc_fails"):
        rows.append(["failed maps (no IOVA)", fmt_count(point["alloc_fails"]), ""])
    fp = point.get("footprint_bytes") or {}
    for k, v in (fp.items() if any(fp.values()) else ()):
        rows.append(["footprint, %s" % k, fmt_bytes(v), ""])
    if not rows:
        return None
    return _table(rows, ["statistic", "value", "derived"], fmt)


def _per_unmap(n, unmaps):
    if not unmaps:
        return ""
    if n >= unmaps or not n:
        return "%.2f per unmap" % (n / unmaps)
    return "one per %.0f unmaps" % (unmaps / n)


def flush_table(point, fmt="simple"):
    """Invalidations, queue flushes and batch sizes, the exposure window of
    unmapped IOVAs, the IOTLB, and what a rogue device saw."""
    rows = []
    unmaps = point.get("unmaps") or 0
    fl = point.get("flush_stats")
    if isinstance(fl, dict) and point["flush"] != "none":
        n = fl.get("invalidations", 0)
        rows.append(["invalidations", fmt_count(n), _per_unmap(n, unmaps)])
        if n:
            wait = fl.get("invalidation_wait_ns", 0.0)
            queued = fl.get("invalidation_queue_ns", 0.0)
            rows.append(["invalidation wait, total µs", fmt_us(wait), fmt_us(wait / n) + " µs each"])
            rows.append(["invalidation queueing, total µs", fmt_us(queued),
                         fmt_pct(queued, wait) + " of the wait"])
        qf = fl.get("queue_flushes", 0)
        if qf or fl.get("flushed_entries"):
            rows.append(["queue flushes", fmt_count(qf), ""])
            rows.append(["timer flushes", fmt_count(fl.get("timer_flushes", 0)),
                         fmt_pct(fl.get("timer_flushes", 0), qf) + " of queue flushes"])
            rows.append(["flushed entries", fmt_count(fl.get("flushed_entries", 0)),
                         "mean batch %.1f" % fl.get("mean_batch", 0.0)])
    ex = point.get("exposure_ns")
    if isinstance(ex, dict) and ex.get("count"):
        rows.append(["exposure windows", fmt_count(ex["count"]), "unmap to invalidation done"])
        for k in ("mean", "p99", "max"):
            rows.append(["exposure %s, µs" % k, fmt_us(ex.get(k)), ""])
    tlb = point.get("iotlb")
    if isinstance(tlb, dict) and any(tlb.values()):
        lookups = tlb.get("hits", 0) + tlb.get("fills", 0)
        rows.append(["IOTLB hits", fmt_count(tlb.get("hits", 0)),
                     fmt_pct(tlb.get("hits", 0), lookups) + " hit rate"])
        rows.append(["IOTLB fills", fmt_count(tlb.get("fills", 0)), ""])
        rows.append(["IOTLB faults", fmt_count(tlb.get("faults", 0)), ""])
        if tlb.get("huge_hits") or tlb.get("huge_fills"):
            rows.append(["IOTLB 2 MiB hits", fmt_count(tlb.get("huge_hits", 0)),
                         fmt_pct(tlb.get("huge_hits", 0), tlb.get("hits", 0)) + " of hits"])
            rows.append(["IOTLB 2 MiB fills", fmt_count(tlb.get("huge_fills", 0)), ""])
        if tlb.get("walk_ns"):
            misses = tlb.get("fills", 0) + tlb.get("faults", 0)
            rows.append(["page walks, total µs", fmt_us(tlb["walk_ns"]),
                         "%.0f ns per miss" % (tlb["walk_ns"] / misses) if misses else ""])
    if "stale_hits" in point:
        probes = point.get("rogue_probes", 0)
        rows.append(["rogue device probes", fmt_count(probes), ""])
        rows.append(["stale IOTLB hits", fmt_count(point["stale_hits"]),
                     fmt_pct(point["stale_hits"], probes) + " of probes" if probes else ""])
        if "stale_hits_per_sec" in point:
            rows.append(["stale hits per second", fmt_ops(point["stale_hits_per_sec"]), ""])
    if unmaps:
        for k, label in (("device_wait_ns", "device wait"), ("handoff_wait_ns", "hand-off wait")):
            if point.get(k):
                rows.append(["%s, total µs" % label, fmt_us(point[k]),
                             "%.1f ns per unmap" % (point[k] / unmaps)])
    if not rows:
        return None
    return _table(rows, ["statistic", "value", "derived"], fmt)


# ------------------------------------------------------------------ fairness

def fairness(per_worker):
    """(min, median, max, max/min) of the mapping workers' op counts; the
    ratio is None when a worker did nothing (it starved)."""
    if not per_worker:
        return None
    lo, hi = min(per_worker), max(per_worker)
    return lo, statistics.median(per_worker), hi, (hi / lo if lo else None)


def fairness_table(point, fmt="simple"):
    f = fairness(point.get("per_worker_ops") or [])
    if f is None:
        return None
    lo, med, hi, ratio = f
    n = len(point["per_worker_ops"])
    row = [fmt_count(n), fmt_count(point.get("unmap_workers", 0)), fmt_count(lo), "%.0f" % med,
           fmt_count(hi), ("%.2f" % ratio) if ratio is not None else "inf"]
    out = _table([row], ["mapping workers", "unmap-only", "min ops", "median ops", "max ops", "max/min"],
                 fmt, right_from=0)
    if ratio is None:
        out += "\na worker completed no I/O: it starved (preempted, or never got the lock)"
    return out


# -------------------------------------------------------------------- series

SERIES_ROWS = 60            # a longer series is shown in groups of seconds


def series_table(point, fmt="simple"):
    """One row per second of the window (per group of seconds past
    SERIES_ROWS): throughput and the lock that made CPUs wait longest,
    then a line that says how flat the series is."""
    s = point.get("series")
    if not s:
        return None
    k = -(-len(s) // SERIES_ROWS)
    rows = []
    for g in range(0, len(s), k):
        part = s[g:g + k]
        waits = {}
        for e in part:
            name = e.get("top_lock")
            if name:
                waits[name] = waits.get(name, 0) + (e.get("top_lock_wait_ns") or 0)
        top = max(waits, key=waits.get) if waits else None
        rates = [e["ops_per_sec"] for e in part if e.get("ops_per_sec") is not None]
        rows.append(["%g" % part[-1].get("t", g + len(part)),
                     fmt_ops(statistics.fmean(rates) if rates else None), top or "-",
                     fmt_us(waits[top] if top else None)])
    out = _table(rows, ["t (s)", "ops/s", "top lock", "its wait µs"], fmt)
    if k > 1:
        out += "\none row per %d s, their mean; each second is in the results file" % k
    drift = series_drift(s)
    if drift:
        out += "\n" + drift
    return out


def series_drift(series):
    """How flat a per-second series is: the first and last tenth of it, the
    least-squares slope, and the spread of the seconds.  None when there
    are too few seconds to say."""
    pts = [(e["t"], e["ops_per_sec"]) for e in series
           if e.get("t") is not None and e.get("ops_per_sec") is not None]
    if len(pts) < 10:
        return None
    ts = [t for t, _ in pts]
    ys = [y for _, y in pts]
    mean = statistics.fmean(ys)
    if mean <= 0:
        return None
    tenth = max(1, len(ys) // 10)
    first, last = statistics.fmean(ys[:tenth]), statistics.fmean(ys[-tenth:])
    slope = statistics.linear_regression(ts, ys).slope      # ops/s per second
    return ("drift over %.0f s: first tenth %s ops/s, last tenth %s (%+.1f%%); "
            "least-squares slope %+.2f%% of the mean a minute; the seconds vary %.1f%% "
            "(standard deviation / mean), min %s, max %s"
            % (ts[-1], fmt_ops(first), fmt_ops(last), 100 * (last - first) / first,
               100 * slope * 60 / mean, 100 * statistics.pstdev(ys) / mean,
               fmt_ops(min(ys)), fmt_ops(max(ys))))


# --------------------------------------------------------------------- point

def point_title(point, machine=None):
    cores = (machine or {}).get("cores_allowed")
    over = ""
    if point.get("oversubscribed"):
        over = ", oversubscribed" + (" (%s cores)" % cores if cores else "")
    spec = point.get("spec")
    name = point["design"] + (" (%s)" % spec if spec and spec != point["design"] else "")
    t = point["threads"]
    return "%s at %d thread%s: %s ops/s%s" % (name, t, "" if t == 1 else "s",
                                            fmt_ops(point["ops_per_sec"]), over)


def disturbance_line(point):
    """What else had the cores during the point's median window."""
    d = point.get("disturbance")
    if not isinstance(d, dict):
        return None
    line = ("disturbance: %d busy process(es) on %d core(s); %d preemption(s) of %d of them "
            "during the window; steal time %s ms%s"
            % (d.get("busy_processes", 0), d.get("cores", 0), d.get("preemptions", 0),
               d.get("preempted", 0), "%.3f" % (d.get("steal_ns", 0) / 1e6),
               "" if d.get("preemptions") or d.get("steal_ns") else " (undisturbed)"))
    m = point.get("machine_load")
    if isinstance(m, dict) and m.get("windows"):
        line += ("\nother load over its %d window(s): %.2f CPUs on the run's CPUs (mean; "
                 "most %.2f), %.2f CPUs on the whole machine at most; steal %.3f ms in all"
                 % (m["windows"], m.get("other_cpus_mean", 0), m.get("other_cpus_max", 0),
                    m.get("machine_other_cpus_max", 0), m.get("steal_ns", 0) / 1e6))
    return line


def render_point(point, machine=None, options=None, fmt="simple"):
    """Every diagnostic the point holds, under one title, each section
    skipped when the point has no data for it."""
    out = ["== " + point_title(point, machine), timing_line(point, options)]
    if point.get("state_checked"):
        out.append("state after every window: %s" % point["state_checked"])
    line = disturbance_line(point)
    if line:
        out.append(line)
    sections = (("locks", lock_table(point, fmt, options)),
                ("time per I/O", breakdown_table(point, fmt)),
                ("latency", latency_table(point, fmt)),
                ("allocator", alloc_table(point, fmt)),
                ("magazines", magazine_table(point, fmt)),
                ("flush and exposure", flush_table(point, fmt)),
                ("fairness", fairness_table(point, fmt)),
                ("per second", series_table(point, fmt)))
    for title, text in sections:
        if text:
            out += ["", "-- " + title, text]
    return "\n".join(out)
