"""CPU primitives for the hot loops: atomics, pause, the cycle counter.

Numba has no atomics of its own, so each one is an LLVM instruction emitted
through an intrinsic.  They act on one element of an int64 array (every
shared word in the arena is one) and are sequentially consistent unless the
name says otherwise: the kernel's spinlocks are built from x86 `lock`-prefixed
instructions, which are full barriers anyway.
"""
import time
import warnings

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, errors
from numba.extending import intrinsic, overload


def hot(fn=None, inner=False, **kw):
    """`njit` for code on the measured path.  Without numba's reference
    counting: arrays passed in namedtuples would otherwise be incref'd and
    decref'd (atomic instructions) at every call boundary, tripling the cost
    of a bitmap allocation.  Such code must not create arrays.

    `inner=True`: only compiled code calls it, so it gets none of the
    wrappers that would let Python call it; they are most of a compile when
    the arguments are namedtuples of dozens of arrays.  Calling such a
    function from Python crashes the process, so only the harness's loop
    and DMA layer, whose functions take the whole run, are marked so."""
    kw["_nrt"] = False
    if inner:
        kw["no_cpython_wrapper"] = True
        kw["no_cfunc_wrapper"] = True
    if fn is None:
        return njit(**kw)
    return njit(**kw)(fn)


@intrinsic
def inline_into_callers(typingctx):
    """Called first thing in a compiled function: LLVM inlines that function
    into every compiled caller.  Numba passes an array as its seven fields,
    so a call handing over an allocator's State copies some sixty words onto
    the stack (the kernel passes one pointer); on a path taken per request
    that copy costs more than the work.  Unlike njit's inline="always" this
    also reaches calls of a function passed in as an argument."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        # (numba marks every function noinline when it keeps debug info)
        builder.function.attributes.discard("noinline")
        builder.function.attributes.add("alwaysinline")
        return context.get_dummy_value()

    return sig, codegen


def chosen(k, *fns):
    """fns[k]: the function a number written in compiled code chooses
    (passed down as an argument, it stays one).  Only the function chosen,
    and what it calls, is compiled for that caller: numba compiles both
    arms of an `if` on an argument's value, so choosing with one would put
    every choice's code into every loop.  Compiled code only."""
    raise TypeError("chosen: compiled code only")


# a function handed back from compiled code is numba's "first-class
# function type", which it calls experimental and warns of at every compile
# of a loop; `chosen` hands back one known when compiling, nothing more
warnings.filterwarnings("ignore", category=errors.NumbaExperimentalFeatureWarning,
                        message="First-class function type")


@overload(chosen, prefer_literal=True)
def _chosen(k, *fns):
    if not isinstance(k, types.IntegerLiteral):
        return None
    i = k.literal_value
    return lambda k, *fns: fns[i]


