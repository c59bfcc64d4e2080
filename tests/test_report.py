"""Reports, comparisons, diagnostics and plots of results files, on small
synthetic documents: no sweep runs here."""
import argparse
import copy
import csv
import io
import json
import re

import matplotlib
import pytest

matplotlib.use("Agg")

from harness import diagnostics, plot, report, results  # noqa: E402
from harness.errors import UsageError  # noqa: E402

MACHINE = {"cpu_model": "Test CPU 9000", "cores_allowed": 4, "cpus_online": 8,
           "memory_bytes": 1 << 34, "kernel": "6.9.0", "arch": "x86_64", "python": "3.11.7",
           "numba": "0.60.0", "numpy": "2.0.0", "commit": "abc123", "cycles_per_ns": 2.5}

OPTIONS = {"designs": [], "threads": [], "duration": 0.5, "warmup": 0.1, "repeats": 3,
           "lock": "ttas", "profile": "vtd-2015", "workload": "", "depth": 32,
           "sizes": [[1, 1.0]], "lock_timing": True, "rogue_device": False}

SPECS = {"direct": ("direct", "direct"), "rbtree": ("rbtree+strict", "rbtree"),
         "linux-2008": ("rbtree+batched", "rbtree"),
         "peleg-2015": ("magazines:fixed+percpu", "magazines")}


def lock(name, acq, con, wait, hold=None, handoffs=0):
    hold = wait / 2 if hold is None else hold
    return {"name": name, "acquisitions": acq, "contentions": con, "acq_bounces": handoffs,
            "con_bounces": min(con, handoffs),
            "wait_ns_total": wait, "wait_ns_max": wait / 10 if acq else 0.0,
            "wait_ns_min": 20.0 if acq else 0.0, "hold_ns_total": hold,
            "hold_ns_max": hold / 10 if acq else 0.0, "hold_ns_min": 30.0 if acq else 0.0}


def point(design, threads, ops, runs=None, cores=4, **extra):
    spec, alloc = SPECS.get(design, (design, design))
    deferred = spec.endswith(("batched", "percpu"))
    flush = "none" if alloc == "direct" else spec.partition("+")[2] or "strict"
    p = {"design": design, "spec": spec, "allocator": alloc, "variant": "", "flush": flush,
         "threads": threads, "ops_per_sec": float(ops),
         "runs": runs if runs is not None else [ops * 0.99, ops, ops * 1.01],
         "oversubscribed": threads > cores,
         "per_worker_ops": [1000 + 100 * i for i in range(threads)], "unmap_workers": 0,
         "alloc_fails": 0, "locks": [lock("none", 0, 0, 0.0)] if alloc == "direct" else [],
         "alloc_stats": {}, "footprint_bytes": {"start": 0, "peak": 0},
         "exposure_ns": {"count": 0, "mean": 0.0, "p99": 0.0, "max": 0.0},
         "flush_stats": {"invalidations": 0, "invalidation_wait_ns": 0.0, "invalidation_queue_ns": 0.0,
                   "queue_flushes": 0, "timer_flushes": 0, "flushed_entries": 0, "mean_batch": 0.0},
         "iotlb": {"hits": 0, "fills": 0, "faults": 0}, "unmaps": 10000,
         "device_wait_ns": 0.0, "handoff_wait_ns": 0.0}
    if alloc != "direct":
        p["exposure_ns"] = ({"count": 9000, "mean": 120e3, "p99": 400e3, "max": 2e6} if deferred
                            else {"count": 10000, "mean": 900.0, "p99": 1200.0, "max": 5000.0})
        p["flush_stats"] = ({"invalidations": 40, "invalidation_wait_ns": 40e3, "invalidation_queue_ns": 0.0,
                       "queue_flushes": 40, "timer_flushes": 4, "flushed_entries": 10000,
                       "mean_batch": 250.0} if deferred else
                      {"invalidations": 10000, "invalidation_wait_ns": 9e6,
                       "invalidation_queue_ns": 1e6, "queue_flushes": 0, "timer_flushes": 0,
                       "flushed_entries": 0, "mean_batch": 0.0})
    p.update(extra)
    return p


