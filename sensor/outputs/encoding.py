"""One JSON encoding for every output: compact, UTF-8, one document per line."""

from __future__ import annotations

import json
from typing import Any

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


class SharedBlock(dict):
    """A sub-document that many documents share unchanged (the host, the agent, a parent or leader process).

    The builder creates one and never changes it afterwards, so an encoder may encode it once."""

    __slots__ = ()


class DocumentEncoder:
    """Compact JSON, always valid UTF-8, with memory: the SharedBlocks at the top of a document and under
    `process` (about two thirds of an exec document's bytes) are encoded once and their text reused. One per
    output thread.

    A string holding a lone surrogate cannot be UTF-8: such a document falls back to ASCII with \\u escapes,
    which every JSON reader accepts."""

    def __init__(self, max_blocks: int = 8192) -> None:
        # id -> (block, text); the block is held so its id cannot be reused by another object while cached
        self._blocks: dict[int, tuple[SharedBlock, str]] = {}
        self._keys: dict[str, str] = {}
        self._max_blocks = max_blocks

    def _key(self, key: str) -> str:
        text = self._keys.get(key)
        if text is None:
            text = self._keys[key] = _COMPACT.encode(key)
        return text

    def _block(self, block: SharedBlock) -> str:
        hit = self._blocks.get(id(block))
        if hit is not None and hit[0] is block:
            return hit[1]
        text = _COMPACT.encode(block)
        if len(self._blocks) >= self._max_blocks:
            self._blocks.clear()  # evicting the first key of a full dict one at a time costs a scan per insert
        self._blocks[id(block)] = (block, text)
        return text

    def _object(self, obj: dict[str, Any], nest: str | None) -> str:
        """The plain members in one C-encoder call, the shared ones from the cache, in the object's order
        (JSON objects are unordered; only readers of the raw text would see shared members moved last)."""
        plain: dict[str, Any] = {}
        shared: list[str] = []
        for key, value in obj.items():
            if type(value) is SharedBlock:
                shared.append(f"{self._key(key)}:{self._block(value)}")
            elif key == nest and type(value) is dict:
                shared.append(f"{self._key(key)}:{self._object(value, None)}")
            else:
                plain[key] = value
        if not shared:
            return _COMPACT.encode(plain)
        head = _COMPACT.encode(plain)[:-1] if plain else "{"
        return head + ("," if plain else "") + ",".join(shared) + "}"

    def json(self, doc: dict[str, Any]) -> bytes:
        text = self._object(doc, "process")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return _ASCII.encode(doc).encode("ascii")

    def line(self, doc: dict[str, Any]) -> bytes:
        return self.json(doc) + b"\n"
