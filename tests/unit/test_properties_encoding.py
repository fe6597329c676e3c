"""Documents with hostile text (invalid UTF-8 as the sensor decodes it, control characters, U+2028/U+2029, lone
surrogates, very long strings), through the encoder, the ECS builder and the compact format: every NDJSON line is
one line of valid UTF-8 JSON that parses back to the same values with U+2028/U+2029 escaped, and no character a
terminal acts on reaches it raw from the compact format."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.ecs.encoding import DocumentEncoder, ExtendedBlock, SharedBlock, extend
from sensor.model.processes import decode_arg
from sensor.model.records import CgroupRecord, ExecRecord, ExitRecord
from sensor.outputs.compact import compact_line, safe
from sensor.outputs.stdout import StdoutOutput
from tests.unit.test_pipeline import CONTAINER_NS, PODMAN_CGROUP, make_pipeline

SPECIALS = ["\u2028", "\u2029", "\x1b[2J\x1b[H", "\x1b]0;pwned\x07", "\x1b]52;c;ZWNobyBoaQ==\x07", "\x9b31m",
            "\x1bP+q\x1b\\", "\r", "\n", "\x00", "\x7f", "\udcff", "\udc80", "\u202e", "\ufeff", "\\x1b", '"', "\\",
            "x" * 20000]
# Any code point, lone surrogates included (strings decoded with surrogateescape carry U+DC80..U+DCFF), but no
# high surrogates: nothing in the sensor makes one, and a high one before a low one is, once escaped as JSON
# requires (\uD800\uDC00), the astral character U+10000 to every JSON reader.
ANY_CHAR = st.characters(codec=None, exclude_categories=()).filter(lambda c: not "\ud800" <= c <= "\udbff")
HOSTILE_TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(ANY_CHAR, max_size=5)), max_size=6).map("".join),
    st.binary(max_size=60).map(decode_arg),  # argv bytes as the sensor decodes them: \xNN for what is not UTF-8
    st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape")),  # paths from /proc, cgroup paths
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), HOSTILE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(HOSTILE_TEXT, inner, max_size=4)),
                      max_leaves=20)
LINE_SEPARATORS = re.compile("[\u2028\u2029]")


def _blocks(value: Any, draw: st.DrawFn) -> Any:
    """The same value with some of its objects made shared or extended blocks, as the builder makes them."""
    if isinstance(value, list):
        return [_blocks(v, draw) for v in value]
    if not isinstance(value, dict):
        return value
    members = {k: _blocks(v, draw) for k, v in value.items()}
    how = draw(st.sampled_from(["plain", "shared", "extended"]))
    if how == "shared":
        return SharedBlock(members)
    if how == "extended" and members:
        split = draw(st.integers(0, len(members)))
        items = list(members.items())
        return extend(SharedBlock(items[:split]), dict(items[split:]))
    return members


@st.composite
def documents(draw: st.DrawFn) -> tuple[Any, dict]:
    """(document as the outputs get it, the same as plain JSON values)."""
    plain = draw(st.dictionaries(HOSTILE_TEXT, VALUES, max_size=6))
    return _blocks(plain, draw), plain


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []


def check_line(line: bytes, plain: Any) -> None:
    assert line.endswith(b"\n") and line.count(b"\n") == 1, "one document, one line"
    assert b"\r" not in line
    text = line.decode("utf-8")  # strict: valid UTF-8 or this raises
    assert not LINE_SEPARATORS.search(text), "U+2028/U+2029 escaped, never raw"
    assert json.loads(text) == plain
    if any(LINE_SEPARATORS.search(s) for s in _strings(plain)):
        assert "\\u2028" in text or "\\u2029" in text


@settings(max_examples=400, deadline=None)
@given(documents())
def test_any_document_is_one_line_of_valid_utf8_json_with_the_same_values(case: tuple[Any, dict]) -> None:
    doc, plain = case
    encoder = DocumentEncoder()
    line = encoder.line(doc)
    check_line(line, plain)
    assert encoder.line(doc) == line, "kept block texts give the same line again"
    assert encoder.json(doc) + b"\n" == line


@settings(max_examples=200, deadline=None)
@given(st.lists(HOSTILE_TEXT, min_size=1, max_size=3), HOSTILE_TEXT)
def test_a_shared_block_with_separators_is_escaped_in_every_document_that_holds_it(texts: list[str],
                                                                                    other: str) -> None:
    """Kept texts of shared blocks are joined without re-encoding: the escape must hold in every document."""
    shared = SharedBlock({"args": texts + ["\u2028\u2029"]})
    for doc in ({"process": shared}, extend(SharedBlock({"host": shared}), {"x": other}),
                {"a": extend(SharedBlock(), {}), "p": extend(shared, {"y": other})}):
        plain = json.loads(json.dumps(doc))
        check_line(DocumentEncoder().line(doc), plain)


# -- the ECS builder: hostile bytes from the probe to the line -----------------------------------------------

ARG_BYTES = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([s.encode("utf-8", "surrogatepass") for s in SPECIALS]),
    st.text(ANY_CHAR, max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass")),
).map(lambda b: b.replace(b"\0", b""))


@st.composite
def hostile_exec(draw: st.DrawFn, pid: int) -> ExecRecord:
    argv = tuple(draw(st.lists(ARG_BYTES, max_size=12)))
    return ExecRecord(
        ktime_ns=1_000_000 + pid, pid=pid, tid=pid, old_tid=pid, ppid=5_000_000, uid=0, gid=0, euid=0, egid=0,
        comm=draw(st.binary(max_size=16)), filename=draw(ARG_BYTES), argv=argv, argc=len(argv),
        args_truncated=False, cgroup_id=9001, ns=CONTAINER_NS, sid=pid, pgid=pid, tty_major=0, tty_minor=0,
        start_boottime_ns=500_000 + pid, exe_ino=1, exe_dev=2, cwd=draw(ARG_BYTES),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hostile_exec_bytes_build_documents_that_encode_to_valid_lines(data: st.DataObject) -> None:
    """Pids beyond pid_max, so that no /proc lookup the table makes for /proc/... paths finds a real process."""
    pipeline, out, resolver = make_pipeline(fold_window=60.0)
    hostile_cgroup = data.draw(st.binary(max_size=100).map(lambda b: b.replace(b"\0", b"")))
    records = [CgroupRecord(1, "mkdir", 0, 9001, 2, PODMAN_CGROUP.encode() + hostile_cgroup)]
    execs = [data.draw(hostile_exec(5_000_001 + i)) for i in range(data.draw(st.integers(1, 4)))]
    for rec in execs:
        records += [rec, ExitRecord(rec.ktime_ns + 10, rec.pid, 0, rec.start_boottime_ns)]
    try:
        for record in records:
            pipeline.handle(record)
        pipeline.finish()
    finally:
        resolver.close()
    assert pipeline.stats.output_errors == 0
    encoder = DocumentEncoder()
    exec_docs = [d for d in out.docs if d["event"]["kind"] == "event" and d["event"]["action"] == "exec"]
    assert len(exec_docs) == len(execs)
    for rec, doc in zip(execs, exec_docs, strict=True):
        line = encoder.line(doc)
        check_line(line, json.loads(json.dumps(doc)))
        back = json.loads(line)
        assert back["process"].get("args", []) == [decode_arg(a) for a in rec.argv]
        assert back["process"].get("working_directory", "") == decode_arg(rec.cwd)
    for doc in out.docs:
        check_line(encoder.line(doc), json.loads(json.dumps(doc)))


# -- the compact format ---------------------------------------------------------------------------------------

# what a terminal acts on: C0 controls, DEL, C1 controls, separators, bidi controls
TERMINAL_ACTIVE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
OUR_COLORS = re.compile(r"\x1b\[(?:1;31|2|0)m")


@st.composite
def compact_documents(draw: st.DrawFn) -> dict:
    text = HOSTILE_TEXT
    doc: dict[str, Any] = {
        "@timestamp": draw(st.one_of(st.just("2026-12-02T15:00:00.123456Z"), text)),
        "event": {"kind": draw(st.sampled_from(["event", "alert"])), "action": draw(st.sampled_from(["exec", "end"]))},
        "process": {"pid": 42, "parent": {"pid": 1}, "command_line": draw(text), "executable": draw(text),
                    "name": draw(text), "exit_code": draw(st.one_of(st.integers(), text)),
                    "user": {"id": draw(text), "name": draw(st.one_of(st.none(), text))}},
        "rule": {"name": draw(text)},
    }
    if draw(st.booleans()):
        doc["container"] = {"runtime": draw(text), "name": draw(st.one_of(st.none(), text)), "id": draw(text)}
    return doc


@settings(max_examples=400, deadline=None)
@given(compact_documents(), st.booleans())
def test_compact_lines_carry_no_character_a_terminal_acts_on(doc: dict, color: bool) -> None:
    line = compact_line(doc, color=color)
    shown = OUR_COLORS.sub("", line) if color else line
    assert not TERMINAL_ACTIVE.search(shown), ascii(shown)
    out = io.BytesIO()
    output = StdoutOutput(out, compact=True, color=color)
    output.write(doc)
    output.flush()
    written = out.getvalue()
    assert written.endswith(b"\n") and written.count(b"\n") == 1
    written.decode("utf-8")  # lone surrogates come out as \udcNN text, never as invalid UTF-8


def test_escape_sequences_in_argv_are_shown_not_obeyed() -> None:
    """ESC, CSI, OSC (window title, clipboard) and the one-byte C1 CSI reached the terminal raw before."""
    doc = {"@timestamp": "2026-12-02T15:00:00.123456Z", "event": {"kind": "event", "action": "exec"},
           "process": {"pid": 7, "parent": {"pid": 1}, "user": {"id": "0"},
                       "command_line": "sh -c \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\x9b1m \u202etxt.exe"}}
    line = compact_line(doc)
    assert line.endswith(r"sh -c \e]52;c;cm0gLXJmIH4=\x07\e[2J\x9b1m \u202etxt.exe")
    assert safe("plain text, ünïcode, 中文") == "plain text, ünïcode, 中文"


# -- the same bytes as the standard library's encoder ---------------------------------------------------------

# every float, NaN and the infinities included, with the small ones orjson would write differently drawn often
FLOATS = st.one_of(st.floats(), st.floats(min_value=-1e-4, max_value=1e-4), st.sampled_from([1e-5, 1e-6, -2.5e-7]))
ANY_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), FLOATS, HOSTILE_TEXT,
                       st.sampled_from(["/dev/null", ":null", "1e-7,", "0.00001"]))
ANY_VALUE = st.recursive(ANY_SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(HOSTILE_TEXT, inner, max_size=4)),
                         max_leaves=20)


def _in_line_order(value: Any) -> Any:
    """The order the encoder writes members in (JSON objects are unordered): plain members before blocks, an
    extension's own members before its base's."""
    if type(value) not in (dict, SharedBlock, ExtendedBlock):
        return value
    if type(value) is ExtendedBlock:
        return {**_in_line_order(value.own), **_in_line_order(value.base)}
    plain = {k: v for k, v in value.items() if type(v) is dict or not isinstance(v, dict)}
    blocks = {k: _in_line_order(v) for k, v in value.items() if k not in plain}
    return {**plain, **blocks}


def standard_library_line(doc: Any) -> bytes:
    text = json.dumps(_in_line_order(doc), ensure_ascii=False, separators=(",", ":")) + "\n"
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: the whole document ASCII, in its own order
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_lines_are_the_bytes_the_standard_library_writes(data: st.DataObject) -> None:
    """orjson writes the members; floats it writes differently (NaN, 1e-05), integers beyond 64 bits and lone
    surrogates go through the standard library: the bytes are the same either way."""
    plain = data.draw(st.dictionaries(HOSTILE_TEXT, ANY_VALUE, max_size=6))
    doc = _blocks(plain, data.draw)
    encoder = DocumentEncoder()
    expected = standard_library_line(doc)
    assert encoder.line(doc) == expected
    assert encoder.line(doc) == expected, "from the kept texts"


def test_special_floats_in_a_kept_block_give_the_standard_library_bytes() -> None:
    rule = SharedBlock({"risk_score": 1e-05, "fold": {"window_s": float("nan"), "max": float("inf")}})
    for doc in ({"rule": rule, "path": "/dev/null"}, {"a": [1e-6, -2.5e-7]}, {"x": None, "y": [None]}):
        expected = standard_library_line(doc)
        assert DocumentEncoder().line(doc) == expected
        assert DocumentEncoder().line(doc) == expected
    assert DocumentEncoder().json({"r": rule}) == b'{"r":{"risk_score":1e-05,"fold":{"window_s":NaN,"max":Infinity}}}'