def document(points, machine=MACHINE, options=OPTIONS, complete=True, failures=()):
    return {"format": "iommu-stress-results", "version": 1,
            "command": "iommu-stress sweep --designs x", "started": "2026-01-01T00:00:00+00:00",
            "machine": dict(machine), "options": dict(options), "points": points,
            "failures": list(failures), "complete": complete}


def write(tmp_path, name, doc):
    f = tmp_path / name
    f.write_text(json.dumps(doc))
    return str(f)


def sweep_points():
    pts = []
    for t, d, r, l in ((1, 8e6, 1e6, 1.2e6), (2, 16e6, 1.5e6, 2.2e6), (4, 30e6, 1.2e6, 4e6),
                       (8, 28e6, 0.9e6, 3.5e6)):
        pts += [point("direct", t, d), point("rbtree", t, r), point("linux-2008", t, l)]
    return pts


def parse(add, argv):
    p = argparse.ArgumentParser()
    add(p)
    return p.parse_args(argv)


def run_report(capsys, argv):
    code = report.cmd_report(parse(report.add_report_arguments, argv))
    out = capsys.readouterr()
    assert code == 0
    return out.out, out.err


def one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- diagnostics

def test_lock_table_sorted_by_total_wait_then_contentions():
    p = point("peleg-2015", 2, 1e6, locks=[
        lock("magazine", 1000, 5, 2e3), lock("rbtree", 100, 40, 50e3, handoffs=33),
        lock("depot", 50, 10, 2e3), lock("fq", 900, 1, 10e3)])
    text = diagnostics.lock_table(p)
    lines = text.splitlines()
    head = lines[0].split()
    assert head == ["class", "con-bounces", "contentions", "con%", "wait-min", "wait-avg",
                    "wait-max", "wait-total", "acq-bounces", "acquisitions", "hold-min",
                    "hold-avg", "hold-max", "hold-total"]
    order = [l.split()[0] for l in lines[2:] if l and not l.startswith(("times", "invalidation"))]
    # magazine and depot tie on wait; depot has more contentions
    assert order == ["rbtree", "fq", "depot", "magazine"]
    rb = next(l.split() for l in lines if l.startswith("rbtree"))
    assert rb[1:4] == ["33", "40", "40.00%"]
    assert rb[5] == "1.250"                   # 50 µs over 40 contentions, as lock_stat
    assert rb[7] == "50.00"                   # total wait in µs
    assert rb[8:10] == ["33", "100"]


def test_invalidation_unit_is_a_pseudo_lock_ranked_by_its_queueing():
    p = point("rbtree", 2, 1e6, locks=[lock("rbtree", 20000, 10, 0.5e6)])
    lines = diagnostics.lock_table(p).splitlines()
    rows = [l for l in lines[2:] if not l.startswith(("times", "invalidation unit:"))]
    assert rows[0].startswith(diagnostics.INVALIDATION_UNIT)   # 1 ms queued beats 0.5 ms
    cells = rows[0][len(diagnostics.INVALIDATION_UNIT):].split()
    assert cells[8] == "10000"                # acquisitions = invalidations
    assert cells[1] == "-"                    # contentions are not counted for it
    assert "1000.00" in cells                 # queueing total, µs
    assert "0.800" in cells                   # own latency per invalidation: (9 ms - 1 ms) / 10000


def test_timing_off_blanks_wait_and_hold_and_says_so():
    p = point("rbtree", 1, 1e6, locks=[lock("rbtree", 100, 3, 0.0, 0.0)],
              flush_stats={"invalidations": 0})
    opts = dict(OPTIONS, lock_timing=False)
    line = diagnostics.timing_line(p, opts)
    assert "off" in line and "--lock-timing" in line
    row = diagnostics.lock_table(p, options=opts).splitlines()[2].split()
    assert row[:4] == ["rbtree", "0", "3", "3.00%"]
    assert row[8:10] == ["0", "100"]
    assert row[10:14] == ["-"] * 4            # hold needs the timing; wait does not
    p["diag"] = {"timing": "on: every lock"}
    assert diagnostics.timing_line(p, opts).startswith("lock timing: on: every lock")


