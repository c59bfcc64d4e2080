"""Placement of the workers on the CPUs: the order each policy gives on
the sysfs trees of machines we do not have, --cpus and --node, and the
one-line errors."""
import os
from pathlib import Path

import psutil
import pytest

from harness import cli, designs, numa, placement, readout, topology
from harness.bench import Bench
from harness.config import defaults
from harness.errors import UsageError
from harness.topology import format_cpulist, parse_cpulist


def fake_sysfs(root, cpus, nodes, memory_nodes=None):
    """A sysfs tree under `root`: cpus {cpu: (package, siblings)}, nodes
    {node: [cpus]}."""
    base = Path(root) / "sys/devices/system/cpu"
    base.mkdir(parents=True)
    (base / "online").write_text(format_cpulist(cpus) + "\n")
    for c, (pkg, sib) in cpus.items():
        t = base / ("cpu%d" % c) / "topology"
        t.mkdir(parents=True)
        (t / "physical_package_id").write_text("%d\n" % pkg)
        (t / "thread_siblings_list").write_text(format_cpulist(sib) + "\n")
        (t / "core_id").write_text("%d\n" % min(sib))
    nd = Path(root) / "sys/devices/system/node"
    nd.mkdir(parents=True)
    for n, members in nodes.items():
        (nd / ("node%d" % n)).mkdir()
        (nd / ("node%d" % n) / "cpulist").write_text(format_cpulist(members) + "\n")
    (nd / "has_memory").write_text(format_cpulist(memory_nodes if memory_nodes is not None
                                                  else nodes) + "\n")
    return root


