"""An output that keeps documents in memory, with the time each arrived: for `selftest` and for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Doc = dict[str, Any]


class MemoryOutput:
    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrivals: list[tuple[float, Doc]] = []

    def write(self, doc: Doc) -> None:
        with self._lock:
            self._arrivals.append((time.time(), doc))

    @property
    def docs(self) -> list[Doc]:
        with self._lock:
            return [doc for _at, doc in self._arrivals]

    def find(self, predicate: Callable[[Doc], bool]) -> tuple[float, Doc] | None:
        """(arrival time, document) of the first document matching predicate."""
        with self._lock:
            return next(((at, doc) for at, doc in self._arrivals if predicate(doc)), None)

    def flush(self) -> None:
        pass

    def close(self, timeout: float = 10.0) -> None:
        pass

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"written": len(self._arrivals), "dropped": 0}
