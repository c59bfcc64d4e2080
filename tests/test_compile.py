"""Compiling: a compile a user waits for says so, with how long it took
last time; a cache directory that cannot be written is one line, before
anything runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import entries

ROOT = Path(__file__).resolve().parent.parent


def test_the_notice_says_what_compiles_and_how_long_it_took_last_time(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setattr(entries, "_times_path", lambda: str(tmp_path / "times.json"))
    entries.compile_notice(["bitmap", "pools"], 2)
    line = capsys.readouterr().err.strip()
    assert line.startswith("iommu-stress: compiling bitmap, pools, 2 at once")
    assert "estimate: %d s" % entries.COMPILE_GUESS_S in line
    entries.compile_record(["bitmap", "pools"], [30.0, None])     # pools failed: not kept
    entries.compile_record(["pools"], [50.0])
    entries.compile_notice(["bitmap", "pools"], 2)
    assert "(about 50 s;" in capsys.readouterr().err             # the longer of the two
    entries.compile_notice(["bitmap", "pools"], 1)
    assert "(about 80 s;" in capsys.readouterr().err             # one after the other
    assert os.listdir(tmp_path) == ["times.json"]                 # no temporary left


def test_a_corrupt_record_of_times_is_only_an_estimate_lost(tmp_path, monkeypatch, capsys):
    (tmp_path / "times.json").write_text("{not json")
    monkeypatch.setattr(entries, "_times_path", lambda: str(tmp_path / "times.json"))
    entries.compile_notice(["direct"], 1)
    assert "estimate:" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["run", "--design", "direct", "--threads", "1"],
                                 ["replay", "--allocator", "bitmap",
                                  str(ROOT / "tests" / "data" / "basic.trace")]])
def test_an_unusable_cache_directory_is_one_line(tmp_path, cmd):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = dict(os.environ, IOMMU_STRESS_CACHE=str(blocker / "cache"))
    r = subprocess.run([sys.executable, "-m", "harness.cli", *cmd], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("iommu-stress: error: cannot use %s" % blocker), lines[0]
    assert "IOMMU_STRESS_CACHE" in lines[0]
    assert not (ROOT / "allocators" / "__pycache__").exists() or \
        not any(p.suffix in (".nbi", ".nbc") for p in (ROOT / "allocators" / "__pycache__").iterdir())
