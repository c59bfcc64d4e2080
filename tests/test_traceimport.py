"""`iommu-stress trace import`: kernel captures in the three text forms,
the iommu: and dma: events of each kernel version, the quirks of real
captures, trace format v2 and its replay.  The samples in
tests/data/captures/ were written by hand from the kernel's format strings
(include/trace/events/iommu.h before and after it printed the range, include/trace/events/
dma.h of 6.12 and of the dma_map_phys / nents-ents years), in the columns
tracefs, trace-cmd report and perf script print."""
import argparse
import io
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness import cli, replay, traceimport
from harness.errors import UsageError
from harness.trace import OP_ALLOC, OP_FREE, parse

from .test_replay import DATA

CAPTURES = DATA / "captures"


def imported(*names, devices=None):
    texts = [(n, (CAPTURES / n).read_text()) for n in names]
    return traceimport.convert(texts, devices)


def requests(text):
    """The request lines of a v2 trace, comments dropped."""
    return [ln for ln in text.split("\n") if ln and not ln.startswith("#")]


# ------------------------------------------------------------------ the samples

def test_tracefs_with_header_iommu_before_the_range():
    text, s = imported("tracefs-iommu-2013.txt")
    assert requests(text) == [
        "format 2",
        "a m0 2 t=50000100000 kpfn=0xffffe",
        # three maps of one scatterlist, unmapped by one unmap: one allocation
        "cpu 1", "a m1 4 t=50000200000 kpfn=0xffff8",
        "cpu 0", "f m0 t=50000300000",
        "cpu 1", "f m1 t=50000400000",
        # unmapped in two halves, on two CPUs: freed at the second
        "cpu 0", "a m4 16 t=50000500000 kpfn=0xfffe0",
        "cpu 3", "f m4 t=50000700000",
        "cpu 0", "a m5 1 t=50000800000 kpfn=0xffffe"]
    assert (s.maps, s.unmaps, s.merged, s.pieces, s.live_at_end) == (4, 3, 2, 1, 1)
    assert s.dropped == {"not_mapped": 1}
    assert s.others == {"sched_wakeup": 1, "io_page_fault": 1}
    assert s.devices == ["-"] and s.cpus == {0, 1, 3}


def test_trace_pipe_iommu_range_blank_columns_tgid_and_lost_events():
    text, s = imported("trace_pipe-iommu-range.txt")
    assert requests(text) == [
        "format 2",
        "cpu 2", "a m0 1 t=60000100000 kpfn=0xfffff",
        "cpu 3", "f m0 t=60000150000",           # the TGID column read past
        # a task name with a space; an unmap that unmapped nothing is dropped,
        # so the next map of the range frees it first
        "cpu 1", "a m1 2 t=60000300000 kpfn=0xffffc",
        "f m1 t=60000500000", "a m2 2 t=60000500000 kpfn=0xffffc"]
    assert s.lost == 17 and s.replaced == 1
    assert s.dropped == {"blank": 2, "zero": 1}
    assert "the capture itself lost 17 event(s)" in s.text()


def test_trace_cmd_report_dma_6_12():
    text, s = imported("trace-cmd-dma-6.12.txt")
    assert requests(text) == [
        "format 2",
        "device 0000:01:00.0", "a m0 1 t=70000100123 kpfn=0xfffff",   # ns timestamps
        "device 0000:02:00.0", "cpu 1", "a m1 1 t=70000120000 kpfn=0xfffff",  # a resource
        "device 0000:01:00.0", "cpu 0",
        "a m2 4 t=70000140000 kpfn=0xffff8",     # dma_alloc without dir=
        "a m3 4 t=70000150000 kpfn=0xffff4",     # a list: 0xffff4000..0xffff71ff
        "cpu 1", "f m0 t=70000200000",
        "f m3 t=70000210000",                    # dma_unmap_sg, by its physical addresses
        "f m2 t=70000220000", "f m1 t=70000230000"]
    assert s.dropped == {"failed": 1, "not_mapped": 1}
    assert s.others == {"dma_sync_single_for_device": 1}
    assert s.devices == ["0000:01:00.0", "0000:02:00.0"]


