"""`iommu-stress trace import FILE... -o OUT.trace`: the kernel's own record
of a machine's DMA traffic, turned into a request trace (format v2, see
harness/trace.py) that `replay` runs against any design.

What it reads is tracepoint text, in the three forms users have it:

    tracefs `trace` / `trace_pipe`   comm-pid [cpu] flags ts: event: fields
                                     (with or without the `# tracer:` header,
                                     any flag columns, a TGID column)
    `trace-cmd report`               comm-pid [cpu] ts: event: fields
    `perf script`                    comm pid [cpu] ts: system:event: fields

and the events whose fields name a range of I/O addresses being mapped or
unmapped, as the kernel's format strings print them:

  include/trace/events/iommu.h (iommu_map() and iommu_unmap(), no device):
    map    "IOMMU: iova=0x%016llx paddr=0x%016llx size=%zu"            (2013 on)
           "IOMMU: iova=0x%016llx - 0x%016llx paddr=0x%016llx size=%zu" (the range,
                                                                     a 2021 patch on)
    unmap  "IOMMU: iova=0x%016llx size=%zu unmapped_size=%zu"
           "IOMMU: iova=0x%016llx - 0x%016llx size=%zu unmapped_size=%zu"
    (a vendor patch's "IOMMU: dev=%s iova=..." gives the device too)
  include/trace/events/dma.h (the DMA API, 6.12 on; device first):
    dma_map_page, dma_map_resource (6.12), dma_map_phys (which later replaced both)
           "%s dir=%s dma_addr=%llx size=%zu phys_addr=%llx attrs=%s"
    dma_unmap_page, dma_unmap_resource, dma_unmap_phys
           "%s dir=%s dma_addr=%llx size=%zu attrs=%s"
    dma_map_sg "%s dir=%s dma_addrs=%s sizes=%s phys_addrs=%s attrs=%s",
           later "%s dir=%s nents=%d/%d ents=%d/%d%s dma_addrs=..." (lists
           cut at 128 entries, then " [TRUNCATED]")
    dma_unmap_sg "%s dir=%s phys_addrs=%s attrs=%s" (no I/O address: it is
           matched to its map by the first physical address)
    dma_alloc "%s dma_addr=%llx size=%zu virt_addr=%p flags=%s attrs=%s",
           later with " dir=%s" after the device; dma_free likewise without
           flags; dma_alloc_pages / dma_free_pages and dma_alloc_sgt /
           dma_free_sgt the same fields
  Lists print as the kernel's __print_array: {0x1000,0x2000}.

A request is what the IOVA allocator sees: a map is an allocation of the
pages its range covers, its unmap the free.  Real captures are not that
tidy, and the importer says by count what it did about each case:

- an unmap of a range mapped before the capture began: dropped;
- one map unmapped in several pieces: freed at its last piece;
- several maps unmapped at once (the iommu: events of one scatterlist,
  which dma-iommu allocates as one range and maps segment by segment):
  one allocation of the whole range, at the first map;
- a map over a range still mapped (its unmap was lost): the old range is
  freed first;
- events of other systems, and other events of these two: dropped by name;
- failed mappings (DMA_MAPPING_ERROR, a NULL allocation, the *_err events),
  truncated scatterlists, lines with a blanked CPU or timestamp column, a
  CPU beyond the trace format's: dropped;
- both iommu: and dma: events in one capture describe the same mappings
  twice: the dma: ones, which name the device, are kept;
- CRLF line ends, and text that is not UTF-8, are read as they come.

Files given together are merged by timestamp (per-CPU files of one
capture, or several captures of one boot).  Pure Python: a capture is read
once, and nothing here is measured.
"""
import bisect
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

from harness.errors import UsageError, read_input
from harness.trace import MAX_CPUS, MAX_TRACE_BYTES, NO_DEVICE

PAGE_SHIFT = 12                  # include/asm-generic/page.h: the 4 KiB IOVA granule
PAGE_SIZE = 1 << PAGE_SHIFT
DMA_MAPPING_ERROR = (1 << 64) - 1    # include/linux/dma-mapping.h: (~(dma_addr_t)0)
DMA_TRACE_MAX_ENTRIES = 128      # include/trace/events/dma.h: a traced list's cut
MAX_ADDRESS = (1 << 64) - 1

