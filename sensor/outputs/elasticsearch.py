"""Elasticsearch output: `_bulk` `create` into data streams from a sender thread, with an on-disk spool.

Flow. `write()` (event-loop thread) routes the document to its data stream and appends it to a bounded memory
queue; it never touches the network. The sender thread takes batches (bounded by count, bytes and time) from
the queue, or from the spool when there is a backlog, and ships them. Once the queue overflows, or a batch from
memory fails, the output switches to spooling and new documents are appended to the spool, so order is kept and
memory stays flat however long the outage lasts. When the spool is drained the output goes back to memory.

Failing over keeps what is on disk a prefix of the stream. When a batch from memory fails, the sender writes it
and the queue behind it to the front of the spool while the event loop goes on queueing in memory; it moves what
was queued meanwhile right behind them, and only once it finds the queue empty does the event loop append to the
spool itself. When a batch from the spool fails (a backlog from an earlier run), the queue goes to the spool's
end the same way rather than waiting in memory. So no document reaches the disk before an older one: a kill -9
during an outage can only lose events newer than everything spooled, those still queued. Two windows remain,
both the in-memory queue that the healthy path may lose: a batch in flight to a cluster that has not failed yet
(with the queue behind it, once that overflows to disk while the request hangs), and the queue of a failover the
event loop outruns by a whole queue, whose newer events then go to disk at once.

Results follow Elasticsearch's meaning: per item, 201 is delivered; 409 on a `create` with our deterministic
`_id` (event.id) means an earlier attempt already delivered it; 429 and 5xx are retried with capped exponential
backoff and full jitter; any other status goes to the dead-letter file with its reason. Whole requests that fail
(connection errors, timeouts, 429, 5xx, 401/403 while credentials are fixed) are retried; a 413 halves the batch.
Spool offsets are acknowledged on disk only after a batch is fully settled: at-least-once across crashes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from sensor.credentials import UrlError, mask_url, parse_url, scrub_urls
from sensor.outputs.deadletter import DeadLetterFile
from sensor.outputs.encoding import DocumentEncoder
from sensor.outputs.spool import Position, Spool

log = logging.getLogger(__name__)

DEFAULT_EVENTS_STREAM = "logs-endpoint.events.process-default"
DEFAULT_ALERTS_STREAM = "logs-container_sensor.alerts-default"
_DATA_STREAM_RE = re.compile(r"^(logs|metrics|traces|synthetics|profiling)-([a-z0-9_.]+)-([a-z0-9_.]+)$")
_INDEX_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
_PLAIN_ID_RE = re.compile(r"^[A-Za-z0-9_.:+=-]{1,512}$")
_FILTER_PATH = "errors,items.*.status,items.*.error"
# Oldest REST compatibility every server we support understands (8.x takes 8 and 7, 9.x takes 9 and 8).
_PROBE_COMPAT = 8


class ElasticsearchConfigError(ValueError):
    """A setting of the Elasticsearch output that cannot work; the message names it."""


def data_stream_parts(name: str) -> tuple[str, str, str] | None:
    match = _DATA_STREAM_RE.match(name)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def check_index_name(name: str, what: str) -> None:
    if not _INDEX_RE.match(name) or len(name.encode()) > 255 or name in (".", ".."):
        raise ElasticsearchConfigError(f"{what}: {name!r} is not a valid index or data stream name")


def redact_url(url: str) -> str:
    """The URL for messages: without credentials, or masked (`https://***@host`) when it does not parse."""
    try:
        return parse_url(url).without_credentials()
    except UrlError:
        return mask_url(url)


@dataclass
class ElasticsearchSettings:
    url: str
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    ca_fingerprint: str | None = None
    verify_tls: bool = True
    # None: an event goes to the data stream its data_stream.* fields name (DEFAULT_EVENTS_STREAM when they are
    # missing or no valid name), an alert to DEFAULT_ALERTS_STREAM; a name here sends every event (or alert)
    # there. Either way the document's data_stream.* and event.dataset are made to match its stream.
    events_stream: str | None = None
    alerts_stream: str | None = None
    request_timeout: float = 10.0
    batch_docs: int = 1000
    batch_bytes: int = 5 * 1024 * 1024
    batch_wait: float = 0.5
    queue_docs: int = 10000
    spool_dir: Path | None = None
    spool_bytes: int = 1024 * 1024 * 1024
    spool_policy: str = "drop_oldest"
    dead_letter_path: Path | None = None
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        # The last `@` ends the credentials, so a password may hold `/`, `#`, `?`, `:` or `@` (sensor.credentials).
        try:
            parts = parse_url(self.url)
        except UrlError as error:
            raise ElasticsearchConfigError(f"elasticsearch url: {error}") from None
        if parts.has_credentials:
            # Credentials in the URL become basic auth; the URL kept here (and given to the client) carries none.
            if self.api_key or self.username:
                raise ElasticsearchConfigError("elasticsearch: credentials both in the URL and in settings")
            self.username = parts.username
            self.password = parts.password or ""
        self.url = parts.without_credentials()
        if self.api_key and self.username:
            raise ElasticsearchConfigError("elasticsearch: give either an API key or a username, not both")
        if self.username and self.password is None:
            raise ElasticsearchConfigError("elasticsearch: a username needs a password")
        for what, name in (("events data stream", self.events_stream), ("alerts data stream", self.alerts_stream)):
            if name is not None:
                check_index_name(name, what)
        if self.batch_docs < 1 or self.batch_bytes < 1024 or self.queue_docs < self.batch_docs:
            raise ElasticsearchConfigError("elasticsearch: batch and queue sizes must be positive, queue >= batch")


@dataclass
class _Batch:
    items: list[list[Any]]  # [index, id or None, source JSON bytes]
    position: Position | None  # spool position to acknowledge once settled; None for a batch from memory


class _RequestFailed(Exception):
    def __init__(self, reason: str, retry: bool = True, status: int | None = None, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.status = status
        self.too_large = too_large


def make_client(settings: ElasticsearchSettings) -> Any:
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {
        "hosts": [settings.url],
        "request_timeout": settings.request_timeout,
        "max_retries": 0,  # retries, backoff and spooling are ours
        "retry_on_timeout": False,
        "http_compress": False,
    }
    if settings.api_key:
        # Either the encoded form Kibana shows (base64 of id:key) or "id:key" as created through the API.
        key_id, colon, key = settings.api_key.partition(":")
        kwargs["api_key"] = (key_id, key) if colon else settings.api_key
    elif settings.username:
        kwargs["basic_auth"] = (settings.username, settings.password or "")
    if settings.ca_file:
        kwargs["ca_certs"] = str(settings.ca_file)
    if settings.ca_fingerprint:
        kwargs["ssl_assert_fingerprint"] = settings.ca_fingerprint
    if not settings.verify_tls:
        kwargs["verify_certs"] = False
        kwargs["ssl_show_warn"] = False
    return Elasticsearch(**kwargs)


def _compat_headers(major: int) -> dict[str, str]:
    return {
        "accept": f"application/vnd.elasticsearch+json; compatible-with={major}",
        "content-type": f"application/vnd.elasticsearch+x-ndjson; compatible-with={major}",
    }


def _client_major() -> int:
    from elasticsearch import __versionstr__

    return int(__versionstr__.split(".")[0])


class ElasticsearchOutput:
    name = "elasticsearch"

    def __init__(
        self,
        settings: ElasticsearchSettings,
        client_factory: Callable[[ElasticsearchSettings], Any] = make_client,
        sleep_jitter: Callable[[float], float] | None = None,
    ) -> None:
        self.settings = settings
        self._client = client_factory(settings)
        self._bulk_headers: dict[str, str] | None = None
        self._jitter = sleep_jitter or (lambda cap: random.uniform(0, cap))
        self._configured = {
            False: self._target(settings.events_stream) if settings.events_stream else None,
            True: self._target(settings.alerts_stream) if settings.alerts_stream else None,
        }
        self._defaults = {False: self._target(DEFAULT_EVENTS_STREAM), True: self._target(DEFAULT_ALERTS_STREAM)}
        self._named_streams: dict[tuple[str, ...], tuple[str, tuple[str, str, str] | None] | None] = {}
        self._spool = (
            Spool(settings.spool_dir, settings.spool_bytes, settings.spool_policy)
            if settings.spool_dir is not None
            else None
        )
        dead_letter_path = settings.dead_letter_path
        if dead_letter_path is None and settings.spool_dir is not None:
            dead_letter_path = settings.spool_dir.parent / "dead-letter.ndjson"
        self._dead_letter = DeadLetterFile(dead_letter_path)
        self._cond = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_since = 0.0
        self._spooling = False
        # The sender is moving a failed memory batch and the queue to the spool; the event loop keeps queueing.
        self._failing_over = False
        self._stopping = False
        self._failures_while_stopping = 0
        self._deadline = 0.0
        self._wake = threading.Event()
        self._writer_packer = msgpack.Packer(use_bin_type=True)
        # one encoder per thread that encodes: the event loop (while spooling) and the sender
        self._writer_encoder = DocumentEncoder()
        self._sender_encoder = DocumentEncoder()
        self._sender_packer = msgpack.Packer(use_bin_type=True)
        self._max_request_bytes = settings.batch_bytes
        # Counters: each is written by one thread only.
        self._received = 0
        self._dropped_queue_full = 0
        self._dropped_at_exit = 0
        self._writer_encode_errors = 0
        self._sent = {
            "delivered": 0, "duplicates": 0, "dead_lettered": 0, "retried_items": 0, "bulk_requests": 0,
            "bulk_failures": 0, "encode_errors": 0,
        }
        self._healthy = True
        self._last_error = ""
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
            try:
                payload = self._writer_packer.pack(self._item(doc, self._writer_encoder))
            except (TypeError, ValueError) as error:
                self._writer_encode_errors += 1
                log.error("elasticsearch: document cannot be encoded, dropped: %s", error)
                return
            self._spool.append([payload])

    def flush(self) -> None:
        """Nothing to do: the event loop flushes every poll (50 ms), and a bulk request that often would be
        mostly overhead for the cluster. A batch leaves when full or `batch_wait` after its first document."""

    def close(self, timeout: float = 10.0) -> None:
        """Delivers what it holds for up to `timeout` seconds, leaves the rest in the spool, and stops."""
        with self._cond:
            self._stopping = True
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
            self._client.close()

    def healthy(self) -> bool:
        return self._healthy and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        out = {
            "received": self._received,
            "queued": len(self._queue),
            "dropped_queue_full": self._dropped_queue_full,
            "dropped_at_exit": self._dropped_at_exit,
            "dead_letter_written": self._dead_letter.written,
            "dead_letter_not_written": self._dead_letter.not_written,
            **self._sent,
        }
        out["encode_errors"] += self._writer_encode_errors
        if self._spool is not None:
            out.update(self._spool.stats())
        out["dropped"] = (
            self._dropped_queue_full + self._dropped_at_exit + out["encode_errors"]
            + out.get("spool_dropped_oldest", 0) + out.get("spool_dropped_newest", 0)
            + out.get("spool_dropped_disk_full", 0) + out.get("spool_dropped_corrupt", 0)
        )
        return out

    # ---- routing and encoding (both threads)

    @staticmethod
    def _target(name: str) -> tuple[str, tuple[str, str, str] | None]:
        return name, data_stream_parts(name)

    def _route(self, doc: dict[str, Any], is_alert: bool) -> tuple[str, tuple[str, str, str] | None]:
        configured = self._configured[is_alert]
        if configured is not None:
            return configured
        if is_alert:
            # Alerts have a stream of their own whatever the rule wrote, so they never mix with events.
            return self._defaults[True]
        stream = doc.get("data_stream")
        if not isinstance(stream, dict):
            return self._defaults[is_alert]
        key = (stream.get("type"), stream.get("dataset"), stream.get("namespace"))
        if not all(isinstance(part, str) for part in key):
            return self._defaults[is_alert]
        if key in self._named_streams:
            named = self._named_streams[key]
        else:
            name = "-".join(key)
            parts = data_stream_parts(name)
            named = (name, parts) if parts is not None and len(name) <= 100 else None
            if len(self._named_streams) < 1024:  # a handful in practice; bounded all the same
                self._named_streams[key] = named
        return named if named is not None else self._defaults[is_alert]

    def _item(self, doc: dict[str, Any], encoder: DocumentEncoder) -> list[Any]:
        event = doc.get("event")
        is_alert = isinstance(event, dict) and event.get("kind") == "alert"
        index, parts = self._route(doc, is_alert)
        if parts is not None:
            doc = self._conform(doc, parts)
        doc_id = event.get("id") if isinstance(event, dict) else None
        return [index, doc_id if isinstance(doc_id, str) and doc_id else None, encoder.json(doc)]

    def _conform(self, doc: dict[str, Any], parts: tuple[str, str, str]) -> dict[str, Any]:
        """The document with data_stream.* and event.dataset naming its stream (a copy only when they differ).

        Data streams map these as constant_keyword: a different value would be refused.
        """
        kind, dataset, namespace = parts
        stream = doc.get("data_stream")
        event = doc.get("event")
        if (
            isinstance(stream, dict)
            and stream.get("type") == kind
            and stream.get("dataset") == dataset
            and stream.get("namespace") == namespace
            and (not isinstance(event, dict) or event.get("dataset") in (None, dataset))
        ):
            return doc
        fixed = dict(doc)
        fixed["data_stream"] = {"type": kind, "dataset": dataset, "namespace": namespace}
        if isinstance(event, dict) and event.get("dataset") not in (None, dataset):
            fixed["event"] = {**event, "dataset": dataset}
        return fixed

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
            self._healthy = False

    def _take(self) -> _Batch | None:
        settings = self.settings
        with self._cond:
            while True:
                if self._queue:
                    full = len(self._queue) >= settings.batch_docs
                    due = self._queue_since + settings.batch_wait - time.monotonic()
                    if full or due <= 0 or self._stopping:
                        count = min(len(self._queue), settings.batch_docs)
                        docs = [self._queue.popleft() for _ in range(count)]
                        self._queue_since = time.monotonic()
                        break
                    self._cond.wait(due)
                    continue
                # At close the backlog is sent while time remains and the cluster answers; the rest
                # stays on disk for the next start.
                sending_allowed = not self._stopping or (
                    not self._given_up() and time.monotonic() < self._deadline
                )
                if sending_allowed and self._spool is not None and self._spool.unread():
                    docs = None
                    break
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
                self._sent["encode_errors"] += 1
        return _Batch(items, position)

    def _encode(self, docs: list[dict[str, Any]]) -> list[list[Any]]:
        items = []
        for doc in docs:
            try:
                items.append(self._item(doc, self._sender_encoder))
            except (TypeError, ValueError) as error:
                self._sent["encode_errors"] += 1
                log.error("elasticsearch: document cannot be encoded, dropped: %s", error)
        return items

    def _deliver(self, batch: _Batch) -> None:
        pending = batch.items
        from_memory = batch.position is None
        attempt = 0
        while pending:
            pending = self._send_all(pending)
            if not pending:
                break
            if batch.position is not None and self._spool is not None and not self._spool.holds(batch.position):
                batch.position = None  # its segment was dropped to make room: this copy is the last one
            if batch.position is None:
                if self._spool is not None:
                    if from_memory:
                        self._fail_over(pending)
                    else:
                        self._spool.push_front(self._pack(pending))
                    if not self._stopping:
                        self._backoff(attempt)
                    return
                if self._stopping and time.monotonic() >= self._deadline:
                    self._dropped_at_exit += len(pending)
                    log.error("elasticsearch: %d events undelivered at exit (no spool configured)", len(pending))
                    return
            elif self._stopping and (self._given_up() or time.monotonic() >= self._deadline):
                return  # still in the spool, unacknowledged: sent again on the next start
            elif self._spool is not None:
                self._fail_over([], front=False)  # while this batch waits, the queue behind it waits on disk
            self._backoff(attempt)
            attempt += 1
        if batch.position is not None and self._spool is not None:
            self._spool.ack(batch.position)

    def _fail_over(self, pending: list[list[Any]], front: bool = True) -> None:
        """A memory batch failed: it and the queue behind it go to the front of the spool, in order, before the
        event loop appends anything newer. Returns once the queue is empty and new events go to the spool.

        `front=False`: a batch from the spool is failing, and the queue (newer than all the spool holds) goes to
        its end the same way, instead of waiting in memory for that batch to get through."""
        assert self._spool is not None
        with self._cond:
            overflowed = self._spooling
            if not front and (overflowed or not self._queue):
                return
            self._failing_over = not overflowed
            rest = list(self._queue)
            self._queue.clear()
        payloads = self._pack(pending) + self._pack(self._encode(rest))
        if front:
            # Ahead of what the spool holds: newer events if the queue overflowed while this batch was in flight.
            self._spool.push_front(payloads)
        else:
            self._spool.append(payloads)
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
                    # already; what is taken here still goes ahead of its events if it goes to the front (at
                    # the end, it follows them: order slips by that much).
                    self._spooling = True
                    self._failing_over = False
                if not rest:
                    return
            payloads = self._pack(self._encode(rest))
            if front:
                self._spool.extend_front(payloads, newer_spooled=overflowed)
            else:
                self._spool.append(payloads)
            if overflowed:
                return

    def _pack(self, items: list[list[Any]]) -> list[bytes]:
        return [self._sender_packer.pack(item) for item in items]

    def _backoff(self, attempt: int) -> None:
        cap = min(self.settings.backoff_max, self.settings.backoff_initial * (2**attempt))
        delay = self._jitter(cap)
        if self._stopping:
            time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))
        else:
            self._wake.wait(delay)  # close() cuts the wait short

    def _send_all(self, items: list[list[Any]]) -> list[list[Any]]:
        """Sends items in requests bounded by bytes; returns the items to try again."""
        retry: list[list[Any]] = []
        chunk: list[list[Any]] = []
        body: list[bytes] = []
        size = 0
        for item in items:
            action = self._action_line(item)
            if chunk and size + len(action) + len(item[2]) + 1 > self._max_request_bytes:
                retry.extend(self._send_chunk(chunk, body))
                chunk, body, size = [], [], 0
            chunk.append(item)
            body.append(action)
            body.append(item[2])
            body.append(b"\n")
            size += len(action) + len(item[2]) + 1
        if chunk:
            retry.extend(self._send_chunk(chunk, body))
        return retry

    @staticmethod
    def _action_line(item: list[Any]) -> bytes:
        index, doc_id = item[0], item[1]
        if doc_id is not None and _PLAIN_ID_RE.match(doc_id):
            # Index names are checked at start-up and these ids need no JSON escaping: skip the encoder.
            return f'{{"create":{{"_index":"{index}","_id":"{doc_id}"}}}}\n'.encode()
        meta = {"_index": index}
        if doc_id is not None:
            meta["_id"] = doc_id
        return b'{"create":' + json.dumps(meta, separators=(",", ":")).encode() + b"}\n"

    def _send_chunk(self, chunk: list[list[Any]], body: list[bytes]) -> list[list[Any]]:
        try:
            response = self._bulk(b"".join(body))
        except _RequestFailed as failure:
            self._sent["bulk_failures"] += 1
            self._note_failure(failure.reason)
            if failure.too_large:
                if len(chunk) == 1:
                    self._dead(chunk[0], 413, {"type": "request_too_large", "reason": failure.reason})
                    return []
                self._max_request_bytes = max(64 * 1024, self._max_request_bytes // 2)
                self._sent["retried_items"] += len(chunk)
                return chunk
            if failure.retry:
                self._sent["retried_items"] += len(chunk)
                return chunk
            for item in chunk:
                self._dead(item, failure.status or 400, {"type": "request_refused", "reason": failure.reason})
            return []
        self._note_success()
        return self._settle(chunk, response)

    def _settle(self, chunk: list[list[Any]], response: dict[str, Any]) -> list[list[Any]]:
        results = response.get("items")
        if not response.get("errors") and isinstance(results, list) and len(results) == len(chunk):
            self._sent["delivered"] += len(chunk)
            return []
        if not isinstance(results, list) or len(results) != len(chunk):
            self._note_failure("bulk response does not match the request")
            self._sent["retried_items"] += len(chunk)
            return chunk
        retry = []
        first_dead: str | None = None
        for item, result in zip(chunk, results, strict=True):
            outcome = next(iter(result.values())) if isinstance(result, dict) and result else {}
            status = outcome.get("status", 0) if isinstance(outcome, dict) else 0
            if 200 <= status < 300:
                self._sent["delivered"] += 1
            elif status == 409 and item[1] is not None:
                self._sent["duplicates"] += 1  # an earlier attempt got there: delivered once
            elif status == 429 or status >= 500 or status == 0:
                retry.append(item)
            else:
                error = outcome.get("error") if isinstance(outcome, dict) else None
                self._dead(item, status, error)
                if first_dead is None:
                    first_dead = f"{status} {error.get('type') if isinstance(error, dict) else error}"
        if first_dead is not None:
            log.warning("elasticsearch: documents refused (first: %s); see the dead-letter file", first_dead)
        self._sent["retried_items"] += len(retry)
        return retry

    def _dead(self, item: list[Any], status: int, error: Any) -> None:
        self._sent["dead_lettered"] += 1
        self._dead_letter.add(item[0], item[1], status, error, item[2])

    def _note_failure(self, reason: str) -> None:
        reason = scrub_urls(reason)  # a client's exception text may quote a URL
        if self._healthy or reason != self._last_error:
            log.warning("elasticsearch %s: %s; retrying", redact_url(self.settings.url), reason)
        self._healthy = False
        self._last_error = reason
        if self._stopping:
            self._failures_while_stopping += 1

    def _given_up(self) -> bool:
        """At close, a couple more tries (the first may meet a connection the server dropped), not a wait for
        the whole deadline."""
        return self._failures_while_stopping >= 2

    def _note_success(self) -> None:
        if not self._healthy:
            log.info("elasticsearch %s: delivering again", redact_url(self.settings.url))
        self._healthy = True
        self._last_error = ""
        self._failures_while_stopping = 0

    def _bulk(self, payload: bytes) -> dict[str, Any]:
        from elasticsearch import ApiError, TransportError, UnsupportedProductError

        self._sent["bulk_requests"] += 1
        try:
            headers = self._ready_headers()
            # perform_request keeps our headers; the typed bulk() would reset them to the client's own major.
            response = self._client.perform_request(
                "PUT", "/_bulk", params={"filter_path": _FILTER_PATH}, headers=headers, body=payload,
                endpoint_id="bulk",
            )
            return dict(response.body)
        except UnsupportedProductError:
            raise _RequestFailed("the server is not Elasticsearch (no X-Elastic-Product header)") from None
        except ApiError as error:
            status = error.meta.status
            kind = error.message if isinstance(error.message, str) else str(error.message)
            reason = f"HTTP {status} {kind}"
            if status == 413:
                raise _RequestFailed(reason, too_large=True, status=status) from None
            if status in (401, 403):
                raise _RequestFailed(f"{reason} (check the credentials)", status=status) from None
            if status in (408, 429) or status >= 500:
                raise _RequestFailed(reason, status=status) from None
            if status == 400 and "media_type_header" in kind:
                self._bulk_headers = None  # server changed under us: probe its version again
                raise _RequestFailed(reason, status=status) from None
            raise _RequestFailed(reason, retry=False, status=status) from None
        except TransportError as error:
            self._bulk_headers = None
            raise _RequestFailed(f"{type(error).__name__}: {error.message}") from None

    def _ready_headers(self) -> dict[str, str]:
        """REST compatibility headers of the server's major version, so 8.x and 9.x servers both accept us."""
        if self._bulk_headers is None:
            info = self._client.perform_request(
                "GET", "/", headers=_compat_headers(_PROBE_COMPAT), endpoint_id="info"
            ).body
            number = str(info.get("version", {}).get("number", "0")) if isinstance(info, dict) else "0"
            major = int(number.split(".")[0]) if number.split(".")[0].isdigit() else 0
            if major < 8:
                raise _RequestFailed(f"Elasticsearch {number} is not supported (8.x or later is needed)")
            self._bulk_headers = _compat_headers(min(major, _client_major()))
            log.info("elasticsearch %s: version %s", redact_url(self.settings.url), number)
        return self._bulk_headers
