"""Request traces, formats v1 and v2: what `iommu-stress replay` reads.

One request per line, fields separated by whitespace, `#` starts a comment
(a whole line or the rest of one).  Format v1:

    cpu <n>                        the requests that follow run on CPU n (0 at first)
    a <tag> <pages> [<limit_pfn>]  allocate, remember the range under <tag>
    f <tag>                        free what <tag> got

Format v2 (what `iommu-stress trace import` writes from a kernel capture)
starts with the line `format 2` and adds what a capture knows and v1 lacks:

    device <name>                  the allocations that follow are in this
                                   device's domain ("-" at first); a free is
                                   in the domain of what it frees
    a <tag> <pages> [<limit_pfn>] [t=<ns>] [kpfn=<pfn>]
    f <tag> [t=<ns>]

t= is when the kernel traced the request (ns of the trace clock), kpfn= the
pfn the traced kernel gave the allocation (its IOVA >> 12), for comparison.
Each domain is an allocator of its own.  A file without the `format 2`
line is v1, read as before.

A limit_pfn is the highest pfn the range may reach; for pools, which
models a device's DMA mask, it is that mask in pages (2**k - 1).  Numbers
are decimal (or 0x hex).  A tag is any run of non-space characters
without `#`.  The parser turns the text into flat int64 arrays for the
compiled replay loop and checks everything that does not depend on what the
allocator returns.  Whether a tag is live does depend on it (a tag whose
allocation failed is not), so each request also carries `ref`, the request
that decides it, and the loop checks that one result:

- for an allocation, the earlier allocation of the same tag that is not yet
  freed, or -1: if that one succeeded, the tag is still live;
- for a free, the allocation it frees: if that one failed, nothing is mapped.

The loop itself keeps what each live tag holds in `slot`s, one per tag
possibly live at once and reused after its free, as a driver keeps a
mapping's address in the descriptor it reuses: a table of peak_live
entries stays in the first-level cache, where one entry per request would
put a cache miss in the loop that the allocator's cost is measured by.
"""
import random
import re
import sys
from dataclasses import dataclass

import numpy as np

from harness.errors import UsageError, read_input

VERSION = 2
MAX_TRACE_BYTES = 1 << 30    # some 50M requests; a larger file is not a trace of ours
OP_ALLOC = 0
OP_FREE = 1
MAX_CPUS = 1024           # simulated CPUs a trace may name: 0..1023
MASK_BITS = 52            # a 64-bit DMA mask, in 4 KiB pages

_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_EXPECT_A = "expected 'a <tag> <pages> [<limit_pfn>]'"
_EXPECT_F = "expected 'f <tag>'"
_EXPECT_CPU = "expected 'cpu <n>'"
_EXPECT_ANY = "expected 'cpu <n>', 'a <tag> <pages> [<limit_pfn>]' or 'f <tag>'"
_EXPECT_A2 = "expected 'a <tag> <pages> [<limit_pfn>] [t=<ns>] [kpfn=<pfn>]'"
_EXPECT_F2 = "expected 'f <tag> [t=<ns>]'"
_EXPECT_DEVICE = "expected 'device <name>'"
_EXPECT_ANY2 = ("expected 'cpu <n>', 'device <name>', 'a <tag> <pages> [<limit_pfn>] "
                "[t=<ns>] [kpfn=<pfn>]' or 'f <tag> [t=<ns>]'")
NO_DEVICE = "-"           # the domain of a v2 trace's requests before any device line
MAX_TIME = (1 << 63) - 1


@dataclass
class Trace:
    """A parsed trace: one entry per request (cpu lines fold into `cpu`)."""
    name: str
    op: np.ndarray          # OP_ALLOC / OP_FREE
    tag: np.ndarray         # index into `tags`
    ref: np.ndarray         # see the module's docstring
    slot: np.ndarray        # where the loop keeps the tag's range: 0..peak_live-1
    pages: np.ndarray       # a free carries the pages of the allocation it frees
    limit: np.ndarray       # -1: the allocator's default
    cpu: np.ndarray
    line: np.ndarray        # 1-based line number in the text
    tags: list              # tag names, by index
    peak_live: int          # most tags possibly live at once (all allocations succeeding)
    ncpus: int              # highest CPU a request runs on, + 1
    version: int = 1
    time: np.ndarray = None     # v2: ns of the trace clock, -1: none given
    kpfn: np.ndarray = None     # v2: the traced kernel's pfn of an allocation, -1: none
    domain: np.ndarray = None   # v2: index into `devices`
    devices: list = None        # v2: device names, by index (v1: ["-"])

    def __len__(self):
        return len(self.op)

    @property
    def nallocs(self):
        return int(np.count_nonzero(self.op == OP_ALLOC))

    def where(self, i):
        """`name:line` of request i, for messages."""
        return "%s:%d" % (self.name, self.line[i])


