"""Results as tables: the throughput table (a row per thread count; per
design its ops/s, its ratio to `direct` at the same thread count, and to
linear scaling from its own one-thread figure), the exposure and flush
table, and the `report` and `compare` commands over results files."""
import csv
import io
import json
import statistics
import sys

from tabulate import tabulate, tabulate_formats

from harness import diagnostics, results
from harness.diagnostics import fmt_ops, fmt_us
from harness.errors import UsageError

SPREAD_MARK = 0.10      # a point whose repeats spread wider than this is marked

# names a user may give to --format besides tabulate's own
FORMAT_ALIASES = {"markdown": "github"}
DEFERRED = ("batched", "percpu", "single")

# run options worth a line in a report; the rest are in the file
SHOWN_OPTIONS = ("lock", "profile", "workload", "depth", "sizes", "duration", "warmup", "repeats",
                 "launches", "domains", "unmap_fraction", "device_ns", "hypercall_ns", "premapped",
                 "dma_passes", "huge", "iotlb_walks", "rogue_device", "lock_timing", "check",
                 "placement", "cpus", "node")


def formats():
    return ["csv", "markdown"] + sorted(tabulate_formats)


def table_format(name):
    """The tabulate format for a --format value ("csv" stays "csv"), or a
    UsageError listing the valid ones."""
    if name == "csv":
        return "csv"
    fmt = FORMAT_ALIASES.get(name, name)
    if fmt not in tabulate_formats:
        raise UsageError("unknown --format %r; valid: %s" % (name, ", ".join(formats())))
    return fmt


CI_NOTE = ("± the larger side of the median's 95% confidence interval, over the median "
           "(order statistics of the windows, whichever launch took them; under 6 windows "
           "[min, max], which covers less: 75% for 3; `ci` in the results; `compare` tests "
           "launch against launch)")


def ci_half_width(p):
    """The larger side of a point's interval over its median, or None
    (a file of a version that did not record it)."""
    ci = p.get("ci")
    med = p.get("ops_per_sec")
    # one window has no interval to show (level 0)
    if not isinstance(ci, dict) or ci.get("low") is None or not ci.get("level") or not med:
        return None
    return max(med - ci["low"], ci["high"] - med) / med


def fmt_share(x):
    """A share as a percentage of two significant figures or so."""
    pct = 100 * x
    return "%.1f%%" % pct if pct < 10 else "%.0f%%" % pct


def spread(runs):
    """(max - min) / median of a point's repeats."""
    if len(runs) < 2:
        return 0.0
    med = statistics.median(runs)
    return (max(runs) - min(runs)) / med if med else 0.0


def header(machine):
    return ("machine: %s, %s cores allowed, numba %s, python %s, kernel %s, commit %s"
            % (machine.get("cpu_model"), machine.get("cores_allowed", "?"), machine.get("numba"),
               machine.get("python"), machine.get("kernel"), machine.get("commit")))


def placement_lines(doc, prefix=""):
    """The placement of the workers, as the header names it (none for a
    file of a version that did not record it)."""
    from harness.placement import describe
    rec = doc.get("placement")
    return [prefix + describe(rec)] if isinstance(rec, dict) else []


def repeats_lines(points):
    """--repeats auto: the windows each point took and where its interval
    ended; the points that never reached the target named last."""
    auto = [p for p in points if isinstance(p.get("repeats_auto"), dict)]
    if not auto:
        return []
    target = auto[0]["repeats_auto"]["target_ci"]
    lines = ["--repeats auto, target ±%s:" % fmt_share(target)]
    for p in auto:
        a = p["repeats_auto"]
        ci = p.get("ci") or {}
        hw = a.get("half_width")
        lines.append("  %s at %d: %d windows, median %s, interval %s-%s (±%s)%s"
                     % (p["design"], p["threads"], a["windows"], fmt_ops(p["ops_per_sec"]),
                        fmt_ops(ci.get("low") or 0), fmt_ops(ci.get("high") or 0),
                        fmt_share(hw) if hw is not None else "-",
                        "" if a["reached"] else ", target not reached"))
    missed = [p for p in auto if not p["repeats_auto"]["reached"]]
    if missed:
        lines.append("never within ±%s: %s" % (fmt_share(target), ", ".join(
            "%s at %d" % (p["design"], p["threads"]) for p in missed)))
    return lines


