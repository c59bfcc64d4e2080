"""Figures of a results file: throughput against threads beside linear
scaling and `direct`, and where the time per I/O goes (or, without a
breakdown, how long unmapped IOVAs stay exposed); with `--latency`, the
latency distributions of --diag as CDFs, a line per design."""
import math
from pathlib import Path

from harness import report
from harness.diagnostics import BREAKDOWN_PARTS, breakdown_parts
from harness.errors import UsageError

SUFFIXES = (".png", ".svg", ".pdf")
DIRECT_COLOR = "0.15"

# invalidation in oranges and lock wait in red, so that the two costs the
# designs differ in most stand out from the allocator's own work
PART_COLORS = {"allocate": "#4c72b0", "page_table": "#a6bddb", "invalidation_own": "#e6842a",
               "invalidation_queued": "#f7c38f",
               "invalidation_submit": "#fdd0a2", "free": "#55a868", "queue_flush": "#8fd19e",
               "lock_waits": "#c44e52", "lock_wait": "#c44e52",
               "device": "#8172b2", "loop": "#909090", "unnamed": "#d0d0d0",
               "harness": "#b0b0b0"}
OTHER_PART_COLORS = ("#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")


def _figure_class():
    # no pyplot: its global state and interactive backends have no place in a
    # command that only writes a file
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    return Figure


def _tick(v, _=None):
    """Axis labels as short as they can be: 2M, 500k, 1.5M."""
    if v <= 0:
        return ""
    for div, suffix in ((1e6, "M"), (1e3, "k"), (1, "")):
        if v >= div:
            return "%g%s" % (float("%.3g" % (v / div)), suffix)
    return "%g" % v


def _colors(designs):
    """A colour per design, stable across panels; direct is the grey
    reference."""
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
               "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
    out = {}
    i = 0
    for d, direct in designs:
        if direct:
            out[d] = DIRECT_COLOR
        else:
            out[d] = palette[i % len(palette)]
            i += 1
    return out


def _title(sources):
    machines = []
    for s in sources:
        m = (s.machine.get("cpu_model") or "unknown CPU", s.machine.get("cores_allowed"))
        if m not in machines:
            machines.append(m)
    if len(machines) == 1:
        model, cores = machines[0]
        return "%s, %s cores allowed" % (model, cores if cores is not None else "?")
    return "several machines: " + "; ".join("%s (%s cores)" % m for m in machines)


def _cores(sources):
    vals = [s.machine.get("cores_allowed") for s in sources if s.machine.get("cores_allowed")]
    return min(vals) if vals else None


def _bar(p, y):
    """(low, high) of a point's error bar: its median's interval where the
    file has one (under 6 windows that is their min-max), else the min
    and max of its windows."""
    ci = p.get("ci")
    if isinstance(ci, dict) and ci.get("low") is not None:
        return ci["low"], ci["high"]
    runs = p.get("runs") or [y]
    return min(runs), max(runs)


