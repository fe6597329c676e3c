"""Documents Elasticsearch refused for good (4xx other than 409/429), kept as NDJSON with the reason."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from sensor.config.statefiles import StateFileError, make_private_dirs, open_private

log = logging.getLogger(__name__)


class DeadLetterFile:
    """Appends one line per refused document: when, where to, why, and the document itself.

    Bounded by max_bytes; past it (or on a write error) documents are only counted, never raised.
    """

    def __init__(self, path: Path | None, max_bytes: int = 100 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.not_written = 0
        self._lock = threading.Lock()
        self._size = 0
        self._fd: int | None = None
        self._warned = False

    def _open(self) -> int | None:
        if self._fd is None and self.path is not None:
            try:
                make_private_dirs(self.path.parent)
                # 0600 whatever the umask (it holds whole documents), never through a link planted at its name.
                self._fd = open_private(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                self._size = os.fstat(self._fd).st_size
            except StateFileError as error:
                self._warn(str(error))
            except OSError as error:
                self._warn(f"cannot open {self.path}: {error.strerror}")
        return self._fd

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.error("dead-letter file: %s; refused documents are only counted from now on", message)

    def add(self, index: str, doc_id: str | None, status: int, error: Any, source: bytes) -> None:
        head = {
            "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "index": index,
            "id": doc_id,
            "status": status,
            "error": error,
        }
        line = json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"document":' + source + b"}\n"
        with self._lock:
            fd = self._open()
            if fd is None or self._size + len(line) > self.max_bytes:
                if fd is not None:
                    self._warn(f"{self.path} reached its limit of {self.max_bytes} bytes")
                self.not_written += 1
                return
            try:
                os.write(fd, line)
            except OSError as error:
                self._warn(f"cannot write {self.path}: {error.strerror}")
                self.not_written += 1
                return
            self._size += len(line)
            self.written += 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
