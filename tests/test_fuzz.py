"""Fuzzing the input parsers: whatever a config, workload, profile or trace
file holds, the only exception that comes out is UsageError, as one line
that names the file (and, for a trace, the line)."""
import datetime
import math
import re
import tempfile
import tomllib
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from harness import config, trace
from harness.errors import UsageError
from hwmodel.costs import FIELDS as PROFILE_FIELDS

FUZZ = settings(deadline=None, max_examples=200,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Numbers too long for int(): Python refuses to convert more than 4300 digits.
HUGE_DEC = "9" * 5000
HUGE_HEX = "0x" + "f" * 5000

# text without lone surrogates, so that it can be written as UTF-8
TEXT = st.characters(codec="utf-8")
ODD = ["\x00", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u3000", "\ufeff",
       "é", "µ", "٣", "²", "𝟗", "\U0001f600"]


def one_line(msg):
    assert "\n" not in msg and "\r" not in msg, repr(msg)
    assert len(msg.splitlines()) == 1, repr(msg)


def write(directory, name, data):
    p = Path(directory) / name
    if isinstance(data, str):
        data = data.encode("utf-8")
    p.write_bytes(data)
    return p


def check_file_error(e, path, text):
    """A UsageError about a file: one line, names the file, and any line
    number it gives is one of the file's lines."""
    msg = str(e)
    one_line(msg)
    assert str(path) in msg, msg
    m = re.match(re.escape(str(path)) + r":(\d+):", msg)
    if m and text is not None:
        # files are read with universal newlines
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.count("\n") + (not text.endswith("\n"))
        assert 1 <= int(m.group(1)) <= max(1, lines), msg


# --- config files -------------------------------------------------------

KEYS = sorted(set(config.OPTIONS) | set(PROFILE_FIELDS)
              | {k.replace("_", "-") for k in config.OPTIONS} | {"thread", "design", "x", ""})
key_names = st.one_of(st.sampled_from(KEYS), st.text(TEXT, max_size=8))

scalars = st.one_of(
    st.integers(-2**63, 2**63 - 1),
    st.integers(-10**80, 10**80),
    st.floats(),
    st.booleans(),
    st.text(TEXT | st.sampled_from([c for c in ODD if len(c) == 1]), max_size=12),
    st.sampled_from(["1,2,4", "1-1024", "0", "1-0", "2048", "ttas", "mcs", "direct,bitmap",
                     "1:0.9,64:0.1", "64:", ":", "nan", "inf", "-1", "1e400", "127", "٣", "²",
                     HUGE_DEC, "1-" + HUGE_DEC, HUGE_DEC + "-" + HUGE_DEC, "vtd-2015", ""]),
    st.datetimes(), st.dates(), st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(key_names, inner, max_size=3),
    max_leaves=8)


def toml_string(s):
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else toml_string(k)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join("%s = %s" % (toml_key(k), toml_value(x)) for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_document(doc, tables):
    """Top-level keys one per line; dictionaries as [table] sections when
    `tables`, else inline."""
    lines, later = [], []
    for k, v in doc.items():
        if tables and isinstance(v, dict):
            later.append("[%s]" % toml_key(k))
            later += ["%s = %s" % (toml_key(kk), toml_value(vv)) for kk, vv in v.items()]
        else:
            lines.append("%s = %s" % (toml_key(k), toml_value(v)))
    return "\n".join(lines + later) + "\n"


documents = st.dictionaries(key_names, values, max_size=6)

# TOML-ish text: pieces of TOML in any order, with noise
fragments = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from([" = ", "=", "==", " ", "\n", "\n", "#", "# comment\n", "[", "]", "[[", "]]",
                     "{", "}", ",", '"', "'", '"""', "'''", "\\", "\\u00", ".", "true", "false",
                     "nan", "inf", "-inf", "+1", "0x1F", "0o7", "0b1", "1_000", "1e3", "3.5",
                     "1979-05-27T07:32:00Z", "07:32:00", "[table]", "[[arr]]", '"\\x"',
                     HUGE_DEC, "0x" + "f" * 5000, "0." + HUGE_DEC, "1e" + HUGE_DEC]),
    st.sampled_from(ODD),
    st.integers().map(str),
    st.text(TEXT, max_size=6),
)
tomlish = st.lists(fragments, max_size=30).map("".join)


def load_all(text_or_bytes, text=None):
    """Every loader on the same file contents; each either returns or
    raises a well-formed UsageError."""
    with tempfile.TemporaryDirectory() as d:
        path = write(d, "fuzzed.toml", text_or_bytes)
        for load in (config.load_toml, config.load_workload, config.load_profile):
            try:
                load(str(path))
            except UsageError as e:
                check_file_error(e, path, text)


@FUZZ
@given(tomlish)
@example("repeats = " + HUGE_DEC + "\n")
@example("seed = 1\nx = \x00\n")
@example("[profile]\ninv_page_ns = 1\n")
def test_config_loaders_on_tomlish_text(text):
    load_all(text, text)


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 40))
@example(b"repeats = \"\xff\"\n", 0)
@example(b"\xef\xbb\xbfrepeats = 3\n", 0)
def test_config_loaders_on_bytes(noise, at):
    """Bytes that are not UTF-8 are a UsageError too, not a decode error."""
    good = b'designs = ["direct"]\nrepeats = 3\n'
    load_all(good[:at] + noise + good[at:])


