from __future__ import annotations

import json

from sensor.outputs.encoding import DocumentEncoder, SharedBlock
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
    host_text = encoder._blocks[id(host)][1]  # noqa: SLF001 - the cache is what is tested
    assert host_text == '{"name":"a"}'
    assert encoder.json({"host": host, "n": 2}) == b'{"n":2,"host":{"name":"a"}}'


def test_lone_surrogates_fall_back_to_ascii_escapes() -> None:
    doc = {"process": {"args": ["ok", "bad\udcff"]}, "host": SharedBlock({"name": "h\u00e9"})}
    out = DocumentEncoder().json(doc)
    out.decode("ascii")
    assert json.loads(out) == doc


def test_cache_is_bounded() -> None:
    encoder = DocumentEncoder(max_blocks=4)
    blocks = [SharedBlock({"i": i}) for i in range(10)]
    for block in blocks:
        assert encoder.json({"host": block}) == reference({"host": block})  # nothing plain: order unchanged
    assert 0 < len(encoder._blocks) <= 4  # noqa: SLF001
