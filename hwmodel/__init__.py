"""The machine under the allocators: atomics, locks, the IOMMU, costs.

Numba's on-disk cache does not notice when a function's callees change, so
the cache lives in a directory named after a hash of the project's compiled
sources: any edit starts a fresh cache instead of running stale code.
"""
import hashlib
import os
from pathlib import Path

import numba

_ROOT = Path(__file__).resolve().parent.parent
# the modules holding compiled code: editing the report does not recompile
_COMPILED = ("hwmodel/*.py", "allocators/*.py", "harness/dma.py", "harness/workers.py",
             "harness/replay.py")


def _source_hash():
    h = hashlib.sha1(numba.__version__.encode())
    for pattern in _COMPILED:
        for f in sorted(_ROOT.glob(pattern)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_dir():
    base = os.environ.get("IOMMU_STRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "iommu-stress")
    return os.path.join(base, "numba-" + _source_hash())


numba.config.CACHE_DIR = cache_dir()
