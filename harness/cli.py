"""The `iommu-stress` command."""
import argparse
import signal
import sys
import time

from harness import config
from harness.errors import UsageError

PROG = "iommu-stress"


class Terminated(Exception):
    """SIGTERM, turned into an exception so that cleanup runs."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


FLAGS = [
    # (flag, option name, argparse kwargs)
    ("--threads", "threads", dict(metavar="LIST", help='worker counts: "1,2,4" or "1-1024" (powers of two)')),
    ("--duration", "duration", dict(metavar="SECONDS", help="measurement window per repeat")),
    ("--warmup", "warmup", dict(metavar="SECONDS", help="run before each window")),
    ("--repeats", "repeats", dict(metavar="N", help="windows per point (median reported)")),
    ("--lock", "lock", dict(metavar="KIND", help="tas, ttas, ticket or mcs")),
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
    ("--seed", "seed", dict(metavar="N", help="random seed of the request sizes")),
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
    p.add_argument("--lock-timing", action="store_true", default=None,
                   help="time every lock wait and hold (lock_stat's wait and hold columns)")
    p.add_argument("--json", metavar="PATH", help="write results here (rewritten after every point)")


def _options(args, several):
    opts = config.defaults()
    if args.config:
        opts.update(config.load_toml(config.find_config(args.config)))
    workload = args.workload if args.workload is not None else opts["workload"]
    if workload:
        opts.update(config.load_workload(workload))
        opts["workload"] = workload
    for flag, name, _ in FLAGS:
        v = getattr(args, name)
        if v is not None:
            opts[name] = config.convert(name, v, flag)
    if several and args.designs is not None:
        opts["designs"] = config.convert("designs", args.designs, "--designs")
    if not several and args.design is not None:
        opts["designs"] = [args.design]
    if args.check:
        opts["check"] = True
    for name in ("lock_timing", "premapped", "rogue_device"):
        if getattr(args, name):
            opts[name] = True
    if not several:
        if len(opts["designs"]) != 1:
            raise UsageError("run measures one design; use --design NAME (or sweep for several)")
        if len(opts["threads"]) != 1:
            raise UsageError("run measures one thread count; use --threads N (or sweep for several)")
    return opts


def _progress(msg):
    if sys.stderr.isatty():
        print("\r\033[K" + msg, end="", file=sys.stderr, flush=True)


def cmd_sweep(args, several=True):
    from harness import designs as designmod
    from harness import report, results
    from harness.sweep import PointFailed, Sweep

    opts = _options(args, several)
    designs = [designmod.resolve(n) for n in opts["designs"]]
    names = [d.name for d in designs]
    if len(set(names)) != len(names):
        raise UsageError("--designs: a design is given twice")
    opts["designs"] = names
    t_start = time.monotonic()
    with Sweep(opts, designs) as sw:
        res = results.ResultsFile(args.json, results.machine(sw.cycles_per_ns), opts,
                                  " ".join([PROG] + sys.argv[1:]))
        points = res.doc["points"]
        total = len(opts["threads"]) * len(designs)
        n = 0
        try:
            for t in opts["threads"]:
                for i, d in enumerate(designs):
                    n += 1
                    _progress("[%d/%d] %s at %d threads" % (n, total, d.name, t))
                    pt = sw.measure(i, t, opts["repeats"])
                    res.add(results.point_doc(pt))
            res.finish()
        except PointFailed as e:
            res.fail(str(e))
            _progress("")
            _print_table(res.doc, sw)
            print("%s: point failed: %s" % (PROG, e), file=sys.stderr)
            return 1
        finally:
            _progress("")
        _print_table(res.doc, sw)
        print("%d points in %.1f s" % (len(points), time.monotonic() - t_start), file=sys.stderr)
    return 0


def _print_table(doc, sw):
    from harness import report
    print(report.header(doc["machine"]))
    if doc["points"]:
        print(report.throughput_table(doc["points"], cores=doc["machine"]["cores_allowed"]))


def cmd_run(args):
    return cmd_sweep(args, several=False)


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
    try:
        from harness import replay
    except ImportError:
        replay = None
    if replay is not None:
        rp = sub.add_parser("replay", help="replay a request trace against one allocator")
        replay.add_arguments(rp)
        rp.set_defaults(func=lambda a: replay.command(a, sys.stdout, sys.stderr))
    return p


def _on_term(signum, frame):
    raise Terminated()


def main(argv=None):
    signal.signal(signal.SIGTERM, _on_term)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\n%s: interrupted; results measured so far are kept" % PROG, file=sys.stderr)
        return 130
    except Terminated:
        print("%s: terminated; results measured so far are kept" % PROG, file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