def _shown(text, width=60):
    text = text.strip()
    if len(text) > width:
        text = text[:width] + "..."
    return repr(text)


TOO_BIG = 1 << 128          # stands for any number of more digits than a range allows


def _number(tok):
    if not _NUMBER.match(tok):
        return None
    if len(tok.lstrip("0xX")) > 38:
        # out of every range anyway; Python refuses to convert very long ones
        return TOO_BIG
    return int(tok, 16) if tok[:2] in ("0x", "0X") else int(tok, 10)


def parse(text, name="<trace>", pages=1 << 20, masks=False):
    """Parse trace text.  `pages` is the size of the space: requests of
    1..pages pages are valid, and a limit_pfn is a pfn inside it, unless
    `masks`: then it is a device's DMA mask in pages, 2**k - 1 for k in
    1..MASK_BITS, and may reach beyond the space.
    Raises UsageError, `name:line: what`, for the first bad line.

    One loop over the lines, longer than most functions here: every check
    of a line needs the state the lines before it left (which tags are
    live, where each was freed), and kept together they read as the
    format's rules in order."""
    max_limit = (1 << MASK_BITS) - 1 if masks else pages - 1
    op, tag, ref, npages, limit, cpus, lines = [], [], [], [], [], [], []
    times, kpfns, domains = [], [], []
    tag_index = {}
    tags = []
    current = []          # per tag: its possibly-live allocation's request, or -1
    slot = []             # per request: its tag's slot
    free_slots = []
    freed_at = []         # per tag: the line of its last free, or 0
    live = peak = 0
    cpu = 0
    maxcpu = 0
    version = 1
    seen_any = False
    devices = [NO_DEVICE]
    device_index = {NO_DEVICE: 0}
    domain = 0

    def fail(lineno, what):
        raise UsageError("%s:%d: %s" % (name, lineno, what))

    for lineno, raw in enumerate(text.split("\n"), 1):
        cut = raw.find("#")
        f = (raw if cut < 0 else raw[:cut]).split()
        if not f:
            continue
        kind = f[0]
        first, seen_any = not seen_any, True
        opts = {}
        if version == 2 and kind in ("a", "f"):
            # v2's key=value fields follow the positional ones
            while len(f) > 2 and "=" in f[-1]:
                key, _, value = f.pop().partition("=")
                n = _number(value)
                allowed = ("t", "kpfn") if kind == "a" else ("t",)
                if key not in allowed or key in opts or n is None or n > MAX_TIME:
                    fail(lineno, "%s, got %s" % (_EXPECT_A2 if kind == "a" else _EXPECT_F2,
                                                _shown(raw)))
                opts[key] = n
        if kind == "a":
            expect = _EXPECT_A2 if version == 2 else _EXPECT_A
            if len(f) not in (3, 4):
                fail(lineno, "%s, got %s" % (expect, _shown(raw)))
            n = _number(f[2])
            lim = _number(f[3]) if len(f) == 4 else -1
            if n is None or lim is None:
                fail(lineno, "%s, got %s" % (expect, _shown(raw)))
            if not 1 <= n <= pages:
                fail(lineno, "pages %d out of range 1..%d" % (n, pages))
            if len(f) == 4:
                if not (1 if masks else 0) <= lim <= max_limit:
                    fail(lineno, "limit_pfn %d out of range %d..%d"
                         % (lim, 1 if masks else 0, max_limit))
                if masks and lim & (lim + 1):
                    fail(lineno, "limit_pfn %d is not a DMA mask in pages (2**k - 1)" % lim)
            t = tag_index.get(f[1])
            if t is None:
                t = tag_index[f[1]] = len(tags)
                tags.append(f[1])
                current.append(-1)
                freed_at.append(0)
            i = len(op)
            # A still-current allocation of this tag must have failed for
            # this one to be valid; the replay loop checks that result.
            ref.append(current[t])
            if current[t] < 0:
                live += 1
                if live > peak:
                    peak = live
                slot.append(free_slots.pop() if free_slots else live - 1)
            else:
                slot.append(slot[current[t]])
                if domains[current[t]] != domain:
                    fail(lineno, "tag %r is still mapped in device %s"
                         % (f[1], devices[domains[current[t]]]))
            current[t] = i
            op.append(OP_ALLOC)
            npages.append(n)
            limit.append(lim)
            domains.append(domain)
        elif kind == "f":
            if len(f) != 2:
                fail(lineno, "%s, got %s" % (_EXPECT_F2 if version == 2 else _EXPECT_F,
                                            _shown(raw)))
            t = tag_index.get(f[1])
            if t is None:
                fail(lineno, "free of tag %r that is not mapped (never allocated)" % f[1])
            a = current[t]
            if a < 0:
                fail(lineno, "free of tag %r that is not mapped (freed at line %d)"
                     % (f[1], freed_at[t]))
            current[t] = -1
            freed_at[t] = lineno
            live -= 1
            op.append(OP_FREE)
            ref.append(a)
            slot.append(slot[a])
            free_slots.append(slot[a])
            npages.append(npages[a])
            limit.append(-1)
            domains.append(domains[a])
        elif kind == "cpu":
            if len(f) != 2:
                fail(lineno, "%s, got %s" % (_EXPECT_CPU, _shown(raw)))
            c = _number(f[1])
            if c is None:
                fail(lineno, "%s, got %s" % (_EXPECT_CPU, _shown(raw)))
            if not 0 <= c < MAX_CPUS:
                fail(lineno, "cpu %d out of range 0..%d" % (c, MAX_CPUS - 1))
            cpu = c
            continue
        elif kind == "format":
            if len(f) != 2 or f[1] not in ("1", "2"):
                fail(lineno, "expected 'format 1' or 'format 2', got %s" % _shown(raw))
            if not first:
                fail(lineno, "the format line must come before any other")
            version = int(f[1])
            continue
        elif kind == "device" and version == 2:
            if len(f) != 2:
                fail(lineno, "%s, got %s" % (_EXPECT_DEVICE, _shown(raw)))
            domain = device_index.get(f[1])
            if domain is None:
                domain = device_index[f[1]] = len(devices)
                devices.append(f[1])
            continue
        else:
            fail(lineno, "%s, got %s" % (_EXPECT_ANY2 if version == 2 else _EXPECT_ANY,
                                        _shown(raw)))
        tag.append(t)
        cpus.append(cpu)
        lines.append(lineno)
        times.append(opts.get("t", -1))
        kpfns.append(opts.get("kpfn", -1))
        if cpu > maxcpu:
            maxcpu = cpu

    def arr(x):
        return np.array(x, dtype=np.int64)

    return Trace(name=name, op=arr(op), tag=arr(tag), ref=arr(ref), slot=arr(slot),
                 pages=arr(npages),
                 limit=arr(limit), cpu=arr(cpus), line=arr(lines), tags=tags,
                 peak_live=peak, ncpus=maxcpu + 1, version=version, time=arr(times),
                 kpfn=arr(kpfns), domain=arr(domains), devices=devices)