@intrinsic
def out_of_line(typingctx):
    """Called first thing in a compiled function: LLVM never inlines it.
    For the rare paths of a function that is inlined everywhere (a magazine
    exchange, a walk of the tree): inlined, they would crowd the registers
    and the stack frame of the loop the common path runs in, a cost paid on
    every request for code run on a few.  It is also marked cold, the
    kernel's `unlikely()`: LLVM then lays the blocks that call it out of the
    common path's way, which otherwise runs through the argument copies of
    every rare call it passes."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.function.attributes.discard("alwaysinline")
        builder.function.attributes.add("noinline")
        builder.function.attributes.add("cold")
        return context.get_dummy_value()

    return sig, codegen


@njit(_nrt=False, inline="always")
def uidx(i):
    """An array index as unsigned.  Numba indexes with a signed integer
    through a test for a negative index (Python's wraparound), which C does
    not have; on a hot path whose indices are all real ones, it only puts
    instructions between a load and the next that depends on it."""
    return np.uint64(i)


def _element_ptr(context, builder, aryty, ary, idx):
    array = context.make_array(aryty)(context, builder, ary)
    return cgutils.get_item_pointer(context, builder, aryty, array, [idx],
                                    wraparound=False)


def _check_int64_array(ary):
    return (isinstance(ary, types.Array) and ary.dtype == types.int64)


@intrinsic
def cas(typingctx, ary, idx, expected, new):
    """Compare-and-swap ary[idx]: returns the old value (== expected on success)."""
    if not _check_int64_array(ary):
        return None
    sig = types.int64(ary, types.intp, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a, i, e, n = args
        i = context.cast(builder, i, signature.args[1], types.intp)
        e = context.cast(builder, e, signature.args[2], types.int64)
        n = context.cast(builder, n, signature.args[3], types.int64)
        ptr = _element_ptr(context, builder, signature.args[0], a, i)
        res = builder.cmpxchg(ptr, e, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 0)

    return sig, codegen


def _rmw(op):
    @intrinsic
    def rmw(typingctx, ary, idx, val):
        if not _check_int64_array(ary):
            return None
        sig = types.int64(ary, types.intp, types.int64)

        def codegen(context, builder, signature, args):
            a, i, v = args
            i = context.cast(builder, i, signature.args[1], types.intp)
            v = context.cast(builder, v, signature.args[2], types.int64)
            ptr = _element_ptr(context, builder, signature.args[0], a, i)
            return builder.atomic_rmw(op, ptr, v, "seq_cst")

        return sig, codegen
    return rmw


fetch_add = _rmw("add")   # returns the old value
fetch_or = _rmw("or")     # returns the old value
fetch_and = _rmw("and")   # returns the old value
xchg = _rmw("xchg")       # returns the old value


# Parts of a word.  The kernel's qspinlock is one 32-bit word whose bytes
# are written apart: the holder releases with a store to the locked byte
# alone, a queue's tail is swapped as a 16-bit half, while other CPUs run
# atomics on the whole word.  x86 keeps such mixed-size accesses coherent,
# and the kernel counts on it: a byte store there is a plain `mov`, where a
# whole-word atomic would be a locked instruction.  Little-endian: byte 0
# is the word's lowest.

def _part_ptr(context, builder, aryty, ary, idx, byte, bits):
    ptr = _element_ptr(context, builder, aryty, ary, idx)
    raw = builder.bitcast(ptr, ir.IntType(8).as_pointer())
    raw = builder.gep(raw, [byte])
    return builder.bitcast(raw, ir.IntType(bits).as_pointer())


def _part(bits, op):
    """An intrinsic on `bits` bits at byte `byte` of ary[idx], the rest of
    the word untouched: "store" (release ordering), or "xchg", which
    returns the old part, zero-extended."""
    @intrinsic
    def part(typingctx, ary, idx, byte, val):
        if not _check_int64_array(ary):
            return None
        ret = types.void if op == "store" else types.int64
        sig = ret(ary, types.intp, types.intp, types.int64)

        def codegen(context, builder, signature, args):
            a, i, o, v = args
            i = context.cast(builder, i, signature.args[1], types.intp)
            o = context.cast(builder, o, signature.args[2], types.intp)
            v = context.cast(builder, v, signature.args[3], types.int64)
            ptr = _part_ptr(context, builder, signature.args[0], a, i, o, bits)
            v = builder.trunc(v, ir.IntType(bits))
            if op == "store":
                builder.store_atomic(v, ptr, "release", bits // 8)
                return context.get_dummy_value()
            return builder.zext(builder.atomic_rmw(op, ptr, v, "seq_cst"), ir.IntType(64))

        return sig, codegen
    return part


store8 = _part(8, "store")
store16 = _part(16, "store")
xchg16 = _part(16, "xchg")


@intrinsic
def load(typingctx, ary, idx):
    """Atomic load with acquire ordering.  Spin loops must use this: a plain
    `ary[i]` read is loop-invariant to LLVM and gets hoisted."""
    if not _check_int64_array(ary):
        return None
    sig = types.int64(ary, types.intp)

    def codegen(context, builder, signature, args):
        a, i = args
        i = context.cast(builder, i, signature.args[1], types.intp)
        ptr = _element_ptr(context, builder, signature.args[0], a, i)
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def store(typingctx, ary, idx, val):
    """Atomic store with release ordering."""
    if not _check_int64_array(ary):
        return None
    sig = types.void(ary, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        a, i, v = args
        i = context.cast(builder, i, signature.args[1], types.intp)
        v = context.cast(builder, v, signature.args[2], types.int64)
        ptr = _element_ptr(context, builder, signature.args[0], a, i)
        builder.store_atomic(v, ptr, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pause(typingctx):
    """The spin-loop hint (x86 `pause`; a compiler barrier elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        import platform
        if platform.machine() in ("x86_64", "AMD64", "i686"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty,
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        else:
            builder.asm(ir.FunctionType(ir.VoidType(), []), "", "~{memory}",
                        [], side_effect=True)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (rdtsc on x86: constant rate, shared by cores)."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return sig, codegen


@intrinsic
def stamp(typingctx):
    """The cycle counter read once every instruction before it has
    finished (lfence, then rdtsc, on x86), so that a step timed between two
    stamps holds all of its own work.  Between two plain reads, which run
    while the work around them does, a step of a few ns is lost in the
    reads' shadow when a read costs 10 ns (a virtual machine's): the steps
    of a 200-ns I/O summed to 80% of it.  A fence after the read too, to
    keep the next step from starting early, made each stamp cost the
    pipeline its refill, and the steps summed to more than the I/O.  For
    --diag's steps: a stamp costs about two reads, and only sampled I/Os
    pay it."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        import platform
        if platform.machine() in ("x86_64", "AMD64", "i686"):
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty,
                                                        "llvm.x86.sse2.lfence"), [])
        else:
            builder.fence("seq_cst")
        fnty = ir.FunctionType(ir.IntType(64), [])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty,
                                                           "llvm.readcyclecounter"), [])

    return sig, codegen


@intrinsic
def sched_yield(typingctx):
    """Give the core away: a preempted lock holder needs it back.  A direct
    call of libc's symbol, so that the functions using it can be cached."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def read_cycles():
    """The cycle counter, from Python."""
    return cycles()


@hot(cache=True)
def busy_wait_cycles(n):
    """Poll the cycle counter for n cycles, as the kernel polls hardware."""
    if n <= 0:
        return
    end = cycles() + n
    while cycles() < end:
        pause()


@njit(cache=True)
def _clock_pairs(out):
    for i in range(out.shape[0]):
        t0 = cycles()
        out[i] = cycles() - t0


@njit(cache=True)
def _stamp_pairs(out):
    for i in range(out.shape[0]):
        t0 = stamp()
        out[i] = stamp() - t0


def _median_pair(pairs, tries):
    out = np.zeros(tries, dtype=np.int64)
    pairs(out)
    return float(np.median(out))


def clock_read_cost(tries=4096):
    """Cycles one read of the cycle counter adds to an interval it closes:
    the median of back-to-back reads.  On a virtual machine that traps the
    read it is tens of cycles, enough to bias a step timed between two."""
    return _median_pair(_clock_pairs, tries)


def stamp_cost(tries=4096):
    """What `stamp` adds to an interval it closes: the median of
    back-to-back stamps.  Exact to subtract, since nothing overlaps one."""
    return _median_pair(_stamp_pairs, tries)


def calibrate(seconds=0.05):
    """Cycles per ns of the counter, measured against perf_counter_ns."""
    read_cycles()  # compile outside the measurement
    best = None
    for _ in range(3):
        t0, c0 = time.perf_counter_ns(), read_cycles()
        end = t0 + int(seconds * 1e9 / 3)
        while time.perf_counter_ns() < end:
            pass
        t1, c1 = time.perf_counter_ns(), read_cycles()
        rate = (c1 - c0) / (t1 - t0)
        best = rate if best is None else max(best, rate)
    if not best or best <= 0:
        raise RuntimeError("the cycle counter does not advance")
    return best



def _bitcount(name):
    @intrinsic
    def count(typingctx, x):
        if not isinstance(x, types.Integer):
            return None
        sig = types.int64(types.uint64)

        def codegen(context, builder, signature, args):
            v = context.cast(builder, args[0], signature.args[0], types.uint64)
            i64 = ir.IntType(64)
            if name == "ctpop":
                fnty = ir.FunctionType(i64, [i64])
                fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.ctpop.i64")
                return builder.call(fn, [v])
            fnty = ir.FunctionType(i64, [i64, ir.IntType(1)])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.%s.i64" % name)
            return builder.call(fn, [v, ir.Constant(ir.IntType(1), 0)])

        return sig, codegen
    return count


ctz = _bitcount("cttz")      # count trailing zeros; 64 for 0
clz = _bitcount("ctlz")      # count leading zeros; 64 for 0
popcount = _bitcount("ctpop")


@hot
def fls(x):
    """fls_long (include/asm-generic/bitops/fls64.h): the 1-based index of
    the highest set bit, 0 for 0.  No test for 0: `clz` of 0 is 64 (x86's
    lzcnt), where a test costs a compare and a conditional move on every
    size class a magazine lookup computes."""
    return 64 - clz(x)


# Python-callable forms, for the parent and the parked workers (an
# intrinsic can only be called from compiled code).
@njit(cache=True)
def atomic_load(ary, idx):
    return load(ary, idx)


@njit(cache=True)
def atomic_store(ary, idx, val):
    store(ary, idx, val)


@njit(cache=True)
def atomic_add(ary, idx, val):
    return fetch_add(ary, idx, val)