MAP, UNMAP = 0, 1

# The columns before the event's name: a task (comm-pid, or comm pid with
# perf; blank or <...> when unknown), an optional TGID column, the CPU in
# brackets, optional flag columns (irqs-off, need-resched, hardirq/softirq,
# preempt-depth, migrate-disable: 4 or 5 characters, none when irq-info is
# off), the timestamp (s.us, s.ns, or a counter clock's integer).
_HEAD = re.compile(r"(?P<task>.*)\[(?P<cpu>\d+)\]\s+(?:(?P<flags>[^\s\d]\S*)\s+)?"
                   r"(?P<ts>\d+)(?:\.(?P<frac>\d+))?:\s+"
                   r"(?P<event>[A-Za-z_]\w*(?::[A-Za-z_]\w*)?):(?:\s+|$)(?P<rest>.*)\Z")
# An event line whatever its columns: for counting the ones whose CPU or
# timestamp is blank.
_ANY_EVENT = re.compile(r"(?:^|\s)(?:(?:iommu|dma):)?(?:map|unmap|dma_\w+):(?:\s|$)")
_LOST = re.compile(r"CPU:?\s*\d+\s*\[LOST (\d+) EVENTS\]")
_HEX = re.compile(r"(?:0[xX])?[0-9a-fA-F]+\Z")
_DEC = re.compile(r"[0-9]+\Z")

IOMMU_EVENTS = {"map": MAP, "unmap": UNMAP}
DMA_MAPS = {"dma_map_page", "dma_map_resource", "dma_map_phys", "dma_alloc",
            "dma_alloc_pages", "dma_alloc_sgt"}
DMA_UNMAPS = {"dma_unmap_page", "dma_unmap_resource", "dma_unmap_phys", "dma_free",
              "dma_free_pages", "dma_free_sgt"}
DMA_FAILED = {"dma_map_sg_err", "dma_alloc_sgt_err"}

# the reasons a mapping event is dropped, by key, as the summary says them
REASONS = {
    "not_mapped": "unmaps of a range not mapped in the capture (mapped before it began)",
    "failed": "failed mappings (DMA_MAPPING_ERROR, a NULL allocation, *_err events)",
    "truncated": "scatterlists the kernel cut at %d entries" % DMA_TRACE_MAX_ENTRIES,
    "zero": "maps or unmaps of no bytes",
    "blank": "event lines with a blanked CPU or timestamp column",
    "malformed": "map or unmap lines whose fields do not read",
    "cpu": "events on a CPU beyond %d" % (MAX_CPUS - 1),
    "device": "events of devices not selected (--device)",
    "twice": "iommu: events of a capture that has dma: events (the same mappings twice)",
}


@dataclass
class Event:
    """One map or unmap, as read from a line."""
    kind: int
    time: int            # ns of the trace clock
    cpu: int
    device: str
    start: int           # the range's first byte
    end: int             # one past its last byte
    phys: int = -1       # a scatterlist's first physical address: its unmap's key
    iommu: bool = False  # from the iommu: system (no device)
    where: tuple = ()    # (file, line) for the stable merge
    scattered: bool = False   # a scatterlist not in one range: no kernel address to compare


@dataclass
class Mapping:
    """A range live in the walk: the allocation request it became."""
    request: int         # index of its allocation in the output
    start: int
    end: int
    left: int            # bytes still mapped
    phys: int = -1


