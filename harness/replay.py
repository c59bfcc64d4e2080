"""`iommu-stress replay TRACE`: one allocator, one thread, a request trace,
and the address of every allocation, so that placement can be compared with
what Linux returns request by request.

The loop is compiled.  It takes the allocator's alloc/free as arguments, the
project's way of composing compiled code; harness/entries.py generates each
allocator's cached entry that calls it with the allocator's own functions.
"""
import time
from dataclasses import dataclass

import numpy as np

import allocators
from allocators import DEFAULT_BOUNDARY_PAGES, Params
from harness import arena, entries
from harness.compose import private
from harness.errors import UsageError
from harness.trace import OP_ALLOC, OP_FREE, parse, prefill_trace, read, subset
from hwmodel.cpu import calibrate, hot, inline_into_callers, stamp, stamp_cost
from hwmodel.cpu import uidx as _u

MAG_SIZES = (127, 128)
DEFAULT_PAGES = 1 << 20
MAX_PAGES = 1 << 31


# The columns of a replay's request rows: one row per request, so that the
# compiled loop keeps one base pointer for the trace where five separate
# arrays took five registers (spilled, and reloaded on every request).
R_OP, R_SLOT, R_PAGES, R_LIMIT, R_CPU, R_RESULT = range(6)
ROW = 6


@hot
def _check_rows(req):
    """A row of `req` is ROW words: past this test the compiler knows it,
    and steps from row to row by a constant, where a row length read from
    the array took a multiply and a register the allocator's hit path
    needs (docs/performance.md)."""
    inline_into_callers()
    if req.shape[1] != ROW:
        raise ValueError("a request row is not ROW words")


@hot
def replay_loop(alloc, free, st, req, held):
    """Replay every request row as worker 0; req[i, R_RESULT] is what
    allocation i got (-1: failed), or for a free what it freed.  held[k] is
    what the tag in slot k holds now (-1: nothing; all -1 at the start).
    Returns -1, or the first request whose tag is in the wrong state: an
    allocation of a tag still live, a free of one whose allocation failed
    (see harness/trace.py)."""
    _check_rows(req)
    for i in range(req.shape[0]):
        k = _u(req[i, R_SLOT])
        if req[i, R_OP] == OP_ALLOC:
            if held[k] >= 0:
                return i
            pfn = alloc(st, 0, req[i, R_CPU], req[i, R_PAGES], req[i, R_LIMIT])
            held[k] = pfn
        else:
            pfn = np.int64(held[k])
            if pfn < 0:
                return i
            free(st, 0, req[i, R_CPU], pfn, req[i, R_PAGES])
            held[k] = -1
        req[i, R_RESULT] = pfn
    return -1


@hot
def replay_timed_loop(alloc, free, st, req, held, spent):
    """replay_loop with each request timed between two stamps (whose own
    cost the caller subtracts): spent[i] is the cycles of request i."""
    _check_rows(req)
    for i in range(req.shape[0]):
        k = _u(req[i, R_SLOT])
        if req[i, R_OP] == OP_ALLOC:
            if held[k] >= 0:
                return i
            t0 = stamp()
            pfn = alloc(st, 0, req[i, R_CPU], req[i, R_PAGES], req[i, R_LIMIT])
            spent[i] = stamp() - t0
            held[k] = pfn
        else:
            pfn = np.int64(held[k])
            if pfn < 0:
                return i
            t0 = stamp()
            free(st, 0, req[i, R_CPU], pfn, req[i, R_PAGES])
            spent[i] = stamp() - t0
            held[k] = -1
        req[i, R_RESULT] = pfn
    return -1


def replayable():
    """The allocators a trace can be replayed against: those that place
    addresses."""
    return tuple(n for n in allocators.names() if allocators.module(n).TRANSLATES)


def module(name):
    """The allocator module called `name`; UsageError for any other name."""
    if name not in replayable():
        raise UsageError("unknown allocator %r: choose one of %s"
                         % (name, ", ".join(replayable())))
    return allocators.module(name)


def default_limit(name, pages):
    """The limit of a request that names none: no DMA mask (0) for an
    allocator whose limit is a mask, else the top of the space."""
    return 0 if allocators.module(name).LIMIT_IS_MASK else pages - 1