def test_perf_script_dma_newest():
    text, s = imported("perf-script-dma-phys.txt")
    assert requests(text) == [
        "format 2", "device 0000:03:00.0", "cpu 2",
        "a m0 1 t=80000100000 kpfn=0xfffff",     # dma_map_phys
        "a m1 3 t=80000200000 kpfn=0xffffc",     # dma_alloc with dir=
        "a m2 3 t=80000300000 kpfn=0xffff8",     # dma_map_sg with nents= ents=
        "a m3 8 t=80000400000 kpfn=0xffff0",     # dma_alloc_pages
        "a m4 16 t=80000450000 kpfn=0xfffe0",    # dma_alloc_sgt
        "cpu 3",                                 # a blank comm, ':6002'
        "f m0 t=80000500000", "f m2 t=80000600000", "f m1 t=80000700000",
        "f m3 t=80000800000", "f m4 t=80000900000"]
    # the iommu: events repeat the dma: ones; a NULL dma_alloc and a
    # dma_map_sg_err failed; a truncated list; a blanked timestamp
    assert s.dropped == {"twice": 2, "failed": 2, "truncated": 1, "blank": 1}
    assert s.others == {"sched:sched_switch": 1}


def test_summary_says_what_was_dropped_and_why():
    _, s = imported("perf-script-dma-phys.txt")
    out = s.text()
    assert "kept: 5 allocation(s), 5 free(s) on 2 CPU(s), 1 device(s) (0000:03:00.0)" in out
    assert re.search(r"\n +2  iommu: events of a capture that has dma: events", out)
    assert re.search(r"\n +1  scatterlists the kernel cut at 128 entries", out)
    assert re.search(r"\n +1  other events \(sched:sched_switch 1\)", out)


def test_crlf_and_bytes_that_are_not_utf8(tmp_path):
    raw = (CAPTURES / "tracefs-iommu-2013.txt").read_bytes()
    path = tmp_path / "crlf.txt"
    path.write_bytes(raw.replace(b"\n", b"\r\n").replace(b"fio-2301", b"f\xffo-2301"))
    name, text = traceimport.read_text(path)
    assert requests(traceimport.convert([(name, text)])[0]) == \
        requests(imported("tracefs-iommu-2013.txt")[0])


def test_files_are_merged_by_timestamp(tmp_path):
    # the same capture as per-CPU files: the same requests
    lines = (CAPTURES / "tracefs-iommu-2013.txt").read_text().split("\n")
    per_cpu = {}
    for ln in lines:
        m = re.search(r"\[(\d{3})\]", ln)
        if m:
            per_cpu.setdefault(m.group(1), []).append(ln)
    texts = [("cpu%s" % c, "\n".join(v)) for c, v in sorted(per_cpu.items(), reverse=True)]
    assert requests(traceimport.convert(texts)[0]) == \
        requests(imported("tracefs-iommu-2013.txt")[0])


def test_device_selection():
    text, s = imported("trace-cmd-dma-6.12.txt", devices={"0000:02:00.0"})
    assert requests(text) == ["format 2", "device 0000:02:00.0", "cpu 1",
                              "a m0 1 t=70000120000 kpfn=0xfffff", "f m0 t=70000230000"]
    assert s.dropped["device"] == 7
    # iommu: events have no device: '-'
    assert imported("tracefs-iommu-2013.txt", devices={"-"})[1].maps == 4
    with pytest.raises(UsageError, match="no iommu:map/unmap or dma: map/unmap events"):
        imported("tracefs-iommu-2013.txt", devices={"0000:01:00.0"})


def test_flag_columns_of_every_width_and_none():
    line = ("  fio-1 [001] %s 10.5: map: IOMMU: iova=0x0000000000001000 paddr=0x0000000000002000 "
            "size=4096")
    for flags in ("", "....", "d.h1", "dNs2.", "X..1."):
        text, s = traceimport.convert([("t", line % flags)])
        assert requests(text)[1:] == ["cpu 1", "a m0 1 t=10500000000 kpfn=0x1"], flags


def test_map_of_another_system_with_the_same_name_is_not_taken():
    text = ("  fio-1 [001] 10.5: map: IOMMU: iova=0x0000000000001000 paddr=0x0 size=4096\n"
            "  fio-1 [001] 10.6: map: something else entirely\n"
            "  fio-1 [001] 10.7: xen:map: IOMMU: iova=0x0000000000001000 paddr=0x0 size=4096\n")
    _, s = traceimport.convert([("t", text)])
    assert s.maps == 1 and s.others == {"map": 1, "xen:map": 1}


