"""Work that touches files another party controls, run on a worker thread the event loop waits for only so long.

A look at a container's file can hang for as long as whoever serves that file wants (a FUSE filesystem in the
container, a network filesystem) however carefully it is opened. The event loop hands such work to a worker
thread and waits at most `wait_s`; when the work is not done by then, the loop goes on and the job finishes
(or not) on its own: the worker is abandoned to it and the next job gets a new thread. At most `max_abandoned`
jobs may be outstanding at once; beyond that, new jobs are refused at once, so a hostile file costs a bounded
number of threads and never the event loop. While any job is outstanding, new jobs are waited for only
`degraded_wait_s`, so a stream of slow files cannot stall the loop `wait_s` at a time either.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Job:
    """One call handed to the worker. `done` is set once it has returned or raised."""

    __slots__ = ("args", "done", "error", "fn", "result", "started", "refused")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.refused = False

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except Exception as exc:  # the caller decides what a failed look means; the worker goes on
            self.error = exc
        finally:
            self.done.set()


class _Worker(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job.run()


class BoundedWorker:
    def __init__(self, name: str, *, wait_s: float = 0.1, degraded_wait_s: float = 0.01,
                 max_abandoned: int = 4) -> None:
        self._name = name
        self.wait_s = wait_s
        self.degraded_wait_s = degraded_wait_s
        self.max_abandoned = max_abandoned
        self._worker: _Worker | None = None
        self._abandoned: list[Job] = []
        self.counts = {"timeouts": 0, "refused": 0, "abandoned_now": 0}
        self._refusal_logged = False

    def call(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Run fn(*args) on the worker; the job is returned done, or not done when the wait ran out (it may
        finish later: check `done`), or refused (`refused` set) when too many jobs are outstanding."""
        outstanding = self.outstanding()
        job = Job(fn, args)
        if outstanding >= self.max_abandoned:
            job.refused = True
            self.counts["refused"] += 1
            if not self._refusal_logged:
                self._refusal_logged = True
                log.warning("%s: %d looks at files have not returned; further looks are skipped until one does "
                            "(counted)", self._name, outstanding)
            return job
        worker = self._worker
        if worker is None or not worker.is_alive():
            worker = self._worker = _Worker(self._name)
            worker.start()
        worker.jobs.put(job)
        if job.done.wait(self.degraded_wait_s if outstanding else self.wait_s):
            return job
        # The worker is busy with this job for as long as it takes: it leaves once done, the next job gets a
        # new worker.
        worker.jobs.put(None)
        self._worker = None
        self._abandoned.append(job)
        self.counts["timeouts"] += 1
        self.counts["abandoned_now"] = len(self._abandoned)
        return job

    def outstanding(self) -> int:
        """Jobs given up on that have still not returned."""
        if self._abandoned:
            self._abandoned = [job for job in self._abandoned if not job.done.is_set()]
            self.counts["abandoned_now"] = len(self._abandoned)
            if not self._abandoned:
                self._refusal_logged = False
        return len(self._abandoned)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.jobs.put(None)
            self._worker = None
