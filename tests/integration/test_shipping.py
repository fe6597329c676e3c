"""Shipping end to end: `container-sensor replay` as the sensor process, a local Elasticsearch-compatible server
(tests/es_server.py) as the cluster. Outages, sensor kills (SIGKILL) and a full spool must lose nothing that is
not counted, and the index must hold every event exactly once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.es_server import EsServer
from tests.shipping_recording import write_recording

REPO = Path(__file__).resolve().parents[2]
EVENTS = "logs-endpoint.events.process-default"
RECORDS = 30_000
SUMMARY_RE = re.compile(r"(\d+) dropped by outputs")


def sensor_command(recording: Path, *outputs: str) -> list[str]:
    command = [sys.executable, "-m", "sensor", "replay", str(recording), "--log-format", "text"]
    for output in outputs:
        command += ["--output", output]
    return command


def sensor_env(spool: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTAINER_SENSOR_")}
    env["CONTAINER_SENSOR_SPOOL_DIR"] = str(spool)
    # An empty configuration file of its own: no host configuration leaks into the test.
    config = spool.parent / "empty-config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("")
    env["CONTAINER_SENSOR_CONFIG"] = str(config)
    env.update(extra)
    return env


def run_sensor(recording: Path, url: str, spool: Path, timeout: float = 120, **extra: str) -> tuple[int, str]:
    result = subprocess.run(sensor_command(recording, f"elasticsearch:{url}"), env=sensor_env(spool, **extra),
                            cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr
    match = SUMMARY_RE.search(result.stderr)
    assert match, result.stderr
    return result.returncode, result.stderr


def dropped_in(stderr: str) -> int:
    match = SUMMARY_RE.search(stderr)
    assert match, stderr
    return int(match.group(1))


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_recording(tmp_path_factory.mktemp("rec") / "execs.rec", RECORDS)


@pytest.fixture(scope="module")
def expected_ids(recording: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The event ids the pipeline gives these records, in emission order (the same on every replay)."""
    out = tmp_path_factory.mktemp("out") / "events.ndjson"
    subprocess.run(sensor_command(recording, f"file:{out}"), env=sensor_env(out.parent / "spool"), cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    ids = [json.loads(line)["event"]["id"] for line in out.read_text().splitlines()]
    assert len(ids) == RECORDS == len(set(ids))
    return ids


def test_server_stopped_and_restarted_mid_stream(
    tmp_path: Path, recording: Path, expected_ids: list[str], server: EsServer
) -> None:
    sensor = subprocess.Popen(sensor_command(recording, f"elasticsearch:{server.url}"),
                              env=sensor_env(tmp_path / "spool"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: server.count(EVENTS) >= 5000)
    server.stop()
    time.sleep(1.0)
    server.start()
    _, stderr = sensor.communicate(timeout=120)
    assert sensor.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert dropped_in(stderr) == 0
    assert server.ids(EVENTS) == set(expected_ids)


def test_sensor_killed_mid_stream_and_restarted(
    tmp_path: Path, recording: Path, expected_ids: list[str], server: EsServer
) -> None:
    spool = tmp_path / "spool"
    sensor = subprocess.Popen(sensor_command(recording, f"elasticsearch:{server.url}"), env=sensor_env(spool),
                              cwd=REPO, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: server.count(EVENTS) >= 5000)
    sensor.send_signal(signal.SIGKILL)
    sensor.wait(10)
    delivered_before = server.count(EVENTS)
    assert delivered_before < RECORDS
    returncode, stderr = run_sensor(recording, server.url, spool)
    assert returncode == 0, stderr
    # Every event once: the second run re-sent what the first had delivered and got 409s for it.
    assert server.ids(EVENTS) == set(expected_ids)
    assert server.counters["created"] == RECORDS
    assert server.counters["conflicts"] >= delivered_before


def test_sensor_killed_during_an_outage_keeps_its_spool(
    tmp_path: Path, recording: Path, expected_ids: list[str], empty_recording: Path, server: EsServer
) -> None:
    spool = tmp_path / "spool"
    server.stop()
    sensor = subprocess.Popen(sensor_command(recording, f"elasticsearch:{server.url}"), env=sensor_env(spool),
                              cwd=REPO, stderr=subprocess.DEVNULL)

    def spooled() -> int:
        return sum(path.stat().st_size for path in spool.glob("*.seg")) if spool.exists() else 0

    assert wait_for(lambda: spooled() > 8_000_000)
    sensor.send_signal(signal.SIGKILL)
    sensor.wait(10)
    server.start()
    # A sensor that sees no new events still delivers the backlog the killed one left on disk.
    returncode, stderr = run_sensor(empty_recording, server.url, spool,
                                    CONTAINER_SENSOR_ELASTICSEARCH_TIMEOUT="30")
    assert returncode == 0, stderr
    stored = server.ids(EVENTS)
    assert len(stored) > 1000
    # What was emitted before the kill arrives whole: a prefix of the stream, with no gap.
    assert stored == set(expected_ids[: len(stored)])


@pytest.mark.parametrize("policy", ["drop-newest", "drop-oldest"])
def test_full_spool_counts_exactly_what_it_drops(
    tmp_path: Path, recording: Path, expected_ids: list[str], empty_recording: Path, server: EsServer,
    policy: str,
) -> None:
    spool = tmp_path / "spool"
    server.stop()
    returncode, stderr = run_sensor(recording, server.url, spool, CONTAINER_SENSOR_SPOOL_LIMIT="2MiB",
                                    CONTAINER_SENSOR_SPOOL_POLICY=policy)
    assert returncode == 0, stderr
    dropped = dropped_in(stderr)
    assert 0 < dropped < RECORDS
    assert "spool" in stderr and "full" in stderr
    assert sum(path.stat().st_size for path in spool.glob("*.seg")) <= 2 * 1024 * 1024 + 10_000 * 3_000
    server.start()
    returncode, stderr = run_sensor(empty_recording, server.url, spool, CONTAINER_SENSOR_SPOOL_LIMIT="2MiB",
                                    CONTAINER_SENSOR_SPOOL_POLICY=policy)
    assert returncode == 0, stderr
    stored = server.ids(EVENTS)
    missing = set(expected_ids) - stored
    assert len(missing) == dropped
    assert len(stored) + dropped == RECORDS
    if policy == "drop-newest":
        assert stored == set(expected_ids[: len(stored)])
    else:
        assert expected_ids[-1] in stored