def test_breakdown_shares_and_absence():
    assert diagnostics.breakdown_table(point("rbtree", 1, 1e6)) is None
    p = point("rbtree", 1, 1e6, breakdown_ns={"allocate": 100.0, "page_table": 50.0, "free": 50.0,
                                              "lock_wait": 0.0, "total": 250.0})
    text = diagnostics.breakdown_table(p)
    rows = {l.split("  ")[0].strip(): l.split() for l in text.splitlines()[2:]}
    assert rows["allocate IOVA"][-2:] == ["100.0", "40.00%"]
    assert rows["page table (write, clear)"][-1] == "20.00%"
    assert rows["other (total less the parts)"][-2:] == ["50.0", "20.00%"]
    assert rows["total"][-2:] == ["250.0", "100.00%"]


def test_lock_wait_is_a_share_of_the_parts_not_one_more_part():
    b = {"allocate": 300.0, "page_table": 0.0, "free": 200.0, "lock_wait": 100.0, "harness": 500.0,
         "total": 1000.0}
    text = diagnostics.breakdown_table(point("rbtree", 1, 1e6, breakdown_ns=b))
    assert "overlap" not in text and "other" not in text
    assert "page table" not in text                   # a zero part is left out
    lines = text.splitlines()
    assert lines[-3].split()[0] == "total"
    assert re.match(r"lock wait \(within allocate, free, timers\)\s+100\.0\s+10\.00%",
                    lines[-2])
    assert lines[-1] == "named steps: 50.0% of the total"


def test_flush_policy():
    assert report.flush_policy(point("linux-2008", 1, 1)) == "batched"
    assert report.flush_policy(point("direct", 1, 1)) == "none"


def test_allocator_ratios():
    p = point("rbtree", 1, 1e6, alloc_stats={"allocs": 1000, "fails": 0, "frees": 1000,
                                             "nodes_visited": 12500, "retries": 10})
    text = diagnostics.alloc_table(p)
    assert re.search(r"rbtree nodes visited\s+12500\s+12\.50 per alloc", text)
    assert re.search(r"retries from the top\s+10\s+1\.00% of allocs", text)
    b = point("bitmap", 1, 1e6, alloc_stats={"allocs": 4000, "wraps": 2, "words_scanned": 6000,
                                             "something_new": 7})
    text = diagnostics.alloc_table(b)
    assert re.search(r"bitmap words scanned\s+6000\s+1\.50 per alloc", text)
    assert re.search(r"bitmap wraps.*\s2\s+one per 2000 allocs", text)
    assert re.search(r"something new\s+7", text)      # unknown keys still shown


def test_compare_and_swap_failures_per_operation():
    """Per allocation or free: an I/O is one of each."""
    p = point("lockfree", 2, 1e6, alloc_stats={"cas_failures": 30, "bypasses": 4})
    p["ops_total"] = 1000
    text = diagnostics.alloc_table(p)
    assert re.search(r"compare-and-swap failures \(retried\)\s+30\s+0\.015 per alloc or free",
                     text)
    assert re.search(r"owned by another worker \(bypassed\)\s+4\s+one per 500 allocs or frees",
                     text)


def test_magazine_hit_rates_per_size_class():
    stats = {"hits_1": 990, "misses_1": 10, "hits_2": 0, "misses_2": 0, "hits_4": 30, "misses_4": 70,
             "depot_pushes": 11, "depot_pops": 9, "flush_retries": 0, "trims": 1}
    p = point("peleg-2015", 2, 1e6, alloc_stats=stats)
    mags = diagnostics.magazine_table(p)
    assert re.search(r"1 page\s+990\s+10\s+99\.00%", mags)
    assert re.search(r"4 pages\s+30\s+70\s+30\.00%", mags)
    assert "2 pages" not in mags                       # an unused class is left out
    assert re.search(r"all\s+1020\s+80\s+92\.73%", mags)
    alloc = diagnostics.alloc_table(p)
    assert "hits_1" not in alloc
    assert re.search(r"depot pushes\s+11\s+10\.00 per 1k allocs", alloc)


def test_fairness_ratio_and_starvation():
    p = point("rbtree", 4, 1e6, per_worker_ops=[100, 400, 300, 200])
    assert diagnostics.fairness([100, 400, 300, 200]) == (100, 250, 400, 4.0)
    row = diagnostics.fairness_table(p).splitlines()[2].split()
    assert row == ["4", "0", "100", "250", "400", "4.00"]
    starved = diagnostics.fairness_table(point("rbtree", 2, 1e6, per_worker_ops=[0, 50]))
    assert "inf" in starved and "starved" in starved


