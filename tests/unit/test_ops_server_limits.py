"""The ops server's bounds, on a real server on loopback with real sockets: idle connections cannot starve
/livez or grow threads and memory, slow and oversized requests are cut, a stuck scrape holds a worker only."""

from __future__ import annotations

import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.ops.server import OpsServer


def get(server: OpsServer, path: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{server.address}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw(server: OpsServer, data: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Sends data, returns everything the server answers before closing, and how long that took."""
    started = time.monotonic()
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        if not data:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


@pytest.fixture
def server() -> Iterator[OpsServer]:
    running = OpsServer("127.0.0.1:0", lambda: {"events_seen_total": 1}, lambda: (True, "fine"),
                        lambda: (True, "pipeline advancing"), read_timeout=1.0)
    running.start()
    yield running
    running.stop()


def test_500_idle_connections_neither_starve_livez_nor_grow_threads(server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    threads_before = threading.active_count()
    rss_before = rss_kib()
    idle = []
    try:
        for _ in range(500):
            idle.append(socket.create_connection((server.host, server.port), timeout=5))
        time.sleep(0.3)  # let the server accept them all
        started = time.monotonic()
        status, body = get(server, "/livez", timeout=2)
        livez_s = time.monotonic() - started
        assert (status, body) == (200, "ok: pipeline advancing\n")
        assert livez_s < 0.5, livez_s
        assert get(server, "/healthz", timeout=2)[0] == 200
        assert threading.active_count() <= threads_before
        open_connections = server.stats()["ops_connections_open"]
        assert open_connections <= server.max_connections
        assert server.refused["evicted"] > 0  # the rest timed out or still wait in the kernel's backlog
        grown_kib = rss_kib() - rss_before  # both ends of 500 connections, in this one process
        print(f"500 idle connections: /livez in {livez_s * 1000:.1f} ms, {open_connections} held open, "
              f"RSS +{grown_kib / 1024:.1f} MiB, threads {threading.active_count()}")
        assert grown_kib < 16 * 1024
    finally:
        for sock in idle:
            sock.close()


def test_a_request_not_sent_within_the_read_timeout_is_answered_408_and_closed(server):
    answer, took = raw(server, b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert server.read_timeout <= took < server.read_timeout + 1.0
    assert server.refused["timeout"] == 1


def test_an_oversized_request_head_is_refused(server):
    answer, _ = raw(server, b"GET /livez HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert server.refused["too_large"] == 1
    assert get(server, "/livez")[0] == 200


def test_methods_and_malformed_requests(server):
    head, _ = raw(server, b"HEAD /livez HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")  # headers only
    assert raw(server, b"POST /livez HTTP/1.1\r\n\r\n")[0].startswith(b"HTTP/1.1 405 ")
    assert raw(server, b"hello\r\n\r\n")[0].startswith(b"HTTP/1.1 400 ")
    assert raw(server, b"")[0] == b""  # connected and went away: nothing to answer


def test_a_stuck_scrape_holds_a_worker_not_the_server():
    release = threading.Event()

    def stuck_metrics() -> dict[str, float]:
        release.wait(10)
        return {}

    server = OpsServer("127.0.0.1:0", stuck_metrics, lambda: (True, "fine"), lambda: (True, "live"),
                       workers=1, max_calls=1, call_timeout=1.0)
    server.start()
    try:
        first: list[tuple[int, str]] = []
        scrape = threading.Thread(target=lambda: first.append(get(server, "/metrics")))
        scrape.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert get(server, "/livez") == (200, "ok: live\n")
        assert time.monotonic() - started < 0.5
        status, body = get(server, "/healthz")  # the one worker is taken: answered at once, not queued
        assert status == 503 and body.startswith("busy:")
        scrape.join(5)
        assert first[0][0] == 503 and "did not answer within 1s" in first[0][1]
    finally:
        release.set()
        server.stop()


def test_beyond_the_cap_with_nothing_idle_new_connections_are_told_busy():
    release = threading.Event()
    server = OpsServer("127.0.0.1:0", lambda: release.wait(10) and {}, lambda: (True, "fine"),
                       max_connections=2, call_timeout=10.0)
    server.start()
    try:
        scrapes = [threading.Thread(target=get, args=(server, "/metrics")) for _ in range(2)]
        for scrape in scrapes:
            scrape.start()
        time.sleep(0.3)
        answer, took = raw(server, b"GET /livez HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ") and took < 0.5
        release.set()
        for scrape in scrapes:
            scrape.join(5)
        assert get(server, "/livez")[0] == 200
    finally:
        release.set()
        server.stop()


def test_stop_ends_every_thread_even_with_connections_open(server):
    idle = [socket.create_connection((server.host, server.port)) for _ in range(5)]
    time.sleep(0.1)
    server.stop()
    assert not any(t.name.startswith("ops-server") for t in threading.enumerate())
    for sock in idle:
        sock.settimeout(2)
        assert sock.recv(1) == b""  # closed by the server
        sock.close()