def params(trace, name, pages=DEFAULT_PAGES, boundary=DEFAULT_BOUNDARY_PAGES,
           variant="", mag_size=127):
    """The Params a replay of `trace` runs under.  max_live is the most tags
    the trace can have live at once (the count if every allocation
    succeeds); the magazines module adds room for its caches on top of it.
    That room assumes one limit per domain, as a device's DMA mask gives:
    with several, cached ranges a request's limit cannot use pile up, and
    only the number of allocations bounds them."""
    max_live = trace.peak_live
    if name == "magazines":
        limits = np.unique(trace.limit[trace.op == OP_ALLOC])
        if len(limits) > 1:
            max_live = max(max_live, trace.nallocs)
    return Params(pages=pages, nworkers=1, ncpus=trace.ncpus, boundary=boundary,
                  max_live=max(1, max_live), mag_size=mag_size, variant=variant)


@dataclass
class Replay:
    trace: object
    allocator: str
    params: Params
    result: np.ndarray      # per request: the pfn (index) it got or freed, -1: failed
    elapsed_ns: int         # the loop alone
    live: list              # [(pfn, pages)] still held at the end
    problems: list          # from the allocator's check: non-empty is our bug
    state: object           # the allocator's State after the replay
    cost_ns: np.ndarray = None  # timed: ns of each request (None: not timed)

    def kernel_match(self):
        """(allocations where we gave the pfn the traced kernel gave, those
        whose kernel pfn the trace carries): a v2 trace's comparison."""
        t = self.trace
        if t.kpfn is None:
            return 0, 0
        known = (t.op == OP_ALLOC) & (t.kpfn >= 0)
        return int(np.count_nonzero(known & (self.result == t.kpfn))), int(np.count_nonzero(known))

    def mean_ns(self, op, start=0, stop=None):
        """Timed: the mean ns of the requests of kind `op` among requests
        start..stop-1, or None for none."""
        sel = self.trace.op[start:stop] == op
        return float(self.cost_ns[start:stop][sel].mean()) if sel.any() else None

    @property
    def alloc_ns(self):
        return self.mean_ns(OP_ALLOC)

    @property
    def free_ns(self):
        return self.mean_ns(OP_FREE)

    def lines(self):
        """`<tag> <pfn>` or `<tag> fail` per allocation, in trace order."""
        t = self.trace
        allocs = np.flatnonzero(t.op == OP_ALLOC)
        res = self.result[allocs]
        text = res.astype(str).astype(object)
        text[res < 0] = "fail"
        names = np.array(t.tags, dtype=object)[t.tag[allocs]] if len(allocs) else []
        return [n + " " + s for n, s in zip(names, text)]

    def text(self):
        lines = self.lines()
        return "\n".join(lines) + "\n" if lines else ""


def run(trace, allocator, pages=DEFAULT_PAGES, boundary=DEFAULT_BOUNDARY_PAGES,
        variant="", mag_size=127, timed=False):
    """Replay a parsed trace against a fresh allocator, one per domain (a v2
    trace's devices): domains share nothing, so replaying each in turn
    gives every address that interleaving them would.  See run_domain."""
    used = np.unique(trace.domain) if trace.domain is not None and len(trace) else []
    if len(used) <= 1:
        return run_domain(trace, allocator, pages, boundary, variant, mag_size, timed)
    result = np.full(len(trace), -1, dtype=np.int64)
    cost = np.zeros(len(trace)) if timed else None
    live, problems, elapsed, rep = [], [], 0, None
    for d in used.tolist():
        keep = trace.domain == d
        rep = run_domain(subset(trace, keep), allocator, pages, boundary, variant, mag_size,
                         timed)
        result[keep] = rep.result
        if timed:
            cost[keep] = rep.cost_ns
        live += rep.live
        elapsed += rep.elapsed_ns
        problems += ["%s: %s" % (trace.devices[d], p) for p in rep.problems]
    return Replay(trace, allocator, rep.params, result, elapsed, live, problems, rep.state, cost)