def test_flush_and_exposure_statistics():
    p = point("linux-2008", 2, 1e6, stale_hits=50, rogue_probes=1000, stale_hits_per_sec=2.5e6)
    text = diagnostics.flush_table(p)
    assert re.search(r"invalidations\s+40\s+one per 250 unmaps", text)
    assert re.search(r"timer flushes\s+4\s+10\.00% of queue flushes", text)
    assert re.search(r"flushed entries\s+10000\s+mean batch 250\.0", text)
    assert re.search(r"exposure p99, µs\s+400\.00", text)
    assert re.search(r"stale IOTLB hits\s+50\s+5\.00% of probes", text)
    assert re.search(r"stale hits per second\s+2\.50M", text)


def test_render_point_sections_present_and_absent():
    p = point("peleg-2015", 8, 1e6, locks=[lock("rbtree", 10, 1, 100.0)],
              state_checked="allocator state fresh, page tables empty, no page owned",
              series=[{"t": 1, "ops_per_sec": 1e6, "top_lock": "rbtree", "top_lock_wait_ns": 5e3},
                      {"t": 2, "ops_per_sec": 9e5, "top_lock": "fq", "top_lock_wait_ns": 7e3}])
    text = diagnostics.render_point(p, MACHINE, OPTIONS)
    assert text.splitlines()[0] == ("== peleg-2015 (magazines:fixed+percpu) at 8 threads: 1.00M ops/s, "
                                    "oversubscribed (4 cores)")
    assert text.splitlines()[1].startswith("lock timing: on")
    assert text.splitlines()[2] == ("state after every window: allocator state fresh, page tables "
                                    "empty, no page owned")
    for section in ("-- locks", "-- flush and exposure", "-- fairness", "-- per second"):
        assert section in text
    assert "-- time per I/O" not in text
    assert re.search(r"2\s+900\.0k\s+fq\s+7\.000", text)
    d = diagnostics.render_point(point("direct", 1, 5e6), MACHINE, OPTIONS)
    assert "-- locks" not in d and "-- allocator" not in d


def test_long_series_grouped_and_its_drift_stated():
    # 600 seconds falling linearly from 1.2M to 0.6M ops/s, the lock alternating
    s = [{"t": t, "ops_per_sec": 1.2e6 - 1e3 * (t - 1), "top_lock": ("rbtree", "fq")[t % 2],
          "top_lock_wait_ns": 1e3 * (1 + t % 2)} for t in range(1, 601)]
    text = diagnostics.series_table({"series": s})
    lines = text.splitlines()
    assert len(lines) == 2 + 60 + 2                      # header, rule, rows, two notes
    # the first group: seconds 1-10, mean 1.1955M; fq waited 5 x 2 us, rbtree 5 x 1 us
    assert re.match(r"10\s+1\.20M\s+fq\s+10\.00$", lines[2])
    assert lines[-2] == "one row per 10 s, their mean; each second is in the results file"
    # first tenth 1.2M..1.141M (mean 1.1705M), last 0.66M..0.601M (0.6305M): -46.1%;
    # slope -1000 ops/s a second over a mean of 0.9005M: -6.66% a minute
    assert lines[-1].startswith("drift over 600 s: first tenth 1.17M ops/s, last tenth 630.5k "
                                "(-46.1%); least-squares slope -6.66% of the mean a minute")
    flat = [dict(e, ops_per_sec=1e6) for e in s[:20]]
    text = diagnostics.series_table({"series": flat})
    assert "one row per" not in text
    assert "(+0.0%); least-squares slope +0.00% of the mean a minute; the seconds vary 0.0%" in text
    # too short to judge a drift
    assert "drift" not in diagnostics.series_table({"series": s[:9]})


# -------------------------------------------------------------------- report

def test_throughput_table_ratios():
    text = report.throughput_table(sweep_points(), cores=4)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["threads", "direct", "ops/s", "x"]
    row2 = lines[3].split()
    # rbtree at 2: 1.5M / 16M direct, and 1.5M / (2 x 1M) of linear
    assert row2[0] == "2"
    assert row2[4:7] == ["1.50M", "0.094", "0.750"]
    assert lines[5].startswith("8*")
    assert "* oversubscribed" in text and "(4)" in text


