"""One JSON encoding for every output: compact, UTF-8, one document per line."""

from __future__ import annotations

import json
from typing import Any

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


def encode_json(doc: dict[str, Any]) -> bytes:
    """The document as compact JSON bytes, always valid UTF-8.

    A string holding a lone surrogate (undecodable bytes kept with surrogateescape) cannot be UTF-8: such a
    document falls back to ASCII with \\u escapes, which every JSON reader accepts.
    """
    text = _COMPACT.encode(doc)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _ASCII.encode(doc).encode("ascii")


def encode_line(doc: dict[str, Any]) -> bytes:
    return encode_json(doc) + b"\n"