def run_domain(trace, allocator, pages=DEFAULT_PAGES, boundary=DEFAULT_BOUNDARY_PAGES,
               variant="", mag_size=127, timed=False):
    """Replay a parsed trace against a fresh allocator.  Raises UsageError
    for a request the allocator's answers make invalid (a free of a tag
    whose allocation failed, an allocation of a tag still live).
    `timed`: each request is timed between two stamps of the cycle counter
    (their own cost subtracted), for the mean ns of an allocation and of a
    free; elapsed_ns then includes the stamps."""
    mod = module(allocator)
    entry = entries.of(allocator).replay_timed if timed else entries.of(allocator).replay
    p = params(trace, allocator, pages, boundary, variant, mag_size)
    try:
        # the kernel keeps no lock or cache statistics, nor does a replay
        st = private(mod, p, counted=False)
    except ValueError as e:
        # an allocator refusing a size it cannot be built with
        raise UsageError("%s: %s" % (allocator, e)) from None
    limit = np.where(trace.limit < 0, default_limit(allocator, pages), trace.limit)
    a = _loop_arrays(trace, limit)
    # Compile (or load from the cache) on an empty trace, so that the timed
    # call below is the loop alone.
    empty = np.zeros((0, ROW), dtype=np.int64)
    spent = np.zeros(len(trace) if timed else 0, dtype=np.int64)
    extra = (spent,) if timed else ()
    args = (st, empty, a["held"]) + ((spent[:0],) if timed else ())
    if entries.cached(entry, args):
        entry(*args)
    else:
        key = "%s replay%s" % (allocator, " timed" if timed else "")
        entries.compile_notice([key], 1)
        t0 = time.perf_counter()
        with entries.compile_lock(entry, args):
            entry(*args)
        entries.compile_record([key], [time.perf_counter() - t0])
    t0 = time.perf_counter_ns()
    bad = entry(st, a["req"], a["held"], *extra)
    elapsed = time.perf_counter_ns() - t0
    result = np.ascontiguousarray(a["req"][:, R_RESULT])
    if bad >= 0:
        _raise_state(trace, int(bad))
    allocs = trace.op == OP_ALLOC
    freed = np.zeros(len(trace), dtype=bool)
    freed[trace.ref[trace.op == OP_FREE]] = True
    held = np.flatnonzero(allocs & (result >= 0) & ~freed)
    live = list(zip(result[held].tolist(), trace.pages[held].tolist()))
    problems = list(mod.check(st, p, live))
    rep = Replay(trace, allocator, p, result, elapsed, live, problems, st)
    if timed:
        # a stamp's own cost is in every interval: exact to subtract
        rep.cost_ns = (spent - stamp_cost()) / calibrate()
    return rep


def _loop_arrays(trace, limit):
    """The loop's arrays, copied into one block laid out as the allocator's
    own (harness/arena.py), so that which of them share cache sets is the
    same in every replay, not wherever a heap happened to put each: `req`,
    a row per request (columns R_*), its result -1 until the loop sets it,
    and `held` (int32: pfns stay under MAX_PAGES, and half the cache the
    loop's own table takes from the allocator's), all -1."""
    n = len(trace)
    a = arena.private([("req", np.int64, (n, ROW)),
                       ("held", np.int32, (max(1, trace.peak_live),))])
    req = a["req"]
    for col, v in ((R_OP, trace.op), (R_SLOT, trace.slot), (R_PAGES, trace.pages),
                   (R_LIMIT, limit), (R_CPU, trace.cpu)):
        req[:, col] = v
    req[:, R_RESULT] = -1
    a["held"][:] = -1
    return a


def _raise_state(trace, i):
    r = int(trace.ref[i])
    tag = trace.tags[trace.tag[i]]
    if trace.op[i] == OP_ALLOC:
        raise UsageError("%s: tag %r is still mapped (allocated at line %d)"
                         % (trace.where(i), tag, trace.line[r]))
    raise UsageError("%s: free of tag %r that is not mapped (its allocation at line %d failed)"
                     % (trace.where(i), tag, trace.line[r]))


