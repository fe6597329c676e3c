from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.model.records import RecordingWriter
from tests.es_server import EsServer
from tests.integration.sensor_process import SensorProcess


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: loads BPF programs and starts containers")
    for item in items:
        if "kernel" in item.keywords or "containers" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sensor() -> Iterator[SensorProcess]:
    """One live sensor with default settings shared by the tests of a session."""
    with SensorProcess() as running:
        yield running


@pytest.fixture
def empty_recording(tmp_path: Path) -> Path:
    """A recording with no records: a replay of it ships only what a spool already holds."""
    path = tmp_path / "empty.rec"
    with open(path, "wb") as stream:
        RecordingWriter(stream).flush()
    return path


@pytest.fixture
def server() -> Iterator[EsServer]:
    """The local Elasticsearch stand-in, on loopback."""
    with EsServer() as running:
        yield running
