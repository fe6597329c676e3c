"""Rules reloaded by the live sensor: a rule added and SIGHUP sent, then a rule file replaced and nothing sent
(the folder is watched); a host exec loop running all the while loses no event, and SIGHUP does not end the
sensor."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.sensor_process import SensorProcess, get
from tests.rule_files import rule_toml

pytestmark = pytest.mark.kernel


def write(folder: Path, name: str, marker: str, rule_id: str) -> None:
    staged = folder / f".{name}.tmp"
    staged.write_text(rule_toml(name, f'process where event.type == "start" and process.args == "{marker}"', rule_id))
    os.replace(staged, folder / f"{name}.toml")  # whole at once, as a ConfigMap update is


def alert_of(sensor: SensorProcess, name: str, marker: str, timeout: float = 20.0) -> dict:
    return sensor.wait_for(lambda d: get(d, "event.kind") == "alert" and get(d, "rule.name") == name
                           and marker in (get(d, "process.args") or []), timeout)[-1]


def test_sighup_and_a_changed_folder_reload_the_rules_without_losing_events(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    folder.mkdir()
    first = f"reload-a-{os.urandom(3).hex()}"
    write(folder, "first", first, "00000000-0000-4000-8000-0000000000a1")
    # no folding: the same rule firing on /bin/echo again within a minute would fold into the first alert
    with SensorProcess("--rules", str(folder), "--fold-window", "0") as sensor:
        loop = subprocess.Popen(["/bin/sh", "-c", "while :; do /bin/true; done"])
        try:
            subprocess.run(["/bin/echo", first], check=True, capture_output=True)
            alert_of(sensor, "first", first)

            second = f"reload-b-{os.urandom(3).hex()}"
            write(folder, "second", second, "00000000-0000-4000-8000-0000000000b2")
            sensor.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "rules reloaded" not in sensor.stderr() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "rules reloaded: 2 loaded, 0 refused" in sensor.stderr()
            subprocess.run(["/bin/echo", second], check=True, capture_output=True)
            alert_of(sensor, "second", second)

            # the first rule's file replaced with another marker, no signal: the watch sees it
            third = f"reload-c-{os.urandom(3).hex()}"
            write(folder, "first", third, "00000000-0000-4000-8000-0000000000a1")
            deadline = time.monotonic() + 30
            while sensor.stderr().count("rules reloaded") < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sensor.stderr().count("rules reloaded") == 2, sensor.stderr()[-3000:]
            subprocess.run(["/bin/echo", third], check=True, capture_output=True)
            subprocess.run(["/bin/echo", first], check=True, capture_output=True)
            alert_of(sensor, "first", third)
            time.sleep(1.0)
            # the old marker no longer alerts: only the one alert from before the change
            assert len([a for a in sensor.alerts() if get(a, "rule.name") == "first"
                        and first in (get(a, "process.args") or [])]) == 1
        finally:
            loop.kill()
            loop.wait()
        assert sensor.proc.poll() is None  # SIGHUP did not end it
        code = sensor.stop()
    assert code == 0
    summary = sensor.stderr().strip().splitlines()[-1]
    assert ", 0 lost," in summary, summary
