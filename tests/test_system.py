"""The machine's state: read from fake sysfs and procfs trees, the warnings
each setting earns, the other load of a window, `iommu-stress system`."""
from pathlib import Path

import pytest

from harness import cli, disturbance, readout, system
from harness.topology import format_cpulist


def tree(root, files):
    for rel, text in files.items():
        p = Path(root) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")
    return root


def cpus_files(n, siblings=None):
    out = {"sys/devices/system/cpu/online": "0-%d" % (n - 1)}
    for c in range(n):
        t = "sys/devices/system/cpu/cpu%d/topology/" % c
        out[t + "physical_package_id"] = "0"
        out[t + "thread_siblings_list"] = format_cpulist(siblings(c) if siblings else [c])
    return out


@pytest.fixture
def noisy(tmp_path):
    """A laptop-like host: powersave on half its CPUs, turbo on, SMT, THP
    always, isolated and nohz_full CPUs, two nodes balanced, busy."""
    files = cpus_files(8, lambda c: [c & ~1, c | 1])
    for c in range(8):
        files["sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % c] = \
            "powersave" if c < 4 else "performance"
        files["sys/devices/system/cpu/cpu%d/cpufreq/scaling_driver" % c] = "intel_pstate"
    files.update({
        "sys/devices/system/cpu/intel_pstate/no_turbo": "0",
        "sys/devices/system/cpu/smt/control": "on",
        "sys/devices/system/cpu/smt/active": "1",
        "sys/kernel/mm/transparent_hugepage/enabled": "[always] madvise never",
        "sys/kernel/mm/transparent_hugepage/defrag": "always defer [madvise] never",
        "sys/kernel/mm/transparent_hugepage/shmem_enabled": "always within_size advise [never] deny force",
        "sys/devices/system/cpu/isolated": "4-7",
        "sys/devices/system/cpu/nohz_full": "6-7",
        "sys/devices/system/node/node0/cpulist": "0-3",
        "sys/devices/system/node/node1/cpulist": "4-7",
        "proc/sys/kernel/numa_balancing": "1",
        "proc/loadavg": "6.50 3.00 1.00 7/300 1234",
        "proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr",
    })
    return tree(tmp_path / "noisy", files)


@pytest.fixture
def quiet(tmp_path):
    """A machine set up for benchmarks: performance, no boost, no SMT."""
    files = cpus_files(4)
    for c in range(4):
        files["sys/devices/system/cpu/cpu%d/cpufreq/scaling_governor" % c] = "performance"
    files.update({
        "sys/devices/system/cpu/cpufreq/boost": "0",
        "sys/devices/system/cpu/smt/control": "off",
        "sys/devices/system/cpu/smt/active": "0",
        "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never",
        "sys/devices/system/cpu/isolated": "",
        "proc/loadavg": "0.02 0.01 0.00 1/100 99",
        "proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr",
    })
    return tree(tmp_path / "quiet", files)


def test_a_noisy_host_is_read_and_warned_about(noisy):
    s = system.read(noisy)
    assert s["governor"] == {"performance": "4-7", "powersave": "0-3"}
    assert s["boost"] is True and s["smt"] == "on" and s["smt_active"]
    assert s["thp"] == "always" and s["thp_defrag"] == "madvise" and s["thp_shmem"] == "never"
    assert s["isolated"] == "4-7" and s["nohz_full"] == "6-7"
    assert s["numa_nodes"] == 2 and s["numa_balancing"] == 1 and s["hypervisor"] is None
    w = system.warnings(s, {"cpus": [2, 3, 4, 5, 6, 7]}, 6)
    text = "\n".join(w)
    assert "governor powersave on CPUs 0-3, not performance" in text
    assert "turbo boost is on" in text
    assert "CPUs 4-7 of the run are isolated and 2-3 are not" in text
    assert "CPUs 6-7 of the run are nohz_full and 2-5 are not" in text
    assert "automatic NUMA balancing is on" in text
    assert "load average 6.50 over the last minute on 6 CPUs" in text
    assert len(w) == 6
    # a run on the isolated CPUs alone mixes nothing
    assert not any("isolated" in x for x in system.warnings(s, {"cpus": [4, 5]}, 2))


def test_a_quiet_host_earns_no_warning(quiet):
    s = system.read(quiet)
    assert s["boost"] is False and s["smt"] == "off" and not s["smt_active"]
    assert system.warnings(s, {"cpus": [0, 1, 2, 3]}, 4) == []
    lines = system.notes(s)
    assert "frequency: governor performance on CPUs 0-3" in lines
    assert "boost: off" in lines and "hypervisor: none seen" in lines


def test_a_hypervisor_is_seen_by_flag_xen_or_dmi(tmp_path):
    flag = tree(tmp_path / "a", {"proc/cpuinfo": "flags\t\t: fpu hypervisor lahf_lm"})
    assert system.read(flag)["hypervisor"] == "the CPU's hypervisor flag"
    xen = tree(tmp_path / "b", {"sys/hypervisor/type": "xen"})
    assert system.read(xen)["hypervisor"] == "/sys/hypervisor/type xen"
    dmi = tree(tmp_path / "c", {"sys/class/dmi/id/sys_vendor": "QEMU",
                                "sys/class/dmi/id/product_name": "Standard PC"})
    assert system.read(dmi)["hypervisor"] == "DMI sys_vendor QEMU"
    s = system.read(dmi)
    assert any("a virtual machine (DMI sys_vendor QEMU)" in w for w in system.warnings(s))


def test_cpu_times_count_steal_and_busy_of_the_run_and_of_the_machine(tmp_path):
    tick = disturbance._TICK_NS
    tree(tmp_path, {"stat": "cpu  100 0 50 900 0 5 5 7 0 0\n"
                            "cpu0 60 0 30 400 0 3 2 4 0 0\n"
                            "cpu1 40 0 20 500 0 2 3 3 0 0\nintr 1 2"})
    steal, busy, every = disturbance.cpu_times({1}, proc=str(tmp_path))
    assert steal == 3 * tick and busy == (40 + 20 + 2 + 3) * tick
    assert every == (100 + 50 + 5 + 5) * tick


def test_other_load_is_busy_time_that_is_not_ours(monkeypatch):
    snaps = iter([(0.0, 0.0, 0.0), (1e6, 3e8, 9e8)])
    monkeypatch.setattr(disturbance, "cpu_times", lambda cores: next(snaps))
    monkeypatch.setattr(disturbance, "exec_ns", lambda pid: 0)
    before = disturbance.Snapshot([], {0, 1})
    after = disturbance.Snapshot([], {0, 1})
    after.t = before.t + int(1e9)
    after.ours = int(1e8)
    _, _, steal, load = after.since(before)
    assert steal == 1e6
    assert load == {"other_cpus": pytest.approx(0.2), "machine_other_cpus": pytest.approx(0.8)}
    windows = [{"disturbance": {"steal_ns": 1e6, "other_cpus": 0.2, "machine_other_cpus": 0.8}},
               {"disturbance": {"steal_ns": 0.0, "other_cpus": 0.6, "machine_other_cpus": 0.7}}]
    m = readout.machine_load(windows)
    assert m == {"windows": 2, "steal_ns": 1e6, "other_cpus_mean": pytest.approx(0.4),
                 "other_cpus_max": 0.6, "machine_other_cpus_max": 0.8}


def test_the_system_command_prints_the_check(capsys):
    assert cli.main(["system"]) == 0
    out = capsys.readouterr().out
    assert "hypervisor:" in out and "transparent huge pages:" in out
    assert "placement cores-first over CPUs" in out
    assert cli.main(["system", "--placement", "wide"]) == 2
    assert "--placement: expected one of" in capsys.readouterr().err