def _int(text, what):
    try:
        return int(text, 0)
    except (TypeError, ValueError):
        raise UsageError("%s: expected an integer, got %r" % (what, text)) from None


MAX_BOUNDARY = 1 << 40


def add_arguments(parser):
    """The replay subcommand's arguments."""
    parser.add_argument("trace", metavar="TRACE", nargs="?",
                        help="request trace, format v1 or v2 ('-': standard input); none with "
                             "--preset")
    parser.add_argument("--allocator", default="rbtree", metavar="NAME",
                        help="one of %s (default: %%(default)s)" % ", ".join(replayable()))
    parser.add_argument("--pages", default=str(DEFAULT_PAGES), metavar="N",
                        help="size of the IOVA space in 4 KiB pages; a request without "
                             "a limit gets limit pfn N-1 (rbtree, magazines) or no DMA "
                             "mask (pools) (default: %(default)s)")
    parser.add_argument("--boundary", default=str(DEFAULT_BOUNDARY_PAGES), metavar="B",
                        help="segment boundary in pages, a power of two "
                             "(default: %(default)s, the PCI default 4 GiB)")
    parser.add_argument("--variant", "--depot", dest="variant", default="", metavar="KIND",
                        help="the allocator's variant (magazines: its depot, one of %s; "
                             "default: the allocator's default)"
                             % ", ".join(allocators.module("magazines").VARIANTS))
    parser.add_argument("--mag-size", default="127", metavar="M",
                        help="magazines: IOVA_MAG_SIZE, 127 (6.x) or 128 (before 2022) "
                             "(default: %(default)s)")
    parser.add_argument("--timing", action="store_true",
                        help="print the replay loop's ns per request on stderr")
    parser.add_argument("--op-timing", action="store_true",
                        help="time each request between two reads of the cycle counter "
                             "(their cost subtracted) and print the mean ns of an "
                             "allocation and of a free on stderr")
    parser.add_argument("--preset", metavar="NAME",
                        help="a replay experiment (configs/presets/ with a [replay] table, "
                             "e.g. zhang2022): its trace generated, replayed under each of "
                             "its variants with --op-timing, the published figures beside "
                             "ours")
    from harness import tracereplay
    tracereplay.add_replay_arguments(parser)
    return parser


def _validate(args):
    name = args.allocator
    if name not in replayable():
        raise UsageError("--allocator: unknown allocator %r: choose one of %s"
                         % (name, ", ".join(replayable())))
    mod = allocators.module(name)
    pages = _int(args.pages, "--pages")
    if not 2 <= pages <= MAX_PAGES:
        raise UsageError("--pages: %d out of range 2..%d" % (pages, MAX_PAGES))
    boundary = _int(args.boundary, "--boundary")
    # the state holds it in an int64; the run's --boundary has the same range
    if boundary < 1 or boundary & (boundary - 1):
        raise UsageError("--boundary: %d is not a power of two" % boundary)
    if boundary > MAX_BOUNDARY:
        raise UsageError("--boundary: %d out of range 1..%d" % (boundary, MAX_BOUNDARY))
    if args.variant and args.variant not in mod.VARIANTS:
        raise UsageError("--variant: %s has no variant %r; valid: %s"
                         % (name, args.variant, ", ".join(mod.VARIANTS) or "none"))
    mag_size = _int(args.mag_size, "--mag-size")
    if mag_size not in MAG_SIZES:
        raise UsageError("--mag-size: %d, expected 127 or 128" % mag_size)
    return name, pages, boundary, args.variant, mag_size