def test_throughput_table_without_direct_drops_its_column():
    text = report.throughput_table([point("rbtree", 1, 1e6), point("rbtree", 2, 1.5e6)])
    assert "x direct" not in text
    assert text.splitlines()[3].split() == ["2", "1.50M", "0.750"]


def test_csv_is_machine_readable(tmp_path, capsys):
    pts = sweep_points()
    pts[1]["runs"] = [0.5e6, 1e6, 1.5e6]            # would be marked ~ in a text table
    f = write(tmp_path, "a.json", document(pts))
    out, err = run_report(capsys, [f, "--format", "csv"])
    rows = list(csv.reader(io.StringIO(out)))
    head = rows[0]
    assert head[:2] == ["threads", "oversubscribed"]
    assert "rbtree_ops_per_sec" in head and "linux-2008_x_linear" in head
    assert len(rows) == 5 and all(len(r) == len(head) for r in rows)
    for r in rows[1:]:
        for cell in r:
            float(cell)                               # raw numbers only: no k, M, ~ or *
    first = dict(zip(head, rows[1]))
    assert float(first["rbtree_ops_per_sec"]) == 1e6
    assert float(first["rbtree_spread"]) == pytest.approx(1.0)
    assert float(dict(zip(head, rows[3]))["rbtree_x_direct"]) == pytest.approx(1.2 / 30, abs=1e-4)
    assert dict(zip(head, rows[4]))["oversubscribed"] == "1"
    assert "machine: Test CPU 9000" in err            # the person still gets the header


def test_markdown_is_github_tables(tmp_path, capsys):
    f = write(tmp_path, "a.json", document(sweep_points()))
    out, _ = run_report(capsys, [f, "--format", "markdown"])
    assert re.search(r"^\| threads\s+\|", out, re.M)
    assert re.search(r"^\|-+\|", out, re.M)


def test_bad_format_lists_valid_ones(tmp_path):
    f = write(tmp_path, "a.json", document(sweep_points()))
    with pytest.raises(UsageError) as e:
        report.cmd_report(parse(report.add_report_arguments, [f, "--format", "excel"]))
    msg = one_line(e)
    assert "'excel'" in msg and "csv" in msg and "markdown" in msg and "grid" in msg


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(UsageError) as e:
        report.cmd_report(parse(report.add_report_arguments, [str(tmp_path / "nope.json")]))
    assert "nope.json" in one_line(e)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(UsageError) as e:
        report.cmd_report(parse(report.add_report_arguments, [str(other)]))
    assert "not an iommu-stress results file" in one_line(e)


def test_merge_later_file_wins_and_says_so(tmp_path, capsys):
    a = write(tmp_path, "a.json", document([point("direct", 1, 8e6), point("rbtree", 1, 1e6),
                                            point("rbtree", 2, 1.5e6)]))
    b = write(tmp_path, "b.json", document([point("rbtree", 2, 1.8e6), point("rbtree", 4, 2e6)]))
    out, _ = run_report(capsys, [a, b])
    assert re.search(r"^2\s+-\s+-\s+-\s+1\.80M", out, re.M)
    assert re.search(r"^4\s+-\s+-\s+-\s+2\.00M", out, re.M)
    assert "1.50M" not in out
    note = [l for l in out.splitlines() if l.startswith("note:")]
    assert len(note) == 1
    assert "a.json" in note[0] and "b.json" in note[0] and "later" in note[0]
    assert "rbtree at 2 threads" in note[0]
    assert out.count("machine:") == 1                 # one machine, one header


def test_several_machines_one_header_each(tmp_path, capsys):
    a = write(tmp_path, "a.json", document([point("rbtree", 1, 1e6)]))
    b = write(tmp_path, "b.json", document([point("bitmap", 1, 2e6)],
                                           machine=dict(MACHINE, cpu_model="Other CPU")))
    out, _ = run_report(capsys, [a, b])
    heads = [l for l in out.splitlines() if l.startswith("machine:")]
    assert len(heads) == 2
    assert "Test CPU 9000" in heads[0] and heads[0].endswith("a.json)")
    assert "Other CPU" in heads[1] and heads[1].endswith("b.json)")


