"""Puts an allocator's state, and its locks, into arrays: in a run's arena,
or in private memory for a single-threaded replay.

A run's domains each have an instance of the design's allocator.  Their
states are *stacked*: each array of the state is one arena array with the
domain as a leading axis, so that the compiled loop takes one state whatever
the number of domains, and `pick(sts, dom)` is domain `dom`'s state.  A
tuple of one state per domain would make the number of domains part of the
loop's type: every `--domains` value would compile the loop again, at a cost
that grows with the count (a tuple indexed at run time is a switch over all
its members).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.typing.typeof import typeof_impl
from numba.extending import intrinsic, overload
from numba.np import numpy_support

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


def bind(mod, p, views, prefix, ctl, lock_kind="qspinlock", spin_bound=1000,
         timing=False, counted=True):
    """The allocator's State over `views`, initialised empty; its locks
    keep statistics unless `counted` is False (hwmodel.locks.Quiet)."""
    kind = lockmod.Locks if counted else lockmod.Quiet
    lk = kind(views[prefix + "lock.word"], views[prefix + "lock.qnode"],
              views[prefix + "lock.stats"], views[prefix + "lock.cfg"], ctl,
              views[prefix + "lock.hist"])
    lockmod.init(lk, lock_kind, mod.locks(p), spin_bound, timing)
    local = {name[len(prefix):]: v for name, v in views.items()
             if name.startswith(prefix) and not name.startswith(prefix + "lock.")}
    st = mod.make(local, lk)
    mod.init(st, p)
    return st


def private(mod, p, lock_kind=None, timing=False, counted=True):
    """A State in ordinary process memory, for replay and tests; its locks
    by default the kernel's (a Quiet set's only kind)."""
    if lock_kind is None:
        lock_kind = lockmod.QUIET_KIND
    views = arena.private(specs(mod, p, ""))
    ctl = np.zeros(16, dtype=np.int64)
    return bind(mod, p, views, "", ctl, lock_kind, timing=timing, counted=counted)


# ------------------------------------------------------ stacked domains

def _stride(dtype, shape):
    """Bytes between two domains' copies of an array: its size on an
    arena.ALIGN boundary, so that each domain's copy starts on a cache-line
    pair, as an array of its own would."""
    nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
    return max(arena.ALIGN, -(-nbytes // arena.ALIGN) * arena.ALIGN)


def stacked_specs(mod, p, prefix, ndomains):
    """Arena specs of `ndomains` instances of the allocator, stacked: one
    byte array per array of the state, a row (of `_stride` bytes) a domain."""
    return [(name, np.uint8, (ndomains, _stride(dtype, shape)))
            for name, dtype, shape in specs(mod, p, prefix)]


class Stacked(np.ndarray):
    """An array with the domain as its leading axis.  numba types it as a
    strided array ("A") whatever its strides: one domain's array, or a
    row stride equal to the row's size, would otherwise make it a
    contiguous one ("C"), another type, and another compile of the loop."""


@typeof_impl.register(Stacked)
def _typeof_stacked(val, c):
    return types.Array(numpy_support.from_dtype(val.dtype), val.ndim, "A",
                       readonly=not val.flags.writeable, aligned=val.flags.aligned)


def _typed(rows, dtype, shape):
    """The rows of a stacked byte array as an array of (domains,) + shape."""
    dtype = np.dtype(dtype)
    inner = np.empty(shape, dtype=dtype).strides
    flat = rows.reshape(-1).view(dtype)
    return np.lib.stride_tricks.as_strided(flat, shape=(rows.shape[0],) + tuple(shape),
                                           strides=(rows.strides[0],) + inner).view(Stacked)


def shared(x, ndomains):
    """An array, or a namedtuple of them, as if stacked: the same for every
    domain (what `pick` gives back for any domain is `x`)."""
    if isinstance(x, np.ndarray):
        return np.lib.stride_tricks.as_strided(x, shape=(ndomains,) + x.shape,
                                               strides=(0,) + x.strides).view(Stacked)
    return type(x)(*(shared(f, ndomains) for f in x))


def bind_stacked(mod, p, views, prefix, ndomains, ctl, lock_kind="qspinlock", spin_bound=1000,
                 lock_hist=None):
    """(the stacked State of `ndomains` instances, the tuple of each
    domain's own State), every instance initialised empty.  `lock_hist`:
    an array for the locks' latency histograms that every domain shares
    (each worker writes only its own rows), else each has a line."""
    typed = {name[len(prefix):]: _typed(views[name], dtype, shape)
             for name, dtype, shape in specs(mod, p, prefix)}
    hist = typed["lock.hist"] if lock_hist is None else shared(lock_hist, ndomains)
    lk = lockmod.Locks(typed["lock.word"], typed["lock.qnode"], typed["lock.stats"],
                       typed["lock.cfg"], shared(ctl, ndomains), hist)
    local = {name: v for name, v in typed.items() if not name.startswith("lock.")}
    sts = mod.make(local, lk)
    each = tuple(pick(sts, k) for k in range(ndomains))
    for st in each:
        lockmod.init(st.lk, lock_kind, mod.locks(p), spin_bound)
        mod.init(st, p)
    return sts, each


def pick(sts, k):
    """Domain k's State out of a stacked one: every array of it (in nested
    states and lock sets too) indexed by k.  Compiled, the same, with no
    reference counting: the arena outlives every loop."""
    if isinstance(sts, np.ndarray):
        return np.asarray(sts[k])
    if isinstance(sts, tuple) and hasattr(sts, "_fields"):
        return type(sts)(*(pick(f, k) for f in sts))
    return sts


def _picked_type(ty):
    if isinstance(ty, types.Array):
        return ty.copy(ndim=ty.ndim - 1, layout="C")
    if isinstance(ty, types.BaseNamedTuple):
        return types.BaseTuple.from_types([_picked_type(t) for t in ty], ty.instance_class)
    return ty


def _pick_value(context, builder, ty, val, k):
    if isinstance(ty, types.Array):
        src = context.make_array(ty)(context, builder, val)
        out = context.make_array(_picked_type(ty))(context, builder)
        shape = cgutils.unpack_tuple(builder, src.shape)
        strides = cgutils.unpack_tuple(builder, src.strides)
        byte = builder.bitcast(src.data, ir.IntType(8).as_pointer())
        row = builder.gep(byte, [builder.mul(k, strides[0])], inbounds=True)
        context.populate_array(out, data=builder.bitcast(row, src.data.type),
                               shape=cgutils.pack_array(builder, shape[1:]),
                               strides=cgutils.pack_array(builder, strides[1:]),
                               itemsize=src.itemsize, meminfo=None)
        return out._getvalue()
    if isinstance(ty, types.BaseNamedTuple):
        return context.make_tuple(builder, _picked_type(ty),
                                  [_pick_value(context, builder, t, builder.extract_value(val, i), k)
                                   for i, t in enumerate(ty)])
    return val


@intrinsic
def _pick(typingctx, sts, k):
    if not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        kk = context.cast(builder, args[1], sig.args[1], types.intp)
        return _pick_value(context, builder, sig.args[0], args[0], kk)
    return _picked_type(sts)(sts, k), codegen


@overload(pick, inline="always")
def _pick_compiled(sts, k):
    return lambda sts, k: _pick(sts, k)
