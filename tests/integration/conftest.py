from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

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
