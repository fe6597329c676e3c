"""Work that touches files another party controls, run on worker threads the event loop waits for only so long.

A look at a container's file can take as long as whoever serves that file wants (a FUSE or network filesystem in
the container), and a container can ask for many costly looks (a binary padded to 16 MiB, touched before each
exec). So looks go through a bounded queue served by worker threads, and the event loop:

- waits for its own look at most `wait_s`, and in all at most `wait_share` of its time (per second): a flood of
  costly looks then queues up instead of slowing every other event on the host;
- never waits for a look the queue cannot take (`max_queued`): that look is refused, counted, logged once.

A look that is not back when the loop stops waiting finishes on its own; the caller may check `Job.done` later.
A worker busy with one look for longer than `stuck_after_s` gets company: another thread is started (at most
`max_threads` in all), so one look that never returns does not hold up the rest.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Job:
    """One call handed to the workers. `done` is set once it has returned or raised."""

    __slots__ = ("args", "done", "error", "fn", "refused", "result", "waited")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.refused = False
        self.waited = 0.0     # how long the caller waited for it

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except Exception as exc:  # the caller decides what a failed look means; the worker goes on
            self.error = exc
        finally:
            self.done.set()


class _Worker(threading.Thread):
    def __init__(self, owner: BoundedWorker) -> None:
        super().__init__(name=owner.name, daemon=True)
        self.owner = owner
        self.busy_since: float | None = None

    def run(self) -> None:
        owner = self.owner
        while True:
            with owner._ready:
                while not owner._queue and not owner._closed:
                    owner._ready.wait()
                if owner._closed:
                    return
                job = owner._queue.popleft()
                self.busy_since = owner._clock()
            try:
                job.run()
            finally:
                self.busy_since = None


class BoundedWorker:
    def __init__(self, name: str, *, wait_s: float = 0.05, wait_share: float = 0.05, max_queued: int = 1024,
                 max_threads: int = 4, stuck_after_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.wait_s = wait_s
        self.wait_share = wait_share
        self.max_queued = max_queued
        self.max_threads = max_threads
        self.stuck_after_s = stuck_after_s
        self._clock = clock
        self._queue: collections.deque[Job] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._workers: list[_Worker] = []
        self._window_start = clock()
        self._waited_in_window = 0.0
        self._refusal_logged = False
        self.counts = {"timeouts": 0, "deferred": 0, "refused": 0, "queued_now": 0, "threads": 0, "stuck_now": 0}

    def call(self, fn: Callable[..., Any], *args: Any) -> Job:
        """Queue fn(*args) and wait for it within the allowance. The job comes back done; or not done (check
        `done` later: `waited` > 0 means the wait ran out, 0 that there was no time left to wait); or refused
        when the queue is full."""
        job = Job(fn, args)
        now = self._clock()
        with self._ready:
            if len(self._queue) >= self.max_queued:
                job.refused = True
                self.counts["refused"] += 1
                if not self._refusal_logged:
                    self._refusal_logged = True
                    log.warning("%s: %d looks at files are waiting; further looks are skipped until they drain "
                                "(counted)", self.name, len(self._queue))
                return job
            self._queue.append(job)
            self._ready.notify()
        self._staff(now)
        allowance = self._allowance(now)
        if allowance > 0:
            job.done.wait(allowance)
            job.waited = max(self._clock() - now, 1e-9)
            self._waited_in_window += job.waited
        if not job.done.is_set():
            self.counts["timeouts" if job.waited else "deferred"] += 1
        return job

    def _allowance(self, now: float) -> float:
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._waited_in_window = 0.0
        return min(self.wait_s, max(0.0, self.wait_share - self._waited_in_window))

    def _staff(self, now: float) -> None:
        """A thread for the queue; another when every thread has been on one look for too long."""
        self._workers = [w for w in self._workers if w.is_alive()]
        stuck = sum(1 for w in self._workers
                    if w.busy_since is not None and now - w.busy_since > self.stuck_after_s)
        self.counts["stuck_now"] = stuck
        if (not self._workers or stuck == len(self._workers)) and len(self._workers) < self.max_threads:
            worker = _Worker(self)
            worker.start()
            self._workers.append(worker)
        self.counts["threads"] = len(self._workers)

    def stats(self) -> dict[str, int]:
        """Counters (read from any thread: nothing is started here)."""
        now = self._clock()
        workers = list(self._workers)
        self.counts["stuck_now"] = sum(1 for w in workers
                                       if w.busy_since is not None and now - w.busy_since > self.stuck_after_s)
        self.counts["threads"] = sum(1 for w in workers if w.is_alive())
        self.counts["queued_now"] = len(self._queue)
        if not self._queue:
            self._refusal_logged = False
        return dict(self.counts)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._queue.clear()
            self._ready.notify_all()
