"""A background thread that runs slow look-ups (file reads) off the event path, retrying those not ready yet.

A job is a callable returning True when done. One that returns False (the runtime has not written its state
yet) runs again after the next delay of its schedule; after the last it is given up and `on_give_up` is told.
Submitting never blocks and a key already queued is not queued twice. At most `max_jobs` keys are queued at once
(a storm of new containers whose state never appears would otherwise grow the queue for as long as their retry
schedules last): a submit beyond that is refused and counted, and the caller asks again at a later event.

`idle_task`, when given, runs every `idle_every` seconds between jobs (the resolver's watch of the runtimes'
state).

`hurry` lets a caller that needs one result now (a container's first exec) run that job at once and wait for it,
for a bounded time.
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
DEFAULT_MAX_JOBS = 4096


class RetryWorker:
    def __init__(self, retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS, name: str = "container-lookup",
                 start: bool = True, max_jobs: int = DEFAULT_MAX_JOBS,
                 idle_task: Callable[[], object] | None = None, idle_every: float = 0.1) -> None:
        self._delays = retry_delays
        self._idle_task = idle_task
        self._idle_every = idle_every
        self._next_idle = time.monotonic()
        self._max_jobs = max_jobs
        self._heap: list[tuple[float, int, Hashable, int]] = []
        # key -> (job, on_give_up): one per key queued or running, never more than max_jobs
        self._jobs: dict[Hashable, tuple[Callable[[], bool], Callable[[], None] | None]] = {}
        # key -> sequence number of its one live heap entry: hurry() pushes a new entry, and the one it replaces
        # is skipped when popped
        self._live_seq: dict[Hashable, int] = {}
        self._running: Hashable | None = None
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.retries = 0
        self.failed = 0
        self.refused = 0
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
            if len(self._jobs) >= self._max_jobs:
                self.refused += 1
                return False
            self._jobs[key] = (job, on_give_up)
            self._push(time.monotonic(), key, 0)
            self._cond.notify_all()
            return True

    def _push(self, due: float, key: Hashable, attempt: int) -> None:
        seq = next(self._seq)
        self._live_seq[key] = seq
        heapq.heappush(self._heap, (due, seq, key, attempt))

    def hurry(self, key: Hashable, timeout: float) -> bool:
        """Runs KEY's job now if it is waiting for a retry, and waits at most TIMEOUT for it to finish (done or
        given up). True when it is no longer queued."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if key not in self._jobs or self._thread is None:  # no thread: run_pending() runs it, not a wait
                return key not in self._jobs
            if self._running != key:
                attempt = next((a for _, s, k, a in self._heap if k == key and s == self._live_seq.get(k)), None)
                if attempt is not None:
                    self._push(time.monotonic(), key, attempt)
                    self._cond.notify_all()
            while key in self._jobs:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
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
            while self._heap and self._heap[0][0] <= time.monotonic():
                _, seq, key, attempt = heapq.heappop(self._heap)
                if self._live_seq.get(key) == seq:
                    return key, attempt
            return None

    def _loop(self) -> None:
        while True:
            idle = False
            with self._cond:
                while not self._closed:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    if self._idle_task is not None and now >= self._next_idle:
                        idle = True
                        self._next_idle = now + self._idle_every
                        break
                    due = [self._heap[0][0]] if self._heap else []
                    if self._idle_task is not None:
                        due.append(self._next_idle)
                    self._cond.wait(min(due) - now if due else None)
                if self._closed:
                    return
                if not idle:
                    _, seq, key, attempt = heapq.heappop(self._heap)
                    if self._live_seq.get(key) != seq:
                        continue  # replaced by hurry()
                    self._running = key
            if idle:
                self._idle()
            else:
                self._run(key, attempt)

    def _idle(self) -> None:
        try:
            self._idle_task()  # type: ignore[misc]
        except Exception:  # a malformed state file must not kill the worker
            log.exception("periodic container state watch failed")
            self.failed += 1

    def _run(self, key: Hashable, attempt: int) -> None:
        job, on_give_up = self._jobs[key]
        try:
            done = job()
        except Exception:  # a malformed state file must not kill the worker
            log.exception("container look-up %r failed", key)
            self.failed += 1
            done = False
        with self._cond:
            self._running = None
            if done:
                self._forget(key)
                return
            if attempt < len(self._delays):
                self.retries += 1
                self._push(time.monotonic() + self._delays[attempt], key, attempt + 1)
                return
        if on_give_up is not None:
            on_give_up()
        with self._cond:
            self._forget(key)

    def _forget(self, key: Hashable) -> None:
        del self._jobs[key]
        self._live_seq.pop(key, None)
        self._cond.notify_all()  # hurry() waits for this

    def close(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
