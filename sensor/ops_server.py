"""The operations endpoint: `/healthz`, `/livez` and Prometheus `/metrics` over plain HTTP.

It runs on a daemon thread of its own with the standard library's http.server, so a stuck scrape never
blocks the event loop, and the event loop never has to serve a request. It reads the pipeline only through
two callables handed to it:

- `metrics()` returns {name: number}. Names ending in `_total` are counters, the rest gauges. A name may carry
  Prometheus labels, e.g. `output_errors_total{output="elasticsearch"}`. Every name is exposed with the
  `container_sensor_` prefix.
- `health()` returns (healthy, reason): `/healthz` answers 200 when healthy and 503 otherwise, with the reason
  as the body, so a failing readiness probe says why in `kubectl describe pod`.

`/livez` answers 200 as long as the process serves requests (or what an optional `live()` says): a liveness
probe must not restart the sensor because Elasticsearch is down, which the spool already covers.

Run as `python -m sensor.ops_server [PATH]` it is the matching probe client: it asks the server named by
$CONTAINER_SENSOR_METRICS_ADDRESS (default 127.0.0.1:9464) for PATH (default /healthz), prints the answer and
exits 0 on 200, 1 otherwise; the DaemonSet and the systemd unit use it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sensor import __version__
from sensor.config import split_address

log = logging.getLogger(__name__)

PREFIX = "container_sensor_"
CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_ADDRESS = "127.0.0.1:9464"

# HELP lines for the metrics the pipeline is expected to report; others are exposed without HELP.
METRIC_HELP = {
    "events_seen_total": "Kernel records received from the probe (exec, fork, exit, cgroup).",
    "events_emitted_total": "Documents (events and alerts) handed to the outputs.",
    "events_lost_total": "Records the kernel dropped because the ring buffer was full.",
    "execs_total": "Exec records received.",
    "forks_total": "Fork records received.",
    "exits_total": "Exit records received.",
    "cgroup_events_total": "Cgroup mkdir/rmdir records received.",
    "argv_truncated_total": "Exec records whose arguments were cut by the capture limits.",
    "argv_read_failed_total": "Exec records whose arguments could not be read.",
    "path_truncated_total": "Exec records whose executable path was longer than the probe keeps and was cut.",
    "alerts_total": "Alerts raised by the rules.",
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
    "info": "Constant 1, labelled with the sensor's version.",
}

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABELS = re.compile(r'\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"(?:,(?=[a-zA-Z_]))?)*\}')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _split_name(key: str) -> tuple[str, str] | None:
    """('events_seen_total', '{output="x"}') from a metrics key, or None when the key is not a valid name."""
    brace = key.find("{")
    name, labels = (key, "") if brace < 0 else (key[:brace], key[brace:])
    if not _NAME.fullmatch(name) or (labels and not _LABELS.fullmatch(labels)):
        return None
    return name, labels


def render_metrics(values: dict[str, float], healthy: bool) -> str:
    """The Prometheus text exposition (format 0.0.4) of `values`, plus the sensor's own info and health."""
    families: dict[str, list[tuple[str, float]]] = {}
    for key, value in values.items():
        parts = _split_name(key)
        if parts is None or isinstance(value, str | bytes) or value is None:
            log.debug("metric %r with value %r is not exposable; left out", key, value)
            continue
        name, labels = parts
        name = name.removeprefix(PREFIX)
        families.setdefault(name, []).append((labels, float(value)))
    families.setdefault("healthy", []).append(("", 1.0 if healthy else 0.0))
    families.setdefault("info", []).append((f'{{version="{__version__}"}}', 1.0))

    lines: list[str] = []
    for name in sorted(families):
        full = PREFIX + name
        if name in METRIC_HELP:
            lines.append(f"# HELP {full} {METRIC_HELP[name]}")
        lines.append(f"# TYPE {full} {'counter' if name.endswith('_total') else 'gauge'}")
        lines.extend(f"{full}{labels} {_format_value(value)}" for labels, value in families[name])
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"container-sensor/{__version__}"

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        path = self.path.split("?", 1)[0]
        ops = self.server.ops
        try:
            if path == "/metrics":
                healthy, _ = ops.health()
                self._send(HTTPStatus.OK, render_metrics(ops.metrics(), healthy), CONTENT_TYPE_METRICS)
            elif path == "/healthz":
                healthy, reason = ops.health()
                status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, f"{'ok' if healthy else 'unhealthy'}: {reason}\n")
            elif path == "/livez":
                alive, reason = ops.live()
                status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, f"{'ok' if alive else 'dead'}: {reason}\n")
            elif path == "/":
                self._send(HTTPStatus.OK, "container-sensor: /healthz /livez /metrics\n")
            else:
                self._send(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        except Exception as error:  # a failing callable must answer 500, not kill the server thread
            log.warning("ops endpoint %s failed: %s", path, error, exc_info=True)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"error: {type(error).__name__}: {error}\n")

    def _send(self, status: HTTPStatus, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("ops request from %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    ops: OpsServer


class _Server6(_Server):
    address_family = socket.AF_INET6


def _always_alive() -> tuple[bool, str]:
    return True, "serving"


class OpsServer:
    """Serves /healthz, /livez and /metrics on `address` ("HOST:PORT"; port 0 picks a free one)."""

    def __init__(
        self,
        address: str,
        metrics: Callable[[], dict[str, float]],
        health: Callable[[], tuple[bool, str]],
        live: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.host, self.port = split_address(address, allow_any_port=True)
        self.metrics = metrics
        self.health = health
        self.live = live or _always_alive
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The bound address (with the real port once started)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> None:
        """Binds and starts serving; raises OSError (e.g. address in use) so the caller can report it."""
        if self._server is not None:
            return
        server_class = _Server6 if ":" in self.host else _Server
        server = server_class((self.host, self.port), _Handler)
        server.ops = self
        self.port = server.server_address[1]
        self._server = server
        # A short poll interval makes stop() quick; an idle poll costs nothing measurable.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="ops-server", daemon=True
        )
        self._thread.start()
        log.info("serving /healthz and /metrics", extra={"ops_address": self.address})

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


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
    try:
        ok, body = probe(address, path)
    except ValueError as error:
        print(f"CONTAINER_SENSOR_METRICS_ADDRESS: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