def command(args, stdout, stderr):
    """Run the replay subcommand: the output on `stdout`, `--timing` on
    `stderr`.  Bad input raises UsageError; an allocator whose state is
    wrong after the replay raises RuntimeError (a bug of ours)."""
    if getattr(args, "concurrent", False):
        from harness import tracereplay
        return tracereplay.replay_command(args, stdout, stderr, _validate, read)
    from harness.tracereplay import concurrent_only
    concurrent_only(args)
    if args.preset:
        return preset_command(args, stdout)
    if args.trace is None:
        raise UsageError("give a TRACE, or --preset NAME")
    name, pages, boundary, variant, mag_size = _validate(args)
    trace = read(args.trace, pages=pages, masks=module(name).LIMIT_IS_MASK)
    rep = run(trace, name, pages, boundary, variant, mag_size, timed=args.op_timing)
    stdout.write(rep.text())
    stdout.flush()
    if rep.problems:
        raise RuntimeError("replay: %s state is wrong after the replay: %s"
                           % (name, "; ".join(rep.problems)))
    if args.timing:
        n = len(trace)
        per = rep.elapsed_ns / n if n else 0.0
        stderr.write("replay: %.1f ns/request over %d requests (%s%s)\n"
                     % (per, n, name, ":" + variant if variant else ""))
        stderr.flush()
    if args.op_timing:
        stderr.write("replay: %s\n" % _op_means(rep))
        stderr.flush()
    same, known = rep.kernel_match()
    if known:
        stderr.write("replay: %d of %d allocations (%.1f%%) got the address the traced kernel "
                     "gave (%s; meaningful when the capture began with the domain)\n"
                     % (same, known, 100.0 * same / known, name))
        stderr.flush()
    return 0


def _op_means(rep):
    fmt = lambda v: "-" if v is None else "%.1f ns" % v      # noqa: E731
    return "mean allocation %s, mean free %s (%s%s)" % (
        fmt(rep.alloc_ns), fmt(rep.free_ns), rep.allocator,
        ":" + rep.params.variant if rep.params.variant else "")


def preset_command(args, stdout):
    """`replay --preset NAME`: the preset's generated trace replayed, each
    request timed, under each of its variants; its published figures
    beside ours on `stdout`."""
    from tabulate import tabulate

    from harness import config
    if args.trace is not None:
        raise UsageError("--preset %s generates its own trace: give no TRACE" % args.preset)
    opts, extras = config.load_preset(args.preset)
    spec = extras.get("replay")
    if spec is None:
        raise UsageError("preset %s is a sweep: run `iommu-stress sweep --preset %s`"
                         % (args.preset, args.preset))
    name = spec["allocator"]
    mod = module(name)
    for v in spec["variants"]:
        if v not in mod.VARIANTS:
            raise UsageError("preset %s: %s has no variant %r" % (args.preset, name, v))
    pages = spec["pages"]
    limit = spec.get("limit", pages - 1)
    text = prefill_trace(spec.get("seed", 1), spec["live"], spec["pairs"],
                         spec.get("request_pages", 1), limit)
    trace = parse(text, "<%s>" % args.preset, pages=pages)
    rows, first = [], None
    pub = dict(extras.get("published", {}))
    pub.pop("threads", None)
    pub.pop("metric", None)
    live = spec["live"]
    for v in spec["variants"]:
        rep = run(trace, name, pages, variant=v, timed=True)
        if rep.problems:
            raise RuntimeError("replay: %s:%s state is wrong after the replay: %s"
                               % (name, v, "; ".join(rep.problems)))
        mean = rep.alloc_ns
        first = first or mean
        design = "%s:%s" % (name, v)
        figure, ratio, unit = pub.get(design, ["-", 0, ""])
        after = rep.mean_ns(OP_ALLOC, live)
        rows.append([design, "%s %s" % (figure, unit), "%.2f" % ratio if ratio else "",
                     "%.0f" % mean, "%.2f" % (first / mean), "%.0f" % rep.mean_ns(OP_ALLOC, 0, live),
                     "-" if after is None else "%.0f" % after,
                     "-" if rep.free_ns is None else "%.0f" % rep.free_ns])
    stdout.write(extras.get("description", "").strip() + "\n")
    stdout.write("%d requests: %d allocations of %d page(s), limit pfn %d, then %d random "
                 "free and allocate pairs; ours in ns, each call timed\n"
                 % (len(trace), live, spec.get("request_pages", 1), limit, spec["pairs"]))
    stdout.write(tabulate(rows, headers=["design", "published", "speed-up", "ours: mean alloc",
                                         "speed-up", "first %d allocs" % live,
                                         "last %d allocs" % spec["pairs"],
                                         "%d frees" % spec["pairs"]],
                          disable_numparse=True) + "\n")
    stdout.flush()
    return 0
