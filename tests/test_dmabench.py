"""`iommu-stress dmabench`: the kernel tool's options, ranges, defaults and
output (tools/testing/selftests/dma/dma_map_benchmark.c), the latencies
from the sampled steps, and one short window."""
import argparse
import math
from types import SimpleNamespace

import numpy as np
import pytest

from harness import abi, cli, dmabench
from harness.errors import UsageError


def args_for(*argv):
    return dmabench.add_arguments(argparse.ArgumentParser()).parse_args(list(argv))


def test_defaults_are_the_kernel_tools():
    kopts, cores = dmabench.validate(args_for())
    assert kopts == dict(threads=1, seconds=20, node=-1, bits=32, dir=0, xdelay=0, granule=1)
    assert cores is None
    assert args_for().design == "linux-6.7"


@pytest.mark.parametrize("argv,message", [
    (["-t", "0"], "invalid number of threads, must be in 1-1024"),
    (["-t", "1025"], "invalid number of threads, must be in 1-1024"),
    (["-s", "0"], "invalid number of seconds, must be in 1-300"),
    (["-s", "301"], "invalid number of seconds, must be in 1-300"),
    (["-x", "-1"], "invalid transmit delay, must be in 0-10000000"),
    (["-x", "10000001"], "invalid transmit delay, must be in 0-10000000"),
    (["-b", "19"], "invalid dma mask bit, must be in 20-64"),
    (["-b", "65"], "invalid dma mask bit, must be in 20-64"),
    (["-d", "3"], "invalid dma direction"),
    (["-g", "0"], "invalid granule size"),
    (["-g", "1025"], "invalid granule size"),
    (["-n", "4096"], "invalid numa node"),
    (["-t", "four"], "-t: expected an integer, got 'four'"),
])
def test_the_kernel_tools_checks(argv, message):
    with pytest.raises(UsageError) as e:
        dmabench.validate(args_for(*argv))
    assert str(e.value) == message


def test_option_letters_attached_as_getopt_takes_them():
    kopts, _ = dmabench.validate(args_for("-t4", "-s2", "-g64", "-d2", "-b48", "-x100"))
    assert kopts == dict(threads=4, seconds=2, node=-1, bits=48, dir=2, xdelay=100, granule=64)


def test_the_run_it_asks_for():
    kopts, _ = dmabench.validate(args_for("-t", "4", "-s", "2", "-g", "64", "-b", "20",
                                          "-x", "500"))
    o = dmabench.options(kopts, "linux-6.7", 300.0)
    assert o["threads"] == [4] and o["duration"] == 2.0 and o["depth"] == 1
    assert o["sizes"] == [(64, 1.0)] and o["device_ns"] == 800.0 and o["diag"]
    assert o["pages"] == 256 and o["boundary"] == 256           # a 1 MiB DMA mask
    kopts["bits"] = 64
    assert dmabench.options(kopts, "linux-6.7", 0.0)["pages"] == 1 << 20   # 4 GiB first


def test_output_is_the_kernel_tools():
    kopts, _ = dmabench.validate(args_for("-t", "4", "-s", "2", "-g", "64", "-d", "1"))
    assert dmabench.kernel_lines(kopts, [250.0, 49.0, 1234.0, 5678.0]) == (
        "dma mapping benchmark: threads:4 seconds:2 node:-1 dir:TO_DEVICE granule: 64\n"
        "average map latency(us):0.2 standard deviation:0.0\n"
        "average unmap latency(us):1.2 standard deviation:5.7\n")


def test_mean_and_deviation_from_the_sums_and_squares():
    steps = np.zeros(2, dtype=abi.STEPS)
    # maps of 100, 300 (worker 0) and 200 cycles (worker 1); unmaps of 1000
    # and 3000, with one sampled unmap over the outlier bound not among them
    steps["maps"] = [2, 1]
    steps["map_cycles"] = [400, 200]
    steps["map_sq"] = [100 ** 2 + 300 ** 2, 200 ** 2]
    steps["unmaps"] = [1, 1]
    steps["unmaps_whole"] = [1, 1]
    steps["unmap_cycles"] = [1000, 3000]
    steps["unmap_sq"] = [1000 ** 2, 3000 ** 2]
    raw = SimpleNamespace(steps=steps, cycles_per_ns=2.0, stamp_cycles=10.0)
    lat, maps, unmaps = dmabench.latencies(raw)
    assert (maps, unmaps) == (3, 2)
    assert lat[0] == pytest.approx((200 - 3 * 10) / 2)             # stamps off the mean
    assert lat[1] == pytest.approx(math.sqrt((100 ** 2 + 200 ** 2 + 300 ** 2) / 3 - 200 ** 2) / 2)
    assert lat[2] == pytest.approx((2000 - 3 * 10) / 2)
    assert lat[3] == pytest.approx(1000 / 2)


def test_one_short_window(tmp_path, capsys, no_leaks):
    # bitmap+strict's ring loop is compiled by the other tests too
    kopts, _ = dmabench.validate(args_for("-t", "2", "-s", "1", "-g", "2"))
    res = dmabench.measure(kopts, "bitmap", duration=0.1)
    assert res["spec"] == "bitmap+strict" and res["maps"] > 0
    assert res["sampled_maps"] > 0 and res["sampled_unmaps"] > 0
    for k in ("map_ns", "map_stddev_ns", "unmap_ns", "unmap_stddev_ns"):
        assert res[k] is not None and res[k] >= 0
    assert res["unmap_ns"] > res["map_ns"]       # strict: the unmap waits for the IOTLB
    assert res["fill_ns"] > 0


def test_cli_errors_are_one_line(capsys):
    assert cli.main(["dmabench", "-t", "0"]) == 2
    assert capsys.readouterr().err == ("iommu-stress: error: invalid number of threads, must "
                                       "be in 1-1024\n")
    assert cli.main(["dmabench", "--design", "direct", "-s", "1"]) == 2
    assert "maps nothing" in capsys.readouterr().err
