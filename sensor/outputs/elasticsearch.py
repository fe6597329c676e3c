"""Elasticsearch output: `_bulk` `create` into data streams from a sender thread, with an on-disk spool.

Flow. `write()` (event-loop thread) routes the document to its data stream and appends it to a bounded memory
queue; it never touches the network. The sender thread takes batches (bounded by count, bytes and time) from
the spool when it holds a backlog, else from the queue, and ships them. Once the queue overflows, or a batch from
memory fails, the output switches to spooling and new documents are appended to the spool, so order is kept and
memory stays flat however long the outage lasts. When the spool is drained the output goes back to memory.

The spool is a disk queue with an ack cursor (sensor.outputs.spool): appended at its end, read from its cursor,
acknowledged once a batch is settled. Nothing is ever put back in front of it, so what goes to disk goes in the
order of the stream, oldest first, and what a kill -9 leaves on disk is always a prefix of the stream:
- the queue overflows while a batch from memory is in flight: the event loop appends that batch and the queue to
  the spool before the new document. If the batch then gets through, the sender consumes its copy on disk
  without sending it again; if it fails, it is simply read from the spool's cursor, where it is first;
- a batch from memory fails: the sender appends it and the queue behind it while the event loop goes on queueing
  in memory, moves what was queued meanwhile, and only once it finds the queue empty does the event loop append
  to the spool itself;
- a batch from the spool fails (a backlog from an earlier run): the queue goes to the spool's end the same way
  rather than waiting in memory; the failed batch is retried from the sender's copy and acknowledged once
  settled, so after a crash it is read again from the cursor.
Two windows remain, both the in-memory queue that the healthy path may lose: a batch in flight to a cluster that
has not failed yet, with the queue behind it; and the queue of a failover the event loop outruns by a whole
queue, whose newer events then go to disk at once.

The bulk client (sensor.outputs.elasticsearch_bulk) settles each item: 2xx delivered, 409 on our deterministic
`_id` an earlier attempt's delivery, 429/5xx retried with capped jittered backoff, other 4xx dead-lettered.
Where each document goes is sensor.outputs.elasticsearch_naming; the settings are
sensor.outputs.elasticsearch_settings.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from sensor.ecs.encoding import DocumentEncoder
from sensor.outputs.deadletter import DeadLetterFile
from sensor.outputs.elasticsearch_bulk import BulkClient, backoff_delay, make_client
from sensor.outputs.elasticsearch_naming import Item, StreamRouter
from sensor.outputs.elasticsearch_settings import (
    ElasticsearchConfigError,
    ElasticsearchSettings,
    check_index_name,
    redact_url,
)
from sensor.outputs.spool import Position, Spool

__all__ = [
    "ElasticsearchConfigError", "ElasticsearchOutput", "ElasticsearchSettings", "check_index_name", "make_client",
    "redact_url",
]

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    items: list[Item]
    position: Position | None  # spool position to acknowledge once settled; None for a batch from memory


class ElasticsearchOutput:
    name = "elasticsearch"

    def __init__(
        self,
        settings: ElasticsearchSettings,
        client_factory: Callable[[ElasticsearchSettings], Any] = make_client,
        sleep_jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.settings = settings
        self._jitter = sleep_jitter
        self._router = StreamRouter(settings.events_stream, settings.alerts_stream)
        self._spool = (
            Spool(settings.spool_dir, settings.spool_bytes, settings.spool_policy)
            if settings.spool_dir is not None
            else None
        )
        dead_letter_path = settings.dead_letter_path
        if dead_letter_path is None and settings.spool_dir is not None:
            dead_letter_path = settings.spool_dir.parent / "dead-letter.ndjson"
        self._dead_letter = DeadLetterFile(dead_letter_path)
        self._bulk = BulkClient(settings, client_factory(settings), self._dead_letter)
        self._cond = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_since = 0.0
        self._spooling = False
        # The sender is moving a failed memory batch and the queue to the spool; the event loop keeps queueing.
        self._failing_over = False
        # The memory batch being sent, and where its copy ends in the spool once the event loop put it there.
        self._in_flight: list[dict[str, Any]] | None = None
        self._in_flight_end: Position | None = None
        self._stopping = False
        self._deadline = 0.0
        self._wake = threading.Event()
        self._writer_packer = msgpack.Packer(use_bin_type=True)
        # one encoder per thread that encodes: the event loop (while spooling) and the sender
        self._writer_encoder = DocumentEncoder()
        self._sender_encoder = DocumentEncoder()
        self._sender_packer = msgpack.Packer(use_bin_type=True)
        # Counters: each is written by one thread only.
        self._received = 0
        self._dropped_queue_full = 0
        self._dropped_at_exit = 0
        self._writer_encode_errors = 0
        self._sender_encode_errors = 0
        self._thread = threading.Thread(target=self._run, name="elasticsearch-sender", daemon=True)
        self._thread.start()

    # ---- event-loop side

    def write(self, doc: dict[str, Any]) -> None:
        with self._cond:
            self._received += 1
            # While the sender fails over, documents stay queued: appended to the spool before it is done, they
            # would be on disk while older ones are still in memory.
            if not self._spooling and len(self._queue) < self.settings.queue_docs:
                if not self._queue:
                    self._queue_since = time.monotonic()
                self._queue.append(doc)
                if len(self._queue) >= self.settings.batch_docs:
                    self._cond.notify()
                return
            if self._spool is None:
                self._dropped_queue_full += 1
                return
            if not self._spooling:
                self._spooling = True
                if self._failing_over:
                    log.warning("elasticsearch: events arrive faster than the queue moves to the disk spool; "
                                "new events go to it while %d older ones are still in memory", len(self._queue))
                else:
                    log.info("elasticsearch: sending falls behind; new events go to the disk spool")
                    self._spill()
            payload = self._pack_doc(doc, count_errors=True)
            if payload is not None:
                self._spool.append([payload])

    def _spill(self) -> None:
        """The queue overflows while the sender keeps up no longer: the batch it has in flight and the queue go to
        the spool first, so nothing reaches the disk before an older event. Called with the lock held."""
        assert self._spool is not None
        if self._in_flight is not None and self._in_flight_end is None:
            # The sender counts this batch's encoding errors; a copy the spool refuses is the sender's to count.
            payloads = [payload for doc in self._in_flight if (payload := self._pack_doc(doc)) is not None]
            if payloads and self._spool.append(payloads, copy=True):
                self._in_flight_end = self._spool.end
        payloads = [payload for doc in self._queue if (payload := self._pack_doc(doc, True)) is not None]
        self._queue.clear()
        self._spool.append(payloads)

    def _pack_doc(self, doc: dict[str, Any], count_errors: bool = False) -> bytes | None:
        try:
            return self._writer_packer.pack(self._router.item(doc, self._writer_encoder))
        except (TypeError, ValueError) as error:
            if count_errors:
                self._writer_encode_errors += 1
                log.error("elasticsearch: document cannot be encoded, dropped: %s", error)
            return None

    def flush(self) -> None:
        """Nothing to do: the event loop flushes every poll (50 ms), and a bulk request that often would be
        mostly overhead for the cluster. A batch leaves when full or `batch_wait` after its first document."""

    def close(self, timeout: float = 10.0) -> None:
        """Delivers what it holds for up to `timeout` seconds, leaves the rest in the spool, and stops."""
        with self._cond:
            self._stopping = True
            self._bulk.stopping = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._wake.set()
        self._thread.join(timeout + self.settings.request_timeout + 5)
        if self._thread.is_alive():
            log.error("elasticsearch: the sender did not stop in time")
        if self._spool is not None:
            left = self._spool.unread()
            if left:
                log.warning("elasticsearch: %d events left in the spool %s, sent at the next start",
                            left, self._spool.directory)
            self._spool.close()
        self._dead_letter.close()
        with contextlib.suppress(Exception):  # closing a connection pool must not fail the shutdown
            self._bulk.close()

    def healthy(self) -> bool:
        return self._bulk.healthy and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        out = {
            "received": self._received,
            "queued": len(self._queue),
            "dropped_queue_full": self._dropped_queue_full,
            "dropped_at_exit": self._dropped_at_exit,
            "dead_letter_written": self._dead_letter.written,
            "dead_letter_not_written": self._dead_letter.not_written,
            **self._bulk.counters,
            "encode_errors": self._sender_encode_errors + self._writer_encode_errors,
        }
        if self._spool is not None:
            out.update(self._spool.stats())
        out["dropped"] = (
            self._dropped_queue_full + self._dropped_at_exit + out["encode_errors"]
            + out.get("spool_dropped_oldest", 0) + out.get("spool_dropped_newest", 0)
            + out.get("spool_dropped_disk_full", 0) + out.get("spool_dropped_corrupt", 0)
        )
        return out

    # ---- sender thread

    def _run(self) -> None:
        try:
            while True:
                if self._spool is not None:
                    self._spool.sync_sealed()  # here, not on the event loop that filled them
                batch = self._take()
                if batch is None:
                    return
                self._deliver(batch)
        except Exception:  # the thread must say why it died, once
            log.exception("elasticsearch: sender stopped by an unexpected error")
            self._bulk.healthy = False

    def _take(self) -> _Batch | None:
        settings = self.settings
        with self._cond:
            while True:
                # At close the backlog is sent while time remains and the cluster answers; the rest
                # stays on disk for the next start. The backlog goes first: it is older than all queued.
                sending_allowed = not self._stopping or (
                    not self._bulk.given_up() and time.monotonic() < self._deadline
                )
                if sending_allowed and self._spool is not None and self._spool.unread():
                    docs = None
                    break
                if self._queue:
                    full = len(self._queue) >= settings.batch_docs
                    due = self._queue_since + settings.batch_wait - time.monotonic()
                    if full or due <= 0 or self._stopping:
                        count = min(len(self._queue), settings.batch_docs)
                        docs = [self._queue.popleft() for _ in range(count)]
                        self._queue_since = time.monotonic()
                        self._in_flight = docs
                        break
                    self._cond.wait(due)
                    continue
                if self._stopping:
                    return None
                if self._spooling:
                    self._spooling = False
                    log.info("elasticsearch: spool drained; sending from memory again")
                self._cond.wait(1.0)
        if docs is not None:
            return _Batch(self._encode(docs), None)
        assert self._spool is not None
        payloads, position = self._spool.read(settings.batch_docs, settings.batch_bytes)
        items = []
        for payload in payloads:
            try:
                items.append(msgpack.unpackb(payload, raw=False))
            except (ValueError, msgpack.UnpackException):
                self._sender_encode_errors += 1
        return _Batch(items, position)

    def _encode(self, docs: list[dict[str, Any]]) -> list[Item]:
        items = []
        for doc in docs:
            try:
                items.append(self._router.item(doc, self._sender_encoder))
            except (TypeError, ValueError) as error:
                self._sender_encode_errors += 1
                log.error("elasticsearch: document cannot be encoded, dropped: %s", error)
        return items

    def _deliver(self, batch: _Batch) -> None:
        pending = batch.items
        attempt = 0
        while pending:
            pending = self._bulk.send_all(pending)
            if not pending:
                break
            if batch.position is None:
                if self._spool is not None:
                    self._fail_over(pending)  # on disk now (or already): read again from the spool's cursor
                    if not self._stopping:
                        self._backoff(attempt)
                    return
                if self._stopping and time.monotonic() >= self._deadline:
                    self._dropped_at_exit += len(pending)
                    log.error("elasticsearch: %d events undelivered at exit (no spool configured)", len(pending))
                    return
            elif self._spool is not None and not self._spool.holds(batch.position):
                # Its segment was dropped to make room while it was out: the policy drops the oldest events.
                self._spool.drop_in_flight(len(pending))
                if not self._stopping:
                    self._backoff(attempt)
                return
            elif self._stopping and (self._bulk.given_up() or time.monotonic() >= self._deadline):
                return  # still in the spool, unacknowledged: sent again on the next start
            elif self._spool is not None:
                self._fail_over([], front=False)  # while this batch waits, the queue behind it waits on disk
            self._backoff(attempt)
            attempt += 1
        if batch.position is not None:
            assert self._spool is not None
            self._spool.ack(batch.position)
        else:
            self._delivered_from_memory()

    def _delivered_from_memory(self) -> None:
        """A memory batch got through. If the event loop put a copy in the spool meanwhile, that copy is
        consumed and acknowledged without being sent again."""
        with self._cond:
            end = self._in_flight_end
            self._in_flight = None
            self._in_flight_end = None
        if end is None or self._spool is None:
            return
        while True:
            payloads, position = self._spool.read(self.settings.batch_docs, 1 << 62, until=end)
            if not payloads or position is None:
                return
            self._spool.ack(position)

    def _fail_over(self, pending: list[Item], front: bool = True) -> None:
        """A memory batch failed (`front`): unless the event loop spooled it already, it and the queue behind it
        go to the spool before the event loop appends anything newer. Returns once the queue is empty and new
        events go to the spool.

        `front=False`: a batch from the spool is failing, and the queue (newer than all the spool holds) goes to
        its end the same way, instead of waiting in memory for that batch to get through."""
        assert self._spool is not None
        with self._cond:
            spilled = front and self._in_flight_end is not None
            if front:
                self._in_flight = None
                self._in_flight_end = None
            overflowed = self._spooling
            if spilled or (not front and (overflowed or not self._queue)):
                return  # on disk already, first after the cursor: read again from there
            self._failing_over = not overflowed
            rest = list(self._queue)
            self._queue.clear()
        self._spool.append(self._pack(pending) + self._pack(self._encode(rest)))
        if overflowed:
            return
        log.info("elasticsearch: unreachable or refusing; events go to the disk spool")
        while True:
            with self._cond:
                rest = list(self._queue)
                self._queue.clear()
                overflowed = self._spooling
                if not rest or overflowed:
                    # Empty: from here on the event loop appends to the spool itself. Overflowed: it does so
                    # already, and what is taken here follows its events: order slips by that much.
                    self._spooling = True
                    self._failing_over = False
                if not rest:
                    return
            self._spool.append(self._pack(self._encode(rest)))
            if overflowed:
                return

    def _pack(self, items: list[Item]) -> list[bytes]:
        return [self._sender_packer.pack(item) for item in items]

    def _backoff(self, attempt: int) -> None:
        delay = backoff_delay(attempt, self.settings.backoff_initial, self.settings.backoff_max, self._jitter)
        if self._stopping:
            time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))
        else:
            self._wake.wait(delay)  # close() cuts the wait short
