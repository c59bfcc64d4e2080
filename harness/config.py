"""Run options: defaults, TOML files, command-line values, one validation.

Every option has one entry in OPTIONS; a TOML file and the command line set
the same names.  Errors name the file and line (TOML) or the flag, say what
was expected, and are raised as UsageError.
"""
import math
import re
import tomllib
from pathlib import Path

from harness.errors import UsageError, read_input
from harness.placement import DEFAULT as PLACEMENT, convert_cpus, convert_policy
from harness.abi import MAX_DEPTH, MAX_DOMAINS, MAX_WORKERS
from hwmodel.locks import KINDS

MAX_THREADS = MAX_WORKERS
ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
MAX_CONFIG_BYTES = 1 << 20   # a config, workload, profile or preset: a page of TOML is plenty


def _threads(v):
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if isinstance(v, list):
        out = []
        for x in v:
            if not isinstance(x, int) or isinstance(x, bool):
                raise ValueError("a list of integers 1..%d" % MAX_THREADS)
            out.append(x)
    elif isinstance(v, str):
        out = parse_threads(v)
    else:
        raise ValueError("a thread list such as \"1,2,4\" or \"1-1024\"")
    for x in out:
        if not 1 <= x <= MAX_THREADS:
            raise ValueError("thread counts in the range 1..%d, got %d" % (MAX_THREADS, x))
    if not out:
        raise ValueError("at least one thread count")
    return sorted(set(out))


def parse_threads(text):
    """"1,2,8" or "1-1024" (both ends and the powers of two between them:
    "3-5" is 3,4,5) or a mix."""
    out = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi or lo < 1:
                raise ValueError("a range lo-hi with 1 <= lo <= hi, got %r" % part)
            t = 1
            while t < lo:
                t *= 2
            if lo not in (t,):
                out.append(lo)
            while t <= hi:
                out.append(t)
                t *= 2
            if out[-1] != hi:
                out.append(hi)
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise ValueError("thread counts such as \"1,2,4\" or \"1-1024\", got %r" % part)
    return out


def _designs(v):
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise ValueError("a list of design names")
    return v


def _number(lo, hi, integer=False):
    def conv(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            if isinstance(v, str):
                try:
                    v = int(v) if integer else float(v)
                except ValueError:
                    raise ValueError("a number in %s..%s, got %r" % (lo, hi, v)) from None
            else:
                raise ValueError("%s in %s..%s" % ("an integer" if integer else "a number", lo, hi))
        if v != v or not lo <= v <= hi:
            raise ValueError("a number in the range %s..%s, got %s" % (lo, hi, v))
        return v
    return conv


def _choice(choices):
    def conv(v):
        if isinstance(v, str) and all(isinstance(c, int) for c in choices) and v.isdigit():
            v = int(v)
        if isinstance(v, bool) or v not in choices:
            raise ValueError("one of %s, got %r" % (", ".join(map(str, choices)), v))
        return v
    return conv


def _name(v):
    if not isinstance(v, str):
        raise ValueError("a name or a file path")
    return v


def _bool(v):
    if not isinstance(v, bool):
        raise ValueError("true or false")
    return v


def _power_of_two(v):
    v = _number(1, 1 << 40, integer=True)(v)
    if v & (v - 1):
        raise ValueError("a power of two, got %d" % v)
    return v


MAX_REPEATS = 100


def _repeats(v):
    """A number of windows, or "auto": as many as --target-ci needs."""
    if v == "auto":
        return v
    try:
        return _number(1, MAX_REPEATS, integer=True)(v)
    except ValueError:
        raise ValueError("a number in 1..%d or auto, got %r" % (MAX_REPEATS, v)) from None


def _fraction(v):
    """A share: 0.02, or "2%"."""
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            v = float(v.strip()[:-1]) / 100
        except ValueError:
            raise ValueError("a share such as 2%% or 0.02, got %r" % v) from None
    v = _number(0.0, 1.0)(v)
    if v <= 0:
        raise ValueError("a share above 0, such as 2% or 0.02")
    return v


MAX_WEIGHT = 1e12          # of a request size; the sum of 4096 of them stays finite


def _sizes(v):
    """Request sizes in pages with weights: [[pages, weight], ...] or
    "1:0.9,64:0.1"."""
    if isinstance(v, str):
        pairs = []
        for part in v.split(","):
            pages, _, weight = part.partition(":")
            try:
                pairs.append([int(pages), float(weight or 1)])
            except ValueError:
                raise ValueError("pages:weight pairs such as \"1:0.9,64:0.1\", got %r" % part) from None
        v = pairs
    if isinstance(v, int) and not isinstance(v, bool):
        v = [[v, 1.0]]
    if not isinstance(v, list) or not v:
        raise ValueError("a list of [pages, weight] pairs")
    out = []
    for pair in v:
        if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], int)
                or isinstance(pair[1], bool) or not isinstance(pair[1], (int, float))):
            raise ValueError("[pages, weight] pairs of an integer and a number")
        pages, weight = pair
        if not 1 <= pages <= 4096:
            raise ValueError("request sizes in the range 1..4096 pages, got %d" % pages)
        # a finite weight, and a finite sum of them: the size table divides by it
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError("weights in the range 0..%g, got %r" % (MAX_WEIGHT, weight))
        out.append((pages, float(weight)))
    if sum(w for _, w in out) <= 0:
        raise ValueError("at least one weight > 0")
    return out


