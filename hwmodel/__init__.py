"""The machine under the allocators: atomics, locks, the IOMMU, costs.

Numba's on-disk cache does not notice when a function's callees change, so
the cache lives in a directory named after a hash of the sources that hold
compiled code: any edit starts a fresh cache instead of running stale code.
Each floor of the project adds its own sources to the hash before it
defines compiled functions (`compiled_sources`), so a function is cached
under a key that covers it and everything below it; this floor names only
its own files.
"""
import hashlib
import os
from pathlib import Path

import numba

_hash = hashlib.sha1(numba.__version__.encode())


def cache_base():
    return os.environ.get("IOMMU_STRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "iommu-stress")


def compiled_sources(files):
    """Key numba's cache by these source files as well; returns the cache
    directory now in force.  Call it before the functions they define are
    decorated: numba fixes a function's cache directory then."""
    for f in sorted(Path(f) for f in files):
        _hash.update(f.name.encode())
        _hash.update(f.read_bytes())
    numba.config.CACHE_DIR = os.path.join(cache_base(), "numba-" + _hash.hexdigest()[:16])
    return numba.config.CACHE_DIR


compiled_sources(Path(__file__).resolve().parent.glob("*.py"))
