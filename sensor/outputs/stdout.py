"""NDJSON (or one compact line per event) on standard output."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from sensor.ecs.encoding import DocumentEncoder
from sensor.outputs.compact import compact_line

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1  # seconds: the most a line waits in the buffer while documents keep coming


PIPE_SIZE = 1 << 20


def _widen_pipe(stream: IO[bytes]) -> None:
    """A pipe's default 64 KiB holds a fraction of one poll's documents in a storm: every flush then blocks
    until the reader has drained it, a round of context switches each time. 1 MiB is Linux's default most
    for an unprivileged pipe (fs.pipe-max-size); where it cannot be had, the pipe stays as it is."""
    try:
        fd = stream.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, ValueError, AttributeError):
        pass


class StdoutOutput:
    """Buffers lines and writes them when `flush` is called (the event loop flushes after every poll batch)."""

    name = "stdout"

    def __init__(self, stream: IO[bytes] | None = None, *, compact: bool = False, color: bool | None = None,
                 max_buffer: int = 1 << 20) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer
        if color is None:
            color = compact and self._stream.isatty()
        # NDJSON lines are always valid UTF-8 (the encoder escapes what UTF-8 cannot hold).
        self._format: Callable[[dict[str, Any]], bytes] = (
            (lambda doc: (compact_line(doc, color=color) + "\n").encode("utf-8", "backslashreplace"))
            if compact else DocumentEncoder().line
        )
        _widen_pipe(self._stream)
        self._flushed_at = time.monotonic()
        self._parts: list[bytes] = []
        self._size = 0
        self._max_buffer = max_buffer
        self.written = 0
        self.in_flight = 0  # lines of a write not finished yet: a reader that stopped reading blocks it
        self.broken = False
        self.dropped = 0

    def write(self, doc: dict[str, Any]) -> None:
        if self.broken:
            self.dropped += 1
            return
        line = self._format(doc)
        self._parts.append(line)
        self._size += len(line)
        self.written += 1
        if self._size >= self._max_buffer or time.monotonic() - self._flushed_at >= FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        if not self._parts or self.broken:
            return
        data = b"".join(self._parts)
        self.in_flight = len(self._parts)  # one line each
        self._parts.clear()
        self._size = 0
        self._flushed_at = time.monotonic()
        try:
            self._stream.write(data)
            self._stream.flush()
            self.in_flight = 0
        except OSError as error:
            self.in_flight = 0
            # The reader went away (EPIPE) or the disk behind a redirect is full: say so once, stop writing,
            # keep counting what could not be delivered.
            self.broken = True
            self.dropped += data.count(b"\n")
            self.written -= data.count(b"\n")
            reason = "closed by the reader" if isinstance(error, BrokenPipeError) else error.strerror
            log.warning("stdout %s: no more documents are written there (%d dropped so far)", reason, self.dropped)
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
        # pending: accepted but not yet in the stream (buffered, or in a write that has not returned)
        return {"written": self.written, "dropped": self.dropped, "pending": len(self._parts) + self.in_flight}