@dataclass
class Summary:
    files: int = 0
    lines: int = 0
    maps: int = 0                 # allocations written
    unmaps: int = 0               # frees written
    pieces: int = 0               # unmaps folded into a later free
    merged: int = 0               # maps folded into an earlier allocation
    replaced: int = 0             # frees written for a range mapped again
    live_at_end: int = 0
    lost: int = 0                 # events the capture itself lost
    dropped: Counter = field(default_factory=Counter)   # reason -> count
    others: Counter = field(default_factory=Counter)    # other event name -> count
    cpus: set = field(default_factory=set)
    devices: list = field(default_factory=list)

    def text(self):
        out = ["read %d line(s) of %d file(s)%s"
               % (self.lines, self.files,
                  "; the capture itself lost %d event(s)" % self.lost if self.lost else "")]
        out.append("kept: %d allocation(s), %d free(s) on %d CPU(s), %d device(s) (%s); "
                   "%d still mapped at the end"
                   % (self.maps, self.unmaps, len(self.cpus), len(self.devices),
                      ", ".join(self.devices) or "none", self.live_at_end))
        folded = []
        if self.pieces:
            folded.append("%d unmap(s) of part of a range, freed at its last piece" % self.pieces)
        if self.merged:
            folded.append("%d map(s) unmapped together with an earlier one, one allocation"
                          % self.merged)
        if self.replaced:
            folded.append("%d range(s) mapped again while mapped (unmap lost), freed first"
                          % self.replaced)
        if folded:
            out.append("folded: " + "; ".join(folded))
        rows = [(n, REASONS[k]) for k, n in sorted(self.dropped.items()) if n]
        if self.others:
            names = ", ".join("%s %d" % kv for kv in sorted(self.others.items(),
                                                              key=lambda kv: (-kv[1], kv[0]))[:8])
            more = len(self.others) - 8
            rows.append((sum(self.others.values()), "other events (%s%s)"
                         % (names, ", and %d more kinds" % more if more > 0 else "")))
        if rows:
            out.append("dropped:")
            out += ["  %8d  %s" % r for r in rows]
        else:
            out.append("dropped: none")
        return "\n".join(out) + "\n"


def _number(tok, base):
    """An unsigned number as the kernel prints it, or None."""
    if base == 16:
        if not _HEX.match(tok) or len(tok) > 18:
            return None
        return int(tok, 16)
    if not _DEC.match(tok) or len(tok) > 20:
        return None
    return int(tok, 10)


def _array(tok):
    """A __print_array list, {0x1,0x2}: its numbers, or None."""
    if len(tok) < 2 or tok[0] != "{" or tok[-1] != "}":
        return None
    inner = tok[1:-1]
    if not inner:
        return []
    out = []
    for x in inner.split(","):
        n = _number(x, 16)
        if n is None:
            return None
        out.append(n)
    return out


def _fields(tokens):
    """key=value tokens as a dict (a bare token, e.g. [TRUNCATED], as key: None)."""
    out = {}
    for tok in tokens:
        key, eq, value = tok.partition("=")
        out[key] = value if eq else None
    return out


def _iommu_event(kind, rest):
    """(start, end) of an iommu:map or iommu:unmap, or None when malformed.
    The unmap's range is what it unmapped (unmapped_size; the request's
    size when the two differ is not what the page table lost)."""
    tokens = rest.split()
    if tokens[:1] == ["IOMMU:"]:
        tokens = tokens[1:]
    # the range: "iova=0x... - 0x..." is three tokens
    if len(tokens) >= 3 and tokens[1] == "-":
        del tokens[1:3]
    f = _fields(tokens)
    iova = _number(f.get("iova") or "", 16)
    size = _number(f.get("size") or "", 10)
    if iova is None or size is None:
        return None
    if kind == UNMAP:
        done = _number(f.get("unmapped_size") or "", 10)
        if done is None:
            return None
        size = done
    if iova + size > MAX_ADDRESS + 1:
        return None
    return iova, iova + size, f.get("dev")


