"""The operations endpoint: `/healthz`, `/livez` and Prometheus `/metrics` over plain HTTP.

It runs on a daemon thread of its own with the standard library's http.server, so a stuck scrape never
blocks the event loop, and the event loop never has to serve a request. It reads the pipeline only through
two callables handed to it:

- `metrics()` returns {name: number}. Names ending in `_total` are counters, the rest gauges. A name may carry
  Prometheus labels, e.g. `output_errors_total{output="elasticsearch"}`. Every name is exposed with the
  `container_sensor_` prefix.
- `health()` returns (healthy, reason): `/healthz` answers 200 when healthy and 503 otherwise, with the reason
  as the body, so a failing readiness probe says why in `kubectl describe pod`.

- `live()` returns (live, reason) for `/livez`: 503 once the pipeline has stopped advancing (the sensor passes
  `Heartbeat.check`), so a sensor stuck inside a batch gets restarted. It does not follow `health()`: a liveness
  probe must not restart the sensor because Elasticsearch is down, which the spool already covers. It is
  answered on the server's own loop and must never block.

Run as `python -m sensor.ops.server [PATH]` it is the matching probe client: it asks the server named by
$CONTAINER_SENSOR_METRICS_ADDRESS (default 127.0.0.1:9464) for PATH (default /healthz), prints the answer and
exits 0 on 200, 1 otherwise; the DaemonSet and the systemd unit use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import re
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http import HTTPStatus

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from sensor import __version__
from sensor.config.parsing import split_address

log = logging.getLogger(__name__)

PREFIX = "container_sensor_"
# what every Prometheus since 2.0 takes; generate_latest writes this format by default
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_ADDRESS = "127.0.0.1:9464"
TEXT = "text/plain; charset=utf-8"
MAX_CONNECTIONS = 64
READ_TIMEOUT = 5.0  # seconds to send a request head, and to take the answer
MAX_REQUEST_BYTES = 8192  # request line and headers
WORKERS = 2
MAX_CALLS = 8  # /healthz and /metrics requests running or waiting for a worker
CALL_TIMEOUT = 10.0
LINGER_S = 1.0  # after an error answer, how long the rest of a refused request is read and discarded
REFUSAL_REASONS = ("evicted", "busy", "timeout", "too_large")

# HELP lines for the metrics the pipeline is expected to report; others are exposed without HELP.
METRIC_HELP = {
    "events_seen_total": "Kernel records received from the probe (exec, fork, exit, cgroup).",
    "events_emitted_total": "Documents (events and alerts) handed to the outputs.",
    "rule_alerts_total": "Alerts raised, per rule (by its name; folded repeats count once, with their summary).",
    "events_filtered_total": "Documents left out by the filter.* options (--where, --alerts-only, allow/deny lists).",
    "events_lost_total": "Records the kernel dropped because the ring buffer was full.",
    "execs_total": "Exec records received.",
    "forks_total": "Fork records received.",
    "exits_total": "Exit records received.",
    "cgroup_events_total": "Cgroup mkdir/rmdir records received.",
    "argv_truncated_total": "Exec records whose arguments were cut by the capture limits.",
    "argv_read_failed_total": "Exec records whose arguments could not be read.",
    "path_truncated_total": "Exec records whose executable path was longer than the probe keeps and was cut.",
    "alerts_total": "Alerts raised by the rules.",
    "alerts_held_total": "Alerts that waited for their container's runtime state.",
    "alerts_without_metadata_total": "Alerts sent at the wait's end without their container's runtime state.",
    "rule_errors_total": "Rule evaluations that failed.",
    "rules_loaded": "Detection rules loaded, built-in rule excluded.",
    "output_errors_total": "Writes an output raised an error for.",
    "output_written_total": "Documents an output wrote or delivered.",
    "output_dropped_total": "Documents an output had to drop (queue full, disk full, spool policy).",
    "output_queue_depth": "Documents waiting in an output's queue.",
    "output_healthy": "1 when the output reports healthy, else 0.",
    "spool_bytes": "Bytes held in the Elasticsearch outage spool.",
    "elasticsearch_errors_total": "Failed Elasticsearch bulk requests plus documents Elasticsearch rejected.",
    "process_table_size": "Processes in the process table.",
    "container_cache_size": "Entries in the cgroup-to-container cache.",
    "cgroups_known": "Cgroups in the cgroup id map.",
    "healthy": "1 when /healthz answers 200, else 0.",
    "pipeline_last_progress_seconds": "Seconds since the event loop last advanced (/livez fails past stall_timeout).",
    "ringbuf_backlog_bytes": "Bytes of records waiting in the BPF ring buffer.",
    "ops_connections_open": "Connections open to this ops server.",
    "ops_requests_refused_total": "Ops server connections closed unanswered or answered busy, by reason.",
    "info": "Constant 1, labelled with the sensor's version.",
    "exec_to_document_seconds": "From the kernel's timestamp of an exec to its document handed to the outputs.",
    "exec_to_alert_seconds": "From the kernel's timestamp of the event that raised an alert to the alert handed to "
                             "the outputs (waits for container metadata included).",
}

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABELS = re.compile(r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,(?=[a-zA-Z_]))?)*\}')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

# A histogram as the pipeline keeps it: upper bounds (seconds), the count in each bucket (not cumulative, one more
# than the bounds: the last is above every bound), and the sum of the observations.
Histogram = tuple[tuple[float, ...], list[int], float]


def _split_name(key: str) -> tuple[str, dict[str, str]] | None:
    """('events_seen_total', {'output': 'x'}) from a metrics key, or None when the key is not a valid name."""
    brace = key.find("{")
    name, labels = (key, "") if brace < 0 else (key[:brace], key[brace:])
    if not _NAME.fullmatch(name) or (labels and not _LABELS.fullmatch(labels)):
        return None
    return name, {k: re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group()], v) for k, v in _LABEL.findall(labels)}


class _Scrape:
    """One scrape's values as a prometheus_client collector: `_total` names as counters, the rest as gauges."""

    def __init__(self, values: dict[str, float], healthy: bool, histograms: dict[str, Histogram]) -> None:
        self.values = values
        self.healthy = healthy
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for key, value in self.values.items():
            parts = _split_name(key)
            if parts is None or isinstance(value, str | bytes | bool) or value is None:
                log.debug("metric %r with value %r is not exposable; left out", key, value)
                continue
            name, labels = parts
            samples.setdefault(name.removeprefix(PREFIX), []).append((labels, float(value)))
        samples.setdefault("healthy", []).append(({}, 1.0 if self.healthy else 0.0))
        samples.setdefault("info", []).append(({"version": __version__}, 1.0))
        for name in sorted(samples):
            label_names = sorted({key for labels, _ in samples[name] for key in labels})
            kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
            family = kind(PREFIX + name, METRIC_HELP.get(name, f"container-sensor {name.replace('_', ' ')}."),
                          labels=label_names)
            for labels, value in samples[name]:
                family.add_metric([labels.get(key, "") for key in label_names], value)
            yield family
        for name, (bounds, counts, total) in sorted(self.histograms.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*bounds, math.inf), counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if math.isinf(bound) else repr(float(bound)), cumulative))
            yield HistogramMetricFamily(PREFIX + name, METRIC_HELP.get(name, name), buckets=buckets,
                                        sum_value=total)


