"""NDJSON file output, rotated by size and count.

Rotation happens only between lines, and a file is renamed to PATH.1 only after fsync, so every rotated file is
complete and valid NDJSON even after a crash. Files are created 0600 (whatever the umask) and never opened through
a symbolic link, nor when another user owns what is at the path: in a world-writable directory someone else
could otherwise point the sensor's writes at a file of their choosing, or read what it writes. Writing and
rotating happen on a thread of the output's own: the event loop only appends documents to a bounded list, and a
slow disk never stalls it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from sensor.config.statefiles import StateFileError, make_private_dirs, open_private
from sensor.ecs.encoding import DocumentEncoder

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.1  # seconds: the most a line waits in memory
# A write error is one episode (one line) until writes have succeeded this long after the last failure.
ERROR_QUIET = 10.0


class FileOutputError(Exception):
    """The file cannot be opened at all."""


def _open_append(path: Path) -> tuple[int, int]:
    """An append descriptor for path and its size, after cutting a partial last line left by a crash.

    StateFileError when the path is a symbolic link, not a regular file or another user's file. An existing
    file keeps its mode (the operator may have opened it to a log shipper's group); a new one is 0600."""
    fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, chmod_existing=False)
    try:
        size = os.fstat(fd).st_size
    except OSError:
        os.close(fd)
        raise
    if size:
        tail = os.pread(fd, min(size, 65536), max(0, size - 65536))  # the file opened, not the name again
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            keep = size - len(tail) + cut + 1 if cut >= 0 else (0 if size <= 65536 else size)
            if keep != size:
                os.ftruncate(fd, keep)
                log.warning("file output %s: cut a partial last line (%d bytes)", path, size - keep)
                size = keep
    return fd, size


def _warn_if_replaceable(directory: Path) -> None:
    """One warning when other users may rename or remove files in the output's directory (writable by them and
    without the sticky bit /tmp has): they could swap the file between two rotations."""
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        log.warning("file output directory %s is writable by other users (mode %04o) without the sticky bit: "
                    "they could replace the output file; use a directory only the sensor can write",
                    directory, stat.S_IMODE(mode))


class RotatingFileOutput:
    name = "file"

    def __init__(self, path: Path, max_bytes: int = 100 * 1024 * 1024, backups: int = 5,
                 max_pending: int = 100_000) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = max(0, backups)
        self.max_pending = max_pending
        try:
            make_private_dirs(self.path.parent)
            self._fd, self._size = _open_append(self.path)
        except StateFileError as error:
            raise FileOutputError(f"file output {error}") from None
        except OSError as error:
            raise FileOutputError(f"cannot open {self.path}: {error.strerror}") from None
        _warn_if_replaceable(self.path.parent)
        self._lock = threading.Condition()
        self._pending: list[dict[str, Any]] = []
        self._stopping = False
        self._flush_now = False
        self._failing = False
        self._last_error = 0.0
        self._healthy = True
        self.received = 0
        self.dropped_backlog = 0  # written by the event loop only
        self.written = 0
        self.dropped_write_error = 0
        self.rotations = 0
        self.encode_errors = 0
        self._encoder = DocumentEncoder()  # used by the writer thread only
        self._thread = threading.Thread(target=self._run, name=f"file-output {self.path.name}", daemon=True)
        self._thread.start()

    # ---- event-loop side

    def write(self, doc: dict[str, Any]) -> None:
        with self._lock:
            self.received += 1
            if len(self._pending) >= self.max_pending:
                self.dropped_backlog += 1
                return
            self._pending.append(doc)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._flush_now = True
                self._lock.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("file output %s: writer did not finish within %.0fs", self.path, timeout)
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
        self._close_fd()

    def healthy(self) -> bool:
        return self._healthy and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "written": self.written,
            "rotations": self.rotations,
            "dropped_backlog": self.dropped_backlog,
            "dropped_write_error": self.dropped_write_error,
            "encode_errors": self.encode_errors,
            "dropped": self.dropped_backlog + self.dropped_write_error + self.encode_errors,
        }

    # ---- writer thread

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._flush_now and not self._stopping:
                        self._lock.wait(FLUSH_INTERVAL)
                    docs, self._pending = self._pending, []
                    self._flush_now = False
                    stopping = self._stopping
                if docs:
                    self._write_docs(docs)
                if stopping and not docs:
                    with self._lock:
                        if not self._pending:
                            return
        except Exception:  # the thread must say why it died, once
            log.exception("file output %s: writer stopped by an unexpected error", self.path)
            self._healthy = False

    def _write_docs(self, docs: list[dict[str, Any]]) -> None:
        chunk: list[bytes] = []
        chunk_bytes = 0
        for doc in docs:
            try:
                line = self._encoder.line(doc)
            except (TypeError, ValueError) as error:
                self.encode_errors += 1
                log.error("file output: document cannot be encoded, dropped: %s", error)
                continue
            if self._size + chunk_bytes + len(line) > self.max_bytes and (self._size or chunk_bytes):
                self._write_chunk(chunk)
                chunk, chunk_bytes = [], 0
                self._rotate()
            chunk.append(line)
            chunk_bytes += len(line)
        self._write_chunk(chunk)

    def _write_chunk(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._fd is None and not self._reopen():
            self.dropped_write_error += len(lines)
            return
        assert self._fd is not None
        data = memoryview(b"".join(lines))
        before = self._size
        try:
            while data:
                done = os.write(self._fd, data)
                data = data[done:]
        except OSError as error:
            # Never leave half a line: cut back to the last complete one and count the lines lost.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            self.dropped_write_error += len(lines)
            self._report(error)
            return
        self._size = before + sum(len(line) for line in lines)
        self.written += len(lines)
        if self._failing and time.monotonic() - self._last_error >= ERROR_QUIET:
            self._failing = False
            self._healthy = True
            log.warning("file output %s: writing again (%d events dropped so far)", self.path,
                        self.dropped_write_error)

    def _report(self, error: OSError | StateFileError) -> None:
        self._healthy = False
        self._last_error = time.monotonic()
        if not self._failing:
            self._failing = True
            if isinstance(error, StateFileError):
                log.error("file output: %s; events are dropped and counted", error)
                return
            reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
            log.error("file output %s: cannot write (%s); events are dropped and counted", self.path, reason)

    def _rotate(self) -> None:
        """PATH -> PATH.1 -> ... -> PATH.<backups>; the oldest goes. The file is synced before it is renamed."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as error:
            self._report(error)
        self._close_fd()
        try:
            if self.backups == 0:
                self.path.unlink(missing_ok=True)
            else:
                for number in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{number}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._sync_directory()
        except OSError as error:
            self._report(error)
        self.rotations += 1
        self._reopen()

    def _reopen(self) -> bool:
        try:
            self._fd, self._size = _open_append(self.path)
            return True
        except (OSError, StateFileError) as error:  # a link planted at the name while it was rotated, too
            self._fd = None
            self._report(error)
            return False

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        with contextlib.suppress(OSError):
            os.fsync(fd)
        os.close(fd)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
