"""The `iommu-stress` command."""
import argparse
import os
import signal
import sys
import time
from pathlib import Path


from harness import config, signals
from harness.arena import ArenaError
from harness.errors import UsageError
from harness.signals import Terminated

PROG = "iommu-stress"
STOPPED = {signal.SIGINT: "\n%s: interrupted; results measured so far are kept",
           signal.SIGTERM: "%s: terminated; results measured so far are kept",
           signal.SIGHUP: "%s: hung up; results measured so far are kept"}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


FLAGS = [
    # (flag, option name, argparse kwargs)
    ("--threads", "threads", dict(metavar="LIST", help='worker counts: "1,2,4" or "1-1024" (both ends and the powers of two between)')),
    ("--duration", "duration", dict(metavar="SECONDS", help="measurement window per repeat")),
    ("--warmup", "warmup", dict(metavar="SECONDS", help="run before each window")),
    ("--repeats", "repeats", dict(metavar="N", help="windows per point (median reported), or auto: until --target-ci")),
    ("--min-repeats", "min_repeats", dict(metavar="N", help="--repeats auto: at least N windows (default 6)")),
    ("--max-repeats", "max_repeats", dict(metavar="N", help="--repeats auto: at most N windows (default 30)")),
    ("--target-ci", "target_ci", dict(metavar="SHARE", help="--repeats auto: until the median's 95%% interval is within SHARE (2%% or 0.02)")),
    ("--order-seed", "order_seed", dict(metavar="N", help="seed of the shuffled order of the designs' windows")),
    ("--launches", "launches", dict(metavar="N", help="spread a point's windows over N launches, a fresh segment and fresh workers each (default 3)")),
    ("--lock", "lock", dict(metavar="KIND", help="qspinlock (the kernel's), tas, ttas, ticket or mcs")),
    ("--spin-bound", "spin_bound", dict(metavar="N", help="spins before a lock waiter yields")),
    ("--depth", "depth", dict(metavar="K", help="mappings in flight per worker")),
    ("--sizes", "sizes", dict(metavar="DIST", help='request pages with weights: "1:0.9,64:0.1"')),
    ("--pages", "pages", dict(metavar="N", help="IOVA space in 4 KiB pages (power of two)")),
    ("--boundary", "boundary", dict(metavar="N", help="segment boundary in pages (power of two)")),
    ("--mag-size", "mag_size", dict(metavar="N", help="magazine entries: 127, or 128 (2016 code)")),
    ("--profile", "profile", dict(metavar="NAME", help="cost profile (configs/profiles/) or TOML file")),
    ("--workload", "workload", dict(metavar="NAME", help="workload (configs/workloads/) or TOML file")),
    ("--device-ns", "device_ns", dict(metavar="NS", help="device time per I/O")),
    ("--hypercall-ns", "hypercall_ns", dict(metavar="NS", help="hypercall per map and unmap (PVDMA)")),
    ("--unmap-fraction", "unmap_fraction", dict(metavar="F", help="share of workers that only unmap")),
    ("--domains", "domains", dict(metavar="N", help="devices (IOMMU domains)")),
    ("--tlb-entries", "tlb_entries", dict(metavar="N", help="IOTLB entries per domain")),
    ("--tlb-ways", "tlb_ways", dict(metavar="N", help="IOTLB associativity")),
    ("--dma-passes", "dma_passes", dict(metavar="N", help="times the device touches every page of an I/O (1-64)")),
    ("--seed", "seed", dict(metavar="N", help="random seed of the request sizes")),
    ("--placement", "placement", dict(metavar="POLICY", help="worker CPUs: cores-first (default), compact, spread, none (unpinned)")),
    ("--cpus", "cpus", dict(metavar="LIST", help='CPUs the workers may use: "0-3,8,10-11"')),
    ("--node", "node", dict(metavar="N", help="run the workers and place the shared memory on NUMA node N")),
]


