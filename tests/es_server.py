"""A small Elasticsearch-compatible HTTP server for tests and benchmarks (no real cluster can run here).

It speaks enough of the real protocol for the official client: `GET /` with the product header and a version
body, `_bulk` with per-item results (`create` is 201, or 409 when the id already exists in that index), basic
and API-key authentication, REST compatibility headers checked the way the server of that major version checks
them, and data streams that refuse documents whose `data_stream.*` fields disagree with the stream's name.
Faults are injected through attributes: whole-request statuses, per-item statuses, connection resets, slow
responses, and stop()/start() keeping the stored documents.

Run alone (its own process, for benchmarks): `python tests/es_server.py --port 9200`; `GET /_test/stats`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_COMPAT_RE = re.compile(r"compatible-with=(\d+)")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: EsServer) -> None:
        self.state = state
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class EsServer:
    """The store and the switches; `start()` listens on 127.0.0.1 (the same port again after `stop()`)."""

    def __init__(
        self,
        version: str = "9.1.0",
        api_key: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        port: int = 0,
        parse_sources: bool = True,
    ) -> None:
        self.version = version
        self.api_key = api_key  # the encoded form the client sends after "ApiKey "
        self.basic_auth = basic_auth
        self.port = port
        self.parse_sources = parse_sources
        self.lock = threading.Lock()
        self.store: dict[str, dict[str, bytes]] = {}
        # Faults, consumed one per request or per item, oldest first.
        self.request_statuses: deque[int] = deque()  # whole _bulk answered with this status
        self.item_statuses: deque[int] = deque()  # next create items answered with this status
        self.resets = 0  # next _bulk requests: read, then reset the connection without an answer
        self.delay = 0.0  # seconds before answering each _bulk
        self.max_content_length = 100 * 1024 * 1024  # http.max_content_length: larger bodies get 413
        self.counters = {
            "requests": 0, "bulk_requests": 0, "items": 0, "created": 0, "conflicts": 0,
            "auth_failures": 0, "injected_statuses": 0, "injected_item_statuses": 0, "resets": 0,
            "rejected": 0,
        }
        self.seen_accept: list[str] = []
        # templates as PUT (name -> body), and the privileges of the credentials: cluster privileges, and per index
        # pattern its privileges; None is a cluster with security off (`_has_privileges` refuses, as it does)
        self.component_templates: dict[str, dict[str, Any]] = {}
        self.index_templates: dict[str, dict[str, Any]] = {}
        self.privileges: tuple[set[str], dict[str, set[str]]] | None = (
            {"all"}, {"*": {"all"}})
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> EsServer:
        server = _Server(("127.0.0.1", self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops listening and cuts every open connection; the store stays for the next start()."""
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(5)
        self._server = None

    def __enter__(self) -> EsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests look at

    def ids(self, index: str) -> set[str]:
        with self.lock:
            return set(self.store.get(index, {}))

    def count(self, index: str | None = None) -> int:
        with self.lock:
            if index is not None:
                return len(self.store.get(index, {}))
            return sum(len(docs) for docs in self.store.values())

    def document(self, index: str, doc_id: str) -> dict[str, Any]:
        with self.lock:
            return json.loads(self.store[index][doc_id])

    # ---- protocol

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def check_auth(self, header: str | None) -> bool:
        if self.api_key is None and self.basic_auth is None:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "apikey" and self.api_key is not None:
            return value.strip() == self.api_key
        if scheme.lower() == "basic" and self.basic_auth is not None:
            expected = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            return value.strip() == expected
        return False

    def compat_error(self, header_name: str, value: str | None) -> str | None:
        """What a server of this major version says about a compatible-with header it cannot serve."""
        if not value:
            return None
        match = _COMPAT_RE.search(value)
        if match is None:
            return None
        wanted = int(match.group(1))
        if wanted in (self.major, self.major - 1):
            return None
        return (
            f"A compatible version is required on both Content-Type and Accept headers if either one has "
            f"requested a compatible version and the compatible versions must match. {header_name} version "
            f"must be either version {self.major} or {self.major - 1}, but found {wanted}. "
            f"{header_name}={value}"
        )

    def bulk(self, body: bytes, default_index: str | None) -> dict[str, Any]:
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        items = []
        errors = False
        position = 0
        with self.lock:
            while position < len(lines):
                action_line = lines[position]
                position += 1
                if not action_line.strip():
                    continue
                action = json.loads(action_line)
                (op, meta), = action.items()
                source = lines[position] if op != "delete" else b""
                if op != "delete":
                    position += 1
                index = meta.get("_index", default_index)
                doc_id = meta.get("_id")
                result = self._apply(op, index, doc_id, source)
                if result["status"] >= 300:
                    errors = True
                items.append({op: result})
        return {"errors": errors, "took": 1, "items": items}

    def _apply(self, op: str, index: str | None, doc_id: str | None, source: bytes) -> dict[str, Any]:
        self.counters["items"] += 1
        if self.item_statuses:
            status = self.item_statuses.popleft()
            self.counters["injected_item_statuses"] += 1
            kind = {429: "es_rejected_execution_exception", 400: "document_parsing_exception"}.get(
                status, "unavailable_shards_exception")
            return {"_index": index, "_id": doc_id, "status": status,
                    "error": {"type": kind, "reason": f"injected {status}"}}
        if op != "create":
            return self._item_error(index, doc_id, 400, "illegal_argument_exception",
                                    f"only create is allowed into data stream [{index}]")
        if index is None:
            return self._item_error(index, doc_id, 400, "action_request_validation_exception", "index is missing")
        if self.parse_sources:
            try:
                doc = json.loads(source)
            except ValueError as error:
                return self._item_error(index, doc_id, 400, "document_parsing_exception", str(error))
            problem = self._data_stream_problem(index, doc)
            if problem:
                return self._item_error(index, doc_id, 400, "document_parsing_exception", problem)
        docs = self.store.setdefault(index, {})
        if doc_id is None:
            doc_id = uuid.uuid4().hex
        if doc_id in docs:
            self.counters["conflicts"] += 1
            return self._item_error(
                index, doc_id, 409, "version_conflict_engine_exception",
                f"[{doc_id}]: version conflict, document already exists (current version [1])",
            )
        docs[doc_id] = bytes(source)
        self.counters["created"] += 1
        return {"_index": index, "_id": doc_id, "_version": 1, "result": "created", "status": 201,
                "_seq_no": len(docs) - 1, "_primary_term": 1}

    def _item_error(self, index: str | None, doc_id: str | None, status: int, kind: str, reason: str) -> dict:
        if status != 409:
            self.counters["rejected"] += 1
        return {"_index": index, "_id": doc_id, "status": status, "error": {"type": kind, "reason": reason}}

    @staticmethod
    def _data_stream_problem(index: str, doc: dict[str, Any]) -> str | None:
        """Data streams map data_stream.* as constant_keyword: a value other than the stream's is refused."""
        parts = index.split("-", 2)
        if len(parts) != 3 or parts[0] not in ("logs", "metrics", "traces"):
            return None
        stream = doc.get("data_stream")
        if not isinstance(stream, dict):
            return None
        for field, expected in zip(("type", "dataset", "namespace"), parts, strict=True):
            value = stream.get(field)
            if value is not None and value != expected:
                return (f"[constant_keyword] field [data_stream.{field}] only accepts values that are equal to "
                        f"the value defined in the mappings [{expected}], but got [{value}]")
        return None

    def info(self) -> dict[str, Any]:
        return {
            "name": "test-node", "cluster_name": "test-cluster", "cluster_uuid": "t3st-c1uster-uu1d",
            "version": {
                "number": self.version, "build_flavor": "default", "build_type": "tar",
                "lucene_version": "10.0.0", "minimum_wire_compatibility_version": "8.18.0",
                "minimum_index_compatibility_version": "8.0.0",
            },
            "tagline": "You Know, for Search",
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # `format` as the base class names it
        pass

    def _send(self, status: int, body: Any, compat: int | None = None, product: bool = True) -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        if compat:
            self.send_header("Content-Type", f"application/vnd.elasticsearch+json;compatible-with={compat}")
        else:
            self.send_header("Content-Type", "application/json")
        if product:
            self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, kind: str, reason: str, compat: int | None = None) -> None:
        self._send(status, {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind,
                                      "reason": reason}, "status": status}, compat)

    def _reset(self) -> None:
        # SO_LINGER 0 turns close() into a TCP RST, as a crashed or overloaded proxy would.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def _handle(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with state.lock:
            state.counters["requests"] += 1
        path = self.path.split("?", 1)[0]
        if path == "/_test/stats":
            self._send(200, {**state.counters, "docs": state.count()})
            return
        accept = self.headers.get("Accept")
        state.seen_accept.append(accept or "")
        for name in ("Accept", "Content-Type"):
            problem = state.compat_error(name, self.headers.get(name))
            if problem:
                self._error(400, "media_type_header_exception", problem)
                return
        match = _COMPAT_RE.search(accept or "")
        compat = int(match.group(1)) if match else None
        if not state.check_auth(self.headers.get("Authorization")):
            with state.lock:
                state.counters["auth_failures"] += 1
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="security", charset="UTF-8"')
            self.send_header("WWW-Authenticate", "ApiKey")
            data = json.dumps({"error": {"type": "security_exception", "reason": "missing authentication "
                                         "credentials for REST request"}, "status": 401}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if path == "/" and self.command in ("GET", "HEAD"):
            self._send(200, state.info(), compat)
            return
        bulk = re.fullmatch(r"/(?:([^/_][^/]*)/)?_bulk", path)
        if bulk and self.command in ("POST", "PUT"):
            self._bulk(body, bulk.group(1), compat)
            return
        refresh = re.fullmatch(r"/([^/_][^/]*)/_refresh", path)
        if refresh and self.command in ("GET", "POST"):
            self._send(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}}, compat)
            return
        stream = re.fullmatch(r"/_data_stream/([^/]+)", path)
        if stream and self.command == "DELETE":
            with state.lock:
                found = state.store.pop(stream.group(1), None) is not None
            if found:
                self._send(200, {"acknowledged": True}, compat)
            else:
                self._error(404, "index_not_found_exception", f"no such index [{stream.group(1)}]", compat)
            return
        template = re.fullmatch(r"/_(component|index)_template/([^/]+)", path)
        if template:
            self._template(template.group(1), template.group(2), body, compat)
            return
        if path == "/_security/user/_has_privileges" and self.command in ("GET", "POST"):
            self._has_privileges(body, compat)
            return
        count = re.fullmatch(r"/([^/_][^/]*)/_count", path)
        if count and self.command in ("GET", "POST"):
            self._send(200, {"count": state.count(count.group(1))}, compat)
            return
        self._error(404, "resource_not_found_exception", f"no handler for {self.command} {path}", compat)

    def _template(self, kind: str, name: str, body: bytes, compat: int | None) -> None:
        state = self.server.state
        store = state.component_templates if kind == "component" else state.index_templates
        with state.lock:
            if self.command == "PUT":
                store[name] = json.loads(body)
                state.counters[f"{kind}_template_puts"] = state.counters.get(f"{kind}_template_puts", 0) + 1
                answer: Any = {"acknowledged": True}
            elif self.command == "GET" and name in store:
                answer = {f"{kind}_templates": [{"name": name, f"{kind}_template": store[name]}]}
            else:
                answer = None
        if answer is None:
            self._error(404, "resource_not_found_exception", f"{kind} template matching [{name}] not found", compat)
        else:
            self._send(200, answer, compat)

    def _has_privileges(self, body: bytes, compat: int | None) -> None:
        granted = self.server.state.privileges
        if granted is None:
            self._error(500, "exception", "Security must be explicitly enabled when using a [basic] license. Enable "
                        "security by setting [xpack.security.enabled] to [true] in the elasticsearch.yml file and "
                        "restart the node.", compat)
            return
        cluster_granted, index_granted = granted
        asked = json.loads(body or b"{}")
        cluster = {p: "all" in cluster_granted or p in cluster_granted for p in asked.get("cluster", [])}
        index: dict[str, dict[str, bool]] = {}
        for entry in asked.get("index", []):
            for name in entry.get("names", []):
                held = index_granted.get(name, set()) | index_granted.get("*", set())
                index[name] = {p: "all" in held or p in held for p in entry.get("privileges", [])}
        every = all(cluster.values()) and all(all(v.values()) for v in index.values())
        self._send(200, {"username": "test", "has_all_requested": every, "cluster": cluster, "index": index,
                         "application": {}}, compat)

    def _bulk(self, body: bytes, index: str | None, compat: int | None) -> None:
        state = self.server.state
        with state.lock:
            state.counters["bulk_requests"] += 1
            reset = state.resets > 0
            if reset:
                state.resets -= 1
                state.counters["resets"] += 1
            status = state.request_statuses.popleft() if state.request_statuses and not reset else None
            if status is not None:
                state.counters["injected_statuses"] += 1
            delay = state.delay
        if delay:
            time.sleep(delay)
        if len(body) > state.max_content_length:
            self._error(413, "content_too_long_exception",
                        f"request body is too large: {len(body)} > {state.max_content_length}", compat)
            return
        if reset:
            self._reset()
            return
        if status is not None:
            kind = {429: "es_rejected_execution_exception", 401: "security_exception"}.get(status, "exception")
            self._error(status, kind, f"injected {status}", compat)
            return
        try:
            result = state.bulk(body, index)
        except (ValueError, KeyError) as error:
            self._error(400, "x_content_parse_exception", f"malformed bulk body: {error}", compat)
            return
        self._send(200, result, compat)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--version", default="9.1.0")
    parser.add_argument("--no-parse", action="store_true", help="store sources without parsing them")
    args = parser.parse_args()
    server = EsServer(version=args.version, port=args.port, parse_sources=not args.no_parse).start()
    print(f"listening on {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