@FUZZ
@given(documents, st.booleans())
def test_config_loaders_on_valid_toml(doc, tables):
    text = toml_document(doc, tables)
    data = tomllib.loads(text)          # the generator writes valid TOML
    with tempfile.TemporaryDirectory() as d:
        path = write(d, "doc.toml", text)
        names = {k.replace("-", "_") for k in data}
        try:
            out = config.load_toml(str(path))
        except UsageError as e:
            check_file_error(e, path, text)
        else:
            assert names <= set(config.OPTIONS)
            assert set(out) == names
        if not names <= set(config.OPTIONS):
            try:
                config.load_toml(str(path))
            except UsageError as e:
                assert "unknown key" in str(e) or "expected" in str(e)
            else:
                raise AssertionError("unknown keys accepted: %s" % sorted(names))
        for load in (config.load_workload, config.load_profile):
            try:
                load(str(path))
            except UsageError as e:
                check_file_error(e, path, text)


def _unknown_key_line(doc):
    """The line of the first unknown key in a document written with
    toml_document(doc, False) (all keys bare), or None."""
    for i, k in enumerate(doc, 1):
        if k.replace("-", "_") not in config.OPTIONS:
            return i
    return None


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS).filter(bool), values, min_size=1, max_size=6))
@example({"profile": "a\u2028b", "repeats": "x"})
@example({"workload": "\x85", "seed": -1})
def test_config_error_points_at_the_key(doc):
    """With bare keys, an error about a key names its line."""
    text = toml_document(doc, False)
    with tempfile.TemporaryDirectory() as d:
        path = write(d, "keys.toml", text)
        try:
            config.load_toml(str(path))
        except UsageError as e:
            check_file_error(e, path, text)
            m = re.match(re.escape(str(path)) + r":(\d+): ", str(e))
            assert m, str(e)
            line = text.split("\n")[int(m.group(1)) - 1]
            key = line.split("=")[0].strip()
            assert key and key in str(e), (line, str(e))
        else:
            assert _unknown_key_line(doc) is None


VALID = {k: d for k, (_, d, _) in config.OPTIONS.items() if d is not None}


@FUZZ
@given(st.lists(st.sampled_from(sorted(VALID)), unique=True), st.booleans())
def test_config_round_trips_valid_options(names, dashes):
    doc = {}
    for n in names:
        v = VALID[n]
        if n == "sizes":
            v = [list(p) for p in v]
        doc[n.replace("_", "-") if dashes else n] = v
    with tempfile.TemporaryDirectory() as d:
        path = write(d, "good.toml", toml_document(doc, False))
        assert config.load_toml(str(path)) == {n: VALID[n] for n in names}


# --- traces -------------------------------------------------------------

tags = st.one_of(st.sampled_from(["t0", "t1", "t2", "x"]),
                 st.text(st.characters(codec="utf-8", exclude_categories=["Zs", "Zl", "Zp", "Cc"]),
                         min_size=1, max_size=4))
numbers = st.one_of(
    st.integers(0, 2**64).map(str),
    st.integers(0, 2**64).map(hex),
    st.integers(0, 8).map(str),
    st.sampled_from([HUGE_DEC, HUGE_HEX, "-1", "1.5", "0x", "1e3", "0X1F", "00", "٣", "²", "0b1",
                     str(2**52 - 1), str(2**20 - 1), "1023", "1024", "9" * 4000]),
)
spaces = st.sampled_from([" ", " ", "\t", "  ", "\x0b", "\x0c", "\x1c", "\u3000", "\x85", "\r"])
tokens = st.one_of(st.sampled_from(["a", "f", "cpu", "A", "#", "# note", "#a t 1"]), tags, numbers,
                   st.sampled_from(ODD))