OPTIONS = {
    # name: (converter, default, help)
    "designs": (_designs, ["direct", "bitmap"], "designs to compare"),
    "threads": (_threads, [1, 2], "worker counts"),
    "duration": (_number(0.01, 3600.0), 1.0, "seconds of each measurement window"),
    "warmup": (_number(0.0, 600.0), 0.2, "seconds run before each window"),
    "repeats": (_repeats, 3, "windows per point (the median is reported), or auto"),
    "lock": (_choice(KINDS), "qspinlock", "lock kind (qspinlock: the kernel's own)"),
    "spin_bound": (_number(1, 10**9, integer=True), 1000, "spins before a waiter yields"),
    "depth": (_number(1, MAX_DEPTH, integer=True), 32, "mappings in flight per worker"),
    "sizes": (_sizes, [(1, 1.0)], "request sizes in pages with weights"),
    "pages": (_power_of_two, 1 << 20, "IOVA space in 4 KiB pages"),
    "boundary": (_power_of_two, 1 << 20, "segment boundary in pages"),
    "profile": (_name, "vtd-2015", "cost profile: a name under configs/profiles/ or a TOML file"),
    "workload": (_name, "", "workload: a name under configs/workloads/ or a TOML file"),
    "device_ns": (_number(0, 1e9), None, "device time per I/O, ns (default: the profile's)"),
    "hypercall_ns": (_number(0, 1e9), None, "hypercall per map and unmap, ns (default: the profile's)"),
    "unmap_fraction": (_number(0.0, 0.9), 0.0, "share of workers that only unmap (cross-CPU)"),
    "domains": (_number(1, MAX_DOMAINS, integer=True), 1, "devices (IOMMU domains); workers spread over them"),
    "premapped": (_bool, False, "the driver maps a buffer pool once and recycles it"),
    "tlb_entries": (_power_of_two, 512, "IOTLB entries per domain"),
    "tlb_ways": (_power_of_two, 8, "IOTLB associativity"),
    "dma_passes": (_number(1, 64, integer=True), 1, "times the device touches every page of an I/O"),
    "huge": (_bool, False, "map buffers of 512 pages or more with 2 MiB leaves where aligned"),
    "iotlb_walks": (_bool, False, "the device's access waits for the profile's page walk on each "
                                  "IOTLB miss"),
    "rogue_device": (_bool, False, "a device that reads at unmapped IOVAs: counts stale IOTLB hits"),
    "mag_size": (_choice((127, 128)), 127, "IOVA_MAG_SIZE: 127, or 128 as in the 2016 code"),
    "check": (_bool, False, "ownership map: catch any double mapping"),
    "lock_timing": (_bool, False, "time every lock wait and hold (cycle counter)"),
    "diag": (_bool, False, "diagnostics: lock timing, sampled step timing, per-second series"),
    "seed": (_number(0, 2**31, integer=True), 1, "random seed of the request sizes"),
    "placement": (convert_policy, PLACEMENT, "worker CPUs: cores-first, compact, spread or none"),
    "cpus": (convert_cpus, None, "CPUs the workers may use, a cpulist (default: all allowed)"),
    "node": (_number(0, 1023, integer=True), None, "NUMA node of the workers and the memory"),
    "min_repeats": (_number(2, MAX_REPEATS, integer=True), 6, "--repeats auto: windows at least"),
    "max_repeats": (_number(2, MAX_REPEATS, integer=True), 30, "--repeats auto: windows at most"),
    "target_ci": (_fraction, 0.02, "--repeats auto: the median's 95% interval, over it"),
    "order_seed": (_number(0, 2**31, integer=True), 1,
                   "seed of the shuffled order of the designs' windows at a thread count"),
    "launches": (_number(1, MAX_REPEATS, integer=True), 3,
                 "launches (a fresh segment and fresh workers each) a point's windows span"),
}


