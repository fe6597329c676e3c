"""The module load probe on a kernel without loadable modules: left out with one line, the rest unharmed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel


def test_no_module_tracepoint_is_one_line_and_nothing_else() -> None:
    with SensorProcess() as sensor:
        subprocess.run(["/bin/true", "after-module-probe"], check=True)
        sensor.wait_for(lambda d: get(d, "process.args") == ["/bin/true", "after-module-probe"])
        sensor.stop()
    lines = [line for line in sensor.stderr().splitlines() if "module:module_load" in line]
    assert "Traceback" not in sensor.stderr()
    if Path("/sys/kernel/tracing/events/module/module_load").is_dir():  # a kernel with modules: attached
        assert any("probe attached" in line for line in lines), lines
        return
    assert len(lines) == 1 and "no load_module documents" in lines[0], lines