@st.composite
def trace_lines(draw):
    kind = draw(st.sampled_from(["a", "a", "a", "f", "f", "cpu", "noise", "comment", "blank"]))
    if kind == "a":
        f = ["a", draw(tags), draw(numbers)] + draw(st.lists(numbers, max_size=1))
    elif kind == "f":
        f = ["f", draw(tags)]
    elif kind == "cpu":
        f = ["cpu", draw(numbers)]
    elif kind == "noise":
        f = draw(st.lists(tokens, min_size=1, max_size=5))
    elif kind == "comment":
        f = ["#", draw(st.text(TEXT, max_size=10))]
    else:
        f = []
    if f and draw(st.integers(0, 9)) == 0:
        f = f[:-1] + [f[-1] + "#" + draw(st.text(TEXT, max_size=5))]
    out = ""
    for tok in f:
        out += draw(spaces) + tok
    return out + draw(st.sampled_from(["", "", " ", "\r"]))


trace_texts = st.one_of(st.lists(trace_lines(), max_size=25).map("\n".join),
                        st.text(TEXT, max_size=60))
trace_params = st.fixed_dictionaries({"pages": st.sampled_from([1, 8, 1 << 20]),
                                      "masks": st.booleans()})


def requests_in(text):
    n = 0
    for raw in text.split("\n"):
        f = raw.split("#", 1)[0].split()
        n += bool(f) and f[0] in ("a", "f")
    return n


def check_trace(text, name, kw, parse):
    """parse(...) returns a Trace with one entry per request line, or raises
    `name:N: ...` for a line N of the text before which all is well."""
    try:
        tr = parse()
    except UsageError as e:
        msg = str(e)
        one_line(msg)
        m = re.match(re.escape(name) + r":(\d+): \S", msg)
        assert m, msg
        lines = text.split("\n")
        n = int(m.group(1))
        assert 1 <= n <= len(lines), msg
        # it is the first bad line: the text before it parses
        trace.parse("\n".join(lines[:n - 1]), name, **kw)
    else:
        assert len(tr) == requests_in(text)
        for a in (tr.op, tr.tag, tr.ref, tr.slot, tr.pages, tr.limit, tr.cpu, tr.line):
            assert len(a) == len(tr)
        # a slot holds one possibly-live tag at a time, and there are
        # peak_live of them
        owner = {}
        for k, t, op in zip(tr.slot.tolist(), tr.tag.tolist(), tr.op.tolist()):
            assert 0 <= k < tr.peak_live
            if op == trace.OP_ALLOC:
                assert owner.get(k, t) == t
                owner[k] = t
            else:
                assert owner.pop(k) == t


@FUZZ
@given(trace_texts, trace_params)
@example("a t " + HUGE_DEC + "\n", {"pages": 1 << 20, "masks": False})
@example("a t " + HUGE_HEX + "\n", {"pages": 1 << 20, "masks": False})
@example("a t 1 " + HUGE_HEX + "\n", {"pages": 1 << 20, "masks": True})
@example("cpu " + HUGE_DEC + "\n", {"pages": 1 << 20, "masks": False})
@example("a t\x001\n", {"pages": 1 << 20, "masks": False})
def test_trace_parse(text, kw):
    check_trace(text, "fuzzed.trace", kw, lambda: trace.parse(text, "fuzzed.trace", **kw))


@FUZZ
@given(st.one_of(trace_texts.map(lambda t: t.encode("utf-8")),
                 st.tuples(trace_texts, st.binary(max_size=8), st.integers(0, 60)).map(
                     lambda x: x[0].encode("utf-8")[:x[2]] + x[1] + x[0].encode("utf-8")[x[2]:])),
       trace_params)
