"""The Elasticsearch output against a local Elasticsearch-compatible server (tests/es_server.py).

No cluster can run here; the server is a real HTTP server on 127.0.0.1 that the official client talks to, with
faults injected on the server side.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from sensor.outputs import elasticsearch as elasticsearch_output
from sensor.outputs.elasticsearch import ElasticsearchOutput, ElasticsearchSettings
from sensor.outputs.spool import Spool
from tests.es_server import EsServer

EVENTS = "logs-endpoint.events.process-default"
ALERTS = "logs-container_sensor.alerts-default"

# Trimmed from the first document `container-sensor replay` wrote here for a recorded `sh -c` exec.
BASE_DOC: dict[str, Any] = {
    "@timestamp": "2026-11-27T20:58:54.091869Z",
    "ecs": {"version": "9.4.0"},
    "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": "exec",
              "created": "2026-11-27T21:18:25.108233Z", "id": "D0ESWX9hKx2vJ0SLlI3F", "sequence": 1,
              "dataset": "endpoint.events.process", "module": "container_sensor"},
    "data_stream": {"type": "logs", "dataset": "endpoint.events.process", "namespace": "default"},
    "host": {"hostname": "vm", "name": "vm", "architecture": "x86_64",
             "os": {"type": "linux", "kernel": "6.18.44-fc-v657", "name": "Debian GNU/Linux", "family": "debian",
                    "platform": "debian", "version": "12"}},
    "process": {"pid": 200000, "entity_id": "cmVL6jPMYVlczIi5l2eoFk77", "start": "2026-11-27T20:58:54.091868Z",
                "executable": "/bin/sh", "name": "sh", "args": ["/bin/sh", "-c", "echo 0 > /dev/null"],
                "args_count": 3, "command_line": "/bin/sh -c echo 0 > /dev/null", "working_directory": "/",
                "user": {"id": "0", "name": "root"}, "group": {"id": "0", "name": "root"}, "parent": {"pid": 1}},
}


def make_doc(number: int, kind: str = "event") -> dict[str, Any]:
    doc = copy.deepcopy(BASE_DOC)
    doc["event"]["id"] = f"ev-{number:012d}"
    doc["event"]["sequence"] = number
    doc["event"]["kind"] = kind
    doc["process"]["pid"] = 200000 + number
    if kind == "alert":
        doc["event"]["dataset"] = "container_sensor.alerts"
        doc["data_stream"]["dataset"] = "container_sensor.alerts"
    return doc


def ids(numbers: range | list[int]) -> set[str]:
    return {f"ev-{number:012d}" for number in numbers}


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def server() -> Iterator[EsServer]:
    with EsServer() as running:
        yield running


def make_output(tmp_path: Path, url: str, **overrides: Any) -> ElasticsearchOutput:
    settings: dict[str, Any] = {
        "url": url, "spool_dir": tmp_path / "spool", "dead_letter_path": tmp_path / "dead-letter.ndjson",
        "batch_docs": 200, "batch_wait": 0.05, "queue_docs": 1000, "backoff_initial": 0.01,
        "backoff_max": 0.05, "request_timeout": 2.0,
    }
    settings.update(overrides)
    return ElasticsearchOutput(ElasticsearchSettings(**settings))


def test_events_and_alerts_land_in_their_data_streams(tmp_path: Path, server: EsServer) -> None:
    output = make_output(tmp_path, server.url)
    for number in range(500):
        output.write(make_doc(number))
    for number in range(500, 503):
        alert = make_doc(number, kind="alert")
        # as sensor.rules writes them
        alert["data_stream"]["dataset"] = alert["event"]["dataset"] = "container_sensor.alerts"
        output.write(alert)
    output.close()
    assert server.ids(EVENTS) == ids(range(500))
    assert server.ids(ALERTS) == ids(range(500, 503))
    alert = server.document(ALERTS, "ev-000000000501")
    assert alert["data_stream"] == {"type": "logs", "dataset": "container_sensor.alerts", "namespace": "default"}
    assert alert["event"]["dataset"] == "container_sensor.alerts"
    stats = output.stats()
    assert stats["delivered"] == 503 and stats["dropped"] == 0 and stats["dead_lettered"] == 0


def test_documents_go_where_their_data_stream_fields_say(tmp_path: Path, server: EsServer) -> None:
    prod = make_doc(1)
    prod["data_stream"]["namespace"] = "prod"
    invalid = make_doc(2)
    invalid["data_stream"]["namespace"] = "Not-Valid"
    bare = make_doc(3)
    del bare["data_stream"]
    output = make_output(tmp_path, server.url)
    for doc in (prod, invalid, bare):
        output.write(doc)
    output.close()
    assert server.ids("logs-endpoint.events.process-prod") == ids([1])
    assert server.ids(EVENTS) == ids([2, 3])
    assert server.document(EVENTS, "ev-000000000002")["data_stream"]["namespace"] == "default"
    assert server.document(EVENTS, "ev-000000000003")["data_stream"]["dataset"] == "endpoint.events.process"
    assert invalid["data_stream"]["namespace"] == "Not-Valid"  # the shared document is not modified
    assert server.counters["rejected"] == 0


def test_a_configured_stream_conforms_the_documents(tmp_path: Path, server: EsServer) -> None:
    # A value other than the stream's would be refused by the constant_keyword mapping; it is conformed.
    doc = make_doc(1)
    doc["event"]["dataset"] = "something.else"
    output = make_output(tmp_path, server.url, events_stream="logs-endpoint.events.process-lab")
    output.write(doc)
    output.write(make_doc(2, kind="alert"))
    output.close()
    stored = server.document("logs-endpoint.events.process-lab", "ev-000000000001")
    assert stored["data_stream"] == {"type": "logs", "dataset": "endpoint.events.process", "namespace": "lab"}
    assert stored["event"]["dataset"] == "endpoint.events.process"
    assert server.ids(ALERTS) == ids([2])
    assert server.counters["rejected"] == 0


def test_resending_counts_conflicts_as_delivered(tmp_path: Path, server: EsServer) -> None:
    first = make_output(tmp_path, server.url)
    for number in range(300):
        first.write(make_doc(number))
    first.close()
    second = make_output(tmp_path, server.url)
    for number in range(250, 400):
        second.write(make_doc(number))
    second.close()
    assert server.ids(EVENTS) == ids(range(400))
    stats = second.stats()
    assert stats["duplicates"] == 50 and stats["delivered"] == 100 and stats["dead_lettered"] == 0


def test_429_storms_and_server_errors_are_retried(tmp_path: Path, server: EsServer) -> None:
    server.item_statuses.extend([429] * 700 + [503] * 100)
    server.request_statuses.extend([500, 429, 502, 503])
    output = make_output(tmp_path, server.url)
    for number in range(1000):
        output.write(make_doc(number))
    assert wait_for(lambda: server.count(EVENTS) == 1000)
    output.close()
    assert server.ids(EVENTS) == ids(range(1000))
    stats = output.stats()
    assert stats["retried_items"] >= 800 and stats["bulk_failures"] >= 4
    assert stats["delivered"] + stats["duplicates"] == 1000 and stats["dropped"] == 0


def test_refused_documents_go_to_the_dead_letter_file(tmp_path: Path, server: EsServer) -> None:
    server.item_statuses.extend([400, 400, 400])
    output = make_output(tmp_path, server.url)
    for number in range(10):
        output.write(make_doc(number))
    output.close()
    stats = output.stats()
    assert stats["dead_lettered"] == 3 and stats["delivered"] == 7
    lines = [json.loads(line) for line in (tmp_path / "dead-letter.ndjson").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["ev-000000000000", "ev-000000000001", "ev-000000000002"]
    assert lines[0]["status"] == 400 and lines[0]["error"]["type"] == "document_parsing_exception"
    assert lines[0]["index"] == EVENTS and lines[0]["document"]["process"]["pid"] == 200000
    assert server.ids(EVENTS) == ids(range(3, 10))


def test_connection_resets_and_timeouts_are_retried(tmp_path: Path, server: EsServer) -> None:
    server.resets = 3
    output = make_output(tmp_path, server.url, request_timeout=0.3)
    for number in range(400):
        output.write(make_doc(number))
    assert wait_for(lambda: server.count(EVENTS) == 400)
    server.delay = 0.6  # longer than the request timeout: every request times out until the server speeds up
    for number in range(400, 800):
        output.write(make_doc(number))
    assert wait_for(lambda: output.stats()["bulk_failures"] >= 5)
    server.delay = 0.0
    assert wait_for(lambda: server.count(EVENTS) == 800)
    output.close()
    assert server.ids(EVENTS) == ids(range(800))
    assert server.counters["resets"] == 3


def test_a_slow_cluster_makes_the_spool_take_over(tmp_path: Path, server: EsServer) -> None:
    server.delay = 0.3
    output = make_output(tmp_path, server.url, queue_docs=200, batch_docs=100)
    for number in range(3000):
        output.write(make_doc(number))
    stats = output.stats()
    assert stats["queued"] <= 200  # memory stays bounded; the rest is on disk
    assert stats["spool_appended"] > 2000
    server.delay = 0.0
    assert wait_for(lambda: server.count(EVENTS) == 3000)
    output.close()
    assert server.ids(EVENTS) == ids(range(3000))


def test_outage_then_recovery_loses_nothing(tmp_path: Path, server: EsServer) -> None:
    output = make_output(tmp_path, server.url)
    for number in range(500):
        output.write(make_doc(number))
    assert wait_for(lambda: server.count(EVENTS) == 500)
    server.stop()
    for number in range(500, 5000):
        output.write(make_doc(number))
    assert wait_for(lambda: output.stats()["spool_appended"] >= 4000)
    assert not output.healthy()
    server.start()
    assert wait_for(lambda: server.count(EVENTS) == 5000)
    assert wait_for(output.healthy)
    output.close()
    assert server.ids(EVENTS) == ids(range(5000))
    assert output.stats()["dropped"] == 0


def test_close_while_down_keeps_the_backlog_for_the_next_start(tmp_path: Path, server: EsServer) -> None:
    server.stop()
    first = make_output(tmp_path, server.url)
    for number in range(700):
        first.write(make_doc(number))
    first.close(timeout=0.5)
    assert first.stats()["dropped"] == 0
    server.start()
    second = make_output(tmp_path, server.url)
    assert wait_for(lambda: server.count(EVENTS) == 700)
    second.close()
    assert server.ids(EVENTS) == ids(range(700))


class HeldSpool(Spool):
    """A spool whose first append holds the sender (failing over) until released: the moment of a failover at which
    a kill -9 may come, made to last."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = threading.Event()
        self.release = threading.Event()

    def append(self, payloads: Any, copy: bool = False) -> int:
        if not self.holding.is_set():
            self.holding.set()
            self.release.wait(15)
        return super().append(payloads, copy)


