"""`iommu-stress dmabench`: the kernel's DMA map benchmark, in its own
language, over our designs.

The kernel's tool (tools/testing/selftests/dma/dma_map_benchmark.c, with
kernel/dma/map_benchmark.c behind a debugfs ioctl) starts `-t` kernel
threads that each, for `-s` seconds, fill a buffer of `-g` pages (unless
the direction is FROM_DEVICE), time dma_map_single() of it, wait `-x` ns
as if the device were transferring, and time dma_unmap_single(): one
mapping in flight per thread.  It prints the mean map and unmap latency
and their standard deviations, in µs.

Here that loop is the local ring of harness/loop.py at depth 1: requests of
`-g` pages, the device's time `-x` ns plus the buffer fill, measured on
this machine (the kernel's memset is not timed, but it spaces the maps
out, and so sets how often threads meet on the design's locks).  `-b`, the
device's DMA mask, sets the IOVA space: dma-iommu first tries below
4 GiB for a PCI device, so a mask of 32 bits or more gives 4 GiB, a
smaller one its own size.  `-d` changes nothing else here: on a coherent
device (x86) the direction costs no cache maintenance.  `-n` pins the
workers to that NUMA node's CPUs.

The latencies come from --diag's sampled steps (one I/O in DIAG_SAMPLE,
harness/dma.py): each sampled map and unmap timed whole, first stamp to
last, with the sum of squares kept beside the sum, as map_benchmark.c
keeps them; the stamps' own cost is taken off the mean (a constant: the
deviation is unchanged).  Two differences from the kernel's figures, both
small: the kernel floors every sample to 100 ns before summing (its mean
reads up to 0.1 µs lower), and a sample longer than SAMPLE_OUTLIER_NS (a
preemption, on a machine shared with other work) is left out here, where
the kernel keeps it.
"""
import json
import math
import time
from pathlib import Path

import numpy as np

from harness import config
from harness.errors import UsageError

# include/linux/map_benchmark.h
DMA_MAP_MAX_THREADS = 1024
DMA_MAP_MAX_SECONDS = 300
NSEC_PER_MSEC = 1000000
DMA_MAP_MAX_TRANS_DELAY = 10 * NSEC_PER_MSEC
DMA_MAP_BIDIRECTIONAL, DMA_MAP_TO_DEVICE, DMA_MAP_FROM_DEVICE = 0, 1, 2
# tools/testing/selftests/dma/dma_map_benchmark.c
DIRECTIONS = ("BIDIRECTIONAL", "TO_DEVICE", "FROM_DEVICE")
NUMA_NO_NODE = -1
MAX_GRANULE = 1024          # map_benchmark.c: granule 1..1024 pages
MIN_BITS, MAX_BITS = 20, 64   # "suppose the mininum DMA zone is 1MB in the world"
PAGE_SHIFT = 12
DEFAULT_DESIGN = "linux-6.7"  # the kernel's design now: magazines, list depot, per-CPU queues
WARMUP_S = 0.2
NODES = Path("/sys/devices/system/node")


def add_arguments(parser):
    """The kernel tool's option letters and defaults, and ours."""
    parser.add_argument("-t", dest="threads", default="1", metavar="THREADS",
                        help="threads mapping and unmapping at once, 1-%d (default: 1)"
                             % DMA_MAP_MAX_THREADS)
    parser.add_argument("-s", dest="seconds", default="20", metavar="SECONDS",
                        help="seconds to run, 1-%d (default: 20)" % DMA_MAP_MAX_SECONDS)
    parser.add_argument("-n", dest="node", default="-1", metavar="NODE",
                        help="NUMA node to run on (default: -1, any)")
    parser.add_argument("-b", dest="bits", default="32", metavar="BITS",
                        help="the device's DMA mask in bits, %d-%d (default: 32)"
                             % (MIN_BITS, MAX_BITS))
    parser.add_argument("-d", dest="dir", default="0", metavar="DIR",
                        help="direction: 0 BIDIRECTIONAL, 1 TO_DEVICE, 2 FROM_DEVICE "
                             "(default: 0)")
    parser.add_argument("-x", dest="xdelay", default="0", metavar="NS",
                        help="ns the device transfers between map and unmap, 0-%d "
                             "(default: 0)" % DMA_MAP_MAX_TRANS_DELAY)
    parser.add_argument("-g", dest="granule", default="1", metavar="PAGES",
                        help="pages mapped at once, 1-%d (default: 1)" % MAX_GRANULE)
    parser.add_argument("--design", default=DEFAULT_DESIGN, metavar="NAME",
                        help="the design measured (default: %(default)s, the per-CPU "
                             "magazines with the list depot and per-CPU flush queues)")
    parser.add_argument("--profile", default=None, metavar="NAME",
                        help="cost profile (configs/profiles/) or TOML file (default: the "
                             "run's default)")
    parser.add_argument("--json", metavar="PATH", help="write the figures here as JSON")
    return parser