def subset(trace, keep):
    """The requests of `trace` where the boolean array `keep` is set, as a
    trace of their own (a domain's).  Every free must be kept with its
    allocation.  Slots stay as they were: the tags live at once in a subset
    are a subset of those live at once in the whole."""
    index = np.cumsum(keep) - 1
    ref = trace.ref[keep]
    ref = np.where(ref >= 0, index[np.maximum(ref, 0)], -1)
    pick = lambda a: a[keep]       # noqa: E731
    return Trace(name=trace.name, op=pick(trace.op), tag=pick(trace.tag), ref=ref,
                 slot=pick(trace.slot), pages=pick(trace.pages), limit=pick(trace.limit),
                 cpu=pick(trace.cpu), line=pick(trace.line), tags=trace.tags,
                 peak_live=trace.peak_live, ncpus=trace.ncpus, version=trace.version,
                 time=pick(trace.time), kpfn=pick(trace.kpfn), domain=pick(trace.domain),
                 devices=trace.devices)


def read(path, pages=1 << 20, masks=False):
    """Parse the trace file at `path` (`-` reads standard input)."""
    try:
        if path == "-":
            text = sys.stdin.read()
            name = "<stdin>"
        else:
            # universal newlines, as a file opened as text reads them: a
            # line ends at \n, \r\n or a lone \r
            text = read_input(path, MAX_TRACE_BYTES, "trace").decode("utf-8")
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            name = str(path)
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError("cannot read trace %s: %s" % (path, e)) from None
    return parse(text, name, pages, masks)