# what a workload file may set
WORKLOAD_KEYS = ("sizes", "depth", "device_ns", "hypercall_ns", "unmap_fraction", "domains",
                 "premapped")


def defaults():
    return {k: (list(d) if isinstance(d, list) else d) for k, (_, d, _) in OPTIONS.items()}


def _line_of(text, key):
    for i, line in enumerate(text.split("\n"), 1):     # TOML breaks lines at \n only
        if re.match(r"\s*%s\s*=" % re.escape(key), line):
            return i
    return None


def _parse(path):
    path = Path(path)
    data = read_input(path, MAX_CONFIG_BYTES, "config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UsageError("%s:%d: not UTF-8 text" % (path, line)) from None
    try:
        data = tomllib.loads(text)
    except ValueError as e:
        # TOMLDecodeError, and ValueError itself for integers too long to convert
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            msg = "%s:%s: %s" % (path, m.group(1), msg[:m.start()].strip())
        else:
            msg = "%s: %s" % (path, msg)
        raise UsageError(msg) from None
    return text, data


def _where(path, text, key):
    line = _line_of(text, key)
    return "%s:%s" % (path, line) if line else str(path)


def _where_in(path, text, table, key):
    """Where a key of [table] is: the first line setting it after the
    table's header."""
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if l.strip() == "[%s]" % table), 0)
    line = _line_of("\n".join(lines[start:]), key)
    return "%s:%d" % (path, start + line) if line else str(path)


def load_toml(path, allowed=None):
    """Options from a TOML file, validated; errors name the file and line."""
    text, data = _parse(path)
    allowed = allowed or tuple(OPTIONS)
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        where = _where(path, text, key)
        if name not in allowed:
            raise UsageError("%s: unknown key %r; valid keys: %s"
                             % (where, key, ", ".join(allowed)))
        if name not in OPTIONS:
            out[name] = value
            continue
        try:
            out[name] = OPTIONS[name][0](value)
        except ValueError as e:
            raise UsageError("%s: %s: expected %s" % (where, key, e)) from None
    return out


def convert(name, value, source):
    """One option's value from the command line, validated."""
    try:
        return OPTIONS[name][0](value)
    except ValueError as e:
        raise UsageError("%s: expected %s" % (source, e)) from None


def find_config(name, kind=""):
    """A file given by path, or by name under configs/[kind/]."""
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return p
    base = CONFIGS / kind if kind else CONFIGS
    for cand in (base / name, base / (name + ".toml")):
        if cand.is_file():
            return cand
    if p.is_file():
        return p
    known = sorted(f.stem for f in base.glob("*.toml"))
    raise UsageError("%s: no such %s file; known: %s"
                     % (name, kind.rstrip("s") or "config", ", ".join(known) or "none"))


PRESET_EXTRAS = ("description", "published", "replay")


