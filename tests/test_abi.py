"""The run's ABI: one owner, distinct control words, bounds that come from
the capacities the arrays are sized by."""
import numpy as np
import pytest

from harness import abi, config
from harness.cli import main
from harness.errors import UsageError


def test_no_two_control_words_share_a_word():
    assert abi.check_words() == []
    words = abi.control_words()
    assert len(set(words.values())) == len(words)
    assert words["CTL_ABORT"] == 0          # the word the locks watch


def test_the_check_finds_a_shared_word(monkeypatch):
    monkeypatch.setattr(abi, "CTL_EXTRA", abi.CTL_PHASE, raising=False)
    assert any("share control word %d" % abi.CTL_PHASE in p for p in abi.check_words())


def test_counter_lines_are_whole_lines():
    for dt in (abi.COUNTERS, abi.STEPS):
        assert dt.itemsize % abi.LINE_BYTES == 0


def blank():
    return {name: 1 for name in abi.CONFIG.names}


def test_pack_writes_every_field_and_refuses_gaps():
    cfg = np.zeros(1, dtype=abi.CONFIG)
    fields = blank()
    fields["depth"] = abi.MAX_DEPTH
    abi.pack(cfg, **fields)
    assert cfg[0]["depth"] == abi.MAX_DEPTH
    del fields["seed"]
    with pytest.raises(ValueError, match="missing \\['seed'\\]"):
        abi.pack(cfg, **fields)
    with pytest.raises(ValueError, match="unknown \\['colour'\\]"):
        abi.pack(cfg, **blank(), colour=1)


def test_depth_beyond_the_ring_cannot_be_packed():
    cfg = np.zeros(1, dtype=abi.CONFIG)
    with pytest.raises(ValueError, match="depth"):
        abi.pack(cfg, **dict(blank(), depth=abi.MAX_DEPTH + 1))


def test_the_bounds_of_the_options_are_the_capacities():
    assert config.MAX_THREADS == abi.MAX_WORKERS
    for name, cap in (("depth", abi.MAX_DEPTH), ("domains", abi.MAX_DOMAINS)):
        assert config.convert(name, cap, "--x") == cap
        with pytest.raises(UsageError, match="1..%d" % cap):
            config.convert(name, cap + 1, "--x")
    # the ring each worker has holds MAX_DEPTH mappings
    assert dict((n, s) for n, _, s in abi.layout(2))["ring"] == (2 * abi.MAX_DEPTH * abi.RING_WORDS,)


def test_depth_beyond_the_ring_is_one_line_and_exit_2(capsys):
    code = main(["run", "--design", "bitmap", "--threads", "1", "--depth",
                 str(abi.MAX_DEPTH + 1)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--depth" in err[0] and "1..%d" % abi.MAX_DEPTH in err[0]