def system_lines(doc, prefix=""):
    """The warnings recorded about the machine's state at the run's start."""
    rec = doc.get("system")
    if not isinstance(rec, dict):
        return []
    return ["%swarning: %s" % (prefix, w) for w in rec.get("warnings") or []]


def flush_policy(point):
    """strict, batched, percpu, single, or none for a design without an IOMMU."""
    return point["flush"]


def _designs(points):
    out = []
    for p in points:
        if p["design"] not in out:
            out.append(p["design"])
    return out


def _is_direct(p):
    """The baseline of the `x direct` column: a design with no IOMMU."""
    return flush_policy(p) == "none"


class _Figures:
    """Per point: the ratio to direct and to linear scaling."""

    def __init__(self, points):
        self.designs = _designs(points)
        self.threads = sorted({p["threads"] for p in points})
        self.by = {(p["design"], p["threads"]): p for p in points}
        self.has_direct = any(_is_direct(p) for p in points)

    def direct(self, t):
        return next((self.by[(d, t)] for d in self.designs
                     if (d, t) in self.by and _is_direct(self.by[(d, t)])), None)

    def x_direct(self, p):
        base = self.direct(p["threads"])
        return p["ops_per_sec"] / base["ops_per_sec"] if base and base["ops_per_sec"] else None

    def x_linear(self, p):
        d = p["design"]
        one = self.by.get((d, 1)) or next(
            (self.by[(d, t)] for t in self.threads if (d, t) in self.by), None)
        if not one or not one["ops_per_sec"]:
            return None
        return p["ops_per_sec"] / (one["ops_per_sec"] * p["threads"] / one["threads"])

    def oversubscribed(self, t):
        return any(self.by[(d, t)].get("oversubscribed") for d in self.designs if (d, t) in self.by)


def _throughput_csv(fig):
    heads = ["threads", "oversubscribed"]
    with_ci = any(isinstance(p.get("ci"), dict) for p in fig.by.values())
    for d in fig.designs:
        heads += [d + "_ops_per_sec", d + "_spread"]
        if with_ci:
            heads += [d + "_ci_low", d + "_ci_high"]
        if fig.has_direct:
            heads.append(d + "_x_direct")
        heads.append(d + "_x_linear")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(heads)
    num = lambda v, pat="%.4f": "" if v is None else pat % v     # noqa: E731
    for t in fig.threads:
        row = [t, int(fig.oversubscribed(t))]
        for d in fig.designs:
            p = fig.by.get((d, t))
            if p is None:
                row += [""] * ((4 if fig.has_direct else 3) + (2 if with_ci else 0))
                continue
            row += [num(p["ops_per_sec"], "%.0f"), num(spread(p.get("runs", [])))]
            if with_ci:
                ci = p.get("ci") or {}
                row += [num(ci.get("low"), "%.0f"), num(ci.get("high"), "%.0f")]
            if fig.has_direct:
                row.append(num(fig.x_direct(p)))
            row.append(num(fig.x_linear(p)))
        w.writerow(row)
    return buf.getvalue().rstrip("\n")


