"""Binding memory to a NUMA node: set_mempolicy(2) and mbind(2), called
through libc's syscall(), as numactl --membind does.

The shared segment is a tmpfs file mapped shared: mbind on its mapping sets
the file's own policy (shmem keeps a shared policy per range), so its pages
are placed on the node whoever touches them first.  The workers are forked
under the parent's policy, set for the fork and put back after it, so that
the memory they allocate themselves lands there too.
"""
import contextlib
import ctypes
import errno
import os
import platform

from harness.errors import UsageError

# include/uapi/linux/mempolicy.h
MPOL_DEFAULT = 0
MPOL_BIND = 2
MPOL_MF_STRICT = 1 << 0
MPOL_MF_MOVE = 1 << 1
MAX_NODES = 1024                   # bits in the masks we pass (CONFIG_NODES_SHIFT <= 10)

# arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h
_SYSCALLS = {"x86_64": {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239},
             "aarch64": {"mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237}}
_ULONG_BITS = ctypes.sizeof(ctypes.c_ulong) * 8
_Mask = ctypes.c_ulong * (MAX_NODES // _ULONG_BITS)
_libc = ctypes.CDLL(None, use_errno=True)


def _nr(name):
    table = _SYSCALLS.get(platform.machine())
    if table is None:
        raise UsageError("--node: memory binding is not supported on %s" % platform.machine())
    return table[name]


def node_mask(node):
    """A node mask holding `node` alone."""
    if not 0 <= node < MAX_NODES:
        raise UsageError("--node %d: node numbers run below %d" % (node, MAX_NODES))
    mask = _Mask()
    mask[node // _ULONG_BITS] = 1 << (node % _ULONG_BITS)
    return mask


def _why(call, err, node):
    """A one-line reason for errno `err` of `call`."""
    if err == errno.ENOSYS:
        what = "this kernel has no NUMA memory policies (built without CONFIG_NUMA)"
    elif err == errno.EPERM:
        what = ("not permitted here (a container's seccomp filter allows it only with "
                "CAP_SYS_NICE)")
    elif err == errno.EINVAL:
        what = "node %d has no memory this process may use (cpuset.mems?)" % node
    else:
        what = os.strerror(err)
    return "--node %d: %s failed: %s" % (node, call, what)


def _syscall(name, *args):
    return _libc.syscall(_nr(name), *args)


def set_policy(mode, mask):
    """set_mempolicy(mode, mask); the errno, 0 on success."""
    r = _syscall("set_mempolicy", ctypes.c_int(mode),
                 ctypes.byref(mask) if mask is not None else None,
                 ctypes.c_ulong(MAX_NODES + 1 if mask is not None else 0))
    return ctypes.get_errno() if r != 0 else 0


def get_policy():
    """(mode, mask) of this thread's policy, or None if it cannot be read."""
    mode = ctypes.c_int()
    mask = _Mask()
    r = _syscall("get_mempolicy", ctypes.byref(mode), ctypes.byref(mask),
                 ctypes.c_ulong(MAX_NODES + 1), None, ctypes.c_ulong(0))
    return None if r != 0 else (mode.value, mask)


def bind_range(address, length, node):
    """Bind the pages of [address, address + length) to `node` (those
    already there are moved); UsageError saying why not."""
    # the kernel passes maxnode - 1 bits (get_nodes): one more than the mask's
    r = _syscall("mbind", ctypes.c_void_p(address), ctypes.c_ulong(length),
                 ctypes.c_int(MPOL_BIND), ctypes.byref(node_mask(node)),
                 ctypes.c_ulong(MAX_NODES + 1), ctypes.c_uint(MPOL_MF_STRICT | MPOL_MF_MOVE))
    if r != 0:
        raise UsageError(_why("mbind", ctypes.get_errno(), node))


@contextlib.contextmanager
def bound(node):
    """This thread's allocations bound to `node` inside the block (None:
    left as they are), and its policy before put back after it: children
    forked in the block keep the binding."""
    if node is None:
        yield
        return
    before = get_policy()
    err = set_policy(MPOL_BIND, node_mask(node))
    if err:
        raise UsageError(_why("set_mempolicy", err, node))
    try:
        yield
    finally:
        if before is None or before[0] == MPOL_DEFAULT:
            set_policy(MPOL_DEFAULT, None)
        else:
            set_policy(before[0], before[1])


def check(node):
    """Refuse now, before anything is built, a node this process cannot
    bind to."""
    with bound(node):
        pass
