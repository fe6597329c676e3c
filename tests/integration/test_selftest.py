"""`container-sensor selftest` on this machine: passes with each way of making a container, fails when it should."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.containers]

REPO = Path(__file__).resolve().parents[2]


def selftest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINER_SENSOR_")}
    return subprocess.run([sys.executable, "-m", "sensor", "selftest", *args], capture_output=True, text=True,
                          cwd=REPO, env={**clean, **(env or {})}, timeout=120)


@pytest.mark.parametrize("method", ["podman", "unshare"])
def test_selftest_passes(method):
    if shutil.which(method) is None:
        pytest.skip(f"{method} is not installed")
    result = selftest("--method", method)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"selftest: probe attached in \d+\.\d\ds", lines[0])
    assert lines[1].startswith(f"selftest: started ssh -V in {'a podman container' if method == 'podman' else 'new'}")
    runtime = "podman" if method == "podman" else "unshare"
    assert re.fullmatch(rf'selftest: PASS: "[^"]+" for ssh in {runtime} \S+ \d+\.\d\ds after the container was '
                        r"started(, -?\d+\.\d ms after the exec)?", lines[2]), lines[2]


def test_selftest_fails_when_the_rule_is_off():
    result = selftest("--method", "unshare", "--timeout", "3", env={"CONTAINER_SENSOR_RULES_BUILTIN": "false"})
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "selftest: FAIL: the exec of ssh was seen, but no alert within 3s: the ssh rule did not fire"
    )


def test_selftest_reports_a_bad_configuration():
    result = selftest(env={"CONTAINER_SENSOR_LOG_LEVL": "debug"})
    assert result.returncode == 2
    assert "unknown environment variable CONTAINER_SENSOR_LOG_LEVL" in result.stderr