def throughput_table(points, fmt="simple", cores=None):
    """Render points (dicts as in the results file).  fmt is a tabulate
    format, "markdown", or "csv": one header row and raw numbers, without
    marks or notes, for a spreadsheet or a script."""
    fmt = table_format(fmt)
    fig = _Figures(points)
    if fmt == "csv":
        return _throughput_csv(fig)
    heads = ["threads"]
    for d in fig.designs:
        unit = "maps/s" if is_replay([p for p in points if p["design"] == d]) else "ops/s"
        heads += ["%s %s" % (d, unit)] + (["x direct"] if fig.has_direct else []) + ["x linear"]
    rows = []
    marks = set()
    for t in fig.threads:
        over = fig.oversubscribed(t)
        row = ["%d%s" % (t, "*" if over else "")]
        if over:
            marks.add("*")
        for d in fig.designs:
            p = fig.by.get((d, t))
            if p is None:
                row += ["-"] * (3 if fig.has_direct else 2)
                continue
            s = fmt_ops(p["ops_per_sec"])
            hw = ci_half_width(p)
            if hw is not None:
                s += " ±%s" % fmt_share(hw)
                marks.add("±")
            if p.get("repeats_auto") and not p["repeats_auto"].get("reached"):
                s += " >"
                marks.add(">")
            if spread(p.get("runs", [])) > SPREAD_MARK:
                s += " ~"
                marks.add("~")
            if p.get("disturbed"):
                s += " !"
                marks.add("!")
            if p.get("stalled"):
                s += " ?"
                marks.add("?")
            if p.get("concurrent_runs"):
                s += " &"
                marks.add("&")
            row.append(s)
            if fig.has_direct:
                xd = fig.x_direct(p)
                row.append("%.3f" % xd if xd is not None else "-")
            lin = fig.x_linear(p)
            row.append("%.3f" % lin if lin is not None else "-")
        rows.append(row)
    out = tabulate(rows, headers=heads, tablefmt=fmt, disable_numparse=True,
                   colalign=["left"] + ["right"] * (len(heads) - 1))
    notes = []
    if "*" in marks:
        notes.append("* oversubscribed: more busy processes (workers, a rogue device) than "
                     "cores (%s); they share cores, so lock holders get preempted (a "
                     "qspinlock then waits as the kernel's does where its CPUs can be "
                     "preempted: virt_spin_lock, test-and-set, no queue)"
                     % (cores if cores else "see header"))
    if "±" in marks:
        notes.append(CI_NOTE)
    if ">" in marks:
        notes.append("> --repeats auto: the interval never came within --target-ci "
                     "(`repeats_auto` in the results)")
    if "~" in marks:
        notes.append("~ repeats spread over %d%% of the median" % (SPREAD_MARK * 100))
    if "!" in marks:
        notes.append(DISTURBED_NOTE)
    if "?" in marks:
        notes.append(STALLED_NOTE)
    if "&" in marks:
        notes.append(CONCURRENT_NOTE)
    return out + ("\n" + "\n".join(notes) if notes else "")


DISTURBED_NOTE = ("! disturbed: a worker was preempted, or the hypervisor stole time, during a "
                  "window (`report --diag` has the counts); the figure is partly the machine's")


STALLED_NOTE = ("? stalled: a worker went half a window without progress (stopped, or "
                "starved of a CPU; in an oversubscribed point, beyond its wait for a CPU), or "
                "did under a quarter of the median worker's I/Os while the machine took its "
                "time (`stalled_workers` in the results); the figure is of fewer workers")
CONCURRENT_NOTE = ("& another iommu-stress run was measuring on this machine "
                   "(`concurrent_runs` in the results): the cores were shared with it")


def _point_marks(p):
    return ("*" if p.get("oversubscribed") else "") + ("!" if p.get("disturbed") else "")


def wants_exposure(points):
    """Whether the exposure table says anything: some design defers its
    invalidations, or a rogue device probed for stale entries."""
    return any(flush_policy(p) in DEFERRED or "stale_hits" in p for p in points)


def exposure_table(points, fmt="simple"):
    """Rows design x threads: how long unmapped IOVAs stay reachable and
    what the flushing cost; None when no point defers or was probed."""
    fmt = table_format(fmt)
    if fmt == "csv" or not wants_exposure(points):
        return None
    rogue = any("stale_hits" in p for p in points)
    heads = ["design", "threads", "flush", "exposure mean µs", "p99 µs", "max µs", "invalidations",
             "queue flushes (timer)", "mean batch"] + (["stale hits/s"] if rogue else [])
    rows = []
    order = {d: i for i, d in enumerate(_designs(points))}
    for p in sorted(points, key=lambda p: (order[p["design"]], p["threads"])):
        pol = flush_policy(p)
        if pol == "none":
            continue
        ex = p.get("exposure_ns") or {}
        fl = p.get("flush_stats") or {}
        deferred = pol in DEFERRED
        has_ex = bool(ex.get("count"))
        row = [p["design"], "%d%s" % (p["threads"], _point_marks(p)), pol,
               fmt_us(ex.get("mean")) if has_ex else "-",
               fmt_us(ex.get("p99")) if has_ex else "-",
               fmt_us(ex.get("max")) if has_ex else "-",
               "%d" % fl["invalidations"] if "invalidations" in fl else "-",
               "%d (%d)" % (fl.get("queue_flushes", 0), fl.get("timer_flushes", 0)) if deferred else "-",
               "%.1f" % fl.get("mean_batch", 0.0) if deferred else "-"]
        if rogue:
            row.append(fmt_ops(p["stale_hits_per_sec"]) if "stale_hits_per_sec" in p else "-")
        rows.append(row)
    if not rows:
        return None
    out = tabulate(rows, headers=heads, tablefmt=fmt, disable_numparse=True,
                   colalign=["left", "left", "left"] + ["right"] * (len(heads) - 3))
    note = ("exposure: from an unmap to the completion of the invalidation that covers it; "
            "queue flushes (timer): flushes of the deferred queue, those the timeout started")
    if rogue:
        note += "; stale hits: a rogue device's reads that still reached unmapped memory"
    if any(p.get("disturbed") for p in points if flush_policy(p) != "none"):
        note += ("\n! the exposure of a disturbed point includes preemptions between a "
                 "page-table clear and the invalidation that covers it, which the kernel "
                 "(preemption off there) never has: it is not the design's alone")
    return out + "\n" + note


