from __future__ import annotations

import copy
import json

import pytest

from sensor.ecs.encoding import DocumentEncoder, SharedBlock, extend
from tests.unit.test_ecs import Container, build


def reference(doc) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def test_same_document_as_encoding_it_whole() -> None:
    encoder = DocumentEncoder()
    for doc in (build(), build(Container()), build(status=9), build()):
        first = encoder.json(doc)
        assert json.loads(first) == json.loads(reference(doc))
        assert encoder.json(doc) == first, "a second encoding from the cache is the same"
        assert encoder.line(doc) == first + b"\n"
        assert first.startswith(b'{"@timestamp":'), "plain members keep their order: @timestamp first"
        assert len(first) == len(reference(doc))


def test_shared_blocks_are_encoded_once() -> None:
    encoder = DocumentEncoder()
    host = SharedBlock({"name": "a"})
    encoder.json({"host": host, "n": 1})
    assert host._text == b'"name":"a"'  # private: the kept text (members, no braces) is what is tested
    host._text = b'"name":"kept"'  # private: proves the second encoding reads it
    assert encoder.json({"host": host, "n": 2}) == b'{"n":2,"host":{"name":"kept"}}'


def test_blocks_nested_in_blocks_and_extended_blocks() -> None:
    parent = SharedBlock({"pid": 1, "name": "init"})
    process = SharedBlock({"pid": 7, "args": ["a", "b"], "parent": parent, "user": SharedBlock({"id": "0"})})
    end = extend(process, {"exit_code": 3, "end": "t"})
    event = extend(SharedBlock({"kind": "event"}), {"id": "x", "meta": SharedBlock({"k": [1]})})
    doc = {"@timestamp": "t", "event": event, "process": end, "empty": extend(SharedBlock(), {"a": 1})}
    out = DocumentEncoder().json(doc)
    assert json.loads(out) == json.loads(reference(doc))
    assert len(out) == len(reference(doc))
    assert out.startswith(b'{"@timestamp":"t",')
    assert dict(end) == {**process, "exit_code": 3, "end": "t"}, "readers see one object"


def test_extensions_of_extensions_with_empty_parts() -> None:
    shared = SharedBlock({"a": 1, "s": SharedBlock({"x": "y"})})
    for inner_own in ({}, {"b": [2]}):
        for outer_own in ({}, {"c": "3"}):
            for base in (shared, SharedBlock()):
                doc = {"t": "now", "block": extend(extend(base, inner_own), outer_own)}
                out = DocumentEncoder().json(doc)
                assert json.loads(out) == json.loads(reference(doc)), (inner_own, outer_own, base)


def test_extended_block_refuses_a_member_of_its_base() -> None:
    with pytest.raises(ValueError, match="pid"):
        extend(SharedBlock({"pid": 1}), {"pid": 2})


def test_copies_are_plain_dicts_free_to_change() -> None:
    shared = SharedBlock({"alert": None, "inner": SharedBlock({"a": 1})})
    DocumentEncoder().json({"x": shared})
    for copied in (copy.deepcopy({"x": shared})["x"], copy.copy(shared), dict(shared)):
        assert type(copied) is dict
        copied["alert"] = {"rule": "r"}
        assert json.loads(DocumentEncoder().json({"x": copied}))["x"]["alert"] == {"rule": "r"}
    extended = extend(shared, {"more": 1})
    assert type(copy.deepcopy(extended)) is dict and copy.deepcopy(extended)["more"] == 1


def test_lone_surrogates_fall_back_to_ascii_escapes() -> None:
    doc = {"process": {"args": ["ok", "bad\udcff"]}, "host": SharedBlock({"name": "h\u00e9"})}
    out = DocumentEncoder().json(doc)
    out.decode("ascii")
    assert json.loads(out) == doc


def _standard_library_line(doc) -> bytes:
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


@pytest.mark.parametrize("value", [1e-06, 0.00001, float("nan"), float("inf"), "a\u2028b", "a\u2029b"])
def test_what_orjson_writes_differently_is_caught_inside_kept_texts(value) -> None:
    """Only the texts orjson writes are searched, as they are made, never a document's whole line: a float or a
    line separator inside a shared block's text, an extension's own members or a key must still give the
    standard library's bytes, every time the block is encoded."""
    encoder = DocumentEncoder()
    cases = (  # (block, the same members in the order the encoder writes them)
        (SharedBlock({"v": value, "n": 1}), {"v": value, "n": 1}),
        (SharedBlock({"v": value, "inner": SharedBlock({"a": 1})}), {"v": value, "inner": {"a": 1}}),
        (extend(SharedBlock({"a": "x"}), {"v": value}), {"v": value, "a": "x"}),
        (SharedBlock({"inner": SharedBlock({"deep": [value]})}), {"inner": {"deep": [value]}}),
    )
    for block, ordered in cases:
        doc = {"@timestamp": "t", "block": block, "host": SharedBlock({"name": "h"})}
        expected = _standard_library_line({"@timestamp": "t", "block": ordered, "host": {"name": "h"}})
        assert encoder.json(doc) == expected
        assert encoder.json(doc) == expected, "the second time too, whatever was kept"
        assert "\u2028".encode() not in expected and "\u2029".encode() not in expected
    keyed = {"a\u2028": 1, "host": SharedBlock({"name": "h"})}
    assert encoder.json(keyed) == b'{"a\\u2028":1,"host":{"name":"h"}}'
