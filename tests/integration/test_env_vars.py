"""process.env_vars from the environment of real execs, read in the kernel: only the configured variables, on the
host and in a container, an environment padded past the probe's window, and Elastic's rules that read them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest_containers import PODMAN_RUN, podman_image_ref, test_rootfs  # noqa: F401
from tests.integration.sensor_process import SensorProcess, get

pytestmark = pytest.mark.kernel

RULES = Path(__file__).resolve().parents[3] / "shared" / "elastic-rules" / "linux"
SECRET = "AWS_SECRET_ACCESS_KEY=never-in-a-document"


def _exec(sensor: SensorProcess, marker: str) -> dict:
    return sensor.wait_for(lambda d: get(d, "event.action") == "exec" and (get(d, "process.args") or [""])[-1]
                           == marker, timeout=15)[0]


def test_only_the_configured_variables_are_kept_and_nothing_else_of_the_environment() -> None:
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": "/tmp/none.so", "http_proxy": "socks5h://10.0.0.1:1080",
           "AWS_SECRET_ACCESS_KEY": "never-in-a-document"}
    with SensorProcess() as sensor:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.1)", "env-kept"], env=env, check=True)
        doc = _exec(sensor, "env-kept")
        sensor.stop()
    assert get(doc, "process.env_vars") == ["LD_PRELOAD=/tmp/none.so", "http_proxy=socks5h://10.0.0.1:1080"]
    assert get(doc, "container_sensor.env_vars_truncated") is None
    assert "never-in-a-document" not in sensor.out_path.read_text()  # nowhere in any document


def test_a_variable_pushed_past_the_window_is_found_or_the_document_says_it_may_be_missing() -> None:
    """An attacker pads the environment so that LD_PRELOAD lies beyond what the probe reads: a process that lives
    a moment is read whole from /proc; one gone at once is flagged, never silently clean."""
    padded = {"PAD": "a" * 20000, "LD_PRELOAD": "/tmp/late.so"}
    with SensorProcess() as sensor:
        subprocess.run([sys.executable, "-c", "import time; time.sleep(0.5)", "env-padded-long"], env=padded,
                       check=True)
        subprocess.run(["/bin/true", "env-padded-short"], env=padded, check=True)
        lived = _exec(sensor, "env-padded-long")
        short = _exec(sensor, "env-padded-short")
    assert get(lived, "process.env_vars") == ["LD_PRELOAD=/tmp/late.so"]
    assert get(lived, "container_sensor.env_vars_truncated") is None
    assert get(short, "process.env_vars") == ["LD_PRELOAD=/tmp/late.so"] or \
        get(short, "container_sensor.env_vars_truncated") is True


def test_an_empty_list_reads_no_environment() -> None:
    with SensorProcess(env={"CONTAINER_SENSOR_EVENTS_ENV_VARS": ""}) as sensor:
        subprocess.run(["/bin/true", "env-off"], env={"LD_PRELOAD": "/tmp/x.so"}, check=True)
        doc = _exec(sensor, "env-off")
    assert get(doc, "process.env_vars") is None


def test_a_container_process_carries_its_variables(podman_image_ref: str) -> None:  # noqa: F811
    name = f"cs-env-{os.getpid()}"
    with SensorProcess() as sensor:
        # the secret reaches the container from podman's own environment, so no command line holds it
        done = subprocess.run([*PODMAN_RUN, "--rm", "--name", name, "-e", "LD_PRELOAD=/lib/evil.so", "-e",
                               SECRET.split("=")[0], podman_image_ref, "sleep", "0.3"], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ, **dict([SECRET.split("=")])))
        assert done.returncode == 0, done.stderr
        doc = sensor.wait_for(lambda d: get(d, "container.name") == name and get(d, "process.args") == [
            "sleep", "0.3"], timeout=20)[0]
        sensor.stop()
    assert "LD_PRELOAD=/lib/evil.so" in get(doc, "process.env_vars")
    assert "never-in-a-document" not in sensor.out_path.read_text()


def test_elastic_history_clearing_rule_fires_on_a_real_shell(tmp_path: Path) -> None:
    rule = RULES / "defense_evasion_shell_history_clearing_via_environment_variables.toml"
    if not rule.is_file():
        pytest.fail(f"the rule corpus is missing: {rule}")
    (tmp_path / "rule.toml").write_text(rule.read_text())
    with SensorProcess("--rules", str(tmp_path), "--no-builtin-rules") as sensor:
        subprocess.run(["/bin/bash", "-c", "HISTFILE=/dev/null exec /bin/sleep 0.1"], check=True)
        alerts = sensor.wait_for(lambda d: get(d, "event.kind") == "alert", timeout=15)
    assert get(alerts[0], "rule.name") == "Shell History Clearing via Environment Variables"
    assert "HISTFILE=/dev/null" in get(alerts[0], "process.env_vars")