def test_nothing_to_import():
    with pytest.raises(UsageError) as e:
        traceimport.convert([("x.txt", "# tracer: nop\n  a-1 [000] 1.0: sched_switch: x\n")])
    assert str(e.value) == ("x.txt: no iommu:map/unmap or dma: map/unmap events to import "
                            "(1 line(s) read, 0 such event(s) dropped, 1 other event(s))")


# ------------------------------------------------------------------ format v2

def test_v2_fields_and_devices():
    t = parse("format 2\ndevice d0\ncpu 1\na x 2 t=5 kpfn=0x10\ndevice d1\na y 1\n"
              "f x t=9\n", "v2")
    assert t.version == 2 and t.devices == ["-", "d0", "d1"]
    assert t.op.tolist() == [OP_ALLOC, OP_ALLOC, OP_FREE]
    assert t.domain.tolist() == [1, 2, 1]        # a free is in its allocation's domain
    assert t.time.tolist() == [5, -1, 9] and t.kpfn.tolist() == [16, -1, -1]
    assert t.pages.tolist() == [2, 1, 2] and t.cpu.tolist() == [1, 1, 1]


@pytest.mark.parametrize("text,message", [
    ("a x 1 t=5\n", "v2:1: expected 'a <tag> <pages> [<limit_pfn>]', got 'a x 1 t=5'"),
    ("device d\n", "v2:1: expected 'cpu <n>', 'a <tag> <pages> [<limit_pfn>]' or 'f <tag>', "
                   "got 'device d'"),
    ("a x 1\nformat 2\n", "v2:2: the format line must come before any other"),
    ("format 3\n", "v2:1: expected 'format 1' or 'format 2', got 'format 3'"),
    ("format 2\na x 1 u=5\n", "v2:2: expected 'a <tag> <pages> [<limit_pfn>] [t=<ns>] "
                              "[kpfn=<pfn>]', got 'a x 1 u=5'"),
    ("format 2\na x 1 t=5 t=6\n", "v2:2: expected 'a <tag> <pages> [<limit_pfn>] [t=<ns>] "
                                  "[kpfn=<pfn>]', got 'a x 1 t=5 t=6'"),
    ("format 2\na x 1\nf x kpfn=1\n", "v2:3: expected 'f <tag> [t=<ns>]', got 'f x kpfn=1'"),
    ("format 2\ndevice\n", "v2:2: expected 'device <name>', got 'device'"),
])
def test_v2_errors(text, message):
    with pytest.raises(UsageError) as e:
        parse(text, "v2")
    assert str(e.value) == message


def replay_args(path, *opts):
    parser = replay.add_arguments(argparse.ArgumentParser())
    return parser.parse_args([str(path)] + list(opts))


def test_replay_of_an_imported_trace_per_domain_with_the_kernel_comparison(tmp_path):
    text, _ = imported("trace-cmd-dma-6.12.txt")
    path = tmp_path / "dma.trace"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    assert replay.command(replay_args(path, "--allocator", "rbtree"), out, err) == 0
    # each device a domain of its own, top-down below 4 GiB: the top page
    # for both devices' first mapping, then 4-page aligned ranges below it
    assert out.getvalue() == "m0 1048575\nm1 1048575\nm2 1048568\nm3 1048564\n"
    assert ("replay: 4 of 4 allocations (100.0%) got the address the traced kernel gave "
            "(rbtree; ") in err.getvalue()