def _add_run_options(p, several):
    p.add_argument("--config", metavar="FILE", help="TOML file of options (a path, or a name under configs/)")
    if several:
        p.add_argument("--designs", metavar="LIST", help="comma-separated designs")
    else:
        p.add_argument("--design", metavar="NAME", help="the design to run")
    for flag, _, kw in FLAGS:
        p.add_argument(flag, **kw)
    p.add_argument("--check", action="store_true", default=None,
                   help="claim every mapped page in an ownership map: catch double mappings")
    p.add_argument("--premapped", action="store_true", default=None,
                   help="the driver maps a buffer pool once and recycles it")
    p.add_argument("--rogue-device", action="store_true", default=None,
                   help="a device that reads at unmapped IOVAs, counting stale IOTLB hits")
    p.add_argument("--huge", action="store_true", default=None,
                   help="map buffers of 512 pages or more with 2 MiB IOVA mappings where aligned")
    p.add_argument("--iotlb-walks", action="store_true", default=None,
                   help="the device's access waits for the profile's page walk on each IOTLB miss")
    p.add_argument("--lock-timing", action="store_true", default=None,
                   help="time every lock wait and hold (lock_stat's wait and hold columns)")
    p.add_argument("--json", metavar="PATH", help="write results here (rewritten after every point)")
    p.add_argument("--csv", action="store_true", help="print the table as CSV")
    p.add_argument("--diag", action="store_true", default=None,
                   help="diagnostics: lock timing, sampled step timing, per-second series")
    p.add_argument("--preset", metavar="NAME", help="a seed experiment (configs/presets/)")
    p.add_argument("--resume", metavar="FILE",
                   help="keep the points of this results file, measure the rest (and write there)")
    p.add_argument("--force-mix", action="store_true",
                   help="with --resume: add points measured with other options than the file's "
                        "(each point then keeps its own)")
    if several:
        p.add_argument("--cluster", metavar="tcp://HOST:PORT",
                       help="run the points on a Dask cluster: this scheduler's workers that "
                            "offer the resource machine=1, one point per machine at a time")
        p.add_argument("--each-machine", action="store_true",
                       help="with --cluster: the whole sweep on every machine, a table for each")
        p.add_argument("--allow-mixed", action="store_true",
                       help="with --cluster: spread the points over machines of more than one "
                            "kind (CPU, cores, memory, kernel, versions) all the same")
    if several:
        p.add_argument("--trace", metavar="TRACE",
                       help="replay this request trace concurrently under each design, one "
                            "worker per traced CPU (--threads: one fold width), as `replay "
                            "--concurrent` does")
        p.add_argument("--pace", choices=("max", "recorded"),
                       help="with --trace: as fast as possible (default) or at the recorded times")
    p.add_argument("--on-error", choices=("stop", "continue"), default="stop",
                   help="after a failed point: stop (default) or go on with the next")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr as each phase starts (compiling, starting workers, "
                        "warm-up, measuring, writing results)")


def _options(args, several):
    """defaults <- workload file <- preset <- config file <- flags: a file
    names a workload, and its own keys win over the workload's."""
    opts = config.defaults()
    layers = []
    args.preset_extras = {}
    if getattr(args, "preset", None):
        preset, args.preset_extras = config.load_preset(args.preset)
        if "replay" in args.preset_extras:
            raise UsageError("preset %s is a replay: run `%s replay --preset %s`"
                             % (args.preset, PROG, args.preset))
        layers.append(preset)
    if args.config:
        layers.append(config.load_toml(config.find_config(args.config)))
    workload = args.workload
    for layer in reversed(layers):
        if workload is None and layer.get("workload"):
            workload = layer["workload"]
    if workload:
        opts.update(config.load_workload(workload))
    for layer in layers:
        opts.update(layer)
    opts["workload"] = workload or ""
    for flag, name, _ in FLAGS:
        v = getattr(args, name)
        if v is not None and name != "workload":
            opts[name] = config.convert(name, v, flag)
    if several and args.designs is not None:
        opts["designs"] = config.convert("designs", args.designs, "--designs")
    if not several and args.design is not None:
        opts["designs"] = [args.design]
    if args.check:
        opts["check"] = True
    for name in ("lock_timing", "premapped", "rogue_device", "diag", "huge", "iotlb_walks"):
        if getattr(args, name):
            opts[name] = True
    if not several:
        if len(opts["designs"]) != 1:
            raise UsageError("run measures one design; use --design NAME (or sweep for several)")
        if len(opts["threads"]) != 1:
            raise UsageError("run measures one thread count; use --threads N (or sweep for several)")
    return opts


def _designs(opts, several=True):
    from harness import designs as designmod
    designs = [designmod.resolve(n) for n in opts["designs"]]
    if len({d.name for d in designs}) != len(designs):
        raise UsageError("--designs: a design is given twice")
    if opts["premapped"] and not several:
        # as `direct@premapped`; a sweep keeps direct as its baseline
        designmod.premapped(designs[0], "%s@premapped" % designs[0].name)
    return designs


