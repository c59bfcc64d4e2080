"""Results as self-describing JSON: the machine, the options, the points.

The file is rewritten (to a temporary name, then renamed) after every
point, so that a sweep cut short keeps everything it measured.
"""
import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import numba
import numpy
import psutil

from harness.errors import UsageError, read_input

FORMAT = "iommu-stress-results"
VERSION = 9
READS = (1, 2, 3, 4, 5, 6, 7, 8, 9)         # versions load() accepts; older ones are upgraded
ROOT = Path(__file__).resolve().parent.parent


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                    "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def machine(cycles_per_ns=None):
    cores = sorted(os.sched_getaffinity(0))
    return {
        "cpu_model": cpu_model(),
        "cores_allowed": len(cores),
        "cpus_online": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": numpy.__version__,
        "commit": git_commit(),
        "cycles_per_ns": cycles_per_ns,
    }


class ResultsFile:
    """A results document, kept on disk as it grows (path None: memory only).

    Nothing is written until the first point, failure or the end: a file
    already at `path` stays as it was until there is something to put in
    its place."""

    def __init__(self, path, machine_info, options, command, points=(), base=None):
        self.path = Path(path) if path else None
        if self.path is not None:
            writable(self.path)
        self.doc = {
            "format": FORMAT,
            "version": VERSION,
            "command": command,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info,
            "options": plain_options(options),
            "points": list(points),
            "failures": [],
            "complete": False,
        }
        # a mixed file (--force-mix): the document keeps `base`'s options and
        # machine, and each new point carries the keys where it differs
        self.overrides = {}
        if base is not None:
            ours = (("options", differences(base["options"], self.doc["options"],
                                            measured_options())),
                    ("machine", differences(base["machine"], machine_info, MACHINE_KEYS)))
            self.overrides = {k: v for k, v in ours if v}
            self.doc["options"] = dict(base["options"], designs=self.doc["options"]["designs"],
                                       threads=self.doc["options"]["threads"])
            self.doc["machine"] = base["machine"]

    def add(self, point, at=None):
        """Adds a point, at index `at` of the points (None: the end)."""
        at = len(self.doc["points"]) if at is None else at
        self.doc["points"].insert(at, dict(point, **self.overrides))
        self._write()

    def fail(self, message):
        self.doc["failures"].append(message)
        self._write()

    def finish(self):
        self.doc["complete"] = True
        self._write()

    def _write(self):
        if self.path is None:
            return
        # a name of our own, so that two runs on one path never share it,
        # and gone again on every way out: a full disk leaves no half file
        tmp = self.path.with_name(".%s.%d.tmp" % (self.path.name, os.getpid()))
        try:
            try:
                with open(tmp, "w") as f:
                    f.write(json.dumps(self.doc, indent=1) + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            raise UsageError("%s: cannot write results: %s" % (self.path, e.strerror or e)) from None


MAX_BYTES = 256 << 20         # a results file larger than this is not ours
MAX_NUMBER = 1e18             # ns over 30 years, I/Os at 1e9 per second as long
MAX_THREADS = 1 << 20

# the options and the machine that decide what a figure means: a resume
# that differs in one of these mixes measurements (--force-mix).  The
# commit and the versions of Python and its libraries are not among them,
# nor the calibrated cycles per ns: the same CPU model has the same counter
MACHINE_KEYS = ("cpu_model", "cores_allowed", "kernel", "arch")


def measured_options():
    from harness.config import OPTIONS
    return tuple(k for k in OPTIONS if k not in ("designs", "threads"))


def plain_options(options):
    """Options as JSON holds them (tuples as lists), for writing and comparing."""
    return json.loads(json.dumps(options))


def differences(old, new, keys=None):
    """{key: new value} where `new` differs from `old` (dicts)."""
    keys = keys or sorted(set(old) | set(new))
    return {k: new.get(k) for k in keys if plain_options(old.get(k)) != plain_options(new.get(k))}


def mismatch(doc, options, machine_info):
    """[(key, the file's value, this run's)] where a run differs from the
    document it would add points to (machine_info None: its machines are
    not compared)."""
    opts = plain_options(options)
    out = []
    for k in measured_options():
        if plain_options(doc["options"].get(k)) != opts.get(k):
            out.append((k, doc["options"].get(k), opts.get(k)))
    # None: each point has a machine of its own (a sweep on each machine of
    # a cluster), none is the run's
    for k in MACHINE_KEYS if machine_info is not None else ():
        if doc["machine"].get(k) != machine_info.get(k):
            out.append((k, doc["machine"].get(k), machine_info.get(k)))
    return out


def mixed_keys(doc):
    """The option and machine keys in which a document's points differ."""
    keys = []
    for p in doc["points"]:
        for k in list(p.get("options") or {}) + list(p.get("machine") or {}):
            if k not in keys:
                keys.append(k)
    return keys


def writable(path):
    """Refuses now a path the first point could not be written to, which
    would otherwise be found only after measuring it."""
    parent = path.parent
    why = ("is a directory" if path.is_dir() else
           "no such directory %s" % parent if not parent.is_dir() else
           "no permission to write in %s" % parent if not os.access(parent, os.W_OK | os.X_OK)
           else None)
    if why:
        raise UsageError("%s: cannot write results: %s" % (path, why))


def load(path):
    """A results document written by us, or a UsageError saying why not."""
    try:
        text = read_input(path, MAX_BYTES, "results file").decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError("%s: not a results file: not UTF-8 text (byte %d)"
                         % (path, e.start)) from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise UsageError("%s:%d: not a results file: invalid JSON (%s)" % (path, e.lineno, e.msg)) from None
    except ValueError as e:
        # a NaN or Infinity, or an integer of more digits than Python converts
        raise UsageError("%s: not a results file: %s" % (path, str(e).splitlines()[0])) from None
    except RecursionError:
        raise UsageError("%s: not a results file: nested too deeply" % path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError("%s: not an iommu-stress results file (no \"format\": \"%s\")" % (path, FORMAT))
    if doc.get("version") not in READS or isinstance(doc.get("version"), bool):
        raise UsageError("%s: results format version %r, this tool reads versions %s"
                         % (path, doc.get("version"), ", ".join(map(str, READS))))
    try:
        DOCUMENT(doc, "")
    except _Invalid as e:
        raise UsageError("%s: %s" % (path, e)) from None
    return upgrade(doc)


def _no_constant(name):
    raise ValueError("%s is not a number JSON knows" % name)


# ----------------------------------------------------------------- validation
# What the readers (report, compare, plot, diagnostics, --resume) read, with
# its type and range.  A key not listed here is kept and never read.

class _Invalid(Exception):
    pass


def _where(at, key):
    return "%s%s" % (at, key)


def _num(lo=0.0, hi=MAX_NUMBER, integer=False):
    def check(v, at):
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) \
                or not lo <= v <= hi:
            raise _Invalid("%s: expected %s in the range %s, got %s" % (
                at, "an integer" if integer else "a number",
                "%d..%d" % (lo, hi) if integer else "%g..%g" % (lo, hi), _show(v)))
    return check


def _type(kind, what):
    def check(v, at):
        if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
            raise _Invalid("%s: expected %s, got %s" % (at, what, _show(v)))
    return check


def _optional(check):
    def opt(v, at):
        if v is not None:
            check(v, at)
    return opt


def _list_of(check, what="a list"):
    def lst(v, at):
        if not isinstance(v, list):
            raise _Invalid("%s: expected %s, got %s" % (at, what, _show(v)))
        for i, x in enumerate(v):
            check(x, "%s[%d]" % (at, i))
    return lst


def _dict(fields=None, rest=None):
    """A dict whose listed keys pass their checks and whose other keys
    pass `rest` (None: anything)."""
    fields = fields or {}

    def check(v, at):
        if not isinstance(v, dict):
            raise _Invalid("%s: expected an object, got %s" % (at, _show(v)))
        for k, x in v.items():
            c = fields.get(k, rest)
            if c is not None:
                c(x, "%s%s%s" % (at, ": " if at else "", _key(k)))
    return check


def _required(keys, check):
    def req(v, at):
        check(v, at)
        for k in keys:
            if k not in v:
                raise _Invalid("%s: no key %r" % (at, k))
    return req


def _key(k):
    """A key as the error names it: as written, or quoted as JSON when it
    holds anything but letters, digits and underscores."""
    return k if re.fullmatch(r"\w{1,40}", k, re.ASCII) else _show(k)


def _show(v):
    if isinstance(v, int) and abs(v) >= 10 ** 30:
        return "an integer of %d digits" % len(str(abs(v)))
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


_string = _type(str, "a string")
_boolean = _type(bool, "true or false")
_number = _num()
_count = _num(integer=True)
_numbers = _dict(rest=_number)


def _pair(v, at):
    if not isinstance(v, list) or len(v) != 2:
        raise _Invalid("%s: expected a [pages, weight] pair, got %s" % (at, _show(v)))
    _count(v[0], at + "[0]")
    _number(v[1], at + "[1]")


_scalar = _type((str, int, float, bool, type(None)), "a string, a number, true, false or null")

OPTIONS_READ = _dict({
    "lock": _optional(_string), "profile": _optional(_string), "workload": _optional(_string),
    "duration": _optional(_number), "warmup": _optional(_number),
    "repeats": _optional(lambda v, at: None if v == "auto" else _count(v, at)),
    "launches": _optional(_count),
    "depth": _optional(_count), "domains": _optional(_count), "device_ns": _optional(_number),
    "hypercall_ns": _optional(_number), "unmap_fraction": _optional(_number),
    "sizes": _optional(_list_of(_pair, "a list of [pages, weight] pairs")),
    "premapped": _optional(_boolean), "rogue_device": _optional(_boolean),
    "dma_passes": _optional(_count), "huge": _optional(_boolean),
    "lock_timing": _optional(_boolean), "check": _optional(_boolean), "diag": _optional(_boolean),
})
MACHINE_READ = _dict({"cores_allowed": _optional(_num(1, MAX_THREADS, integer=True))},
                     rest=_scalar)
# the machine a cluster's point ran on (harness/cluster.py): named, and
# described as a machine is
HOST_READ = _required(("name",), _dict({"name": _string, "cores_allowed": _optional(
    _num(1, MAX_THREADS, integer=True)), "memory_bytes": _optional(_number)}, rest=_scalar))
CLUSTER_READ = _dict({"scheduler": _string, "mode": _string}, rest=_scalar)

LOCK_ROW = _dict({"name": _string, "wait_scope": _string}, rest=_optional(_number))
SERIES_ENTRY = _dict({"t": _optional(_number), "ops_per_sec": _optional(_number),
                      "top_lock": _optional(_string), "top_lock_wait_ns": _optional(_number)})

# a latency distribution (readout.distribution): figures, and its buckets
# as [upper edge, count] pairs
DISTRIBUTION = _dict({"buckets": _list_of(_list_of(_number))}, rest=_number)
LATENCY = _dict({"map": DISTRIBUTION, "unmap": DISTRIBUTION,
                 "locks": _dict(rest=_dict({"wait": DISTRIBUTION, "hold": DISTRIBUTION})),
                 "sampling": _string}, rest=_number)

POINT = _required(("design", "flush", "threads", "ops_per_sec"), _dict({
    "design": _string, "spec": _string, "allocator": _string, "variant": _string,
    "flush": _string, "threads": _num(1, MAX_THREADS, integer=True), "ops_per_sec": _number,
    "runs": _list_of(_number), "oversubscribed": _boolean, "disturbed": _boolean,
    "window_s": _number, "per_worker_ops": _list_of(_number), "unmap_workers": _count,
    "alloc_fails": _number, "ops_total": _number, "unmaps": _number, "device_wait_ns": _number,
    "handoff_wait_ns": _number, "clock_reads_per_io": _number, "stale_hits": _number,
    "rogue_probes": _number, "stale_hits_per_sec": _number,
    "locks": _list_of(LOCK_ROW), "alloc_stats": _numbers, "footprint_bytes": _numbers,
    "exposure_ns": _numbers, "flush_stats": _numbers, "iotlb": _numbers,
    "breakdown_ns": _numbers, "disturbance": _numbers, "machine_load": _numbers,
    "ci": _dict({"low": _optional(_number), "high": _optional(_number), "level": _num(0, 1),
                 "method": _string}),
    "repeats_auto": _dict({"target_ci": _number, "reached": _boolean,
                           "half_width": _optional(_number), "windows": _count}),
    "window_order": _list_of(_count), "window_launch": _list_of(_count),
    "state_checked": _type((str, bool), "a string"), "series": _list_of(SERIES_ENTRY),
    "diag": _dict({"timing": _string}, rest=_number), "latency_ns": LATENCY,
    "options": OPTIONS_READ, "machine": MACHINE_READ, "host": HOST_READ,
}))


def _points(v, at):
    if not isinstance(v, list):
        raise _Invalid("points: expected a list, got %s" % _show(v))
    for i, p in enumerate(v):
        POINT(p, "point %d" % i)


# how the workers were placed (harness/placement.py)
PLACEMENT_READ = _dict({"policy": _string, "cpus": _list_of(_num(0, MAX_THREADS, integer=True)),
                        "node": _optional(_count), "pinned": _boolean,
                        "shared_core_from": _optional(_count)})

DOCUMENT = _required(("points",), _dict({
    "command": _string, "started": _string, "machine": MACHINE_READ, "options": OPTIONS_READ,
    "points": _points, "failures": _list_of(_string), "complete": _boolean,
    "timings": _dict(rest=_scalar), "cluster": CLUSTER_READ, "placement": PLACEMENT_READ,
    "system": _dict({"warnings": _list_of(_string)}),
}))


def upgrade(doc):
    """A document of an older version as the current version reads:
    version 1 points lack `variant` (it is in their spec); their lock waits
    counted every acquisition, not only contended ones, which `wait_scope`
    then says, and their `handoffs` are lock_stat's acq-bounces.  Version 2
    breakdowns counted a full queue's flush in `free` (version 3 gives it
    `queue_flush`) and a strict invalidation's submission too; the
    figures cannot be split after the fact and are read as they are.
    Version 4 only adds keys (a point's own `options` and `machine`);
    its breakdowns' `harness` holds what version 5 splits into `loop`,
    `tick` and `unnamed`, and is read as it is.  Version 5 also adds a
    cluster's keys (the document's `cluster`, a point's `host`); version
    6 only adds keys (the document's `placement` and `system`, a point's
    `machine_load`, more `disturbance` and `iotlb`, the options of
    placement, repeats and the device's access).  Version 7 only adds
    keys (a point's `latency_ns`): an older point has no distributions,
    which its readers show as absent.  Version 8 spreads a point's windows
    over launches (`window_launch`, `options.launches`): an older run took
    all its windows in one launch.  Version 9 counts the contended lock
    waits whole, a part of the breakdown of their own (`lock_waits`), where
    older breakdowns hold them inside allocate, free and the timers (and
    name the share `lock_wait`): read as they are."""
    doc.setdefault("machine", {})
    doc.setdefault("options", {})
    if doc.get("version") == 1:
        for p in doc["points"]:
            spec = str(p.get("spec", "")).partition("+")[0]
            p.setdefault("variant", spec.partition(":")[2])
            for lock in p.get("locks") or []:
                if isinstance(lock, dict):
                    lock.setdefault("wait_scope", "all acquisitions")
                    if "handoffs" in lock:
                        lock["acq_bounces"] = lock.pop("handoffs")
        doc["version"] = 2
    if doc.get("version") in (1, 2, 3, 4, 5):
        # options that version 6 added, as the older runs measured: their
        # workers pinned round-robin in CPU number order, the designs'
        # points one after another (an order seed of none), a fixed count
        # of windows, the device touching each page once, 4 KiB mappings
        # and no page walk charged
        opts = doc["options"]
        opts.setdefault("placement", "round-robin")
        opts.setdefault("order_seed", None)
        for k, v in (("min_repeats", 6), ("max_repeats", 30), ("target_ci", 0.02),
                     ("dma_passes", 1), ("huge", False), ("iotlb_walks", False)):
            opts.setdefault(k, v)
    if doc.get("version") in (2, 3, 4, 5, 6, 7):
        doc["options"].setdefault("launches", 1)
    if doc.get("version") in (2, 3, 4, 5, 6, 7, 8):
        doc["version"] = VERSION
    return doc
