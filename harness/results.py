"""Results as self-describing JSON: the machine, the options, the points.

The file is rewritten (to a temporary name, then renamed) after every
point, so that a sweep cut short keeps everything it measured.
"""
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numba
import numpy
import psutil

from harness.errors import UsageError

FORMAT = "iommu-stress-results"
VERSION = 3
READS = (1, 2, 3)             # versions load() accepts; older ones are upgraded
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
    """A results document, kept on disk as it grows (path None: memory only)."""

    def __init__(self, path, machine_info, options, command, points=()):
        self.path = Path(path) if path else None
        self.doc = {
            "format": FORMAT,
            "version": VERSION,
            "command": command,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info,
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()},
            "points": list(points),
            "failures": [],
            "complete": False,
        }
        self._write()

    def add(self, point):
        self.doc["points"].append(point)
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
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.doc, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            raise UsageError("%s: cannot write results: %s" % (self.path, e.strerror)) from None
        finally:
            # left only by a write that failed or was cut short
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


def load(path):
    """A results document written by us, or a UsageError saying why not."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise UsageError("%s: cannot read: %s" % (path, e.strerror)) from None
    except UnicodeDecodeError as e:
        raise UsageError("%s: not a results file: not UTF-8 text (byte %d)"
                         % (path, e.start)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError("%s:%d: not a results file: invalid JSON (%s)" % (path, e.lineno, e.msg)) from None
    except RecursionError:
        raise UsageError("%s: not a results file: nested too deeply" % path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError("%s: not an iommu-stress results file (no \"format\": \"%s\")" % (path, FORMAT))
    if doc.get("version") not in READS:
        raise UsageError("%s: results format version %r, this tool reads versions %s"
                         % (path, doc.get("version"), ", ".join(map(str, READS))))
    if not isinstance(doc.get("points"), list):
        raise UsageError("%s: results file has no list of points" % path)
    for i, p in enumerate(doc["points"]):
        if not isinstance(p, dict) or not all(k in p for k in ("design", "threads", "ops_per_sec")):
            raise UsageError("%s: point %d lacks design, threads or ops_per_sec" % (path, i))
    return upgrade(doc)


def upgrade(doc):
    """A document of an older version as the current version reads:
    version 1 points lack `variant` (it is in their spec); their lock waits
    counted every acquisition, not only contended ones, which `wait_scope`
    then says, and their `handoffs` are lock_stat's acq-bounces.  Version 2
    breakdowns counted a full queue's flush in `free` (version 3 gives it
    `queue_flush`) and a strict invalidation's submission too; the
    figures cannot be split after the fact and are read as they are."""
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
    if doc.get("version") == 2:
        doc["version"] = VERSION
    return doc