def _resumed(args, opts, machine_info):
    """The points of the --resume file, all kept as they are, and the file's
    document when this run mixes other options into it (--force-mix).
    `machine_info` is where this run measures (None: each machine of a
    cluster, whose points name their own)."""
    from harness import results
    if not args.resume:
        if args.force_mix:
            raise UsageError("--force-mix: only with --resume FILE")
        return [], None
    doc = results.load(args.resume)
    diffs = results.mismatch(doc, opts, machine_info)
    if diffs and not args.force_mix:
        raise UsageError("%s was measured with %s, this run asks for %s; give --force-mix to keep "
                         "both (each point keeps its own options)"
                         % (args.resume, " and ".join(_flag(k, old) for k, old, _ in diffs[:3]),
                            " and ".join(_value(new) for _, _, new in diffs[:3])))
    return doc["points"], doc if diffs else None


def _flag(key, value):
    from harness.results import MACHINE_KEYS
    name = key.replace("_", "-")
    return "%s %s" % (name if key in MACHINE_KEYS else "--" + name, _value(value))


def _value(v):
    if v is True or v is False:
        return "on" if v else "off"
    if v is None:
        return "none given"
    if isinstance(v, list):
        return ",".join(":".join("%g" % x for x in e) if isinstance(e, list) else str(e) for e in v)
    return "%g" % v if isinstance(v, float) else str(v)


def cmd_sweep(args, several=True):
    from harness import results, sweep
    from harness.arena import clean_stale
    from harness.bench import Bench

    if args.json is not None and not args.json.strip():
        raise UsageError("--json: the path is empty")
    opts = _options(args, several)
    designs = _designs(opts, several)
    opts["designs"] = [d.name for d in designs]
    if getattr(args, "trace", None) is not None:
        from harness import tracereplay
        return tracereplay.sweep_command(args, opts, designs, _say if args.verbose else None)
    if getattr(args, "pace", None) is not None:
        raise UsageError("--pace: only with --trace")
    if getattr(args, "cluster", None):
        from harness import cluster
        return cluster.command(args, opts)
    for flag in ("each_machine", "allow_mixed"):
        if getattr(args, flag, False):
            raise UsageError("--%s: only with --cluster" % flag.replace("_", "-"))
    kept, base = _resumed(args, opts, results.machine())
    done = {(p["design"], p["threads"]) for p in kept}
    todo = [(t, i) for t in opts["threads"] for i, d in enumerate(designs)
            if (d.name, t) not in done]
    # the file names every design and thread count it holds
    held = dict(opts, designs=_union(opts["designs"], [p["design"] for p in kept]),
                threads=sorted(set(opts["threads"]) | {p["threads"] for p in kept}))
    json_path = args.json or args.resume
    if json_path:
        results.writable(Path(json_path))
    t_start = time.monotonic()
    clean_stale()
    from harness import system
    state = system.current()         # before the run's own compiling loads the machine
    with Bench(opts, designs, say=_say if args.verbose else None) as bench:
        res = results.ResultsFile(json_path, results.machine(bench.cycles_per_ns), held,
                                  " ".join([PROG] + sys.argv[1:]), points=kept, base=base)
        res.doc["placement"] = bench.placement.record()
        res.doc["system"] = system.record(state, res.doc["placement"], len(bench.cores))
        try:
            ok = sweep.run(bench, todo, sweep.Repeats.of(opts), res, args.on_error, PROG,
                           order_seed=opts["order_seed"])
        except BaseException:
            _print_results(res.doc, args, opts)
            raise
    _print_results(res.doc, args, opts)
    _print_published(res.doc, args.preset_extras)
    print("%d points measured in %.1f s (compiling %.1f s, starting workers %.1f s)%s"
          % (len(res.doc["points"]) - len(kept), time.monotonic() - t_start,
             bench.timings["compile_s"], bench.timings["fork_s"],
             ", %d kept from %s" % (len(kept), args.resume) if kept else ""), file=sys.stderr)
    return 0 if ok else 1


def _union(first, more):
    out = list(first)
    for x in more:
        if x not in out:
            out.append(x)
    return out


def _say(line):
    """One --verbose line: a phase of the run starts."""
    from tqdm import tqdm
    tqdm.write("%s: %s" % (PROG, line), file=sys.stderr)