def test_interrupted_run_and_failures(tmp_path, capsys):
    doc = document([point("rbtree", 1, 1e6), point("rbtree", 2, 1.5e6)], complete=False,
                   failures=["peleg-2015 at 4 threads: state is not fresh"])
    out, _ = run_report(capsys, [write(tmp_path, "a.json", doc)])
    assert "interrupted: 2 points measured" in out
    assert "failed: peleg-2015 at 4 threads: state is not fresh" in out
    empty = document([], complete=False)
    out, _ = run_report(capsys, [write(tmp_path, "e.json", empty)])
    assert "no points measured" in out and "interrupted: 0 points measured" in out


def test_exposure_table_only_when_deferring_or_probed(tmp_path, capsys):
    strict = write(tmp_path, "s.json", document([point("direct", 1, 8e6), point("rbtree", 1, 1e6)]))
    out, _ = run_report(capsys, [strict])
    assert "exposure mean" not in out
    deferred = write(tmp_path, "d.json", document(sweep_points()))
    out, _ = run_report(capsys, [deferred])
    row = next(l for l in out.splitlines() if l.startswith("linux-2008") and " 2 " in l).split()
    assert row[:6] == ["linux-2008", "2", "batched", "120.00", "400.00", "2000.00"]
    assert row[6:] == ["40", "40", "(4)", "250.0"]
    assert not any(l.startswith("direct ") for l in out.splitlines()[8:])
    rogue = point("rbtree", 1, 1e6, stale_hits=0, rogue_probes=10, stale_hits_per_sec=0.0)
    out, _ = run_report(capsys, [write(tmp_path, "r.json", document([rogue]))])
    assert "stale hits/s" in out


def test_report_diag_renders_every_point(tmp_path, capsys):
    f = write(tmp_path, "a.json", document(sweep_points()))
    out, _ = run_report(capsys, [f, "--diag"])
    assert out.count("\n== ") == 12
    assert "== linux-2008 (rbtree+batched) at 4 threads" in out
    with pytest.raises(UsageError) as e:
        report.cmd_report(parse(report.add_report_arguments, [f, "--diag", "--format", "csv"]))
    one_line(e)


# ------------------------------------------------------------------- compare

def test_compare_ratios_and_missing(tmp_path, capsys):
    a = write(tmp_path, "a.json", document([point("rbtree", 1, 1e6), point("rbtree", 2, 2e6),
                                            point("bitmap", 1, 3e6)]))
    b = write(tmp_path, "b.json", document([point("rbtree", 1, 1.5e6), point("rbtree", 2, 1e6),
                                            point("rbtree", 4, 1e6)]))
    code = report.cmd_compare(parse(report.add_compare_arguments, [a, b]))
    out = capsys.readouterr().out
    assert code == 0
    rows = {tuple(l.split()[:2]): l.split() for l in out.splitlines() if l.startswith(("rbtree", "bitmap"))}
    assert rows[("rbtree", "1")][2:5] == ["1.00M", "1.50M", "1.500"]
    assert rows[("rbtree", "2")][4] == "0.500"
    assert rows[("rbtree", "4")][2:] == ["-", "1.00M", "-", "missing", "in", "A"]
    assert rows[("bitmap", "1")][2:] == ["3.00M", "-", "-", "missing", "in", "B"]
    assert "geometric mean of B/A over 2 points measured in both: 0.866" in out
    assert "A: " + a in out and "B: " + b in out


def test_compare_marks_changes_within_noise(tmp_path, capsys):
    a = write(tmp_path, "a.json", document([point("rbtree", 1, 1e6, runs=[0.8e6, 1e6, 1.2e6])]))
    b = write(tmp_path, "b.json", document([point("rbtree", 1, 1.05e6)]))
    report.cmd_compare(parse(report.add_compare_arguments, [a, b]))
    out = capsys.readouterr().out
    assert re.search(r"1\.050 ~", out) and "may be noise" in out


