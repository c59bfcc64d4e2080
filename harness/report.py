"""The throughput table: a row per thread count; per design its ops/s, its
ratio to `direct` at the same thread count, and to linear scaling from its
own one-thread figure."""
import statistics

from tabulate import tabulate

SPREAD_MARK = 0.10      # a point whose repeats spread wider than this is marked


def _fmt_ops(v):
    if v >= 1e6:
        return "%.2fM" % (v / 1e6)
    if v >= 1e3:
        return "%.1fk" % (v / 1e3)
    return "%.0f" % v


def spread(runs):
    """(max - min) / median of a point's repeats."""
    if len(runs) < 2:
        return 0.0
    med = statistics.median(runs)
    return (max(runs) - min(runs)) / med if med else 0.0


def header(machine):
    return ("machine: %s, %d cores allowed, numba %s, python %s, kernel %s, commit %s"
            % (machine.get("cpu_model"), machine.get("cores_allowed", 0), machine.get("numba"),
               machine.get("python"), machine.get("kernel"), machine.get("commit")))


def throughput_table(points, fmt="simple", cores=None):
    """Render points (dicts as in the results file)."""
    designs = []
    for p in points:
        if p["design"] not in designs:
            designs.append(p["design"])
    threads = sorted({p["threads"] for p in points})
    by = {(p["design"], p["threads"]): p for p in points}
    heads = ["threads"]
    for d in designs:
        heads += [d + " ops/s", "x direct", "x linear"]
    rows = []
    marks = set()
    for t in threads:
        over = any(by[(d, t)].get("oversubscribed") for d in designs if (d, t) in by)
        row = ["%d%s" % (t, "*" if over else "")]
        if over:
            marks.add("*")
        base = next((by[(d, t)] for d in designs
                     if (d, t) in by and by[(d, t)].get("allocator", d) == "direct"), None)
        for d in designs:
            p = by.get((d, t))
            if p is None:
                row += ["-", "-", "-"]
                continue
            ops = p["ops_per_sec"]
            s = _fmt_ops(ops)
            if spread(p.get("runs", [])) > SPREAD_MARK:
                s += " ~"
                marks.add("~")
            one = by.get((d, 1)) or by.get((d, threads[0]))
            lin = ops / (one["ops_per_sec"] * t / one["threads"]) if one and one["ops_per_sec"] else None
            row += [s,
                    "%.3f" % (ops / base["ops_per_sec"]) if base and base["ops_per_sec"] else "-",
                    "%.3f" % lin if lin is not None else "-"]
        rows.append(row)
    if fmt == "csv":
        lines = [",".join(h.replace(" ", "_") for h in heads)]
        lines += [",".join(str(c) for c in r) for r in rows]
        return "\n".join(lines)
    out = tabulate(rows, headers=heads, tablefmt=fmt, disable_numparse=True)
    notes = []
    if "*" in marks:
        notes.append("* oversubscribed: more workers than cores (%s); workers share cores, "
                     "so lock holders get preempted" % (cores if cores else "see header"))
    if "~" in marks:
        notes.append("~ repeats spread over %d%% of the median" % (SPREAD_MARK * 100))
    return out + ("\n" + "\n".join(notes) if notes else "")