def load_preset(name):
    """A preset: run options, plus its description and the published
    figures it is compared with (returned apart)."""
    path = find_config(name, "presets")
    text, data = _parse(path)
    extras = {k: data.pop(k) for k in PRESET_EXTRAS if k in data}
    opts = load_toml(path, tuple(OPTIONS) + PRESET_EXTRAS)
    for k in PRESET_EXTRAS:
        opts.pop(k, None)
    pub = extras.get("published", {})
    if not isinstance(extras.get("description", ""), str):
        raise UsageError("%s: description: expected a string" % _where(path, text, "description"))
    if not isinstance(pub, dict):
        raise UsageError("%s: published: expected a table" % _where(path, text, "published"))
    for key, value in pub.items():
        try:
            _published(key, value)
        except ValueError as e:
            raise UsageError("%s: published.%s: expected %s"
                             % (_where_in(path, text, "published", key), key, e)) from None
    if "replay" in extras:
        _replay_table(path, text, extras["replay"])
    return opts, extras


# A replay preset's [replay] table: key -> (required, smallest value);
# allocator and variants are strings
REPLAY_KEYS = {"allocator": (True, None), "variants": (True, None), "pages": (True, 2),
               "live": (True, 1), "pairs": (True, 0), "seed": (False, 0),
               "request_pages": (False, 1), "limit": (False, 0)}


def _replay_table(path, text, table):
    """A replay preset (`iommu-stress replay --preset`): the trace it
    generates (harness/trace.py prefill_trace) and the variants it runs."""
    if not isinstance(table, dict):
        raise UsageError("%s: replay: expected a table" % _where(path, text, "replay"))
    for key in table:
        if key not in REPLAY_KEYS:
            raise UsageError("%s: replay.%s: unknown key; known: %s"
                             % (_where_in(path, text, "replay", key), key,
                                ", ".join(REPLAY_KEYS)))
    for key, (required, least) in REPLAY_KEYS.items():
        if key not in table:
            if required:
                raise UsageError("%s: replay: %s missing" % (_where(path, text, "replay"), key))
            continue
        v = table[key]
        if key == "allocator":
            ok = isinstance(v, str)
        elif key == "variants":
            ok = isinstance(v, list) and v and all(isinstance(x, str) for x in v)
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= least
        if not ok:
            raise UsageError("%s: replay.%s: expected %s, got %r"
                             % (_where_in(path, text, "replay", key), key,
                                {"allocator": "a name", "variants": "a list of names"}.get(
                                    key, "an integer >= %s" % least), v))
    if table.get("limit", 0) >= table["pages"] or table.get("request_pages", 1) > table["pages"]:
        raise UsageError("%s: replay: limit and request_pages must lie within pages"
                         % _where(path, text, "replay"))


METRICS = ("x_direct", "x_first", "invalidation_share", "footprint", "shape", "alloc_ns")


def _published(key, value):
    """One entry of a preset's [published] table: what the run prints
    beside our figures, read only after the run, so checked before it."""
    if key == "threads":
        _number(1, MAX_THREADS, integer=True)(value)
    elif key == "metric":
        if value not in METRICS:
            raise ValueError("one of %s, got %r" % (", ".join(METRICS), value))
    elif (not isinstance(value, list) or len(value) != 3
          or not isinstance(value[0], (str, int, float)) or isinstance(value[0], bool)
          or isinstance(value[1], bool) or not isinstance(value[1], (int, float))
          or not math.isfinite(value[1]) or not isinstance(value[2], str)):
        raise ValueError("[figure, ratio, unit]: a figure, a finite number and a string")


def load_workload(name):
    return load_toml(find_config(name, "workloads"), WORKLOAD_KEYS)


def load_profile(name):
    """A cost profile by name or path; errors name the file and line."""
    from hwmodel.costs import from_dict
    path = find_config(name, "profiles")
    text, data = _parse(path)
    for key in data:
        v = data[key]
        # TOML has nan and inf; a cost that is not a number of ns would
        # reach the cycle conversion and fail there
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError("%s: %s: expected a number of ns, got %s"
                             % (_where(path, text, key), key, v))
        try:
            from_dict(path.stem, {key: data[key]})
        except ValueError as e:
            raise UsageError("%s: %s" % (_where(path, text, key), e)) from None
    return from_dict(path.stem, data)
