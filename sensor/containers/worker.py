"""A background thread that runs slow look-ups (file reads) off the event path, retrying those not ready yet.

A job is a callable returning True when done. One that returns False (the runtime has not written its state
yet) runs again after the next delay of its schedule; after the last it is given up and `on_give_up` is told.
Submitting never blocks and a key already queued is not queued twice.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

DEFAULT_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


class RetryWorker:
    def __init__(self, retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS, name: str = "container-lookup",
                 start: bool = True) -> None:
        self._delays = retry_delays
        self._heap: list[tuple[float, int, Hashable, int]] = []
        self._jobs: dict[Hashable, tuple[Callable[[], bool], Callable[[], None] | None]] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.retries = 0
        self.failed = 0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def submit(self, key: Hashable, job: Callable[[], bool],
               on_give_up: Callable[[], None] | None = None) -> bool:
        """Queues JOB under KEY unless KEY is queued already; False when it was."""
        with self._cond:
            if self._closed or key in self._jobs:
                return False
            self._jobs[key] = (job, on_give_up)
            heapq.heappush(self._heap, (time.monotonic(), next(self._seq), key, 0))
            self._cond.notify()
            return True

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def run_pending(self) -> int:
        """Runs the jobs due now in this thread (for a worker built with start=False); returns how many."""
        done = 0
        while True:
            item = self._pop_due()
            if item is None:
                return done
            self._run(*item)
            done += 1

    def _pop_due(self) -> tuple[Hashable, int] | None:
        with self._cond:
            if self._heap and self._heap[0][0] <= time.monotonic():
                _, _, key, attempt = heapq.heappop(self._heap)
                return key, attempt
            return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if self._heap:
                        wait = self._heap[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
                _, _, key, attempt = heapq.heappop(self._heap)
            self._run(key, attempt)

    def _run(self, key: Hashable, attempt: int) -> None:
        job, on_give_up = self._jobs[key]
        try:
            done = job()
        except Exception:  # a malformed state file must not kill the worker
            log.exception("container look-up %r failed", key)
            self.failed += 1
            done = False
        with self._cond:
            if done:
                del self._jobs[key]
                return
            if attempt < len(self._delays):
                self.retries += 1
                due = time.monotonic() + self._delays[attempt]
                heapq.heappush(self._heap, (due, next(self._seq), key, attempt + 1))
                return
            del self._jobs[key]
        if on_give_up is not None:
            on_give_up()

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