def numbers_a_restart_finds(spool_dir: Path, copy: Path) -> list[int]:
    """The event numbers a sensor started after a kill -9 right now would send, in order."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(spool_dir, copy)
    spool = Spool(copy, max_bytes=1 << 30)
    found = []
    while True:
        payloads, position = spool.read(1000, 1 << 30)
        if not payloads:
            spool.close()
            return found
        found.extend(int(msgpack.unpackb(payload)[1][3:]) for payload in payloads)
        assert position is not None
        spool.ack(position)


def test_failing_over_puts_nothing_on_disk_ahead_of_older_events(
    tmp_path: Path, server: EsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    spools: list[HeldSpool] = []

    def held_spool(*args: Any, **kwargs: Any) -> HeldSpool:
        spools.append(HeldSpool(*args, **kwargs))
        return spools[-1]

    monkeypatch.setattr(elasticsearch_output, "Spool", held_spool)
    server.stop()
    output = make_output(tmp_path, server.url, batch_docs=50, queue_docs=500)
    spool = spools[0]
    for number in range(100):
        output.write(make_doc(number))
    # The first batch failed: the sender is writing it and the queue behind it to disk, and is held there.
    assert spool.holding.wait(15)
    for number in range(100, 300):
        output.write(make_doc(number))
    # Killed now, the sensor must not leave newer events on disk while older ones were only in memory.
    found = numbers_a_restart_finds(tmp_path / "spool", tmp_path / "after-kill")
    assert found == list(range(len(found)))
    spool.release.set()
    # What was queued meanwhile follows the failed batch, and new events follow it.
    for number in range(300, 400):
        output.write(make_doc(number))
    assert wait_for(lambda: output.stats()["spool_appended"] == 400)
    assert output.stats()["queued"] == 0
    assert numbers_a_restart_finds(tmp_path / "spool", tmp_path / "after-kill") == list(range(400))
    output.close(timeout=0.2)
    assert output.stats()["dropped"] == 0


def test_an_overflow_puts_the_batch_in_flight_on_disk_first_and_never_sends_it_twice(
    tmp_path: Path, server: EsServer
) -> None:
    server.delay = 1.0  # slower than the writes, faster than the request timeout: nothing fails
    output = make_output(tmp_path, server.url, batch_docs=100, queue_docs=200)
    for number in range(100):
        output.write(make_doc(number))
    assert wait_for(lambda: output.stats()["bulk_requests"] >= 1)  # the first batch is in flight
    for number in range(100, 500):
        output.write(make_doc(number))  # the queue overflows while it is out
    # A kill -9 now would leave the whole stream from the batch in flight on: nothing newer without the older.
    assert numbers_a_restart_finds(tmp_path / "spool", tmp_path / "after-kill") == list(range(500))
    server.delay = 0.0
    assert wait_for(lambda: server.count(EVENTS) == 500)
    output.close()
    assert server.ids(EVENTS) == ids(range(500))
    stats = output.stats()
    assert stats["duplicates"] == 0 and stats["delivered"] == 500  # its copy on disk was consumed, not resent
    assert stats["dropped"] == 0 and stats["spool_unread"] == 0


def test_queue_behind_a_failing_backlog_waits_on_disk(tmp_path: Path, server: EsServer) -> None:
    server.stop()
    first = make_output(tmp_path, server.url)
    for number in range(100):
        first.write(make_doc(number))
    first.close(timeout=0.2)  # the backlog an earlier run left
    second = make_output(tmp_path, server.url)
    assert wait_for(lambda: second.stats()["bulk_failures"] >= 1)  # retrying a batch of the backlog
    for number in range(100, 200):
        second.write(make_doc(number))
    # The queue does not wait in memory, where a kill -9 would lose it, for the backlog to get through.
    assert wait_for(lambda: second.stats()["spool_appended"] == 100 and second.stats()["queued"] == 0)
    assert numbers_a_restart_finds(tmp_path / "spool", tmp_path / "after-kill") == list(range(200))
    server.start()
    second.close(timeout=15)
    assert server.ids(EVENTS) == ids(range(200))
    assert second.stats()["dropped"] == 0


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_full_spool_drops_are_counted_exactly(tmp_path: Path, server: EsServer, policy: str) -> None:
    server.stop()
    output = make_output(tmp_path, server.url, spool_bytes=300_000, spool_policy=policy)
    total = 3000
    for number in range(total):
        output.write(make_doc(number))
    assert wait_for(lambda: output.stats()["spool_unread"] + output.stats()["queued"] > 0)
    server.start()
    output.close(timeout=15)
    stats = output.stats()
    stored = server.ids(EVENTS)
    assert stats["dropped"] > 0
    assert len(stored) + stats["dropped"] == total
    missing = ids(range(total)) - stored
    assert len(missing) == stats["dropped"]
    numbers = sorted(int(doc_id[3:]) for doc_id in stored)
    if policy == "drop_newest":
        assert numbers == list(range(len(numbers)))  # the oldest survive
    else:
        assert numbers[-1] == total - 1  # the newest survive


def test_api_key_and_basic_auth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with EsServer(api_key="c2VjcmV0LWtleS1pZDpzZWNyZXQta2V5") as keyed:
        good = make_output(tmp_path / "a", keyed.url, api_key="c2VjcmV0LWtleS1pZDpzZWNyZXQta2V5")
        good.write(make_doc(1))
        good.close()
        assert keyed.ids(EVENTS) == ids([1])
        wrong = make_output(tmp_path / "b", keyed.url, api_key="d3JvbmctcGFzc3dvcmQ=")
        wrong.write(make_doc(2))
        assert wait_for(lambda: keyed.counters["auth_failures"] >= 2)
        assert not wrong.healthy()
        wrong.close(timeout=0.2)
        assert keyed.ids(EVENTS) == ids([1])
        assert wrong.stats()["dropped"] == 0
        # Kept on disk, not lost: once the key is fixed, the next start delivers it.
        fixed = make_output(tmp_path / "b", keyed.url, api_key="c2VjcmV0LWtleS1pZDpzZWNyZXQta2V5")
        assert wait_for(lambda: keyed.count(EVENTS) == 2)
        fixed.close()
        assert keyed.ids(EVENTS) == ids([1, 2])
    with EsServer(api_key="c2VjcmV0LWtleS1pZDpzZWNyZXQta2V5") as keyed:
        # The same key given as "id:key" (as the security API returns it) is encoded by the client.
        raw = make_output(tmp_path / "d", keyed.url, api_key="secret-key-id:secret-key")
        raw.write(make_doc(4))
        raw.close()
        assert keyed.ids(EVENTS) == ids([4])
    with EsServer(basic_auth=("sensor", "p@ss:word")) as basic:
        url = basic.url.replace("http://", "http://sensor:p%40ss%3Aword@")
        output = make_output(tmp_path / "c", url)
        output.write(make_doc(3))
        output.close()
        assert basic.ids(EVENTS) == ids([3])
    assert "d3JvbmctcGFzc3dvcmQ=" not in caplog.text and "p@ss:word" not in caplog.text
    assert "p%40ss" not in caplog.text


def test_8x_servers_get_compatibility_headers_they_accept(tmp_path: Path) -> None:
    with EsServer(version="8.15.0") as old:
        output = make_output(tmp_path, old.url)
        for number in range(20):
            output.write(make_doc(number))
        output.close()
        assert old.ids(EVENTS) == ids(range(20))
        assert all("compatible-with=9" not in accept for accept in old.seen_accept)


def test_too_large_requests_are_split(tmp_path: Path, server: EsServer) -> None:
    server.max_content_length = 150_000
    output = make_output(tmp_path, server.url, batch_bytes=5_000_000, batch_docs=500, queue_docs=2000)
    for number in range(1000):
        output.write(make_doc(number))
    assert wait_for(lambda: server.count(EVENTS) == 1000)
    output.close()
    assert server.ids(EVENTS) == ids(range(1000))
    assert output.stats()["dead_lettered"] == 0


def test_full_disk_under_the_spool_is_one_line_and_counted(
    tmp_path: Path, server: EsServer, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        server.stop()
        output = make_output(tmp_path, server.url, spool_dir=mount / "spool", spool_bytes=1 << 30)
        total = 2000
        for number in range(total):
            output.write(make_doc(number))
        assert wait_for(lambda: output.stats()["spool_dropped_disk_full"] > 0)
        server.start()
        output.close(timeout=15)
        stats = output.stats()
        assert len(server.ids(EVENTS)) + stats["dropped"] == total
        assert stats["dropped"] == stats["spool_dropped_disk_full"]
        full_lines = [r for r in caplog.records if "disk full" in r.getMessage()]
        assert len(full_lines) == 1
        assert "Traceback" not in caplog.text
    finally:
        subprocess.run(["umount", str(mount)], check=False)