def _int(text, flag):
    try:
        return int(text, 10)
    except (TypeError, ValueError):
        raise UsageError("-%s: expected an integer, got %r" % (flag, text)) from None


def validate(args):
    """The kernel tool's checks, in its order and with its messages."""
    threads = _int(args.threads, "t")
    seconds = _int(args.seconds, "s")
    node = _int(args.node, "n")
    bits = _int(args.bits, "b")
    direction = _int(args.dir, "d")
    xdelay = _int(args.xdelay, "x")
    granule = _int(args.granule, "g")
    if threads <= 0 or threads > DMA_MAP_MAX_THREADS:
        raise UsageError("invalid number of threads, must be in 1-%d" % DMA_MAP_MAX_THREADS)
    if seconds <= 0 or seconds > DMA_MAP_MAX_SECONDS:
        raise UsageError("invalid number of seconds, must be in 1-%d" % DMA_MAP_MAX_SECONDS)
    if xdelay < 0 or xdelay > DMA_MAP_MAX_TRANS_DELAY:
        raise UsageError("invalid transmit delay, must be in 0-%d" % DMA_MAP_MAX_TRANS_DELAY)
    if bits < MIN_BITS or bits > MAX_BITS:
        raise UsageError("invalid dma mask bit, must be in %d-%d" % (MIN_BITS, MAX_BITS))
    if direction not in (DMA_MAP_BIDIRECTIONAL, DMA_MAP_TO_DEVICE, DMA_MAP_FROM_DEVICE):
        raise UsageError("invalid dma direction")
    if granule < 1 or granule > MAX_GRANULE:
        raise UsageError("invalid granule size")
    cores = node_cores(node)
    return dict(threads=threads, seconds=seconds, node=node, bits=bits, dir=direction,
                xdelay=xdelay, granule=granule), cores


def node_cores(node):
    """The CPUs of NUMA node `node` we may run on (None: any)."""
    if node == NUMA_NO_NODE:
        return None
    from harness.pool import allowed_cores
    try:
        text = (NODES / ("node%d" % node) / "cpulist").read_text() if node >= 0 else ""
    except OSError:
        text = ""
    cpus = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    cores = sorted(cpus & set(allowed_cores()))
    if not cores:
        raise UsageError("invalid numa node")    # map_benchmark.c's pr_err
    return cores