def test_compare_csv(tmp_path, capsys):
    a = write(tmp_path, "a.json", document([point("rbtree", 1, 1e6)]))
    b = write(tmp_path, "b.json", document([point("rbtree", 1, 2e6), point("rbtree", 2, 3e6)]))
    report.cmd_compare(parse(report.add_compare_arguments, [a, b, "--format", "csv"]))
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["b_over_a"] == "2.0000" and rows[0]["a_ops_per_sec"] == "1000000"
    assert rows[1]["missing_in"] == "a" and rows[1]["a_ops_per_sec"] == ""


def test_compare_bad_file(tmp_path):
    a = write(tmp_path, "a.json", document([point("rbtree", 1, 1e6)]))
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(UsageError) as e:
        report.cmd_compare(parse(report.add_compare_arguments, [a, str(bad)]))
    assert "bad.json" in one_line(e)


# ---------------------------------------------------------------------- plot

def plot_doc():
    pts = sweep_points()
    for p in pts:
        if p["allocator"] != "direct":
            p["breakdown_ns"] = {"allocate": 200.0, "page_table": 80.0, "invalidation_own": 300.0,
                                 "invalidation_queued": 50.0 * p["threads"], "free": 120.0,
                                 "lock_wait": 40.0 * p["threads"], "device": 0.0, "harness": 30.0}
    return document(pts)


@pytest.mark.parametrize("which", ["breakdown", "exposure", "single"])
def test_plot_writes_a_png(tmp_path, capsys, which):
    doc = plot_doc() if which == "breakdown" else document(sweep_points())
    if which == "single":
        doc = document([point("direct", 1, 8e6), point("direct", 2, 15e6)])
    f = write(tmp_path, "a.json", doc)
    out = tmp_path / "fig.png"
    assert plot.cmd_plot(parse(plot.add_plot_arguments, [f, "-o", str(out)])) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < len(data) < 2_000_000
    assert str(out) in capsys.readouterr().out


def test_plot_svg(tmp_path):
    f = write(tmp_path, "a.json", plot_doc())
    out = tmp_path / "fig.svg"
    plot.cmd_plot(parse(plot.add_plot_arguments, [f, "-o", str(out)]))
    assert out.read_text().lstrip().startswith("<?xml") and "oversubscribed" in out.read_text()


def test_plot_rejects_other_suffixes_and_empty_results(tmp_path):
    f = write(tmp_path, "a.json", document(sweep_points()))
    with pytest.raises(UsageError) as e:
        plot.cmd_plot(parse(plot.add_plot_arguments, [f, "-o", str(tmp_path / "fig.jpg")]))
    assert ".png" in one_line(e)
    with pytest.raises(UsageError) as e:
        plot.cmd_plot(parse(plot.add_plot_arguments, [write(tmp_path, "e.json", document([])),
                                                      "-o", str(tmp_path / "fig.png")]))
    assert "no points" in one_line(e)
    with pytest.raises(UsageError) as e:
        plot.cmd_plot(parse(plot.add_plot_arguments, [f, "-o", str(tmp_path / "no" / "fig.png")]))
    assert "cannot write" in one_line(e)


def test_documents_are_not_modified_by_rendering(tmp_path):
    doc = plot_doc()
    before = copy.deepcopy(doc)
    sources = [report.Source("a", doc)]
    report.render_report(sources, "simple", diag=True)
    plot.figure(sources)
    assert doc == before


def test_older_versions_read_as_the_current_one(tmp_path):
    from harness import results
    p = sweep_points()[0]
    p["locks"] = [{"name": "rbtree", "acquisitions": 10, "contentions": 2, "handoffs": 3,
                   "wait_ns_total": 50.0}]
    p["breakdown_ns"] = {"free": 80.0, "harness": 20.0, "total": 100.0}
    v1 = document([copy.deepcopy(p)])
    doc = results.load(write(tmp_path, "v1.json", v1))
    lock = doc["points"][0]["locks"][0]
    assert doc["version"] == results.VERSION
    assert (lock["acq_bounces"], lock["wait_scope"]) == (3, "all acquisitions")
    assert "handoffs" not in lock
    v2 = dict(document([copy.deepcopy(p)]), version=2)
    doc = results.load(write(tmp_path, "v2.json", v2))
    assert doc["version"] == results.VERSION
    # a version 2 breakdown is read as written, its `free` whole
    assert doc["points"][0]["breakdown_ns"] == p["breakdown_ns"]
    assert "acq_bounces" not in doc["points"][0]["locks"][0]
    # a version 4 breakdown keeps its `harness`, which is no named step
    v4 = dict(document([copy.deepcopy(p)]), version=4)
    doc = results.load(write(tmp_path, "v4.json", v4))
    assert doc["version"] == results.VERSION
    b = doc["points"][0]["breakdown_ns"]
    assert b == p["breakdown_ns"] and diagnostics.attributed(b) == pytest.approx(0.8)
    assert "harness (the loop; direct's cost)" in diagnostics.breakdown_table(doc["points"][0])
    with pytest.raises(UsageError, match="version 99, this tool reads versions 1, 2, 3, 4, 5, 6, 7"):
        results.load(write(tmp_path, "v99.json", dict(v1, version=99)))