def _print_results(doc, args, opts):
    from harness import report, results
    mixed = results.mixed_keys(doc)
    each = (doc.get("cluster") or {}).get("mode") == "each-machine"
    print((report.header(doc["machine"]) if not each else "machines: each table's own")
          + "; profile %s%s" % ("mixed" if "profile" in mixed else opts["profile"],
                                ", workload %s" % opts["workload"] if opts["workload"] else ""))
    for line in report.placement_lines(doc) + report.system_lines(doc):
        print(line)
    if not doc["points"]:
        return
    fmt = "csv" if getattr(args, "csv", False) else "simple"
    source = report.Source("", doc)
    groups = report.by_machine([(p, source) for p in doc["points"]])
    if fmt == "csv":
        print(report.csv_by_machine(groups))
        groups = []
    for name, host, es in groups:
        pts = [p for p, _ in es]
        if name is not None:
            print()
            print(report.host_header(name, host))
        print(report.throughput_table(pts, fmt=fmt, cores=host.get("cores_allowed")))
        text = report.exposure_table(pts)
        if text:
            print()
            print(text)
    if fmt != "csv":
        for line in (report.cluster_lines(doc) + report.mixed_lines(doc)
                     + report.repeats_lines(doc["points"])):
            print(line)
    if opts["diag"]:
        from harness import diagnostics
        for p in doc["points"]:
            print()
            print(diagnostics.render_point(p, dict(doc["machine"], **p.get("machine", {})),
                                           dict(doc["options"], **p.get("options", {})),
                                           fmt="simple"))


def _print_published(doc, extras):
    """The preset's published figures beside ours."""
    from tabulate import tabulate
    pub = dict(extras.get("published", {}))
    if not pub:
        return
    threads = pub.pop("threads", 1)
    metric = pub.pop("metric", "x_direct")
    pts = {p["design"]: p for p in doc["points"] if p["threads"] == threads}
    direct = next((p for p in pts.values() if p["flush"] == "none"), None)
    first = next(iter(pts.values()), None)
    rows = []
    for name, (figure, ratio, unit) in pub.items():
        p = pts.get(name)
        ours = "-"
        if p is not None:
            if metric == "x_direct" and direct:
                ours = "%.3f x direct (%.0f ops/s)" % (p["ops_per_sec"] / direct["ops_per_sec"],
                                                       p["ops_per_sec"])
            elif metric == "x_first" and first:
                ours = "%.2f x %s (%.0f ops/s)" % (p["ops_per_sec"] / first["ops_per_sec"],
                                                  first["design"], p["ops_per_sec"])
            elif metric == "invalidation_share" and p.get("breakdown_ns"):
                b = p["breakdown_ns"]
                share = (b["invalidation_own"] + b["invalidation_queued"]) / b["total"]
                ours = "%.1f%% of a worker's time in IOTLB invalidation" % (100 * share)
            elif metric == "footprint":
                f = p.get("footprint_bytes", {})
                ours = "peak %s bytes, depot %s bytes" % (f.get("peak"), f.get("depot", "-"))
            elif metric == "shape":
                ours = "%.0f ops/s at %d thread(s); see the table" % (p["ops_per_sec"], threads)
        shown = "%s %s" % (figure, unit) if metric != "shape" else unit
        rows.append([name, shown, "%.3f" % ratio if metric in ("x_direct", "x_first") else "",
                     ours])
    print()
    print(extras.get("description", "").strip())
    print(tabulate(rows, headers=["design", "published", "ratio", "measured here (%d threads)"
                                  % threads], disable_numparse=True))


def cmd_run(args):
    return cmd_sweep(args, several=False)


def cmd_diagnose(args):
    args.diag = True
    return cmd_sweep(args, several=False)


def cmd_designs(args):
    from tabulate import tabulate

    from harness import designs as designmod
    from harness.dma import FLUSHES
    from hwmodel.locks import KINDS
    print(tabulate(designmod.listing(), headers=["design", "what it is"], disable_numparse=True,
                   maxcolwidths=[None, 90]))
    print("\nwrite allocator[:variant]+flush[@premapped][@huge]; flush policies: %s; lock kinds "
          "(--lock): %s" % (", ".join(FLUSHES), ", ".join(KINDS)))
    return 0


def cmd_clean(args):
    from harness.arena import clean_stale
    for name in clean_stale():
        print("removed /dev/shm/%s" % name)
    return 0


