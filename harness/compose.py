"""Puts an allocator's state, and its locks, into arrays: in a run's arena,
or in private memory for a single-threaded replay."""
import numpy as np

from harness import arena
from hwmodel import locks as lockmod


def specs(mod, p, prefix):
    """Arena specs of one allocator instance, names prefixed."""
    classes = mod.locks(p)
    out = [(prefix + name, dtype, shape) for name, dtype, shape in mod.layout(p)]
    ncls = len(mod.LOCK_CLASSES)
    out += [(prefix + "lock." + name, np.int64, shape)
            for name, shape in lockmod.layout(len(classes), p.nworkers, ncls)]
    return out


def bind(mod, p, views, prefix, ctl, lock_kind="ttas", spin_bound=1000,
         timing=False, counted=True):
    """The allocator's State over `views`, initialised empty; its locks
    keep statistics unless `counted` is False (hwmodel.locks.Quiet)."""
    kind = lockmod.Locks if counted else lockmod.Quiet
    lk = kind(views[prefix + "lock.word"], views[prefix + "lock.qnode"],
                       views[prefix + "lock.stats"], views[prefix + "lock.cfg"], ctl)
    lockmod.init(lk, lock_kind, mod.locks(p), spin_bound, timing)
    local = {name[len(prefix):]: v for name, v in views.items()
             if name.startswith(prefix) and not name.startswith(prefix + "lock.")}
    st = mod.make(local, lk)
    mod.init(st, p)
    return st


def private(mod, p, lock_kind="ttas", timing=False, counted=True):
    """A State in ordinary process memory, for replay and tests."""
    views = arena.private(specs(mod, p, ""))
    ctl = np.zeros(16, dtype=np.int64)
    return bind(mod, p, views, "", ctl, lock_kind, timing=timing, counted=counted)
