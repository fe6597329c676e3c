"""NDJSON (or one compact line per event) on standard output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from sensor.outputs.compact import compact_line

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class StdoutOutput:
    """Buffers lines and writes them when `flush` is called (the event loop flushes after every poll batch)."""

    name = "stdout"

    def __init__(self, stream: IO[bytes] | None = None, *, compact: bool = False, color: bool | None = None,
                 max_buffer: int = 1 << 20) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        if color is None:
            color = compact and self._stream.isatty()
        self._format: Callable[[dict[str, Any]], str] = (
            (lambda doc: compact_line(doc, color=color)) if compact else _encode
        )
        self._parts: list[bytes] = []
        self._size = 0
        self._max_buffer = max_buffer
        self.written = 0
        self.broken = False
        self.dropped = 0

    def write(self, doc: dict[str, Any]) -> None:
        if self.broken:
            self.dropped += 1
            return
        line = (self._format(doc) + "\n").encode("utf-8", "surrogatepass")
        self._parts.append(line)
        self._size += len(line)
        self.written += 1
        if self._size >= self._max_buffer:
            self.flush()

    def flush(self) -> None:
        if not self._parts or self.broken:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except BrokenPipeError:
            # The reader went away: stop writing, keep counting what could not be delivered.
            self.broken = True
            self.dropped += data.count(b"\n")
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self._stream.fileno())
            except (OSError, ValueError):
                pass

    def close(self, timeout: float = 10.0) -> None:
        self.flush()

    def healthy(self) -> bool:
        return not self.broken

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "dropped": self.dropped}