# ------------------------------------------------------------------- latency

def _dist(p50, n=1000):
    """A latency distribution as readout.distribution writes it."""
    qs = {"p50": p50, "p90": 2 * p50, "p99": 5 * p50, "p99_9": 9 * p50, "max": 20 * p50}
    return dict(qs, count=n, mean=1.5 * p50,
                buckets=[[p50, n // 2], [2 * p50, 4 * n // 10], [5 * p50, 9 * n // 100],
                         [9 * p50, 9 * n // 1000], [20 * p50, n // 1000]])


def latency_point(design, p50, threads=2):
    diag = {"timing": "on: one lock hold in 16 timed", "sampled": 2000, "outliers": 0,
            "outlier_ns": 100000}
    lat = {"map": _dist(p50), "unmap": _dist(p50 / 4),
           "locks": {"rbtree": {"wait": _dist(300.0, 50), "hold": _dist(90.0)}},
           "sampling": "maps and unmaps: one I/O in 16", "record_ns": 2.0,
           "cost_ns_per_io": 0.5, "cost_share": 0.0005, "cost_share_on_cpu": 0.001}
    return point(design, threads, 1e6, diag=diag, latency_ns=lat,
                 breakdown_ns={"allocate": 300.0, "diag_timing": 10.0,
                               "diag_histograms": 0.3, "total": 1000.0})


def test_latency_table_percentiles_and_cost():
    text = diagnostics.render_point(latency_point("linux-2008", 600.0), MACHINE, OPTIONS)
    assert "-- latency" in text
    rows = {line.split()[0] + " " + line.split()[1]: line.split()
            for line in text.splitlines() if line.startswith(("map ", "unmap ", "rbtree "))}
    # samples, then p50 p90 p99 p99.9 max in µs
    assert rows["map 1000"][2:7] == ["0.600", "1.200", "3.000", "5.400", "12.00"]
    assert rows["rbtree wait"][2:4] == ["50", "0.300"]
    assert ("collecting them cost 0.50 ns per I/O (0.05% of the I/O's time, 0.10% of its "
            "time on a CPU)") in text
    assert ("--diag's own cost in all, its clock reads and these records: 10.5 ns per I/O, "
            "1.05% of the I/O's time") in text


def test_a_version_6_file_renders_without_distributions(tmp_path, capsys):
    p = latency_point("linux-2008", 600.0)
    del p["latency_ns"]
    f = write(tmp_path, "v6.json", dict(document([p]), version=6))
    doc = results.load(f)
    assert "latency_ns" not in doc["points"][0]
    out, _ = run_report(capsys, [f, "--diag"])
    assert "not recorded: this point was written before results format version 7" in out
    assert "p99.9" not in out
    with pytest.raises(UsageError) as e:
        plot.cmd_plot(parse(plot.add_plot_arguments, [f, "--latency", "-o",
                                                      str(tmp_path / "l.png")]))
    assert "no latency distributions" in one_line(e)


def test_plot_latency_writes_a_file(tmp_path):
    pytest.importorskip("matplotlib")
    f = write(tmp_path, "l.json", dict(document([latency_point("linux-2008", 600.0),
                                                 latency_point("peleg-2015", 200.0)]),
                                       version=7))
    out = tmp_path / "lat.png"
    assert plot.cmd_plot(parse(plot.add_plot_arguments, [f, "--latency", "-o", str(out)])) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