# -------------------------------------------------------------- several files

class Source:
    """One results file as loaded, with the name to cite it by."""

    def __init__(self, name, doc):
        self.name = name
        self.doc = doc
        self.machine = doc.get("machine") or {}
        self.options = doc.get("options") or {}


def load_sources(paths):
    return [Source(str(p), results.load(p)) for p in paths]


def machine_name(point, doc):
    """The machine a point is kept apart by: its own in a file measured on
    each machine of a cluster (`--each-machine`), else None (one table)."""
    if (doc.get("cluster") or {}).get("mode") == "each-machine":
        return (point.get("host") or {}).get("name")
    return None


def merge(sources):
    """The points of several files as [(point, source)], in the order
    measured; when a (design, threads) occurs in more than one file the
    later file wins (of one machine, in files measured on each machine
    of a cluster).  Returns (entries, notes)."""
    by = {}
    replaced = {}
    for src in sources:
        for p in src.doc["points"]:
            key = (machine_name(p, src.doc), p["design"], p["threads"])
            if key in by and by[key][1] is not src:
                replaced.setdefault((by[key][1].name, src.name), []).append(key)
            by[key] = (p, src)
    notes = []
    for (old, new), keys in replaced.items():
        per = {}
        for m, d, t in keys:
            per.setdefault((m, d), []).append(t)
        what = "; ".join("%s at %s threads%s" % (d, ", ".join(str(t) for t in sorted(ts)),
                                                 " on %s" % m if m is not None else "")
                         for (m, d), ts in per.items())
        notes.append("note: %d point%s in both %s and %s: the later file's kept (%s)"
                     % (len(keys), "" if len(keys) == 1 else "s", old, new, what))
    return list(by.values()), notes


def by_machine(entries):
    """Entries [(point, source)] grouped by machine_name: [(name, the
    machine's description, entries)], machines in the order first met;
    one group named None when the points make one table."""
    groups = {}
    for p, src in entries:
        name = machine_name(p, src.doc)
        if name not in groups:
            groups[name] = (p.get("host") if name is not None else src.machine, [])
        groups[name][1].append((p, src))
    return [(name, host, es) for name, (host, es) in groups.items()]


def host_header(name, host):
    """The line above one machine's table."""
    mem = host.get("memory_bytes")
    return "machine %s: %s, %s cores allowed, %s memory, kernel %s, python %s, numba %s, " \
           "commit %s" % (name, host.get("cpu_model"), host.get("cores_allowed", "?"),
                          "%.0f GiB" % (mem / 2**30) if isinstance(mem, (int, float)) else "?",
                          host.get("kernel"), host.get("python"), host.get("numba"),
                          host.get("commit"))


def cluster_lines(doc, prefix=""):
    """Where a cluster's points ran: a line naming the machines and their
    share, and, when machines of more than one kind measured one table
    (--allow-mixed), a line saying which."""
    cl = doc.get("cluster")
    hosts = {}
    for p in doc["points"]:
        h = p.get("host")
        if h:
            hosts.setdefault(h["name"], [h, 0])[1] += 1
    if not cl or not hosts:
        return []
    lines = ["%scluster: %s, %s %d machine%s (%s)" % (
        prefix, cl.get("scheduler"), "each point on each of" if cl.get("mode") == "each-machine"
        else "points spread over", len(hosts), "" if len(hosts) == 1 else "s",
        ", ".join("%s: %d point%s" % (n, c, "" if c == 1 else "s") for n, (_, c) in hosts.items()))]
    if cl.get("mode") != "each-machine":
        from harness.cluster import same_kind
        first_name, (first, _) = next(iter(hosts.items()))
        odd = [(n, ks) for n, ks in ((n, same_kind(first, h)) for n, (h, _) in hosts.items())
               if ks]
        if odd:
            lines.append("%smixed machines: %s differ%s from %s in %s; the table's figures are "
                         "not of one kind of machine" % (
                             prefix, ", ".join(n for n, _ in odd), "s" if len(odd) == 1 else "",
                             first_name, ", ".join(sorted({k for _, ks in odd for k in ks}))))
    return lines