def render_metrics(values: dict[str, float], healthy: bool, histograms: dict[str, Histogram] | None = None) -> str:
    """The Prometheus text exposition of `values` (and of HISTOGRAMS), the sensor's own info and health, and the
    standard process_* and python_* metrics of the sensor's process, through prometheus_client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(values, healthy, histograms or {}))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry).decode()


def _always_alive() -> tuple[bool, str]:
    return True, "serving"


class _Connection:
    __slots__ = ("writer", "requested")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.requested = False  # a whole request head arrived: no longer idle, never evicted


def _response(status: HTTPStatus, body: str, content_type: str = TEXT, head_only: bool = False) -> bytes:
    data = body.encode("utf-8")
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\nServer: container-sensor/{__version__}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n").encode("ascii")
    return head if head_only else head + data


class OpsServer:
    """Serves /healthz, /livez and /metrics on `address` ("HOST:PORT"; port 0 picks a free one).

    One asyncio loop on one thread holds every connection, so an idle connection costs a socket and a few
    kilobytes, not a thread: 480 idle connections grew the old thread-per-connection server by 55 MB. Bounds:
    at most `max_connections` open (a new one pushes out the oldest that has not sent a request yet, so idle
    connections cannot lock out the kubelet's probe; with none idle it is answered 503 at once), a request head
    of at most `max_request_bytes` (else 431), `read_timeout` seconds to send it (else 408). /livez is answered
    on the loop itself (`live()` must not block: it only reads the pipeline's heartbeat); /healthz and /metrics
    call into the pipeline on `workers` threads, with at most `max_calls` waiting (else 503), so a stuck scrape
    holds a worker, never the loop."""

    def __init__(
        self,
        address: str,
        metrics: Callable[[], dict[str, float]],
        health: Callable[[], tuple[bool, str]],
        live: Callable[[], tuple[bool, str]] | None = None,
        *,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        workers: int = WORKERS,
        max_calls: int = MAX_CALLS,
        call_timeout: float = CALL_TIMEOUT,
        histograms: Callable[[], dict[str, Histogram]] | None = None,
    ) -> None:
        self.host, self.port = split_address(address, allow_any_port=True)
        self.metrics = metrics
        self.histograms = histograms or dict
        self.health = health
        self.live = live or _always_alive
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.max_request_bytes = max_request_bytes
        self.workers = workers
        self.max_calls = max_calls
        self.call_timeout = call_timeout
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)  # written on the loop thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._jobs: queue.SimpleQueue[tuple[Callable[[], tuple[HTTPStatus, str, str]], asyncio.Future] | None] = (
            queue.SimpleQueue())
        self._calls = 0
        self._connections: dict[_Connection, None] = {}  # in accept order: the first idle one is the oldest

    @property
    def address(self) -> str:
        """The bound address (with the real port once started)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        """Binds and starts serving; raises OSError (e.g. address in use) so the caller can report it."""
        if self._loop is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=128)
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._on_connection, sock=sock, limit=self.max_request_bytes))
        except BaseException:
            loop.close()
            sock.close()
            self._loop = None
            raise
        self._workers = [threading.Thread(target=self._work, name=f"ops-server-worker-{n}", daemon=True)
                         for n in range(self.workers)]
        for worker in self._workers:
            worker.start()
        self._thread = threading.Thread(target=self._serve, args=(loop, server), name="ops-server", daemon=True)
        self._thread.start()
        log.info("serving /healthz and /metrics", extra={"ops_address": self.address})

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=5)
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(timeout=1)  # a worker stuck in the pipeline is a daemon: it does not hold the exit
        self._workers = []
        self._loop = None
        self._thread = None

    def stats(self) -> dict[str, float]:
        """The server's own counters, exposed in /metrics with the pipeline's."""
        values: dict[str, float] = {"ops_connections_open": len(self._connections)}
        for reason, count in self.refused.items():
            values[f'ops_requests_refused_total{{reason="{reason}"}}'] = count
        return values

    # ---- loop thread

    def _serve(self, loop: asyncio.AbstractEventLoop, server: asyncio.Server) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            server.close()
            for connection in list(self._connections):
                connection.writer.transport.abort()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.close()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            idle = next((c for c in self._connections if not c.requested), None)
            if idle is None:
                self.refused["busy"] += 1
                await self._refuse(reader, writer, _response(HTTPStatus.SERVICE_UNAVAILABLE,
                                                             "busy: too many requests at once\n"))
                return
            self.refused["evicted"] += 1
            self._connections.pop(idle, None)
            idle.writer.transport.abort()
        connection = _Connection(writer)
        self._connections[connection] = None
        try:
            await self._serve_connection(reader, writer, connection)
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to answer
        finally:
            self._connections.pop(connection, None)
            writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                connection: _Connection) -> None:
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            self.refused["too_large"] += 1
            await self._refuse(reader, writer, _response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                                         f"request head over {self.max_request_bytes} bytes\n"))
            return
        except TimeoutError:
            self.refused["timeout"] += 1
            await self._refuse(reader, writer, _response(HTTPStatus.REQUEST_TIMEOUT, "request not sent in time\n"))
            return
        except asyncio.IncompleteReadError:
            return
        connection.requested = True
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send(writer, _response(HTTPStatus.BAD_REQUEST, "bad request line\n"))
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            await self._send(writer, _response(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD\n"))
            return
        status, body, content_type = await self._answer(target.split("?", 1)[0])
        await self._send(writer, _response(status, body, content_type, head_only=method == "HEAD"))

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Answers, then reads what the client still sends for a moment before closing: closing with unread
        bytes makes the kernel reset the connection, and the client would never see the answer."""
        await self._send(writer, data)
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                while await reader.read(65536):
                    pass

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        try:
            async with asyncio.timeout(self.read_timeout):
                await writer.drain()
        except TimeoutError:
            self.refused["timeout"] += 1  # a client that does not read its answer

    async def _answer(self, path: str) -> tuple[HTTPStatus, str, str]:
        if path == "/livez":
            return self._guarded(path, self._livez)
        if path == "/healthz":
            return await self._call(path, self._healthz)
        if path == "/metrics":
            return await self._call(path, self._metrics)
        if path == "/":
            return HTTPStatus.OK, "container-sensor: /healthz /livez /metrics\n", TEXT
        return HTTPStatus.NOT_FOUND, f"not found: {path}\n", TEXT

    async def _call(self, path: str, answer: Callable[[], tuple[HTTPStatus, str, str]]
                    ) -> tuple[HTTPStatus, str, str]:
        if self._calls >= self.max_calls:
            self.refused["busy"] += 1
            return HTTPStatus.SERVICE_UNAVAILABLE, f"busy: {self._calls} requests wait for the pipeline\n", TEXT
        assert self._loop is not None
        future: asyncio.Future = self._loop.create_future()
        self._calls += 1  # given back when the worker is done, not when the client gives up
        self._jobs.put((lambda: self._guarded(path, answer), future))
        try:
            async with asyncio.timeout(self.call_timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            self.refused["timeout"] += 1
            return HTTPStatus.SERVICE_UNAVAILABLE, f"{path} did not answer within {self.call_timeout:g}s\n", TEXT

    def _guarded(self, path: str, answer: Callable[[], tuple[HTTPStatus, str, str]]) -> tuple[HTTPStatus, str, str]:
        try:
            return answer()
        except Exception as error:  # a failing callable must answer 500, not kill the server
            log.warning("ops endpoint %s failed: %s", path, error, exc_info=True)
            return HTTPStatus.INTERNAL_SERVER_ERROR, f"error: {type(error).__name__}: {error}\n", TEXT

    def _livez(self) -> tuple[HTTPStatus, str, str]:
        alive, reason = self.live()
        status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
        return status, f"{'ok' if alive else 'dead'}: {reason}\n", TEXT

    def _healthz(self) -> tuple[HTTPStatus, str, str]:
        healthy, reason = self.health()
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return status, f"{'ok' if healthy else 'unhealthy'}: {reason}\n", TEXT

    def _metrics(self) -> tuple[HTTPStatus, str, str]:
        healthy, _ = self.health()
        return (HTTPStatus.OK, render_metrics({**self.metrics(), **self.stats()}, healthy, self.histograms()),
                CONTENT_TYPE_METRICS)

    def _settle(self, future: asyncio.Future, result: tuple[HTTPStatus, str, str]) -> None:
        self._calls -= 1
        if not future.done():
            future.set_result(result)

    # ---- worker threads

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, future = job
            result = call()
            loop = self._loop
            if loop is None:
                continue
            with contextlib.suppress(RuntimeError):  # the loop closed while this call ran (stop)
                loop.call_soon_threadsafe(self._settle, future, result)


def probe(address: str, path: str = "/healthz", timeout: float = 3.0) -> tuple[bool, str]:
    """GETs `path` from the ops server at `address`: (answered 200, body or error)."""
    host, port = split_address(address)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    url_host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{url_host}:{port}{path}", timeout=timeout) as response:
            return response.status == 200, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return False, error.read().decode("utf-8", "replace")
    except (OSError, ValueError) as error:
        return False, f"no answer from {address}: {error}\n"


def main(argv: list[str]) -> int:
    address = os.environ.get("CONTAINER_SENSOR_METRICS_ADDRESS") or DEFAULT_ADDRESS
    path = argv[0] if argv else "/healthz"
    if address.strip().lower() in ("off", "none", "false", "no"):
        # the sensor was told to serve nothing: there is no answer to wait for, and saying so beats a parse error
        print(f"CONTAINER_SENSOR_METRICS_ADDRESS is {address.strip()!r}: the sensor serves no {path} to ask; "
              "give it HOST:PORT (and the same to the sensor) to probe it", file=sys.stderr)
        return 2
    try:
        ok, body = probe(address, path)
    except ValueError as error:
        print(f"CONTAINER_SENSOR_METRICS_ADDRESS: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
