import os
import subprocess
import sys

import numpy as np
import pytest

from harness import arena as arenamod
from harness.arena import Arena, ArenaError, clean_stale



def test_views_are_aligned_and_shared(no_leaks):
    specs = [("a", np.int64, (3,)), ("b", np.uint64, (10,)), ("c", np.int64, (4, 4))]
    with Arena(specs) as a:
        assert a.name.startswith("iommu-stress-%d-" % os.getpid())
        assert os.path.exists(a.path)
        for name in ("a", "b", "c"):
            assert a[name].ctypes.data % arenamod.ALIGN == 0
        a["a"][:] = 7
        pid = os.fork()
        if pid == 0:
            a["a"][0] = 42        # a child writes through the inherited mapping
            os._exit(0)
        os.waitpid(pid, 0)
        assert a["a"][0] == 42
    assert not os.path.exists(a.path)


def test_private_arrays_sit_where_an_arena_puts_them():
    """Replays and tests get the arena's layout in their own memory: each
    array zeroed, at the same offset within its page as in a segment."""
    specs = [("a", np.int64, (3,)), ("b", np.int32, (1000,)), ("c", np.int64, (4, 4))]
    views = arenamod.private(specs)
    _, offsets, _ = arenamod.place(specs)
    base = views["a"].ctypes.data
    assert base % 4096 == 0
    for name, dtype, shape in specs:
        v = views[name]
        assert v.dtype == dtype and v.shape == shape and not v.any()
        assert v.ctypes.data - base == offsets[name]
        assert offsets[name] % arenamod.ALIGN == 0


def test_unlinked_on_exception(no_leaks):
    with pytest.raises(ZeroDivisionError):
        with Arena([("x", np.int64, (8,))]) as a:
            path = a.path
            1 / 0
    assert not os.path.exists(path)


def test_too_small_shm_is_a_clear_error(monkeypatch, no_leaks):
    monkeypatch.setenv("IOMMU_STRESS_SHM_AVAIL", str(64 * 1024))
    with pytest.raises(ArenaError, match=r"MiB free but this run needs"):
        Arena([("x", np.int64, (1 << 20,))]).create()


def test_stale_segment_of_a_dead_process_is_removed():
    # a pid that cannot be alive: above pid_max
    name = "iommu-stress-4194305-0"
    path = os.path.join("/dev/shm", name)
    open(path, "wb").close()
    try:
        assert name in clean_stale()
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_no_resource_tracker_warning():
    code = ("import numpy as np\n"
            "from harness.arena import Arena\n"
            "a = Arena([('x', np.int64, (16,))]).create()\n"
            "a['x'][:] = 1\n"
            "a.unlink()\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "resource_tracker" not in out.stderr and "leaked" not in out.stderr


def test_atexit_unlinks_when_the_program_forgets():
    code = ("import numpy as np\n"
            "from harness.arena import Arena\n"
            "a = Arena([('x', np.int64, (16,))]).create()\n"
            "print(a.path)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not os.path.exists(out.stdout.strip())
