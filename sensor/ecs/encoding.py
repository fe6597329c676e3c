"""One JSON encoding for every output: compact, UTF-8, one document per line."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import orjson

# U+2028/U+2029 are valid raw in JSON, but JavaScript and some NDJSON readers split lines at them: the standard
# library's encoding escapes them. Like the floats, they are searched for in each text as it is made, and a
# document holding one goes the standard library's way.
#
# orjson writes the plain members: the standard library's fast encoder is reachable only through a private
# function (json.encoder.c_make_encoder), and its public JSONEncoder.encode builds a new encoder on every call.
# Where orjson refuses a value (a lone surrogate, an integer beyond 64 bits, a key that is not a string) or would
# write a float differently from the standard library, the document is encoded by the public JSONEncoder: the
# bytes are the same either way.
_dumps = orjson.dumps
_OrjsonError = orjson.JSONEncodeError
# dataclasses and datetimes: not JSON values to the standard library, so not to orjson either
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_UTF8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)

# The floats orjson writes differently: NaN and the infinities as null (the standard library writes NaN and
# Infinity, which are not JSON, but are what this sensor has always written), and 0 < |x| < 1e-4 without the
# exponent's leading zero or without an exponent (1e-6, 0.00001; the standard library 1e-06, 1e-05). Each text
# orjson writes is searched for their traces as it is made, cheaply: `in` first, the pattern only when it may
# match. A kept text was searched once, when it was made, so a document's line is never searched whole (three
# scans of 3 KB per document were a tenth of the encoding). A string that merely looks like one costs the
# slower encoder, never a different byte.
_NULL_TOKEN = re.compile(rb"[:,\[]null")
_SHORT_EXPONENT = re.compile(rb"e-\d[,\]}]")
_LS, _PS = "\u2028".encode(), "\u2029".encode()

_key_texts: dict[str, bytes] = {}


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
    block = ExtendedBlock(base, **own)  # one call: the base's members, then the own ones
    if len(block) != len(base) + len(own):
        raise ValueError(f"members {sorted(base.keys() & own.keys())} are in the base already")
    block.base = base
    block.own = own
    return block


def _key_text(key: str) -> bytes:
    text = _key_texts.get(key)
    if text is None:
        text = _string(key) + b":"
        _key_texts[key] = text
    return text


# A document is written as a list of byte fragments joined once: concatenating a block's kept text into its
# parent's text, and that into the next, copied a whole document several times over.


def _shared_members(block: SharedBlock) -> bytes:
    """The block's members as JSON text without the braces, made once and kept on the block."""
    text = getattr(block, "_text", None)  # the slot is unset until the first encoding
    if text is None:
        parts: list[bytes] = []
        _members(block, parts)
        text = block._text = b"".join(parts)  # private: the cache this module keeps on its own type
    return text


def _extended_members(block: ExtendedBlock, out: list[bytes]) -> None:
    """The own members first, so a document's `@timestamp` leads its line."""
    start = len(out)
    _members(block.own, out)
    if type(block.base) is ExtendedBlock:  # an extension of an extension: an end's exit signal
        comma = len(out)
        out.append(b",")
        _extended_members(block.base, out)
        if len(out) == comma + 1 or comma == start:
            del out[comma]
        return
    base = _shared_members(block.base)
    if base:
        if len(out) > start:
            out.append(b",")
        out.append(base)


class _DiffersFromStandardLibrary(Exception):
    """A text orjson wrote may hold a float the standard library writes differently: the document is encoded by
    the standard library instead."""


def _plain(obj: dict[str, Any]) -> bytes:
    """OBJ's members as orjson writes them, without the braces. Searched with the braces on, where a float's
    exponent is followed by one."""
    text = _dumps(obj, option=_OPTIONS)
    if (b"null" in text and _NULL_TOKEN.search(text) is not None) or b"0.0000" in text or (
            b"e-" in text and _SHORT_EXPONENT.search(text) is not None) or (
            not text.isascii() and (_LS in text or _PS in text)):
        raise _DiffersFromStandardLibrary
    return text[1:-1]