def test_through_the_cli(tmp_path, capsys):
    out = tmp_path / "o.trace"
    assert cli.main(["trace", "import", str(CAPTURES / "tracefs-iommu-2013.txt"),
                     str(CAPTURES / "trace_pipe-iommu-range.txt"), "-o", str(out)]) == 0
    got = capsys.readouterr()
    assert got.out.startswith("trace import: wrote %s\nread 21 line(s) of 2 file(s)" % out)
    assert parse(out.read_text()).version == 2
    assert cli.main(["trace", "import", str(tmp_path / "none.txt"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iommu-stress: error: ") and err.count("\n") == 1
    assert cli.main(["trace", "import", str(CAPTURES / "tracefs-iommu-2013.txt")]) == 2
    assert "-o/--output" in capsys.readouterr().err


# ------------------------------------------------------------------ any input

PIECES = ["map:", "unmap:", "iommu:map:", "dma:dma_map_sg:", "dma_unmap_sg:", "dma_map_page:",
          "dma_free:", "IOMMU:", "iova=0x1000", "-", "0x2000", "size=4096", "size=",
          "unmapped_size=4096", "dma_addr=fffff000", "dma_addr=ffffffffffffffff",
          "dma_addrs={0x1000,0x3000}", "sizes={0x1000}", "phys_addrs={0x5}", "phys_addrs={}",
          "[TRUNCATED]", "virt_addr=(null)", "0000:01:00.0", "[001]", "[]", "1.5:", "2:",
          "99999999999999999999.1:", "fio-1", "....", "CPU:1 [LOST 5 EVENTS]", "{", "}", "=",
          "#", "\r", "\t", "\x00", "é"]
lines = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)),
                 max_size=12).map(" ".join)


@settings(deadline=None, max_examples=25,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(lines, st.sampled_from(
    (CAPTURES / "perf-script-dma-phys.txt").read_text().split("\n"))), max_size=15))
@example(["  a-1 [001] 1.5: map: IOMMU: iova=0xffffffffffffffff size=4096"])
@example(["  a-1 [001] 1.5: dma_map_sg: d dma_addrs={0xffffffffffffffff} sizes={0x10} "
          "phys_addrs={0x1}"])
def test_only_our_error_on_any_input(text_lines):
    try:
        text, _ = traceimport.convert([("fuzz", "\n".join(text_lines))])
    except UsageError as e:
        assert "\n" not in str(e)
    else:
        parse(text, "imported")            # what it writes, replay reads


# ------------------------------------------------------------------ round trip

def kernel_capture(seed=3, n=300):
    """perf script text of two CPUs mapping and unmapping for one device,
    with the addresses the kernel's design (the rcache over iova.c's tree,
    as the independent model tests/ref_iova.py has it) gives, and other
    events between."""
    import random

    from tests import ref_iova as R
    rng = random.Random(seed)
    rc = R.RCache(R.Domain(1), 2, 127, "list")
    live, out, t = [], [], 1000.0
    for _ in range(n):
        t += rng.random() * 1e-4
        cpu = rng.randrange(2)
        head = "             fio  %d [%03d] %12.6f: " % (700 + cpu, cpu, t)
        if rng.random() < 0.1:
            out.append(head + "sched:sched_switch: prev_comm=fio prev_pid=700 ==> next_pid=0")
        elif live and (len(live) > 40 or rng.random() < 0.45):
            pfn, pages, off = live.pop(rng.randrange(len(live)))
            rc.free(cpu, pfn, pages)
            out.append(head + "dma:dma_unmap_page: 0000:05:00.0 dir=FROM_DEVICE dma_addr=%x "
                       "size=%d attrs=" % ((pfn << 12) + off, (pages << 12) - off))
        else:
            pages = rng.choice([1, 1, 1, 2, 3, 4, 8, 16, 64])
            off = rng.choice([0, 0, 0x200])
            pfn = rc.alloc(cpu, pages, (1 << 20) - 1)
            live.append((pfn, pages, off))
            out.append(head + "dma:dma_map_page: 0000:05:00.0 dir=FROM_DEVICE dma_addr=%x "
                       "size=%d phys_addr=%x attrs=" % ((pfn << 12) + off, (pages << 12) - off,
                                                        rng.randrange(1 << 30) << 12))
    return "\n".join(out) + "\n"


def test_round_trip_gives_the_kernels_addresses(tmp_path):
    # what the import keeps is enough for the design the kernel ran to give
    # every address the kernel gave
    text, s = traceimport.convert([("capture", kernel_capture())])
    assert s.cpus == {0, 1} and s.devices == ["0000:05:00.0"] and s.maps > 100
    path = tmp_path / "k.trace"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    replay.command(replay_args(path, "--allocator", "magazines", "--variant", "list"), out, err)
    assert re.search(r"replay: (\d+) of \1 allocations \(100.0%\)", err.getvalue()), err.getvalue()
