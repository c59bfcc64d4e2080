"""The one shared-memory segment of a run.

Every array that workers share is a named view into a single file in
/dev/shm, mapped before the workers fork, so they inherit the mapping.  We
map the file ourselves instead of using multiprocessing.shared_memory:
Python 3.11's resource tracker would otherwise register the segment, warn
about it at exit and unlink it behind our back.  The segment is unlinked by
the process that created it on every exit path: normal return, exception,
signal (the CLI turns SIGINT and SIGTERM into exceptions), and at
interpreter exit as a last resort; segments left by a process that died
anyway (SIGKILL) are found by their owner's pid and removed by the next run.
"""
import atexit
import itertools
import mmap
import os
import re

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "iommu-stress-"
ALIGN = 128                       # each array starts on its own cache-line pair
_NAME = re.compile(r"^iommu-stress-(\d+)-(\d+)$")
_counter = itertools.count()
_live = {}                        # path -> Arena, for the atexit sweep


class ArenaError(Exception):
    """The segment cannot be created (size, space, permissions)."""


def shm_available(directory=SHM_DIR):
    """Bytes free in the shared-memory filesystem; IOMMU_STRESS_SHM_AVAIL
    overrides it, so that a small container can be imitated in tests."""
    forced = os.environ.get("IOMMU_STRESS_SHM_AVAIL")
    if forced is not None:
        try:
            return int(forced)
        except ValueError:
            raise ArenaError("IOMMU_STRESS_SHM_AVAIL: expected a number of bytes, got %r"
                             % forced) from None
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(directory, name, pid):
    """Whether segment `name` of process `pid` is left over: its creator is
    gone, or it names this process but none of our live arenas (the pid of
    a run killed long ago, reused by this one)."""
    if pid == os.getpid():
        return os.path.join(directory, name) not in _live
    return not _pid_alive(pid)


def clean_stale(directory=SHM_DIR):
    """Unlink segments of our name pattern whose creating process is gone.
    Returns the names removed."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if m and _stale(directory, name, int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def other_runs(directory=SHM_DIR):
    """Pids of the other live processes that hold a segment here: other
    runs measuring on this machine, whose load the figures share."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    me = os.getpid()
    pids = {int(m.group(1)) for m in map(_NAME.match, names) if m}
    return sorted(p for p in pids if p != me and _pid_alive(p))


def place(specs):
    """({name: (dtype, shape)}, {name: byte offset}, size) of the arrays
    `specs` names, in order, each on an ALIGN boundary of a page-aligned
    block: so that a 128-byte record of an array is a cache-line pair, and
    every run of the same layout puts each array at the same offset within
    its pages (the same cache sets), whatever the allocator's heap did."""
    shapes = {}
    offsets = {}
    off = 0
    for name, dtype, shape in specs:
        if name in shapes:
            raise ValueError("arena array %r declared twice" % name)
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        offsets[name] = off
        shapes[name] = (dtype, shape)
        off += max(ALIGN, (nbytes + ALIGN - 1) // ALIGN * ALIGN)
    return shapes, offsets, max(off, mmap.PAGESIZE)


def private(specs):
    """The arrays of `specs`, zeroed, laid out as in an Arena but in this
    process's own memory: {name: view}."""
    shapes, offsets, size = place(specs)
    raw = np.zeros(size + mmap.PAGESIZE, dtype=np.uint8)
    base = -raw.ctypes.data % mmap.PAGESIZE
    return {name: np.ndarray(shape, dtype=dtype, buffer=raw, offset=base + offsets[name])
            for name, (dtype, shape) in shapes.items()}


class Arena:
    """A set of named int64 (or other dtype) arrays in one segment."""

    def __init__(self, specs, directory=SHM_DIR):
        self.specs, self.offsets, self.size = place(specs)
        self.directory = directory
        self.owner = os.getpid()
        self.name = "%s%d-%d" % (PREFIX, self.owner, next(_counter))
        self.path = os.path.join(directory, self.name)
        self._map = None
        self.views = {}

    def create(self):
        avail = shm_available(self.directory)
        if self.size > avail:
            raise ArenaError(
                "%s has %.1f MiB free but this run needs %.1f MiB of shared "
                "memory; free some, use fewer workers or a smaller space, or "
                "run where %s is larger" % (self.directory, avail / 2**20,
                                            self.size / 2**20, self.directory))
        try:
            fd = self._open()
        except OSError as e:
            raise ArenaError("cannot create %s: %s" % (self.path, e.strerror))
        _live[self.path] = self
        try:
            os.ftruncate(fd, self.size)
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            self.unlink()
            raise ArenaError("cannot map %s: %s" % (self.path, e.strerror))
        finally:
            os.close(fd)
        for name, (dtype, shape) in self.specs.items():
            self.views[name] = np.ndarray(shape, dtype=dtype, buffer=self._map,
                                          offset=self.offsets[name])
        return self

    def _open(self):
        """The new segment, created here; one already under our name is
        stale (see _stale) and replaced once."""
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR
        try:
            return os.open(self.path, flags, 0o600)
        except FileExistsError:
            if not _stale(self.directory, self.name, self.owner):
                raise
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return os.open(self.path, flags, 0o600)

    def __getitem__(self, name):
        return self.views[name]

    def unlink(self):
        """Remove the segment's name; only its creator may.  Mappings stay
        valid until the processes holding them exit."""
        if os.getpid() != self.owner:
            return
        _live.pop(self.path, None)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.unlink()
        return False


@atexit.register
def _unlink_all():
    for arena in list(_live.values()):
        arena.unlink()
