"""`iommu-stress replay`: the trace format, its errors, the output, and a
replay on every allocator."""
import argparse
import io
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from numba import njit

import allocators
from harness import replay
from harness.errors import UsageError
from harness.trace import OP_ALLOC, OP_FREE, parse, random_trace

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def args_for(trace, *opts):
    parser = replay.add_arguments(argparse.ArgumentParser())
    return parser.parse_args([str(trace)] + [str(o) for o in opts])


def command(trace, *opts):
    out, err = io.StringIO(), io.StringIO()
    code = replay.command(args_for(trace, *opts), out, err)
    return code, out.getvalue(), err.getvalue()


def write(tmp_path, text, name="t.trace"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------ output

BASIC = ["net0 0", "net1 1", "blk0 2", "net2 10", "net0 12", "dev/x:1 16"]


def test_output_format():
    # worked out by hand for the GART next-fit (see test_bitmap.py):
    # 0, 1, then 8 pages at 2..9, 2 at 10..11, a free below the hint, 4 at
    # 12..15, a free below the hint, 1 at 16
    code, out, err = command(DATA / "basic.trace", "--allocator", "bitmap", "--pages", 64)
    assert code == 0
    assert out == "\n".join(BASIC) + "\n"
    assert err == ""


def test_fail_lines_and_reuse_of_a_failed_tag(tmp_path):
    # a tag whose allocation failed is not live: it can be allocated again
    path = write(tmp_path, "a x 64\na x 1\na y 63\nf x\n")
    assert command(path, "--allocator", "bitmap", "--pages", 64)[1] == "x fail\nx 0\ny fail\n"


def test_parse_fields():
    t = parse((DATA / "basic.trace").read_text(), "basic.trace", pages=64)
    assert t.tags == ["net0", "net1", "blk0", "net2", "dev/x:1"]
    assert t.op.tolist() == [OP_ALLOC] * 4 + [OP_FREE, OP_ALLOC, OP_FREE, OP_ALLOC, OP_FREE]
    assert t.tag.tolist() == [0, 1, 2, 3, 0, 0, 2, 4, 3]
    assert t.pages.tolist() == [1, 1, 8, 2, 1, 4, 8, 1, 2]     # a free: its allocation's
    assert t.limit.tolist() == [-1, -1, -1, 40, -1, -1, -1, -1, -1]
    assert t.cpu.tolist() == [0, 0, 0, 3, 3, 0, 0, 0, 0]
    assert t.line.tolist() == [4, 5, 6, 8, 10, 12, 13, 14, 15]
    assert t.ref.tolist() == [-1, -1, -1, -1, 0, -1, 2, -1, 3]
    # net0's slot is taken again after its free, then blk0's by dev/x:1
    assert t.slot.tolist() == [0, 1, 2, 3, 0, 0, 2, 2, 3]
    assert t.ncpus == 4
    assert t.peak_live == 4
    assert t.nallocs == 6


def test_comments_blank_lines_and_line_endings(tmp_path):
    text = ("# a comment\r\n\r\n   \t\n  a   x\t2   # trailing\r\n#a y 1\nf x#right after\n"
            "a y 1#\n")
    path = write(tmp_path, text)
    assert command(path, "--allocator", "bitmap", "--pages", 64)[1] == "x 0\ny 2\n"
    t = parse(text, "t.trace", 64)
    assert t.line.tolist() == [4, 6, 7]


def test_empty_trace(tmp_path):
    path = write(tmp_path, "# nothing\n\n")
    assert command(path, "--allocator", "bitmap") == (0, "", "")
    code, out, err = command(path, "--allocator", "bitmap", "--timing")
    assert out == "" and "over 0 requests" in err


def test_standard_input(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a x 2\na y 1\n"))
    assert command("-", "--allocator", "bitmap", "--pages", 64)[1] == "x 0\ny 2\n"


def test_tags_are_any_non_space_characters():
    tags = ["\u00e9t\u00e9", "a", "f", "cpu", "0x10", "x'y\"z", "[dev:1]"]
    text = "".join("a %s 1\n" % t for t in tags)
    t = parse(text, "t", 64)
    assert t.tags == tags
    out = replay.run(t, "bitmap", 64).lines()
    assert out == ["%s %d" % (tag, i) for i, tag in enumerate(tags)]


@settings(deadline=None, max_examples=100, database=None)
@given(seed=hst.integers(0, 2**32 - 1))
def test_decoration_does_not_change_the_requests(seed):
    # comments, blank lines, indentation and CRLF around the same requests
    rng = random.Random(seed)
    clean = random_trace(seed, 200, 20, 16, ncpus=3, limits=[100, 0x3ff])
    dirty = []
    for line in clean.splitlines():
        if rng.random() < 0.2:
            dirty.append(rng.choice(["", "   ", "# note", "\t# a y 1", "#f t0"]))
        pad = rng.choice(["", " ", "\t", "  \t "])
        sep = rng.choice([" ", "\t", "  \t "])
        dirty.append(pad + sep.join(line.split()) + rng.choice(["", " # c", "#", "\r", " \t"]))
    a, b = parse(clean, "c", 1024), parse("\n".join(dirty), "d", 1024)
    for field in ("op", "tag", "ref", "pages", "limit", "cpu"):
        assert getattr(a, field).tolist() == getattr(b, field).tolist(), field
    assert (a.tags, a.peak_live, a.ncpus) == (b.tags, b.peak_live, b.ncpus)


def test_numbers_in_hex():
    t = parse("a x 0x10 0xff\ncpu 0x3ff\na y 010\n", "t", pages=4096)
    assert t.pages.tolist() == [16, 10] and t.limit.tolist() == [255, -1]
    assert t.cpu.tolist() == [0, 1023] and t.ncpus == 1024


# The replay loop, on an allocator that echoes what it is given: the CPU,
# the pages, the limit, and on a free the pfn and pages of the allocation.

@njit
def _echo_alloc(st, w, cpu, pages, limit):
    log, n = st
    i = n[0]
    n[0] += 1
    log[i, 0], log[i, 1], log[i, 2], log[i, 3], log[i, 4] = 0, w, cpu, pages, limit
    if pages == 13:
        return -1
    return 100 * (i + 1)


@njit
def _echo_free(st, w, cpu, pfn, pages):
    log, n = st
    i = n[0]
    n[0] += 1
    log[i, 0], log[i, 1], log[i, 2], log[i, 3], log[i, 4] = 1, w, cpu, pfn, pages


@njit
def _echo_replay(st, req, held):
    return replay.replay_loop(_echo_alloc, _echo_free, st, req, held)


def echo(text):
    t = parse(text, "t.trace", pages=64)
    log = np.zeros((len(t), 5), dtype=np.int64)
    n = np.zeros(1, dtype=np.int64)
    limit = np.where(t.limit < 0, 63, t.limit)
    req = np.stack([t.op, t.slot, t.pages, limit, t.cpu, np.full(len(t), -1)], axis=1)
    held = np.full(max(1, t.peak_live), -1, dtype=np.int32)
    bad = _echo_replay((log, n), req, held)
    return bad, log[:n[0]].tolist(), req[:, replay.R_RESULT].tolist()


def test_loop_passes_cpu_pages_limit_and_the_allocation_to_free():
    bad, log, result = echo("cpu 2\na x 3\na y 5 40\ncpu 7\nf x\na z 13\ncpu 1\nf y\n")
    assert bad == -1
    assert log == [[0, 0, 2, 3, 63],        # alloc on CPU 2, the default limit
                   [0, 0, 2, 5, 40],        # the trace's limit
                   [1, 0, 7, 100, 3],       # free on CPU 7 of x's pfn and pages
                   [0, 0, 7, 13, 63],       # fails
                   [1, 0, 1, 200, 5]]
    assert result == [100, 200, 100, -1, 200]


def test_loop_stops_at_the_first_tag_in_the_wrong_state():
    # x's allocation failed: its free is the error, at request 2
    bad, log, _ = echo("a x 13\na y 1\nf x\na y 1\n")
    assert bad == 2 and len(log) == 2
    # y is live: allocating it again is the error, at request 2
    bad, log, _ = echo("a y 1\na x 13\na y 2\n")
    assert bad == 2 and len(log) == 2
    # after a failure the tag may be allocated again
    bad, _, result = echo("a x 13\na x 1\nf x\n")
    assert bad == -1 and result == [-1, 200, 200]


# ------------------------------------------------------------------ errors

TRACE_ERRORS = [
    ("a x\n", "t.trace:1: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x'"),
    ("\n# c\na x y\n", "t.trace:3: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x y'"),
    ("a x 1 2 3\n", "t.trace:1: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x 1 2 3'"),
    ("a x -1\n", "t.trace:1: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x -1'"),
    ("a x 1 lim\n", "t.trace:1: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x 1 lim'"),
    ("a x 1.5\n", "t.trace:1: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x 1.5'"),
    ("a x 1\nf\n", "t.trace:2: expected 'f <tag>', got 'f'"),
    ("a x 1\nf x x\n", "t.trace:2: expected 'f <tag>', got 'f x x'"),
    ("cpu\n", "t.trace:1: expected 'cpu <n>', got 'cpu'"),
    ("cpu one\n", "t.trace:1: expected 'cpu <n>', got 'cpu one'"),
    ("cpu -1\n", "t.trace:1: expected 'cpu <n>', got 'cpu -1'"),
    ("cpu 1 2\n", "t.trace:1: expected 'cpu <n>', got 'cpu 1 2'"),
    ("alloc x 1\n", "t.trace:1: expected 'cpu <n>', 'a <tag> <pages> [<limit_pfn>]' or "
                    "'f <tag>', got 'alloc x 1'"),
    ("a x 0\n", "t.trace:1: pages 0 out of range 1..64"),
    ("a x 65\n", "t.trace:1: pages 65 out of range 1..64"),
    ("cpu 1023\ncpu 1024\n", "t.trace:2: cpu 1024 out of range 0..1023"),
    ("a x 1 63\na y 1 64\n", "t.trace:2: limit_pfn 64 out of range 0..63"),
    ("f x\n", "t.trace:1: free of tag 'x' that is not mapped (never allocated)"),
    ("a x 1\nf x\n\nf x\n", "t.trace:4: free of tag 'x' that is not mapped (freed at line 2)"),
    ("a y 1\nf x\n", "t.trace:2: free of tag 'x' that is not mapped (never allocated)"),
    # these two depend on what the allocator returned
    ("a x 1\na y 2\na x 1\n", "t.trace:3: tag 'x' is still mapped (allocated at line 1)"),
    ("a x 64\na y 1\n# x failed\nf x\n",
     "t.trace:4: free of tag 'x' that is not mapped (its allocation at line 1 failed)"),
    # the same tag failing twice, then freed: the failure named is the last
    ("a x 64\na x 64\nf x\n",
     "t.trace:3: free of tag 'x' that is not mapped (its allocation at line 2 failed)"),
]


@pytest.mark.parametrize("text,message", TRACE_ERRORS)
def test_trace_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(UsageError) as e:
        replay.command(args_for(path, "--allocator", "bitmap", "--pages", 64), out, err)
    assert str(e.value) == message.replace("t.trace", str(path))
    assert "\n" not in str(e.value)
    assert out.getvalue() == "" and err.getvalue() == ""


def test_error_names_the_file_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(DATA)
    with pytest.raises(UsageError, match=r"^errors\.trace:5: free of tag 'big' that is not "
                                         r"mapped \(its allocation at line 2 failed\)$"):
        command("errors.trace", "--allocator", "bitmap", "--pages", 64)


def test_long_lines_are_shortened_in_messages(tmp_path):
    path = write(tmp_path, "a x 1 2 " + "y" * 500 + "\n")
    with pytest.raises(UsageError) as e:
        command(path, "--allocator", "bitmap")
    assert len(str(e.value)) < len(str(path)) + 150 and str(e.value).endswith("...'")


@pytest.mark.parametrize("opts,message", [
    (["--pages", 1], "--pages: 1 out of range 2..2147483648"),
    (["--pages", 2**31 + 1], "--pages: 2147483649 out of range 2..2147483648"),
    (["--pages", "lots"], "--pages: expected an integer, got 'lots'"),
    (["--boundary", 0], "--boundary: 0 is not a power of two"),
    (["--boundary", 48], "--boundary: 48 is not a power of two"),
    (["--boundary", -4], "--boundary: -4 is not a power of two"),
    (["--mag-size", 126], "--mag-size: 126, expected 127 or 128"),
    (["--depot", "heap"], "--variant: rbtree has no variant 'heap'; valid: mainline, augmented"),
    (["--allocator", "magazines", "--variant", "heap"],
     "--variant: magazines has no variant 'heap'; valid: fixed, list, prealloc"),
    (["--allocator", "slab"],
     "--allocator: unknown allocator 'slab': choose one of bitmap, pools, rbtree, eiovar, "
     "magazines, lockfree"),
])
def test_option_errors(opts, message):
    with pytest.raises(UsageError) as e:
        command(DATA / "basic.trace", *opts)
    assert str(e.value) == message


def test_missing_trace_file(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.trace: cannot read: No such file"):
        command(tmp_path / "nope.trace", "--allocator", "bitmap")


def test_pools_limits_are_dma_masks(tmp_path):
    for text, message in [("a x 1 1000\n", "limit_pfn 1000 is not a DMA mask in pages (2**k - 1)"),
                          ("a x 1 0\n", "limit_pfn 0 out of range 1..4503599627370495")]:
        path = write(tmp_path, text)
        with pytest.raises(UsageError) as e:
            command(path, "--allocator", "pools", "--pages", 64)
        assert str(e.value) == "%s:1: %s" % (path, message)
    # a 32-bit device's mask reaches past a small table: no constraint
    path = write(tmp_path, "a x 1 0xfffff\na y 1\n")
    assert command(path, "--allocator", "pools", "--pages", 64)[1] == \
        command(write(tmp_path, "a x 1\na y 1\n", "u.trace"),
                "--allocator", "pools", "--pages", 64)[1]


def test_check_gets_the_live_ranges_and_its_problems_are_bugs(monkeypatch):
    from allocators import bitmap
    seen = []
    real = bitmap.check

    def check(st, p, live):
        seen.append(sorted(live))
        return real(st, p, live) + ["the check's own complaint"]

    monkeypatch.setattr(bitmap, "check", check)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(RuntimeError, match="bitmap state is wrong after the replay: "
                                           "the check's own complaint$"):
        replay.command(args_for(DATA / "basic.trace", "--allocator", "bitmap", "--pages", 64),
                       out, err)
    # net1 at 1, net0 again at 12, dev/x:1 at 16 are still held
    assert seen == [[(1, 1), (12, 4), (16, 1)]]
    assert out.getvalue() == "\n".join(BASIC) + "\n"


# ------------------------------------------------------------------ timing, determinism

def test_timing_goes_to_stderr_only():
    plain = command(DATA / "basic.trace", "--allocator", "bitmap", "--pages", 64)
    code, out, err = command(DATA / "basic.trace", "--allocator", "bitmap", "--pages", 64,
                             "--timing")
    assert code == 0 and out == plain[1]
    assert re.fullmatch(r"replay: \d+(\.\d+)? ns/request over 9 requests \(bitmap\)\n", err)


@pytest.mark.parametrize("name", replay.replayable())
def test_deterministic(tmp_path, name):
    path = write(tmp_path, random_trace(11, 3000, 200, 40, ncpus=5))
    first = command(path, "--allocator", name, "--pages", 1 << 18)[1]
    assert first == command(path, "--allocator", name, "--pages", 1 << 18)[1]
    assert len(first.splitlines()) == parse(path.read_text(), pages=1 << 18).nallocs


# ------------------------------------------------------------------ every allocator

def check_ranges(text, out, pages, limit_is_pfn):
    """Live ranges never overlap and stay inside the space (and below their
    limit where the limit is a pfn); computed from the output alone."""
    t = parse(text, "t", pages)
    res = iter(out)
    held = {}
    live = set()
    busy = np.zeros(pages, dtype=bool)
    for i in range(len(t)):
        tag = t.tags[t.tag[i]]
        if t.op[i] == OP_ALLOC:
            name, pfn = next(res).split()
            assert name == tag and pfn != "fail"
            pfn, n = int(pfn), int(t.pages[i])
            assert 0 <= pfn and pfn + n <= pages
            if limit_is_pfn and t.limit[i] >= 0:
                assert pfn + n - 1 <= t.limit[i]
            assert not busy[pfn:pfn + n].any(), "%s overlaps at %d" % (tag, pfn)
            busy[pfn:pfn + n] = True
            held[tag] = (pfn, n)
            live.add(tag)
        else:
            pfn, n = held.pop(tag)
            busy[pfn:pfn + n] = False
            live.discard(tag)
    assert next(res, None) is None
    return len(live)


@pytest.mark.parametrize("name", replay.replayable())
def test_every_allocator_replays_a_random_trace(name):
    pages = 1 << 18            # 1 GiB: pools splits into 4 pools
    limits = [(1 << 17) - 1] if name != "bitmap" else None
    text = random_trace(5, 20_000, 400, 40, ncpus=6, limits=limits)
    t = parse(text, "t", pages, masks=allocators.module(name).LIMIT_IS_MASK)
    rep = replay.run(t, name, pages)
    assert rep.problems == []
    out = rep.lines()
    assert len(out) == t.nallocs
    held = check_ranges(text, out, pages, limit_is_pfn=not allocators.module(name).LIMIT_IS_MASK)
    assert held == len(rep.live) > 0


def test_cpu_reaches_the_allocator():
    # pools picks a CPU's pool by hash_32(cpu, 2): CPU 0 pool 0, CPU 1 pool 1;
    # a 1 GiB table has four small pools of 49152 pages, and entry 0 is reserved
    t = parse("a x 1\ncpu 1\na y 1\n", "t", 1 << 18)
    assert replay.run(t, "pools", 1 << 18).lines() == ["x 1", "y 49152"]


@pytest.mark.parametrize("name", ["rbtree", "magazines"])
def test_top_down_placement(name):
    code, out, err = command(DATA / "topdown.trace", "--allocator", name)
    assert out.split("\n") == ["x 1048575", "y 1048574", "z 1048568", "w 1000", "v 1048575", ""]


@pytest.mark.parametrize("depot", allocators.module("magazines").VARIANTS)
@pytest.mark.parametrize("mag_size", replay.MAG_SIZES)
def test_magazines_options(tmp_path, depot, mag_size):
    text = random_trace(9, 6000, 300, 40, ncpus=4)
    path = write(tmp_path, text)
    code, out, err = command(path, "--allocator", "magazines", "--pages", 1 << 18,
                             "--depot", depot, "--mag-size", mag_size)
    assert code == 0
    check_ranges(text, out.splitlines(), 1 << 18, True)


def test_params():
    t = parse("cpu 5\na x 1\na y 1\nf x\na z 1 100\ncpu 9\n", "t", 1 << 10)
    p = replay.params(t, "rbtree", 1 << 10, 64, "fixed", 128)
    assert (p.pages, p.nworkers, p.ncpus, p.boundary, p.mag_size, p.variant) == \
        (1 << 10, 1, 6, 64, 128, "fixed")
    assert p.max_live == 2
    # magazines with several limits: cached ranges bounded by allocations only
    assert replay.params(t, "magazines", 1 << 10).max_live == 3


# ------------------------------------------------------------------ the generator

def test_random_trace():
    text = random_trace(1, 5000, 100, 64, ncpus=4, limits=[1000])
    assert text == random_trace(1, 5000, 100, 64, ncpus=4, limits=[1000])
    assert text != random_trace(2, 5000, 100, 64, ncpus=4, limits=[1000])
    t = parse(text, "t", 1 << 20)
    assert len(t) == 5000
    assert 50 <= t.peak_live <= 100
    assert t.ncpus == 4 and set(t.cpu.tolist()) == {0, 1, 2, 3}
    assert t.pages.min() == 1 and t.pages.max() <= 64 and (t.pages > 32).any()
    assert (t.limit == 1000).any()
    allocs = t.op == OP_ALLOC
    assert len(set(t.tag[allocs].tolist())) < allocs.sum()       # tags re-used
    # frees often happen on another CPU than their allocation
    frees = np.flatnonzero(~allocs)
    assert (t.cpu[frees] != t.cpu[t.ref[frees]]).any()


# ------------------------------------------------------------------ the command line

CLI = ROOT / "harness" / "cli.py"


@pytest.mark.skipif(not CLI.exists(), reason="harness/cli.py is not written yet")
def test_through_the_cli():
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "harness.cli", "replay"] + list(argv),
                              capture_output=True, text=True, env=env, cwd=str(DATA))

    r = cli("basic.trace", "--allocator", "bitmap", "--pages", "64", "--timing")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "\n".join(BASIC) + "\n"
    assert re.fullmatch(r"replay: \S+ ns/request over 9 requests \(bitmap\)\n", r.stderr)
    r = cli("errors.trace", "--allocator", "bitmap", "--pages", "64")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("iommu-stress: error: errors.trace:5: free of tag 'big' that is not "
                        "mapped (its allocation at line 2 failed)\n")
    r = cli("basic.trace", "--allocator", "buddy")
    assert r.returncode == 2 and "choose one of bitmap, pools, rbtree, eiovar, magazines" in r.stderr
