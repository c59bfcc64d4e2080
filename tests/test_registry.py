"""The seam between the allocators and the harness: every registered
module keeps the contract, and a module from outside the package runs in
every command with no edit anywhere else."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import allocators
from harness import designs

PLUGIN = Path(__file__).parent / "data" / "plugin"


@pytest.mark.parametrize("name", allocators.names())
def test_every_allocator_keeps_the_contract(name):
    mod = allocators.module(name)
    assert allocators.contract_problems(mod) == []


def test_a_broken_module_is_told_what_it_lacks():
    import types
    mod = types.ModuleType("allocators.broken")
    mod.NAME = "other"
    assert allocators.contract_problems(mod)[0].startswith("lacks LOCK_CLASSES")


def test_designs_come_from_the_registry():
    assert designs.resolve("magazines").variant == "list"
    assert designs.resolve("peleg-2015").spec == "magazines:fixed+percpu"
    assert designs.resolve("direct").flush == "none"
    listed = [spec for spec, _ in designs.listing()]
    for name in allocators.names():
        assert name in listed


def cli(*args, timeout=600):
    env = dict(os.environ, **{allocators.PATH_ENV: str(PLUGIN)})
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_an_allocator_of_ones_own_runs_everywhere(tmp_path):
    """firstfit lives outside the package: found through the environment,
    it is a design for run, sweep and diagnose (with the ownership check
    and the state check), replays a trace, and is listed."""
    out = tmp_path / "r.json"
    # one flush policy: each more is a loop to compile (a minute of CI);
    # the policies themselves are the built-in allocators' tests' business
    # with --diag, whose loop (compiled apart) diagnose then finds
    r = cli("sweep", "--designs", "firstfit+strict", "--threads", "1,2",
            "--duration", "0.1", "--warmup", "0", "--repeats", "1", "--pages", "4096",
            "--sizes", "1:3,5:1", "--check", "--diag", "--profile", "none", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert {(p["design"], p["threads"]) for p in doc["points"]} == \
        {("firstfit+strict", 1), ("firstfit+strict", 2)}
    for p in doc["points"]:
        assert p["ops_per_sec"] > 0 and p["state_checked"]
        assert p["alloc_stats"]["allocs"] > 0
        assert [l["name"] for l in p["locks"]][0] == "firstfit"
        assert p["breakdown_ns"]["allocate"] > 0
    # the sweep's loops are in the cache now: diagnose compiles nothing new
    r = cli("diagnose", "--design", "firstfit+strict", "--threads", "2", "--duration", "0.1",
            "--repeats", "1", "--pages", "4096", "--profile", "none")
    assert r.returncode == 0, r.stderr
    assert "firstfit" in r.stdout and "-- locks" in r.stdout and "iommu-stress: compiling" not in r.stderr
    trace = tmp_path / "t.trace"
    trace.write_text("a x 2\na y 1\nf x\na z 1\na w 3\n")
    r = cli("replay", str(trace), "--allocator", "firstfit", "--pages", "64")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == ["x 1", "y 3", "z 1", "w 4", ""]
    r = cli("designs")
    assert r.returncode == 0 and "firstfit" in r.stdout and "First fit over a byte per page" in r.stdout