def random_trace(seed, n, max_live, max_pages, ncpus=1, limits=None):
    """A random, valid trace of n requests (allocations and frees) for tests
    and benchmarks: at most `max_live` tags live at once, sizes 1..max_pages
    (mostly small, as DMA mappings are), requests spread over `ncpus` CPUs
    with frees often on another CPU than their allocation, freed tags
    sometimes re-used.  `limits`: optional limit_pfns, one of which some
    allocations carry.

    The trace assumes every allocation succeeds: where one fails, the free
    of its tag is an error.  Live pages never exceed max_live * max_pages;
    on a space of 8 times that, with no limits (and for bitmap a segment
    boundary no smaller than the space), neither bitmap nor rbtree can
    fail, whatever the fragmentation.  Caching and pooled allocators need
    more room."""
    if n < 0 or max_live < 1 or max_pages < 1 or ncpus < 1:
        raise ValueError("random_trace needs n >= 0, max_live, max_pages, ncpus >= 1")
    rng = random.Random(seed)
    out = ["# random_trace seed=%d n=%d max_live=%d max_pages=%d ncpus=%d"
           % (seed, n, max_live, max_pages, ncpus)]
    live = []             # tags live now
    spare = []            # freed tags, to re-use
    serial = 0
    cpu = 0
    # Mostly the sizes a network or block driver maps, some anything.
    small = [s for s in (1, 1, 1, 1, 2, 2, 4, 8, 16, 32) if s <= max_pages]
    # Drift towards about three quarters of max_live, then hover there.
    target = max(1, (3 * max_live) // 4)
    for _ in range(n):
        if ncpus > 1 and rng.random() < 0.1:
            c = rng.randrange(ncpus)
            if c != cpu:
                cpu = c
                out.append("cpu %d" % cpu)
        if not live:
            alloc = True
        elif len(live) >= max_live:
            alloc = False
        else:
            alloc = rng.random() < (0.7 if len(live) < target else 0.45)
        if alloc:
            if spare and rng.random() < 0.2:
                t = spare.pop(rng.randrange(len(spare)))
            else:
                t = "t%d" % serial
                serial += 1
            size = rng.choice(small) if rng.random() < 0.9 else rng.randint(1, max_pages)
            if limits and rng.random() < 0.1:
                out.append("a %s %d %d" % (t, size, rng.choice(limits)))
            else:
                out.append("a %s %d" % (t, size))
            live.append(t)
        else:
            k = rng.randrange(len(live))
            t = live[k]
            live[k] = live[-1]
            live.pop()
            out.append("f %s" % t)
            if len(spare) < 4096:
                spare.append(t)
    return "\n".join(out) + "\n"


def prefill_trace(seed, live, pairs, pages=1, limit=None):
    """The trace of a prefilled space: `live` allocations of `pages` pages,
    then `pairs` times a free of one of the live tags chosen at random and
    an allocation of a new one (Peng Zhang's alloc_iova test, 2022: 300,000
    one-page IOVAs, then 1,000 such pairs).  Every allocation carries
    `limit` (a limit_pfn) when given."""
    if live < 1 or pairs < 0 or pages < 1:
        raise ValueError("prefill_trace needs live >= 1, pairs >= 0, pages >= 1")
    rng = random.Random(seed)
    tail = "" if limit is None else " %d" % limit
    out = ["# prefill_trace seed=%d live=%d pairs=%d pages=%d" % (seed, live, pairs, pages)]
    out += ["a p%d %d%s" % (i, pages, tail) for i in range(live)]
    tags = list(range(live))
    for k in range(pairs):
        j = rng.randrange(live)
        out.append("f p%d" % tags[j])
        tags[j] = live + k
        out.append("a p%d %d%s" % (tags[j], pages, tail))
    return "\n".join(out) + "\n"