def _dma_event(name, rest):
    """(kind, start, end, device, phys, scattered) of a dma: event, or a
    reason string ("failed", "truncated", "malformed", "zero")."""
    tokens = rest.split()
    if not tokens or "=" in tokens[0]:
        return "malformed"
    device = tokens[0]
    f = _fields(tokens[1:])
    if name in DMA_FAILED:
        return "failed"
    if name == "dma_map_sg":
        if "[TRUNCATED]" in f:
            return "truncated"
        addrs = _array(f.get("dma_addrs") or "")
        sizes = _array(f.get("sizes") or "")
        phys = _array(f.get("phys_addrs") or "")
        if addrs is None or sizes is None or phys is None or len(addrs) != len(sizes):
            return "malformed"
        if not addrs:
            return "failed"          # ents 0: nothing mapped
        if not any(sizes):
            return "zero"
        lo = min(addrs)
        hi = max(a + s for a, s in zip(addrs, sizes))
        if hi > MAX_ADDRESS + 1:
            return "malformed"
        span = _pages(lo, hi)
        total = sum(_pages(a, a + s) for a, s in zip(addrs, sizes))
        # dma-iommu maps a list into one range (segments padded to the
        # granule); segments far apart are dma-direct's physical addresses:
        # then the request is their pages together, at no address of ours
        scattered = span > total + len(addrs)
        end = lo + (total << PAGE_SHIFT) if scattered else hi
        return MAP, lo, end, device, phys[0] if phys else -1, scattered
    if name == "dma_unmap_sg":
        phys = _array(f.get("phys_addrs") or "")
        if not phys:
            return "malformed"
        return UNMAP, -1, -1, device, phys[0], False
    addr = _number(f.get("dma_addr") or "", 16)
    size = _number(f.get("size") or "", 10)
    if addr is None or size is None:
        return "malformed"
    if name in DMA_MAPS:
        if addr == DMA_MAPPING_ERROR or (name.startswith("dma_alloc") and
                                         (f.get("virt_addr") == "(null)" or addr == 0)):
            return "failed"
        kind = MAP
    else:
        kind = UNMAP
    if size == 0:
        return "zero"
    if addr + size > MAX_ADDRESS + 1:
        return "malformed"
    return kind, addr, addr + size, device, -1, False


def _pages(start, end):
    """Pages of the IOVA range that covers bytes start..end-1 (iova_align of
    the offset in the first page plus the size)."""
    return ((end + PAGE_SIZE - 1) >> PAGE_SHIFT) - (start >> PAGE_SHIFT)


def read_events(text, fileno, summary, devices=None):
    """The map and unmap events of one file's text; counts what it drops
    into `summary`."""
    events = []
    dropped = summary.dropped
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        summary.lines += 1
        m = _HEAD.match(line)
        if m is None:
            lost = _LOST.search(line)
            if lost:
                summary.lost += int(lost.group(1))
            elif _ANY_EVENT.search(line):
                dropped["blank"] += 1
            continue                   # trace-cmd's and perf's own header lines
        system, _, name = m.group("event").rpartition(":")
        rest = m.group("rest")
        if system not in ("", "iommu", "dma") or (
                name not in IOMMU_EVENTS and not name.startswith("dma_")):
            summary.others[m.group("event")] += 1
            continue
        cpu = int(m.group("cpu")[:6])
        frac = (m.group("frac") or "")[:9]
        time = int(m.group("ts")[:12]) * 10**9 + int(frac.ljust(9, "0")) if frac else \
            int(m.group("ts")[:18])
        if name in IOMMU_EVENTS and system in ("", "iommu"):
            if system == "" and not rest.startswith("IOMMU:"):
                summary.others[name] += 1       # another system's `map`
                continue
            got = _iommu_event(IOMMU_EVENTS[name], rest)
            if got is None:
                dropped["malformed"] += 1
                continue
            start, end, dev = got
            ev = Event(IOMMU_EVENTS[name], time, cpu, dev or NO_DEVICE, start, end, iommu=True)
        elif system in ("", "dma") and (name in DMA_MAPS or name in DMA_UNMAPS or
                                        name in DMA_FAILED or name in ("dma_map_sg",
                                                                       "dma_unmap_sg")):
            got = _dma_event(name, rest)
            if isinstance(got, str):
                dropped[got] += 1
                continue
            kind, start, end, dev, phys, scattered = got
            ev = Event(kind, time, cpu, dev, start, end, phys=phys, scattered=scattered)
        else:
            summary.others[m.group("event")] += 1
            continue
        if ev.start == ev.end and ev.phys < 0:
            dropped["zero"] += 1
            continue
        if cpu >= MAX_CPUS:
            dropped["cpu"] += 1
            continue
        if devices is not None and ev.device not in devices:
            dropped["device"] += 1
            continue
        ev.where = (fileno, lineno)
        events.append(ev)
    return events