def _string(value: str) -> bytes:
    text = _dumps(value)
    if not text.isascii() and (_LS in text or _PS in text):
        raise _DiffersFromStandardLibrary
    return text


def _members(obj: dict[str, Any], out: list[bytes]) -> None:
    """Appends OBJ's members as fragments, without the braces: shared and extended blocks from their kept
    text, the rest in one orjson call (a lone string member encoded directly). JSON objects are unordered: the
    plain members come first."""
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
            out.append(_plain(obj))
        return
    keys = _key_texts
    if len(plain) == 1:
        ((key, value),) = plain.items()
        if type(value) is str:  # a string holds no float
            out.append((keys.get(key) or _key_text(key)) + _string(value))
        else:
            out.append(_plain(plain))
    elif plain:
        out.append(_plain(plain))
    for key, value, kind in blocks:
        if len(out) > start:
            out.append(b",")
        out.append(keys.get(key) or _key_text(key))
        out.append(b"{")
        if kind is SharedBlock:
            out.append(getattr(value, "_text", None) or _shared_members(value))
        else:
            _extended_members(value, out)
        out.append(b"}")


def _text(doc: dict[str, Any], end: bytes) -> bytes:
    out = [b"{"]
    kind = type(doc)
    if kind is ExtendedBlock:
        _extended_members(doc, out)
    elif kind is SharedBlock:
        out.append(_shared_members(doc))
    else:
        _members(doc, out)
    out.append(end)
    return b"".join(out)


def _in_output_order(obj: dict[str, Any]) -> dict[str, Any]:
    """OBJ as a plain dict whose members come in the order the fragments above write them, for the slower
    encoder: plain members before blocks, an extension's own members before its base's."""
    plain: dict[str, Any] = {}
    blocks: dict[str, Any] = {}
    for key, value in obj.items():
        kind = type(value)
        if kind is ExtendedBlock:
            blocks[key] = _extended_in_output_order(value)
        elif kind is SharedBlock:
            blocks[key] = _in_output_order(value)
        else:
            plain[key] = value
    plain.update(blocks)
    return plain


def _extended_in_output_order(block: ExtendedBlock) -> dict[str, Any]:
    ordered = _in_output_order(block.own)
    base = block.base
    ordered.update(_extended_in_output_order(base) if type(base) is ExtendedBlock else _in_output_order(base))
    return ordered


def _document_in_output_order(doc: dict[str, Any]) -> dict[str, Any]:
    return _extended_in_output_order(doc) if type(doc) is ExtendedBlock else _in_output_order(doc)


class DocumentEncoder:
    """Compact JSON, always valid UTF-8. Shared and extended blocks are encoded once, wherever they sit: a
    document's line is mostly their kept text joined.

    A string holding a lone surrogate cannot be UTF-8: such a document falls back to ASCII with \\u escapes,
    which every JSON reader accepts."""

    def json(self, doc: dict[str, Any]) -> bytes:
        return self._encode(doc, b"}")

    def line(self, doc: dict[str, Any]) -> bytes:
        return self._encode(doc, b"}\n")

    @staticmethod
    def _encode(doc: dict[str, Any], end: bytes) -> bytes:
        try:
            data = _text(doc, end)
        except (_OrjsonError, _DiffersFromStandardLibrary):
            return _standard_library_encode(doc, end)
        return data


def _standard_library_encode(doc: dict[str, Any], end: bytes) -> bytes:
    """The same bytes as the fragments, through the public JSONEncoder, for what orjson refuses or writes
    differently; the blocks' kept texts are neither read nor made."""
    tail = end[1:].decode()
    text = _UTF8.encode(_document_in_output_order(doc)) + tail
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return (_ASCII.encode(doc) + tail).encode("ascii")