def build_parser():
    p = _Parser(prog=PROG, description="Stress IOVA allocators and IOTLB invalidation "
                                       "designs with pinned worker processes.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    run = sub.add_parser("run", help="measure one design at one thread count")
    _add_run_options(run, several=False)
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="measure designs over thread counts")
    _add_run_options(sweep, several=True)
    sweep.set_defaults(func=cmd_sweep)
    diag = sub.add_parser("diagnose", help="run one point with diagnostics: lock_stat-style "
                                           "table, time breakdown, allocator statistics")
    _add_run_options(diag, several=False)
    diag.set_defaults(func=cmd_diagnose)
    clean = sub.add_parser("clean", help="remove shared-memory segments left by dead runs")
    clean.set_defaults(func=cmd_clean)
    from harness import plot, report
    rep = sub.add_parser("report", help="re-render results files (merged) as tables")
    report.add_report_arguments(rep)
    rep.set_defaults(func=report.cmd_report)
    cmp_ = sub.add_parser("compare", help="two results side by side, with ratios B/A")
    report.add_compare_arguments(cmp_)
    cmp_.set_defaults(func=report.cmd_compare)
    pl = sub.add_parser("plot", help="throughput against threads, and where the time goes (PNG)")
    plot.add_plot_arguments(pl)
    pl.set_defaults(func=plot.cmd_plot)
    from harness import replay
    rp = sub.add_parser("replay", help="replay a request trace against one allocator")
    replay.add_arguments(rp)
    rp.set_defaults(func=lambda a: replay.command(a, sys.stdout, sys.stderr))
    from harness import system
    sy = sub.add_parser("system", help="the machine's state that moves the figures "
                                       "(governor, boost, SMT, THP, isolated CPUs, hypervisor)")
    system.add_arguments(sy)
    sy.set_defaults(func=lambda a: system.command(a, sys.stdout))
    from harness import traceimport
    tr = sub.add_parser("trace", help="import kernel tracepoint captures as a request trace")
    traceimport.add_arguments(tr)
    tr.set_defaults(func=lambda a: traceimport.command(a, sys.stdout, sys.stderr))
    from harness import dmabench
    db = sub.add_parser("dmabench", help="the kernel's dma_map_benchmark (its options and "
                                         "output) over a design")
    dmabench.add_arguments(db)
    db.set_defaults(func=lambda a: dmabench.command(a, sys.stdout, sys.stderr))
    ds = sub.add_parser("designs", help="list the allocators, their variants and the named "
                                        "designs")
    ds.set_defaults(func=cmd_designs)
    return p


class _OutputLost(Exception):
    """Standard output cannot be written: closed, or its disk full."""


class _Output:
    """Standard output, whose write errors say that they are its own: an
    OSError from anywhere else is not taken for one."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _OutputLost(e.strerror or str(e)) from None

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _OutputLost(e.strerror or str(e)) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _drop_output(stream):
    """Points our standard output at /dev/null, so that the interpreter's
    last flush at exit has nowhere to fail."""
    if stream is sys.__stdout__:
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, stream.fileno())
            os.close(null)
        except (OSError, ValueError):
            pass


def _command(argv):
    if sys.stdout is None:
        # started with descriptor 1 closed: every table would vanish
        print("%s: error: standard output is closed" % PROG, file=sys.stderr)
        return 2
    stream = sys.stdout
    sys.stdout = _Output(stream)
    try:
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except (UsageError, ArenaError) as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 2
    except BrokenPipeError:
        _drop_output(stream)
        return 1
    except _OutputLost as e:
        _drop_output(stream)
        print("%s: error: cannot write standard output: %s" % (PROG, e), file=sys.stderr)
        return 1
    finally:
        sys.stdout = stream


def main(argv=None):
    """The command; returns its exit status.  A signal (see harness/signals.py)
    is 128 + its number, whatever else was going on.  Called as the
    command itself (argv None), it returns with the signals ignored: the
    process is about to exit with that status.  Called with argv (tests),
    it puts back the caller's handlers."""
    saved = signals.install()
    code = None
    try:
        try:
            code = _command(argv)
            signals.check()
        except BaseException:
            # another error on the way out of a stop (a print to a closed
            # terminal after SIGHUP) is the stop's
            if signals.pending() is None:
                raise
        signum = signals.finish()
    except (KeyboardInterrupt, Terminated):
        # a first signal raised on the way out above; none can raise now
        signum = signals.finish()
    finally:
        if argv is not None:
            signals.restore(saved)
    if signum is None:
        return code
    try:
        print(STOPPED[signum] % PROG, file=sys.stderr)
    except OSError:
        pass
    if argv is None:
        _exit(signals.EXIT[signum])
    return signals.EXIT[signum]


def _exit(status):
    """Exit now with `status`, after the atexit handlers.  Python itself
    would turn it into death by SIGINT once any KeyboardInterrupt has left
    code it ran from C during the run, caught or not, and a thread a
    library started gets that SIGINT whatever the main thread blocks."""
    import atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