# what a concurrent replay takes from the trace or does not do: the sizes
# are the trace's own, each window is one pass (no duration, no warm-up)
NOT_REPLAYED = ("duration", "warmup", "depth", "unmap_fraction")


def is_replay(points):
    """Points of a concurrent replay (harness/tracereplay.py): their figure
    is maps a second over a pass of the trace."""
    return bool(points) and all("replay" in p for p in points)


def _options_line(opts, replay=False):
    parts = []
    for k in SHOWN_OPTIONS:
        if k not in opts or opts[k] in (None, "", False) or (k == "dma_passes" and opts[k] == 1):
            continue
        if replay and k in NOT_REPLAYED:
            continue
        v = opts[k]
        if k == "sizes" and isinstance(v, list):
            v = ",".join("%s:%g" % (pg, w) for pg, w in v)
        elif v is True:
            v = "on"
        elif k in ("duration", "warmup"):
            v = "%g s" % v
        elif k.endswith("_ns"):
            v = "%g ns" % v
        if replay and k == "sizes":
            k = "the trace's sizes"
        parts.append("%s %s" % ("passes" if replay and k == "repeats" else k.replace("_", "-"), v))
    return "options: " + ", ".join(parts) if parts else None


def _option_differences(sources):
    diffs = []
    for k in SHOWN_OPTIONS:
        vals = []
        for s in sources:
            v = json.dumps(s.options.get(k), sort_keys=True)
            if v not in vals:
                vals.append(v)
        if len(vals) > 1:
            diffs.append("%s (%s)" % (k.replace("_", "-"), " vs ".join(vals)))
    return diffs


def describe_sources(sources):
    """Header lines: one per distinct machine, then how each file was made,
    whether it is complete, and what failed."""
    lines = []
    machines = []
    for s in sources:
        key = json.dumps(s.machine, sort_keys=True)
        for m in machines:
            if m[0] == key:
                m[2].append(s.name)
                break
        else:
            machines.append((key, s.machine, [s.name]))
    several = len(sources) > 1
    for _, m, names in machines:
        if not m.get("cpu_model") and all((s.doc.get("cluster") or {}).get("mode") ==
                                          "each-machine" for s in sources if s.name in names):
            continue          # each machine's own heads its table
        lines.append(header(m) + (" (%s)" % ", ".join(names) if len(machines) > 1 else ""))
    for s in sources:
        prefix = s.name + ": " if several else ""
        cmd = s.doc.get("command")
        if cmd:
            lines.append("%scommand: %s%s" % (prefix, cmd, " (started %s)" % s.doc["started"]
                                              if s.doc.get("started") else ""))
        lines += placement_lines(s.doc, prefix) + system_lines(s.doc, prefix)
        mixed = results.mixed_keys(s.doc)
        ol = _options_line({k: v for k, v in s.options.items() if k not in mixed},
                           is_replay(s.doc["points"]))
        if ol and not several:
            lines.append(ol)
    if several:
        diffs = _option_differences(sources)
        if diffs:
            lines.append("note: the files differ in options: " + "; ".join(diffs))
    return lines


def mixed_lines(doc, prefix=""):
    """A line per group of points measured with other options (or on
    another machine) than the file's (--resume --force-mix)."""
    groups = {}
    for p in doc["points"]:
        own = dict(p.get("options") or {}, **(p.get("machine") or {}))
        if own:
            groups.setdefault(json.dumps(own, sort_keys=True), (own, []))[1].append(p)
    lines = []
    for own, pts in groups.values():
        theirs = dict(doc.get("options") or {}, **(doc.get("machine") or {}))
        lines.append("%smixed: %s measured with %s (the file's: %s)" % (
            prefix, ", ".join("%s at %d" % (p["design"], p["threads"]) for p in pts),
            ", ".join("%s %s" % (k.replace("_", "-"), json.dumps(v)) for k, v in own.items()),
            ", ".join("%s %s" % (k.replace("_", "-"), json.dumps(theirs.get(k))) for k in own)))
    return lines