@example(b"a t 1\n\xff\xfe\n", {"pages": 1 << 20, "masks": False})
@example(b" #\r0\n\n a t0 0", {"pages": 1, "masks": False})   # a lone \r ends a line
def test_trace_read(data, kw):
    with tempfile.TemporaryDirectory() as d:
        path = write(d, "fuzzed.trace", data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            try:
                trace.read(str(path), **kw)
            except UsageError as e:
                one_line(str(e))
                assert str(path) in str(e), str(e)
            else:
                raise AssertionError("a file that is not UTF-8 was read")
            return
        # a file is read with universal newlines
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        check_trace(text, str(path), kw, lambda: trace.read(str(path), **kw))


# --- results files ------------------------------------------------------
# A valid document, mutated: report, compare and plot each either render
# it (exit 0) or refuse it in one line (exit 2); never a traceback.

def results_document():
    from tests.test_report import document, point
    pts = [point("direct", 1, 8e6), point("rbtree", 2, 1.5e6), point("linux-2008", 2, 2.2e6,
                                                                       disturbed=True)]
    for p in pts[1:]:
        p["locks"] = [{"name": "rbtree", "acquisitions": 100, "contentions": 7, "acq_bounces": 3,
                       "con_bounces": 2, "wait_ns_total": 900.0, "wait_ns_min": 20.0,
                       "wait_ns_max": 300.0, "timed": 6, "hold_ns_total": 500.0,
                       "hold_ns_min": 10.0, "hold_ns_max": 80.0}]
        p["breakdown_ns"] = {"allocate": 200.0, "page_table": 80.0, "invalidation_own": 300.0,
                             "free": 120.0, "lock_wait": 40.0, "harness": 30.0, "total": 800.0}
        p["series"] = [{"t": 1.0, "ops_per_sec": 1e6, "top_lock": "rbtree",
                        "top_lock_wait_ns": 50.0}]
        p["diag"] = {"timing": "on", "sampled": 100, "outliers": 1, "outlier_ns": 1e5}
        p["alloc_stats"] = {"allocs": 1000, "hits_1": 900, "misses_1": 100}
        p["disturbance"] = {"busy_processes": 2, "cores": 2, "preemptions": 3, "preempted": 1,
                            "steal_ns": 0.0}
        p["stale_hits"], p["rogue_probes"], p["stale_hits_per_sec"] = 3, 10, 6.0
    pts[1]["options"] = {"profile": "none"}
    return document(pts, failures=["bitmap at 4 threads: a worker died"])


def _paths(v, at=()):
    yield at
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, at + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, at + (i,))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 3),
              st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 5e-324, 1e308]),
              st.text(TEXT, max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(TEXT, max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)


@st.composite
def mutated_results(draw):
    """Text of a results document with a few keys dropped, replaced or
    nested deep, or a number turned NaN, or raw bytes."""
    import copy
    import json
    doc = copy.deepcopy(results_document())
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=40))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        at = draw(st.sampled_from(paths))
        parent = doc
        for k in at[:-1]:
            parent = parent[k]
        how = draw(st.sampled_from(["drop", "replace", "replace", "deep"]))
        if how == "drop":
            del parent[at[-1]]
        elif how == "replace":
            parent[at[-1]] = draw(json_values)
        else:
            parent[at[-1]] = json.loads("[" * 50 + "1" + "]" * 50)
    text = json.dumps(doc)
    if draw(st.integers(0, 5)) == 0:
        text = re.sub(r"(?<=: )\d+(\.\d+)?", draw(st.sampled_from(["NaN", "Infinity", "-Infinity",
                                                                  "1e999", "9" * 5000])),
                      text, count=1)
    return text


def _quietly(capsys, argv):
    from harness.cli import main
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("iommu-stress: error: "), err
    return code


# capsys is read out (and so emptied) after every command
RESULTS_FUZZ = settings(FUZZ, max_examples=60, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])


def test_a_valid_results_document_renders(tmp_path, capsys):
    import json
    f = write(tmp_path, "r.json", json.dumps(results_document()))
    for argv in (["report", str(f)], ["report", "--diag", str(f)], ["compare", str(f), str(f)],
                 ["plot", str(f), "-o", str(tmp_path / "r.png")]):
        assert _quietly(capsys, argv) == 0, argv


@RESULTS_FUZZ
@given(mutated_results())
def test_report_and_compare_on_mutated_results(capsys, text):
    import json
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "fuzzed.json", text)
        good = write(d, "good.json", json.dumps(results_document()))
        _quietly(capsys, ["report", "--diag", str(f)])
        _quietly(capsys, ["report", "--format", "csv", str(good), str(f)])
        _quietly(capsys, ["compare", str(good), str(f)])


@settings(RESULTS_FUZZ, max_examples=12)
@given(mutated_results())
def test_plot_on_mutated_results(capsys, text):
    with tempfile.TemporaryDirectory() as d:
        f = write(d, "fuzzed.json", text)
        _quietly(capsys, ["plot", str(f), "-o", str(Path(d) / "fuzzed.png")])
