"""The "Stall" attack on rule evaluation, from inside a real podman container as an unprivileged user.

With an Elastic-style rule `process.command_line : "*/tmp/*/*.sh*"`, one 16 KiB command line full of `/tmp/` that
never reaches a `.sh` made the backtracking matcher run for ~55 s on the pipeline thread: no documents, no
/metrics, SIGTERM ignored. Here the same command line must cost nothing visible: later documents arrive within
seconds, /metrics answers, ssh started afterwards in the same container alerts, and the rule still fires on a
command line it does match.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sensor_process import SensorProcess, get, invoked, run_and_wait
from tests.integration.test_detection import BUILTIN, PODMAN, alerts_for
from tests.integration.test_detection import root as root  # a fixture, used by name

pytestmark = [pytest.mark.kernel, pytest.mark.containers]

RULE_NAME = "Shell Script Run From a Temporary Subfolder"
# ~16 KiB of `/tmp/` segments and no `.sh`: the worst case for `*/tmp/*/*.sh*` when matching backtracks
HOSTILE = "/tmp/" + "a/tmp/" * 2725
RULE_TOML = f'''[metadata]
creation_date = "2026/12/02"
integration = ["endpoint"]
maturity = "production"
updated_date = "2026/12/02"

[rule]
author = ["Elastic"]
description = "A shell script started from a folder under /tmp."
from = "now-9m"
index = ["logs-endpoint.events.process*"]
language = "eql"
license = "Elastic License v2"
name = "{RULE_NAME}"
risk_score = 21
rule_id = "0b6bd1c3-3f45-4a57-9a39-2d7c4b9f3a11"
severity = "low"
tags = ["Domain: Container", "OS: Linux", "Use Case: Threat Detection", "Tactic: Execution"]
timestamp_override = "event.ingested"
type = "eql"
query = \'\'\'
process where event.type == "start" and event.action == "exec" and process.command_line : "*/tmp/*/*.sh*"
\'\'\'

[[rule.threat]]
framework = "MITRE ATT&CK"
[[rule.threat.technique]]
id = "T1059"
name = "Command and Scripting Interpreter"
reference = "https://attack.mitre.org/techniques/T1059/"
[rule.threat.tactic]
id = "TA0002"
name = "Execution"
reference = "https://attack.mitre.org/tactics/TA0002/"
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metrics(address: str, timeout: float = 3.0) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as answer:
        assert answer.status == 200
        return answer.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"container_sensor_{name} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def stall_sensor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SensorProcess, str]]:
    rules = tmp_path_factory.mktemp("stall-rules") / "execution_script_from_tmp_subfolder.toml"
    rules.write_text(RULE_TOML)
    address = f"127.0.0.1:{free_port()}"
    with SensorProcess("--rules", str(rules), "--metrics-address", address) as running:
        yield running, address


def test_a_16_kib_hostile_command_line_from_a_container_does_not_stall_the_sensor(
        stall_sensor: tuple[SensorProcess, str], root: Path) -> None:
    sensor, address = stall_sensor
    assert metric(metrics(address), "rules_loaded") == 1
    # The container's shell is exec'd with the hostile text in its own command line (`:` ignores it); then ssh
    # runs with a command line the rule does match (`run.s"h"` keeps `.sh` out of the shell's own command line).
    script = f": {HOSTILE}\nssh -V /tmp/q/run.s\"h\"; sleep 2"
    assert ".sh" not in script and len(script) > 16000
    with tempfile.TemporaryDirectory() as scratch:
        cidfile = Path(scratch) / "cid"
        started = time.monotonic()
        result = subprocess.run([*PODMAN, "--cidfile", str(cidfile), "--user", "65534:65534", "--rootfs", str(root),
                                 "/bin/sh", "-c", script], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        container_id = cidfile.read_text().strip()

    hostile = sensor.wait_for(lambda d: get(d, "event.action") == "exec" and get(d, "container.id") == container_id
                              and len(get(d, "process.command_line") or "") > 16000, timeout=10)[0]
    assert get(hostile, "process.user.id") == "65534" and invoked(hostile) == "/bin/sh"

    # ssh ran ~2 s before the container ended: its document and alerts are there within seconds of that
    sensor.wait_for(lambda d: get(d, "event.kind") == "event" and get(d, "event.action") == "exec"
                    and get(d, "container.id") == container_id and get(d, "process.name") == "ssh", timeout=5)
    alerts_for(sensor, container_id, BUILTIN, "/usr/bin/ssh")
    matched = alerts_for(sensor, container_id, RULE_NAME, "/usr/bin/ssh")[0]
    assert get(matched, "process.command_line") == "ssh -V /tmp/q/run.sh"
    assert not [a for a in sensor.alerts() if get(a, "rule.name") == RULE_NAME
                and len(get(a, "process.command_line") or "") > 16000]

    # a host exec after it all: its document arrives within a few seconds
    marker = f"after-stall-{uuid.uuid4().hex}"
    before = time.monotonic()
    run_and_wait(["/bin/true", marker])
    sensor.wait_for(lambda d: get(d, "event.action") == "exec" and marker in (get(d, "process.args") or []),
                    timeout=5)
    assert time.monotonic() - before < 5

    # /metrics answers promptly, and the rule evaluation budget was never needed for one hostile line
    answer_started = time.monotonic()
    text = metrics(address)
    assert time.monotonic() - answer_started < 3
    assert metric(text, "detector_rule_budget_exceeded") == 0
    assert time.monotonic() - started < 60, "the whole exchange must not take a stalled sensor's time"

    # and SIGTERM is obeyed
    assert sensor.proc.poll() is None, sensor.stderr()
    os.kill(sensor.proc.pid, signal.SIGTERM)
    sensor.proc.wait(timeout=20)
