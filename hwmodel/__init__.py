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
_PACKAGES = ("hwmodel", "allocators", "harness")


def _source_hash():
    h = hashlib.sha1(numba.__version__.encode())
    for pkg in _PACKAGES:
        for f in sorted((_ROOT / pkg).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_dir():
    base = os.environ.get("IOMMU_STRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "iommu-stress")
    return os.path.join(base, "numba-" + _source_hash())


numba.config.CACHE_DIR = cache_dir()
