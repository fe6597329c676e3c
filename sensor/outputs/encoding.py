"""One JSON encoding for every output: compact, UTF-8, one document per line."""

from __future__ import annotations

import json
from typing import Any

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False)


# Where the document builder puts its SharedBlocks (and "process", which holds more of them).
TOP_SHARED_KEYS = ("ecs", "data_stream", "host", "agent", "process")
PROCESS_SHARED_KEYS = ("parent", "group_leader", "session_leader", "entry_leader")


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

    def _object(self, obj: dict[str, Any], shared_keys: tuple[str, ...]) -> str:
        """The members named in shared_keys from the cache when they are SharedBlocks, the rest in one
        C-encoder call. Only those few keys are looked at: walking every member in Python costs more than
        the cache saves. JSON objects are unordered; a reader of the raw text sees the shared members last."""
        plain = obj
        shared: list[str] = []
        for key in shared_keys:
            value = obj.get(key)
            if type(value) is SharedBlock:
                text = self._block(value)
            elif key == "process" and type(value) is dict:
                text = self._object(value, PROCESS_SHARED_KEYS)
            else:
                continue
            if plain is obj:
                plain = dict(obj)
            del plain[key]
            shared.append(f"{self._key(key)}:{text}")
        if not shared:
            return _COMPACT.encode(obj)
        head = _COMPACT.encode(plain)[:-1] if plain else "{"
        return head + ("," if plain else "") + ",".join(shared) + "}"

    def json(self, doc: dict[str, Any]) -> bytes:
        text = self._object(doc, TOP_SHARED_KEYS)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return _ASCII.encode(doc).encode("ascii")

    def line(self, doc: dict[str, Any]) -> bytes:
        return self.json(doc) + b"\n"