def _throughput_panel(ax, points, colors, cores):
    """Throughput against threads on log axes, a line per design, direct
    dashed, oversubscribed points hollow.  Matplotlib's settings for one
    panel read best in one place, so this one runs past 60 lines."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    designs = report._designs(points)
    threads = sorted({p["threads"] for p in points})
    handles = []
    for d in designs:
        # a log axis has no place for a point that measured nothing
        pts = sorted((p for p in points if p["design"] == d and p["ops_per_sec"] > 0),
                     key=lambda p: p["threads"])
        if not pts:
            continue
        direct = report._is_direct(pts[0])
        c = colors[d]
        xs = [p["threads"] for p in pts]
        ys = [p["ops_per_sec"] for p in pts]
        lo = [max(y - _bar(p, y)[0], 0) for p, y in zip(pts, ys)]
        hi = [max(_bar(p, y)[1] - y, 0) for p, y in zip(pts, ys)]
        ax.errorbar(xs, ys, yerr=[lo, hi], color=c, lw=2.2 if not direct else 1.8,
                    ls="--" if direct else "-", elinewidth=0.9, capsize=2.5, zorder=3)
        handles.append(Line2D([], [], color=c, lw=2.2 if not direct else 1.8, ls="--" if direct else "-",
                              marker="o", ms=5, label=d + (" (IOMMU off)" if direct else "")))
        full = [(x, y) for p, x, y in zip(pts, xs, ys) if not p.get("oversubscribed")]
        over = [(x, y) for p, x, y in zip(pts, xs, ys) if p.get("oversubscribed")]
        if full:
            ax.plot(*zip(*full), ls="none", marker="o", ms=6, color=c, zorder=4)
        if over:
            ax.plot(*zip(*over), ls="none", marker="o", ms=6, mfc="white", mec=c, mew=1.6, zorder=4)
        base = pts[0]
        if base["ops_per_sec"] > 0 and not direct and len(pts) > 1:
            lx = [t for t in threads if t >= base["threads"] and t <= xs[-1]]
            ax.plot(lx, [base["ops_per_sec"] * t / base["threads"] for t in lx],
                    ls=":", lw=1.2, color=c, alpha=0.45, zorder=2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(threads)
    ax.set_xticklabels([str(t) for t in threads])
    ax.minorticks_off()
    if _decades(points) < 3:
        # a log axis over one or two decades has too few labelled ticks
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("threads (worker processes)")
    ax.set_ylabel("I/Os per second (map + unmap)")
    ax.grid(True, which="major", alpha=0.3)
    lo_x, hi_x = threads[0] / 1.4, threads[-1] * 1.4
    ax.set_xlim(lo_x, hi_x)
    ys = [p["ops_per_sec"] for p in points if p["ops_per_sec"] > 0]
    if ys:
        # headroom for the label and some of the linear-scaling lines; the
        # rest of those may leave the top, as perfect scaling never happens
        ax.set_ylim(_nice_floor(min(ys) / 1.3), max(ys) * 2.5)
    over_t = [t for t in threads if any(p.get("oversubscribed") for p in points if p["threads"] == t)]
    if over_t:
        full_t = [t for t in threads if t < over_t[0]]
        start = math.sqrt(full_t[-1] * over_t[0]) if full_t else lo_x
        ax.axvspan(start, hi_x, color="0.5", alpha=0.12, lw=0, zorder=0)
        label = "oversubscribed\n(> %s cores)" % cores if cores else "oversubscribed"
        ax.text(math.sqrt(start * hi_x), 0.97, label, transform=ax.get_xaxis_transform(),
                ha="center", va="top", fontsize=9, color="0.3", zorder=5,
                bbox=dict(boxstyle="round,pad=0.3", facecolor="#eeeeee", edgecolor="none"))
    extra = handles + [Line2D([], [], ls=":", color="0.4", label="linear scaling from 1 thread")]
    if over_t:
        extra.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3",
                            label="oversubscribed point"))
    with_ci = any(isinstance(p.get("ci"), dict) for p in points)
    extra.append(Line2D([], [], color="0.3", marker="|", ls="none", ms=10,
                        label="bar: the median's 95% interval" if with_ci
                        else "bar: min-max of repeats"))
    ax.set_title("throughput against threads", fontsize=11)
    return extra


def _nice_floor(v):
    """The largest 1, 2 or 5 times a power of ten not above v: the bottom
    of the axis then carries a label."""
    e = 10 ** math.floor(math.log10(v))
    return max(m * e for m in (1, 2, 5) if m * e <= v)


def _decades(points):
    ys = [p["ops_per_sec"] for p in points if p["ops_per_sec"] > 0]
    return math.log10(max(ys) / min(ys)) if ys else 0


def _reference_threads(points, has):
    """The thread count to compare designs at: the one, not oversubscribed
    if possible, at which the most designs have the data (`has(point)`);
    the larger on a tie."""
    counts = {}
    for p in points:
        if has(p):
            key = (not p.get("oversubscribed"), p["threads"])
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None
    best = max(counts, key=lambda k: (k[0], counts[k], k[1]))
    return best[1]


def _has_breakdown(p):
    return bool(p.get("breakdown_ns"))


def _has_exposure(p):
    ex = p.get("exposure_ns") or {}
    return bool(ex.get("count")) and ex.get("p99", 0) > 0


def _breakdown_panel(ax, points, colors):
    from matplotlib.patches import Patch
    t = _reference_threads(points, _has_breakdown)
    pts = [p for p in points if p["threads"] == t and _has_breakdown(p)]
    split = [breakdown_parts(p["breakdown_ns"]) for p in pts]
    keys, labels = [], {}
    for parts, inner in split:
        for k, label, _ in parts + inner:
            if k not in labels:
                keys.append(k)
                labels[k] = label
    nested = {k for _, inner in split for k, _, _ in inner}
    canon = [k for k, _ in BREAKDOWN_PARTS]
    keys.sort(key=lambda k: (k in nested, canon.index(k) if k in canon else len(canon)))
    y = list(range(len(pts)))
    left = [0.0] * len(pts)
    others = iter(OTHER_PART_COLORS * len(keys))
    handles = []
    for k in keys:
        color = PART_COLORS.get(k) or next(others)
        w = [p["breakdown_ns"].get(k, 0.0) for p in pts]
        if k in nested:
            # a share of the parts already drawn: a strip under the bar,
            # not a segment that would count it twice
            ax.barh([yi + 0.36 for yi in y], w, left=0, height=0.1, color=color)
        else:
            ax.barh(y, w, left=left, color=color, height=0.6, edgecolor="white", linewidth=0.6)
            left = [a + b for a, b in zip(left, w)]
        handles.append(Patch(color=color, label=labels[k]))
    for yi, p, l in zip(y, pts, left):
        total = p["breakdown_ns"].get("total") or l
        ax.text(max(l, total), yi, "  %.0f ns" % total, va="center", fontsize=8.5)
    _design_ticks(ax, y, [p["design"] for p in pts], colors)
    top = max([max(l, p["breakdown_ns"].get("total") or 0) for l, p in zip(left, pts)] or [1])
    ax.set_xlim(0, top * 1.22 if top > 0 else 1)
    ax.set_xlabel("ns per I/O (mean)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("where the time goes, %d thread%s" % (t, "" if t == 1 else "s"), fontsize=11)
    return handles


def _exposure_panel(ax, points, colors):
    t = _reference_threads(points, _has_exposure)
    pts = [p for p in points if p["threads"] == t and _has_exposure(p)]
    us = [p["exposure_ns"]["p99"] / 1e3 for p in pts]
    y = list(range(len(pts)))
    ax.barh(y, us, color=[colors[p["design"]] for p in pts], height=0.62)
    for yi, v, p in zip(y, us, pts):
        ax.text(v, yi, "  %s µs (%s)" % (_short_us(v), report.flush_policy(p)),
                va="center", fontsize=8.5)
    _design_ticks(ax, y, [p["design"] for p in pts], colors)
    ax.set_xscale("log")
    ax.set_xlim(min(us) / 3, max(us) * 20)
    ax.set_xlabel("µs from unmap to the invalidation that covers it (p99, log)")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.set_title("exposure window p99, %d thread%s" % (t, "" if t == 1 else "s"), fontsize=11)


def _design_ticks(ax, y, designs, colors):
    ax.set_yticks(y)
    ax.set_yticklabels(designs)
    for label, d in zip(ax.get_yticklabels(), designs):
        label.set_color(colors[d])
    ax.invert_yaxis()


def _short_us(v):
    return "%.3g" % v if v < 1000 else "%.0f" % v


def _second_panel(points):
    if any(_has_breakdown(p) for p in points):
        return "breakdown"
    if any(_has_exposure(p) for p in points):
        return "exposure"
    return None


def figure(sources):
    """The figure of merged sources (report.Source), not yet saved."""
    entries, _ = report.merge(sources)
    points = [p for p, _ in entries]
    if not points:
        raise UsageError("%s: no points to plot" % ", ".join(s.name for s in sources))
    Figure = _figure_class()
    designs = [(d, report._is_direct(next(p for p in points if p["design"] == d)))
               for d in report._designs(points)]
    colors = _colors(designs)
    groups = report.by_machine(entries)
    if len(groups) > 1:
        return _by_machine(Figure, groups, colors)
    second = _second_panel(points)
    if second:
        fig = Figure(figsize=(14, 6.2), layout="constrained")
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.25, 1])
    else:
        fig = Figure(figsize=(8.5, 6.2), layout="constrained")
        ax1, ax2 = fig.subplots(1, 1), None
    handles = _throughput_panel(ax1, points, colors, _cores(sources))
    ax1.legend(handles=handles, loc="upper center",
               bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8.5, frameon=False)
    if second == "breakdown":
        parts = _breakdown_panel(ax2, points, colors)
        ax2.legend(handles=parts, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8.5,
                   frameon=False)
    elif second == "exposure":
        _exposure_panel(ax2, points, colors)
    fig.suptitle("IOVA allocation and invalidation designs: " + _title(sources), fontsize=12)
    return fig


def _by_machine(Figure, groups, colors):
    """A sweep on each machine of a cluster: a throughput panel per
    machine, side by side on one scale, for comparing the hardware."""
    fig = Figure(figsize=(1 + 5.5 * len(groups), 6.2), layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (name, host, es) in zip(axes, groups):
        handles = _throughput_panel(ax, [p for p, _ in es], colors, host.get("cores_allowed"))
        ax.set_title("%s: %s, %s cores allowed" % (name, host.get("cpu_model") or "unknown CPU",
                                                   host.get("cores_allowed", "?")), fontsize=10)
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  fontsize=8.5, frameon=False)
    fig.suptitle("IOVA allocation and invalidation designs, machine by machine", fontsize=12)
    return fig


# ------------------------------------------------------------------ latency

LOCK_STYLES = ("-", "--", ":", "-.")


def _has_latency(p):
    lat = p.get("latency_ns")
    return isinstance(lat, dict) and any(
        isinstance(lat.get(k), dict) and lat[k].get("count") for k in ("map", "unmap"))


def _cdf(ax, dist, **kw):
    """A distribution's CDF from its buckets: at each bucket's upper edge
    the share of samples at or below it (µs, log x).  False if empty."""
    buckets = (dist or {}).get("buckets") or []
    n = sum(c for _, c in buckets)
    if not n:
        return False
    xs, ys, run = [], [], 0
    for edge, c in buckets:
        run += c
        xs.append(max(edge, 1.0) / 1e3)
        ys.append(run / n)
    # from the first bucket's lower edge (within 12.5% below its upper one)
    ax.plot([xs[0] / 1.125] + xs, [0.0] + ys, **kw)
    return True


def latency_figure(sources):
    """The CDFs of the sampled maps and unmaps, and of each lock class's
    waits and holds, a line per design (one point each: the thread count
    at which the most designs have distributions)."""
    from matplotlib.lines import Line2D
    entries, _ = report.merge(sources)
    points = [p for p, _ in entries]
    t = _reference_threads(points, _has_latency)
    if t is None:
        raise UsageError("%s: no latency distributions to plot (run with --diag; files of "
                         "format version 6 or older have none)"
                         % ", ".join(s.name for s in sources))
    pts = [p for p in points if p["threads"] == t and _has_latency(p)]
    designs = [(d, report._is_direct(next(p for p in pts if p["design"] == d)))
               for d in report._designs(pts)]
    colors = _colors(designs)
    locks = any((p["latency_ns"].get("locks") or {}) for p in pts)
    Figure = _figure_class()
    fig = Figure(figsize=(13, 10 if locks else 5.4), layout="constrained")
    axes = fig.subplots(2 if locks else 1, 2, squeeze=False)
    panels = [(axes[0][0], "map", "map"), (axes[0][1], "unmap", "unmap")]
    for ax, key, title in panels:
        for p in pts:
            _cdf(ax, p["latency_ns"].get(key), color=colors[p["design"]], lw=2,
                 label=p["design"])
        ax.set_title("%s latency, %d thread%s (sampled, one I/O in 16)"
                     % (title, t, "" if t == 1 else "s"), fontsize=11)
    if locks:
        for ax, which in ((axes[1][0], "wait"), (axes[1][1], "hold")):
            handles = []
            for p in pts:
                classes = sorted((p["latency_ns"].get("locks") or {}).items())
                for k, (name, d) in enumerate(classes):
                    style = LOCK_STYLES[k % len(LOCK_STYLES)]
                    if _cdf(ax, d.get(which), color=colors[p["design"]], lw=1.8, ls=style):
                        handles.append(Line2D([], [], color=colors[p["design"]], ls=style,
                                              label="%s: %s" % (p["design"], name)))
            ax.set_title("lock %s by class, %d thread%s%s"
                         % (which, t, "" if t == 1 else "s",
                            " (contended acquisitions)" if which == "wait" else
                            " (timed acquisitions)"), fontsize=11)
            if handles:
                ax.legend(handles=handles, fontsize=8, loc="lower right")
            else:
                ax.text(0.5, 0.5, "none recorded", transform=ax.transAxes, ha="center",
                        color="0.4")
    for row in axes:
        for ax in row:
            ax.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("µs (log)")
            ax.set_ylabel("share of samples at or below")
            ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=8.5, loc="lower right")
    fig.suptitle("latency distributions (CDF): " + _title(sources), fontsize=12)
    return fig


def write(sources, out, latency=False):
    out = Path(out)
    if out.suffix.lower() not in SUFFIXES:
        raise UsageError("-o %s: the file name must end in %s" % (out, ", ".join(SUFFIXES)))
    fig = latency_figure(sources) if latency else figure(sources)
    try:
        fig.savefig(out, dpi=130)
    except OSError as e:
        raise UsageError("%s: cannot write: %s" % (out, e.strerror or e)) from None


def add_plot_arguments(p):
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="results files (--json); several are merged, the later file winning")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the figure to write: a .png, .svg or .pdf")
    p.add_argument("--latency", action="store_true",
                   help="the latency distributions of --diag (map, unmap, lock wait and "
                        "hold) as CDFs on a log axis, a line per design")


def cmd_plot(args):
    if Path(args.output).suffix.lower() not in SUFFIXES:
        raise UsageError("-o %s: the file name must end in %s" % (args.output, ", ".join(SUFFIXES)))
    write(report.load_sources(args.files), args.output, latency=args.latency)
    print("wrote %s" % args.output)
    return 0
