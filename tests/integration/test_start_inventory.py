"""already_running documents: what was running when the sensor started, as Elastic Defend reports it."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel


def test_a_process_running_before_the_sensor_gets_one_already_running_document() -> None:
    sleeper = subprocess.Popen(["/bin/sleep", "300"])
    try:
        with SensorProcess() as sensor:
            docs = sensor.wait_for(lambda d: get(d, "process.pid") == sleeper.pid, timeout=15)
            ours = [d for d in sensor.docs if get(d, "process.pid") == sleeper.pid]
            kernel_threads = [d for d in sensor.docs if get(d, "event.action") == "already_running"
                              and get(d, "process.pid") == 2]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert len(ours) == 1, ours
    doc = docs[0]
    assert get(doc, "event.action") == "already_running" and get(doc, "event.type") == ["info"]
    assert get(doc, "process.args") == ["/bin/sleep", "300"]
    assert get(doc, "process.executable") == "/usr/bin/sleep"
    assert get(doc, "user.id") == "0"
    assert kernel_threads == []  # kthreadd runs no program