def to_requests(events, summary):
    """Walk the events in time order, each device's live ranges kept sorted
    by address; return the requests: [kind, tag, pages, cpu, time, device,
    kpfn], allocations with kind MAP and frees with kind UNMAP, a merged
    allocation's entry set to None."""
    if any(not e.iommu for e in events):
        twice = sum(e.iommu for e in events)
        if twice:
            summary.dropped["twice"] += twice
        events = [e for e in events if not e.iommu]
    events.sort(key=lambda e: (e.time, e.where))
    requests = []
    starts = {}          # device -> sorted starts of live ranges
    live = {}            # device -> {start: Mapping}
    by_phys = {}         # (device, phys) -> [Mapping], oldest first

    def free(dev, mp, ev):
        _untrack(starts, live, by_phys, dev, mp)
        requests.append([UNMAP, requests[mp.request][1], 0, ev.cpu, ev.time, dev, -1])
        summary.unmaps += 1

    def overlapping(dev, s, e):
        st = starts.get(dev, [])
        i = max(0, bisect.bisect_right(st, s) - 1)
        out = []
        while i < len(st) and st[i] < e:
            mp = live[dev][st[i]]
            if mp.end > s:
                out.append(mp)
            i += 1
        return out

    for ev in events:
        dev = ev.device
        if ev.kind == MAP:
            for old in overlapping(dev, ev.start, ev.end):
                free(dev, old, ev)
                summary.replaced += 1
            kpfn = -1 if ev.scattered else ev.start >> PAGE_SHIFT
            mp = Mapping(len(requests), ev.start, ev.end, ev.end - ev.start, ev.phys)
            requests.append([MAP, "m%d" % (summary.maps + summary.merged),
                             _pages(ev.start, ev.end), ev.cpu, ev.time, dev, kpfn])
            summary.maps += 1
            bisect.insort(starts.setdefault(dev, []), ev.start)
            live.setdefault(dev, {})[ev.start] = mp
            if ev.phys >= 0:
                by_phys.setdefault((dev, ev.phys), []).append(mp)
            continue
        if ev.phys >= 0 and ev.start < 0:
            # dma_unmap_sg: its map by the list's first physical address
            lst = by_phys.get((dev, ev.phys))
            if not lst:
                summary.dropped["not_mapped"] += 1
            else:
                free(dev, lst[0], ev)
            continue
        hit = overlapping(dev, ev.start, ev.end)
        if not hit:
            summary.dropped["not_mapped"] += 1
            continue
        whole = [mp for mp in hit if ev.start <= mp.start and mp.end <= ev.end]
        if len(whole) >= 2:
            # one range mapped in pieces: the first map's allocation takes
            # them all
            first = min(whole, key=lambda mp: mp.request)
            lo = min(mp.start for mp in whole)
            hi = max(mp.end for mp in whole)
            for mp in whole:
                if mp is not first:
                    requests[mp.request] = None
                    summary.maps -= 1
                    summary.merged += 1
                    _untrack(starts, live, by_phys, dev, mp)
            r = requests[first.request]
            r[2] = _pages(lo, hi)
            r[6] = -1 if r[6] < 0 else lo >> PAGE_SHIFT
            free(dev, first, ev)
            hit = [mp for mp in hit if mp not in whole]
        for mp in hit:
            mp.left -= min(mp.end, ev.end) - max(mp.start, ev.start)
            if mp.left <= 0:
                free(dev, mp, ev)
            else:
                summary.pieces += 1
    summary.live_at_end = sum(len(v) for v in live.values())
    return [r for r in requests if r is not None]


def _untrack(starts, live, by_phys, dev, mp):
    """Take `mp` out of the walk's tables."""
    del starts[dev][bisect.bisect_left(starts[dev], mp.start)]
    del live[dev][mp.start]
    if mp.phys >= 0:
        lst = by_phys[(dev, mp.phys)]
        lst.remove(mp)
        if not lst:
            del by_phys[(dev, mp.phys)]