def status_lines(sources):
    lines = []
    for s in sources:
        prefix = s.name + ": " if len(sources) > 1 else ""
        lines += cluster_lines(s.doc, prefix)
        lines += mixed_lines(s.doc, prefix)
        if not s.doc.get("complete", True):
            n = len(s.doc["points"])
            lines.append("%sinterrupted: %d point%s measured" % (prefix, n, "" if n == 1 else "s"))
        for f in s.doc.get("failures") or []:
            lines.append("%sfailed: %s" % (prefix, f))
    return lines


def _cores(sources):
    vals = []
    for s in sources:
        c = s.machine.get("cores_allowed")
        if c is not None and c not in vals:
            vals.append(c)
    return ", ".join(str(c) for c in vals) or None


def csv_by_machine(groups):
    """The csv table; of several machines, one table with a first column
    naming each row's machine."""
    if len(groups) == 1 and groups[0][0] is None:
        return throughput_table([p for p, _ in groups[0][2]], "csv")
    lines = []
    for name, _, es in groups:
        head, *rows = throughput_table([p for p, _ in es], "csv").split("\n")
        if not lines:
            lines.append("machine," + head)
        lines += ["%s,%s" % (name, r) for r in rows]
    return "\n".join(lines)


def render_report(sources, fmt="simple", diag=False):
    """(stdout text, stderr lines).  In csv the table alone goes to stdout,
    so that a script can read it; what a person needs goes to stderr."""
    fmt = table_format(fmt)
    if fmt == "csv" and diag:
        raise UsageError("--diag prints text tables; it does not combine with --format csv")
    entries, merge_notes = merge(sources)
    points = [p for p, _ in entries]
    info = describe_sources(sources)
    status = status_lines(sources)
    if fmt == "csv":
        if not points:
            raise UsageError("%s: no points measured" % ", ".join(s.name for s in sources))
        return csv_by_machine(by_machine(entries)) + "\n", info + merge_notes + status
    blocks = ["\n".join(info)]
    if points:
        groups = by_machine(entries)
        for name, host, es in groups:
            pts = [p for p, _ in es]
            cores = _cores(sources) if name is None else host.get("cores_allowed")
            table = throughput_table(pts, fmt, cores=cores)
            blocks.append(table if name is None else host_header(name, host) + "\n" + table)
            ex = exposure_table(pts, fmt)
            if ex:
                blocks.append(ex)
    else:
        blocks.append("no points measured")
    tail = merge_notes + status
    if tail:
        blocks.append("\n".join(tail))
    if diag:
        for p, src in entries:
            blocks.append(diagnostics.render_point(p, dict(src.machine, **p.get("machine", {})),
                                                   dict(src.options, **p.get("options", {})), fmt))
    return "\n\n".join(blocks) + "\n", []


def add_report_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="results files (--json); points measured in several: the later file wins")
    p.add_argument("--format", default="simple", metavar="NAME",
                   help="csv, markdown, or a table format of tabulate (simple, github, grid, ...)")
    p.add_argument("--diag", action="store_true",
                   help="print every point's diagnostics: locks, time per I/O, allocator, flushes")


def cmd_report(args):
    out, err = render_report(load_sources(args.files), args.format, args.diag)
    sys.stdout.write(out)
    for line in err:
        print(line, file=sys.stderr)
    return 0


# ------------------------------------------------------------------- compare

def _one_design_each(a_points, b_points):
    """(A's design, B's) when each file holds one design and they differ."""
    da, db = _designs(a_points), _designs(b_points)
    return (da[0], db[0]) if len(da) == 1 and len(db) == 1 and da != db else None


def compare_rows(a_points, b_points):
    """[(design, threads, point in A or None, point in B or None)], designs
    in the order A measured them, then those only B has."""
    one_each = _one_design_each(a_points, b_points)
    if one_each:
        # two designs, a file each: compared thread count by thread count
        name = "%s -> %s" % one_each
        a_points = [dict(p, design=name) for p in a_points]
        b_points = [dict(p, design=name) for p in b_points]
    by_a = {(p["design"], p["threads"]): p for p in a_points}
    by_b = {(p["design"], p["threads"]): p for p in b_points}
    order = _designs(list(a_points) + list(b_points))
    keys = sorted(set(by_a) | set(by_b), key=lambda k: (order.index(k[0]), k[1]))
    return [(d, t, by_a.get((d, t)), by_b.get((d, t))) for d, t in keys]