def fill_ns(granule, direction):
    """What the kernel's untimed memset of the buffer costs here, ns: none
    for FROM_DEVICE, which it skips.  The fastest of seven batches of fills
    of a buffer of `granule` pages, less an empty fill's call."""
    if direction == DMA_MAP_FROM_DEVICE:
        return 0.0
    buf = np.empty(granule << PAGE_SHIFT, dtype=np.uint8)
    none = np.empty(0, dtype=np.uint8)
    reps = max(4, 4096 // granule)

    def per_fill(a):
        best = []
        for _ in range(7):
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                a.fill(0x66)
            best.append((time.perf_counter_ns() - t0) / reps)
        return min(best)      # the least disturbed: the fill's own cost

    return max(0.0, per_fill(buf) - per_fill(none))


def options(kopts, design, fill, profile=None):
    """The run's options for the kernel tool's: one design, depth 1."""
    opts = config.defaults()
    pages = 1 << (min(kopts["bits"], 32) - PAGE_SHIFT)
    opts.update(designs=[design], threads=[kopts["threads"]], duration=float(kopts["seconds"]),
                warmup=WARMUP_S, repeats=1, depth=1, sizes=[(kopts["granule"], 1.0)],
                pages=pages, boundary=min(opts["boundary"], pages),
                device_ns=float(kopts["xdelay"]) + fill, diag=True)
    if profile is not None:
        opts["profile"] = profile
    return opts


def latencies(raw):
    """(map mean, map stddev, unmap mean, unmap stddev) in ns from the
    sampled steps of a window, and the samples: see the module's docstring."""
    s = raw.steps
    cpn = raw.cycles_per_ns
    out = []
    # the stamps inside a timed map (after the hypercall, after the
    # allocation) and the one closing it; an unmap's likewise, and a
    # strict invalidation's own
    strict = s["inv_submit_cycles"].sum() > 0
    for n_key, c_key, sq_key, stamps in (("maps", "map_cycles", "map_sq", 3),
                                         ("unmaps_whole", "unmap_cycles", "unmap_sq",
                                          3 + strict)):
        n = int(s[n_key].sum())
        if n == 0:
            out += [None, None]
            continue
        mean = s[c_key].sum() / n
        var = max(0.0, float(s[sq_key].astype(float).sum()) / n - mean * mean)
        out += [max(0.0, mean - stamps * raw.stamp_cycles) / cpn, math.sqrt(var) / cpn]
    return out, int(s["maps"].sum()), int(s["unmaps_whole"].sum())


def kernel_lines(kopts, lat):
    """The kernel tool's three lines (dma_map_benchmark.c's printf)."""
    us = lambda v: 0.0 if v is None else v / 1000.0      # noqa: E731
    return ("dma mapping benchmark: threads:%d seconds:%d node:%d dir:%s granule: %d\n"
            "average map latency(us):%.1f standard deviation:%.1f\n"
            "average unmap latency(us):%.1f standard deviation:%.1f\n"
            % (kopts["threads"], kopts["seconds"], kopts["node"], DIRECTIONS[kopts["dir"]],
               kopts["granule"], us(lat[0]), us(lat[1]), us(lat[2]), us(lat[3])))


def measure(kopts, design_name, cores=None, profile=None, duration=None, say=None):
    """One window of the design under the kernel tool's options; returns
    the figures as a dict.  `duration` overrides -s (tests)."""
    from harness import designs, readout
    from harness.arena import clean_stale
    from harness.bench import Bench, PointFailed
    design = designs.resolve(design_name)
    if not design.translates:
        raise UsageError("--design %s maps nothing: dma_map_benchmark times the IOMMU's map "
                         "and unmap" % design_name)
    fill = fill_ns(kopts["granule"], kopts["dir"])
    opts = options(kopts, design.name, fill, profile)
    if duration is not None:
        opts["duration"] = duration
    clean_stale()
    with Bench(opts, [design], say=say) as bench:
        if cores is not None:
            bench.cores = cores
        try:
            raw = bench.window(0, kopts["threads"])
        except PointFailed as e:
            raise UsageError("dmabench: %s" % e) from None
        ops = int(readout.worker_ops(raw).sum())
        seconds = readout.window_seconds(raw)
    lat, maps, unmaps = latencies(raw)
    return dict(kopts, design=design.name, spec=design.spec, fill_ns=fill,
                map_ns=lat[0], map_stddev_ns=lat[1], unmap_ns=lat[2], unmap_stddev_ns=lat[3],
                sampled_maps=maps, sampled_unmaps=unmaps, maps=ops,
                ops_per_sec=ops / seconds if seconds > 0 else 0.0,
                oversubscribed=raw.threads > len(bench.cores))


def command(args, stdout, stderr):
    kopts, cores = validate(args)
    if args.json is not None and not args.json.strip():
        raise UsageError("--json: the path is empty")
    res = measure(kopts, args.design, cores, args.profile)
    lat = (res["map_ns"], res["map_stddev_ns"], res["unmap_ns"], res["unmap_stddev_ns"])
    stdout.write(kernel_lines(kopts, lat))
    stdout.flush()
    stderr.write("dmabench: %s (%s): %d maps and unmaps in %d s, %d of each sampled; the "
                 "buffer's fill %.0f ns, measured here, spaces the maps%s\n"
                 % (res["design"], res["spec"], res["maps"], kopts["seconds"],
                    min(res["sampled_maps"], res["sampled_unmaps"]), res["fill_ns"],
                    "; more threads than cores" if res["oversubscribed"] else ""))
    stderr.flush()
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1, sort_keys=True)
                f.write("\n")
        except OSError as e:
            raise UsageError("--json: cannot write %s: %s" % (args.json, e.strerror or e)) \
                from None
    return 0