def render(requests, summary, sources):
    """The requests as format v2 text, the summary in its header."""
    out = ["# iommu-stress request trace, format v2: imported from %s" % ", ".join(sources),
           "# " + summary.text().rstrip("\n").replace("\n", "\n# "),
           "format 2"]
    cpu, device = 0, NO_DEVICE
    for kind, tag, pages, c, t, dev, kpfn in requests:
        if dev != device and kind == MAP:
            out.append("device %s" % dev)
            device = dev
        if c != cpu:
            out.append("cpu %d" % c)
            cpu = c
        if kind == MAP:
            out.append("a %s %d t=%d%s" % (tag, pages, t, " kpfn=0x%x" % kpfn if kpfn >= 0 else ""))
        else:
            out.append("f %s t=%d" % (tag, t))
    return "\n".join(out) + "\n"


def convert(texts, devices=None):
    """[(source name, text)] -> (trace text, Summary).  UsageError when no
    map or unmap of any device is left to write."""
    summary = Summary(files=len(texts))
    events = []
    for i, (_, text) in enumerate(texts):
        events += read_events(text.replace("\r\n", "\n").replace("\r", "\n"), i, summary,
                              devices)
    requests = to_requests(events, summary)
    summary.cpus = {r[3] for r in requests}
    summary.devices = list(dict.fromkeys(r[5] for r in requests))
    if not requests:
        dropped = sum(summary.dropped.values())
        raise UsageError("%s: no iommu:map/unmap or dma: map/unmap events to import (%d line(s) "
                         "read, %d such event(s) dropped, %d other event(s))"
                         % (", ".join(n for n, _ in texts), summary.lines, dropped,
                            sum(summary.others.values())))
    return render(requests, summary, [n for n, _ in texts]), summary


def read_text(path):
    """A capture's text: any bytes read (a capture is not always clean
    UTF-8: task names are the kernel's bytes)."""
    if path == "-":
        return "<stdin>", sys.stdin.buffer.read(MAX_TRACE_BYTES + 1).decode("utf-8", "replace")
    return str(path), read_input(path, MAX_TRACE_BYTES, "capture").decode("utf-8", "replace")


def add_arguments(parser):
    """`trace` and its subcommand `import`."""
    sub = parser.add_subparsers(dest="trace_command", metavar="ACTION")
    sub.required = True
    imp = sub.add_parser("import", help="turn kernel tracepoint captures (iommu:map/unmap, "
                                        "dma: map/unmap) into a request trace, format v2")
    imp.add_argument("files", metavar="FILE", nargs="+",
                     help="tracefs trace or trace_pipe text, trace-cmd report or perf script "
                          "output ('-': standard input); several are merged by timestamp")
    imp.add_argument("-o", "--output", metavar="OUT.trace", required=True,
                     help="the request trace to write ('-': standard output)")
    imp.add_argument("--device", metavar="NAME[,NAME...]", action="append",
                     help="keep only these devices' requests (dma: events name the device; "
                          "iommu: events have none, '-'); may be repeated")
    return parser


def command(args, stdout, stderr):
    """Run `trace import`: the trace to --output, the summary to `stderr`
    (or `stdout` when the trace goes elsewhere)."""
    devices = None
    if args.device:
        devices = {d for arg in args.device for d in arg.split(",") if d}
        if not devices:
            raise UsageError("--device: no device named")
    if sum(f == "-" for f in args.files) > 1:
        raise UsageError("standard input ('-') given twice")
    texts = [read_text(p) for p in args.files]
    text, summary = convert(texts, devices)
    if args.output == "-":
        stdout.write(text)
        stdout.flush()
        report = stderr
    else:
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as e:
            raise UsageError("%s: cannot write: %s" % (args.output, e.strerror or e)) from None
        report = stdout
    report.write("trace import: wrote %s\n" % ("standard output" if args.output == "-"
                                                else args.output))
    report.write(summary.text())
    report.flush()
    return 0