@pytest.fixture
def two_socket(tmp_path):
    """2 packages of 32 cores, 2 threads each, numbered as Intel's do: the
    first threads of package 0, of package 1, then the second threads
    (sibling of c is c + 64); a node per package."""
    cpus = {}
    for c in range(128):
        first = c % 64
        cpus[c] = (first // 32, [first, first + 64])
    nodes = {0: list(range(0, 32)) + list(range(64, 96)),
             1: list(range(32, 64)) + list(range(96, 128))}
    return fake_sysfs(tmp_path / "two-socket", cpus, nodes)


@pytest.fixture
def four_node(tmp_path):
    """2 packages of 2 NUMA nodes each (sub-NUMA clustering), 8 cores a
    node, no SMT: node n holds CPUs 8n..8n+7, nodes 0-1 on package 0."""
    cpus = {c: (c // 16, [c]) for c in range(32)}
    nodes = {n: list(range(8 * n, 8 * n + 8)) for n in range(4)}
    return fake_sysfs(tmp_path / "four-node", cpus, nodes)


@pytest.fixture
def adjacent_siblings(tmp_path):
    """One package of 4 cores, siblings numbered next to each other (0,1
    share a core), as many AMD and ARM machines number them."""
    cpus = {c: (0, [c & ~1, c | 1]) for c in range(8)}
    return fake_sysfs(tmp_path / "adjacent", cpus, {0: list(range(8))})


def chosen(root, allowed, **opts):
    return placement.choose(opts, allowed, root=root)


def test_cpulists_parse_and_print_as_the_kernels():
    assert parse_cpulist("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("0-7:2") == [0, 2, 4, 6]
    assert parse_cpulist("") == []
    assert format_cpulist([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    for bad in ("3-1", "a", "1,,2", "0-", "-1"):
        with pytest.raises(ValueError):
            parse_cpulist(bad)


def test_the_two_socket_machine_is_read_as_sysfs_says(two_socket):
    t = topology.read(two_socket)
    assert len(t.cpus) == 128 and t.smt() and t.packages() == [0, 1]
    assert t.cpus[5].core == (5, 69) and t.cpus[100].package == 1 and t.cpus[100].node == 1
    assert len(t.cores()) == 64 and sorted(t.nodes) == [0, 1]


def test_two_socket_orders(two_socket):
    allowed = range(128)
    first0, first1 = list(range(32)), list(range(32, 64))
    # one thread per core, package 0 then 1, then the second threads
    assert chosen(two_socket, allowed, placement="cores-first").order == list(range(128))
    # a core's two threads together
    compact = chosen(two_socket, allowed, placement="compact")
    assert compact.order[:6] == [0, 64, 1, 65, 2, 66]
    assert compact.order[64:66] == [32, 96] and compact.shared_from == 2
    # alternate packages, every core once before any sibling
    spread = chosen(two_socket, allowed, placement="spread")
    assert spread.order[:64] == [c for pair in zip(first0, first1) for c in pair]
    assert spread.order[64:68] == [64, 96, 65, 97] and spread.shared_from == 65
    none = chosen(two_socket, allowed, placement="none")
    assert none.order == list(range(128)) and not none.pinned and none.cpu_of(3) is None
    for p in (compact, spread):
        assert sorted(p.order) == list(range(128))


def test_more_workers_than_cpus_wrap_evenly(two_socket):
    p = chosen(two_socket, range(128), placement="spread")
    counts = {}
    for w in range(1024 + 3):
        counts[p.cpu_of(w)] = counts.get(p.cpu_of(w), 0) + 1
    assert set(counts.values()) == {8, 9}
    assert p.cpu_of(128) == p.cpu_of(0) == 0 and p.cpu_of(129) == 32


def test_cpus_and_node_cut_the_set(two_socket):
    p = chosen(two_socket, range(128), placement="compact", cpus="0-3,64-67")
    assert p.order == [0, 64, 1, 65, 2, 66, 3, 67]
    p = chosen(two_socket, range(128), placement="cores-first", cpus="0-3,64-67")
    assert p.order == [0, 1, 2, 3, 64, 65, 66, 67]
    # a core of which only the second thread is given counts as a core
    p = chosen(two_socket, range(128), placement="cores-first", cpus="0,1,65")
    assert p.order == [0, 1, 65] and p.shared_from == 3
    p = chosen(two_socket, range(128), placement="spread", node=1)
    assert p.order[:3] == [32, 33, 34] and p.order[32:34] == [96, 97] and p.node == 1
    assert len(p.order) == 64


def test_four_nodes_spread_over_packages_then_nodes(four_node):
    p = chosen(four_node, range(32), placement="spread")
    assert p.order[:8] == [0, 16, 8, 24, 1, 17, 9, 25]
    assert chosen(four_node, range(32), placement="compact").order == list(range(32))
    assert chosen(four_node, range(32), placement="cores-first").order == list(range(32))
    p = chosen(four_node, range(32), placement="spread", node=2)
    assert p.order == list(range(16, 24)) and p.shared_from is None
    assert "node 2" in placement.describe(p.record())


def test_cores_first_skips_siblings_numbered_next_to_each_other(adjacent_siblings):
    assert chosen(adjacent_siblings, range(8), placement="cores-first").order \
        == [0, 2, 4, 6, 1, 3, 5, 7]
    assert chosen(adjacent_siblings, range(8), placement="compact").order == list(range(8))
    assert chosen(adjacent_siblings, range(8), placement="spread").order \
        == [0, 2, 4, 6, 1, 3, 5, 7]


def test_cpus_and_nodes_not_there_are_one_line_errors(two_socket, four_node):
    with pytest.raises(UsageError, match=r"^--cpus 0-3,200: CPU 200 not among the CPUs this "
                                         r"run may use \(0-127\)$"):
        chosen(two_socket, range(128), cpus="0-3,200")
    with pytest.raises(UsageError, match=r"^--node 5: no such NUMA node; this machine has "
                                         r"nodes 0-1$"):
        chosen(two_socket, range(128), node=5)
    with pytest.raises(UsageError, match=r"^--node 1: none of its CPUs \(32-63,96-127\) is "
                                         r"among the CPUs this run may use \(0-7\)$"):
        chosen(two_socket, range(128), node=1, cpus="0-7")
    nomem = fake_sysfs(four_node.parent / "nomem", {c: (0, [c]) for c in range(4)},
               {0: [0, 1], 1: [2, 3]}, memory_nodes=[0])
    with pytest.raises(UsageError, match=r"^--node 1: the node has no memory"):
        chosen(nomem, range(4), node=1)


def test_a_tree_without_node_or_smt_files_is_one_node_of_single_threads(tmp_path):
    base = tmp_path / "sys/devices/system/cpu"
    for c in range(3):
        (base / ("cpu%d" % c)).mkdir(parents=True)
    t = topology.read(tmp_path)
    assert sorted(t.cpus) == [0, 1, 2] and not t.smt() and t.nodes == {0: [0, 1, 2]}
    assert chosen(tmp_path, [0, 1, 2], placement="spread").order == [0, 1, 2]


def test_bad_option_values_are_one_line_errors(capsys):
    for args, msg in ((["--placement", "wide"], "--placement: expected one of cores-first, "
                                                "compact, spread, none, got 'wide'"),
                      (["--cpus", "2-1"], "--cpus: expected a range lo-hi with lo <= hi"),
                      (["--cpus", "9999"], "--cpus 9999: CPU 9999 not among the CPUs"),
                      (["--node", "-1"], "--node: expected a number in the range 0..1023")):
        assert cli.main(["run", "--design", "direct", "--threads", "1", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err, err


def test_the_node_mask_and_a_binding_here():
    mask = numa.node_mask(65)
    assert mask[1] == 2 and mask[0] == 0
    try:
        with numa.bound(0):
            assert numa.get_policy()[0] == numa.MPOL_BIND
    except UsageError as e:
        pytest.skip(str(e))
    assert numa.get_policy()[0] == numa.MPOL_DEFAULT


def test_workers_run_where_the_placement_says(no_leaks):
    cores = sorted(os.sched_getaffinity(0))
    d = [designs.resolve("direct")]
    o = dict(defaults(), threads=[3], duration=0.05, warmup=0.0, repeats=1,
             cpus=str(cores[-1]), node=0 if Path("/sys/devices/system/node/node0").exists()
             else None)
    try:
        with Bench(o, d) as b:
            w = readout.window(b.window(0, 3))
            assert b.env.cnt["core"][:3].tolist() == [cores[-1]] * 3
            # the machine's other load over the window is recorded
            assert {"other_cpus", "machine_other_cpus", "steal_ns"} <= set(w["disturbance"])
    except UsageError as e:                 # no memory policy here
        pytest.skip(str(e))
    o.update(placement="none", cpus=None, node=None)
    with Bench(o, d) as b:
        b.window(0, 2)
        assert b.env.cnt["core"][:2].tolist() == [-1, -1]
        assert {c.cpu_num() for c in psutil.Process().children()} <= set(cores)
        for c in psutil.Process().children():
            assert sorted(c.cpu_affinity()) == cores
    assert not psutil.Process().children(recursive=True)