def _within_noise(a, b, ratio):
    return abs(ratio - 1.0) <= max(spread(a.get("runs", [])), spread(b.get("runs", []))) / 2


def _test(pa, pb, alpha):
    """stats.compare of two points: their launches where each spans two or
    more, else their windows (their median alone if a file kept no
    runs)."""
    from harness import stats
    return stats.compare(pa.get("runs") or [pa["ops_per_sec"]],
                         pb.get("runs") or [pb["ops_per_sec"]],
                         pa.get("window_launch"), pb.get("window_launch"), alpha)


def _family_alpha(rows):
    """Each point's level, Bonferroni over the points tested together:
    a table of m points calls a difference where p < 0.05 / m, and each
    interval covers 1 - 0.05 / m, so that two runs of the same sweep show
    a false difference somewhere in the table at most 5% of the time, not
    at 5% of its points."""
    from harness import stats
    m = sum(1 for _, _, pa, pb in rows
            if pa and pb and pa["ops_per_sec"] and pb["ops_per_sec"])
    return (1 - stats.LEVEL) / max(1, m)


def _verdict_words(c):
    if c["verdict"] in ("faster", "slower"):
        return "B %s (p=%s)" % (c["verdict"], _p(c["p"]))
    if c["verdict"] == "no significant difference":
        return "no significant difference (p=%s)" % _p(c["p"])
    return "too few windows to decide"


def _p(p):
    return "%.2g" % p if p is not None else "-"


def _pct(x):
    return "%s%%" % ("%.2f" % (100 * x)).rstrip("0").rstrip(".")


def compare_table(a, b, fmt="simple"):
    """Two sources side by side: ops/s of each and B/A per (design,
    threads), with B/A's interval and a verdict: Welch's t test on the
    two points' launches, or the Mann-Whitney U test on their windows
    where a side has one launch (harness/stats.py), at a level shared by
    the table's points (_family_alpha)."""
    from harness import stats
    fmt = table_format(fmt)
    rows = compare_rows(a.doc["points"], b.doc["points"])
    alpha = _family_alpha(rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["design", "threads", "a_ops_per_sec", "b_ops_per_sec", "b_over_a", "missing_in",
                    "ci_low", "ci_high", "ci_level", "p", "verdict", "unit", "a_n", "b_n"])
        for d, t, pa, pb in rows:
            ratio = pb["ops_per_sec"] / pa["ops_per_sec"] if pa and pb and pa["ops_per_sec"] else None
            c = _test(pa, pb, alpha) if ratio else None
            w.writerow([d, t, "%.0f" % pa["ops_per_sec"] if pa else "",
                        "%.0f" % pb["ops_per_sec"] if pb else "",
                        "%.4f" % ratio if ratio is not None else "",
                        "a" if pa is None else "b" if pb is None else "",
                        "%.4f" % c["low"] if c and c["low"] is not None else "",
                        "%.4f" % c["high"] if c and c["high"] is not None else "",
                        "%.4f" % c["level"] if c else "",
                        "%.4g" % c["p"] if c and c["p"] is not None else "",
                        c["verdict"] if c else "", c["unit"] if c else "",
                        c["n"][0] if c else "", c["n"][1] if c else ""])
        return buf.getvalue().rstrip("\n")
    out = []
    ratios = []
    verdicts = {}
    levels = set()
    marks = set()
    units = set()
    for d, t, pa, pb in rows:
        over = (pa or {}).get("oversubscribed") or (pb or {}).get("oversubscribed")
        if over:
            marks.add("*")
        line = [d, "%d%s" % (t, "*" if over else ""),
                fmt_ops(pa["ops_per_sec"]) if pa else "-", fmt_ops(pb["ops_per_sec"]) if pb else "-"]
        if pa and pb and pa["ops_per_sec"] and pb["ops_per_sec"]:
            r = pb["ops_per_sec"] / pa["ops_per_sec"]
            ratios.append(r)
            c = _test(pa, pb, alpha)
            verdicts[c["verdict"]] = verdicts.get(c["verdict"], 0) + 1
            units.add(c["unit"])
            # the old rule of thumb, where the windows are too few to test
            noise = c["verdict"] == "too few windows" and _within_noise(pa, pb, r)
            if noise:
                marks.add("~")
            interval = ""
            if c["low"] is not None and c["high"] > c["low"]:
                interval = "%.3f-%.3f" % (c["low"], c["high"])
                if c["unit"] == "windows":
                    levels.add(round(100 * c["level"], 2))
            line += ["%.3f%s" % (r, " ~" if noise else ""), interval, _verdict_words(c)]
        else:
            line += ["-", "", "missing in A" if pa is None else "missing in B" if pb is None else ""]
        out.append(line)
    heads = ["design", "threads", "A ops/s", "B ops/s", "B/A", "interval", ""]
    text = tabulate(out, headers=heads, tablefmt=fmt, disable_numparse=True,
                    colalign=["left", "left", "right", "right", "right", "right", "left"])
    notes = []
    gm = stats.geomean(ratios)
    if gm is not None:
        notes.append("geometric mean of B/A over %d point%s measured in both: %.3f%s"
                     % (len(ratios), "" if len(ratios) == 1 else "s", gm,
                        " (%s)" % ", ".join("%s at %d" % (v, n) for v, n in sorted(verdicts.items()))))
    family = ("" if alpha >= 1 - stats.LEVEL else
              " (0.05 over the %d points tested together, so that the table as a whole "
              "calls a false difference at most 5%% of the time)" % round((1 - stats.LEVEL) / alpha))
    if "launches" in units:
        notes.append("interval: of B/A as the ratio of the geometric means of each launch's "
                     "median, from Welch's t test on their logs (a launch: a fresh segment and "
                     "fresh workers; its windows are not independent draws), covering %s; B "
                     "faster or slower where the two-sided p is under %s%s, and then the "
                     "interval excludes 1"
                     % (_pct(1 - alpha), _pct(alpha), family))
    if "windows" in units and levels:
        notes.append("interval%s: of B/A, the Hodges-Lehmann interval of the Mann-Whitney U test "
                     "on the windows, covering %s%%; B faster or slower where the two-sided "
                     "p is under %s%s, and then the interval excludes 1"
                     % (" of points of one launch" if "launches" in units else "",
                        "/".join("%g" % x for x in sorted(levels)), _pct(alpha),
                        family if "launches" not in units else ""))
    if "windows" in units:
        notes.append("one launch a side%s: the test takes the windows as independent, but a "
                     "launch's windows share its luck (its pages, its workers): a difference "
                     "it finds may be that of two launches; measure both with --launches 3 "
                     "or more" % (" at some points" if "launches" in units else ""))
    if verdicts.get("too few windows"):
        notes.append("too few windows: no difference could reach p < %s: the smallest two-sided "
                     "p of the Mann-Whitney U test is 0.10 with 3 windows a side, 0.029 with 4, "
                     "0.008 with 5" % _pct(alpha))
    if "~" in marks:
        notes.append("~ the change is within half the spread of the repeats: it may be noise")
    if "*" in marks:
        notes.append("* oversubscribed in A or B: more workers than cores")
    return text + ("\n" + "\n".join(notes) if notes else "")


