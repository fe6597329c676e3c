"""One JSON encoding for every output: compact, UTF-8, one document per line."""

from __future__ import annotations

import copy
import json
from json import encoder as _stdlib_encoder
from typing import Any

_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


def _unserializable(obj: Any) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_C_ESCAPE = getattr(_stdlib_encoder, "c_encode_basestring", None)
_escape = _C_ESCAPE or _stdlib_encoder.py_encode_basestring


def _plain_encoder() -> Any:
    """The standard library's C encoder, made once: JSONEncoder.encode builds a new one on every call, which
    cost a fifth of the encoding time of small objects."""
    make = getattr(_stdlib_encoder, "c_make_encoder", None)
    if make is None or _C_ESCAPE is None:
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode
    chunks = make(None, _unserializable, _C_ESCAPE, None, ":", ",", False, False, True)
    return lambda obj: "".join(chunks(obj, 0))


_plain = _plain_encoder()
_key_texts: dict[str, str] = {}


class _CopiesArePlain:
    """Whoever copies a block means to change the copy: copies are plain dicts, without the kept text."""

    __slots__ = ()

    def __copy__(self) -> dict:
        return dict(self)  # type: ignore[call-overload]

    def __deepcopy__(self, memo: dict) -> dict:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}  # type: ignore[attr-defined]


class SharedBlock(_CopiesArePlain, dict):
    """A sub-document that many documents share unchanged (the host, the agent, a parent or leader process, a
    process's own block in its exec and end documents).

    The builder creates one and never changes it afterwards, so its JSON text is made once and kept on it. A
    copy (dict(block), copy.copy, copy.deepcopy) is a plain dict, free to change."""

    __slots__ = ("_text",)


class ExtendedBlock(_CopiesArePlain, dict):
    """A SharedBlock (or another extension) plus members of its own (an end document's process: its exec
    document's block plus exit_code and end; an event block: the fields every exec shares plus its id and
    times; an end's container_sensor block plus the exit signal). Made by `extend`.

    It holds every member, so readers see one object; the encoder reuses the base's text and encodes only the
    own members. Never changed after creation either; a copy is a plain dict."""

    __slots__ = ("base", "own")


def extend(base: SharedBlock | ExtendedBlock, own: dict[str, Any]) -> ExtendedBlock:
    """BASE's members and OWN's, which must be new ones (a function, not __init__: one is made per document
    part, and a Python __init__ on a dict subclass costs twice as much)."""
    block = ExtendedBlock(base)
    block.update(own)
    if len(block) != len(base) + len(own):
        raise ValueError(f"members {sorted(base.keys() & own.keys())} are in the base already")
    block.base = base
    block.own = own
    return block


def _key_text(key: str) -> str:
    text = _key_texts.get(key)
    if text is None:
        text = _key_texts[key] = _escape(key) + ":"
    return text


# A document is written as a list of text fragments joined once: concatenating a block's kept text into its
# parent's text, and that into the next, copied a whole document several times over.


def _shared_members(block: SharedBlock) -> str:
    """The block's members as JSON text without the braces, made once and kept on the block."""
    text = getattr(block, "_text", None)  # the slot is unset until the first encoding
    if text is None:
        parts: list[str] = []
        _members(block, parts)
        text = block._text = "".join(parts)  # private: the cache this module keeps on its own type
    return text


def _extended_members(block: ExtendedBlock, out: list[str]) -> None:
    """The own members first, so a document's `@timestamp` leads its line."""
    start = len(out)
    _members(block.own, out)
    if type(block.base) is ExtendedBlock:  # an extension of an extension: an end's exit signal
        comma = len(out)
        out.append(",")
        _extended_members(block.base, out)
        if len(out) == comma + 1 or comma == start:
            del out[comma]
        return
    base = _shared_members(block.base)
    if base:
        if len(out) > start:
            out.append(",")
        out.append(base)


def _members(obj: dict[str, Any], out: list[str]) -> None:
    """Appends OBJ's members as fragments, without the braces: shared and extended blocks from their kept
    text, the rest in one C-encoder call (a lone string member escaped directly). JSON objects are
    unordered: the plain members come first."""
    start = len(out)
    plain: dict[str, Any] = {}
    blocks: list[tuple[str, Any, type]] = []
    for key, value in obj.items():
        kind = type(value)
        if kind is SharedBlock or kind is ExtendedBlock:
            blocks.append((key, value, kind))
        else:
            plain[key] = value
    if not blocks:
        if obj:
            out.append(_plain(obj)[1:-1])
        return
    keys = _key_texts
    if len(plain) == 1:
        ((key, value),) = plain.items()
        if type(value) is str:
            out.append((keys.get(key) or _key_text(key)) + _escape(value))
        else:
            out.append(_plain(plain)[1:-1])
    elif plain:
        out.append(_plain(plain)[1:-1])
    for key, value, kind in blocks:
        if len(out) > start:
            out.append(",")
        out.append(keys.get(key) or _key_text(key))
        out.append("{")
        if kind is SharedBlock:
            out.append(getattr(value, "_text", None) or _shared_members(value))
        else:
            _extended_members(value, out)
        out.append("}")


def _text(doc: dict[str, Any], end: str) -> str:
    out = ["{"]
    kind = type(doc)
    if kind is ExtendedBlock:
        _extended_members(doc, out)
    elif kind is SharedBlock:
        out.append(_shared_members(doc))
    else:
        _members(doc, out)
    out.append(end)
    return "".join(out)


class DocumentEncoder:
    """Compact JSON, always valid UTF-8. Shared and extended blocks are encoded once, wherever they sit: a
    document's line is mostly their kept text joined.

    A string holding a lone surrogate cannot be UTF-8: such a document falls back to ASCII with \\u escapes,
    which every JSON reader accepts."""

    def json(self, doc: dict[str, Any]) -> bytes:
        return self._encode(doc, "}")

    def line(self, doc: dict[str, Any]) -> bytes:
        return self._encode(doc, "}\n")

    @staticmethod
    def _encode(doc: dict[str, Any], end: str) -> bytes:
        text = _text(doc, end)
        # U+2028/U+2029 are valid raw in JSON, but JavaScript and some NDJSON readers split lines at them. On a
        # Latin-1 text (nearly every document) `in` answers without scanning; only the whole text is fixed, so
        # the kept texts of shared blocks need no care.
        if "\u2028" in text or "\u2029" in text:
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return (_ASCII.encode(doc) + end[1:]).encode("ascii")