def render_compare(a, b, fmt="simple"):
    fmt = table_format(fmt)
    info = []
    for tag, s in (("A", a), ("B", b)):
        info.append("%s: %s" % (tag, s.name))
        info += ["  " + line for line in describe_sources([s])]
        info += ["  " + line for line in status_lines([s])]
    one_each = _one_design_each(a.doc["points"], b.doc["points"])
    if one_each:
        info.append("A holds %s alone and B %s alone: compared at each thread count" % one_each)
    diffs = _option_differences([a, b])
    if diffs:
        info.append("note: A and B differ in options: " + "; ".join(diffs))
    table = compare_table(a, b, fmt)
    if fmt == "csv":
        return table + "\n", info
    return "\n".join(info) + "\n\n" + table + "\n", []


def add_compare_arguments(p):
    p.add_argument("a", metavar="A", help="the baseline results file")
    p.add_argument("b", metavar="B", help="the results file compared with it (ratios are B/A)")
    p.add_argument("--format", default="simple", metavar="NAME",
                   help="csv, markdown, or a table format of tabulate (simple, github, grid, ...)")


def cmd_compare(args):
    a, b = load_sources([args.a, args.b])
    for s in (a, b):
        names = {machine_name(p, s.doc) for p in s.doc["points"]}
        if len(names) > 1:
            raise UsageError("%s holds %d machines (--each-machine): compare takes two files of "
                             "one machine each; report shows the machines side by side"
                             % (s.name, len(names)))
    out, err = render_compare(a, b, args.format)
    sys.stdout.write(out)
    for line in err:
        print(line, file=sys.stderr)
    return 0
