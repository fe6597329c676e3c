"""A real sensor whose pipeline is really blocked: its stdout is a pipe nobody reads, so once exec documents have
filled the pipe the event loop sits in write(). /livez must turn 503 after the stall timeout (and not before,
nor on an idle machine) while /healthz and /metrics still answer; SIGTERM must then end it within the drain
deadline with one summary line saying what was left behind; a second signal ends the drain at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sensor_process import REPO, sensor_command

pytestmark = pytest.mark.kernel

STALL_S = 3.0
DRAIN_S = 4.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    return status, body, time.monotonic() - started


def metric(body: str, name: str) -> float:
    line = next(line for line in body.splitlines() if line.startswith(f"container_sensor_{name} "))
    return float(line.split()[1])


class BlockedSensor:
    """`container-sensor run` writing NDJSON to a pipe that is kept open and never read."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.ready = workdir / "ready"
        self.err_path = workdir / "stderr.log"
        self.read_end, write_end = os.pipe()  # the read end stays open: writes block instead of failing
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*sensor_command(), "run", "--ready-file", str(self.ready), "--log-format", "text",
                 "--metrics-address", f"127.0.0.1:{self.port}", "--stall-timeout", f"{STALL_S:g}s",
                 "--drain-timeout", f"{DRAIN_S:g}s"],
                stdout=write_end, stderr=err, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        os.close(write_end)
        self.load: subprocess.Popen | None = None
        deadline = time.monotonic() + 60
        while not self.ready.exists():
            assert self.proc.poll() is None, f"sensor exited: {self.stderr()}"
            assert time.monotonic() < deadline, f"sensor not ready: {self.stderr()}"
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def exec_storm(self) -> None:
        """Enough execs that their documents overflow the 1 MiB stdout pipe many times over."""
        self.load = subprocess.Popen(["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do /bin/true; i=$((i+1)); done"])

    def wait_for_stall(self) -> float:
        """Waits until the loop stops advancing; returns when (monotonic) it last advanced."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body, _ = get(self.port, "/metrics")
            assert status == 200
            age = metric(body, "pipeline_last_progress_seconds")
            if age >= 0.5:
                return time.monotonic() - age
            time.sleep(0.1)
        raise AssertionError("the pipeline never blocked on the unread stdout pipe")

    def close(self) -> None:
        if self.load is not None and self.load.poll() is None:
            self.load.kill()
            self.load.wait()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.read_end)


@pytest.fixture
def blocked(tmp_path: Path) -> Iterator[BlockedSensor]:
    sensor = BlockedSensor(tmp_path)
    try:
        yield sensor
    finally:
        sensor.close()


def summary_lines(sensor: BlockedSensor) -> list[str]:
    return [line for line in sensor.stderr().splitlines() if "events seen" in line]


def test_livez_fails_on_a_blocked_pipeline_and_sigterm_ends_it_within_the_drain_deadline(blocked):
    blocked.exec_storm()
    stalled_since = blocked.wait_for_stall()
    while True:
        status, body, took = get(blocked.port, "/livez")
        now = time.monotonic()
        assert took < 1.0
        if status == 503:
            break
        assert now - stalled_since < STALL_S + 2.0, f"/livez still {status} {now - stalled_since:.1f}s into the stall"
        time.sleep(0.1)
    assert now - stalled_since >= STALL_S - 0.3, "503 before the stall timeout"
    assert body.startswith("dead: pipeline stalled: no progress for ") and body.count("\n") == 1, body

    # The rest of the ops server still answers, and says how long the loop has been stuck.
    status, body, took = get(blocked.port, "/healthz")
    assert status in (200, 503) and took < 1.0
    status, body, took = get(blocked.port, "/metrics")
    assert status == 200 and took < 1.0
    assert metric(body, "pipeline_last_progress_seconds") >= STALL_S

    started = time.monotonic()
    blocked.proc.send_signal(signal.SIGTERM)
    code = blocked.proc.wait(DRAIN_S + 10)
    took = time.monotonic() - started
    stderr = blocked.stderr()
    assert code == 0, stderr
    assert DRAIN_S - 0.5 <= took <= DRAIN_S + 3.0, f"exited {took:.1f}s after SIGTERM"
    lines = summary_lines(blocked)
    assert len(lines) == 1, stderr
    assert f"drain cut by the {DRAIN_S:g}s drain deadline: " in lines[0]
    assert " lost)" in lines[0] and "kept in the spool" in lines[0]
    assert "Traceback" not in stderr


def test_a_second_signal_ends_the_drain_at_once(blocked):
    blocked.exec_storm()
    blocked.wait_for_stall()
    blocked.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert blocked.proc.poll() is None  # still draining: the deadline is seconds away
    started = time.monotonic()
    blocked.proc.send_signal(signal.SIGINT)
    code = blocked.proc.wait(10)
    took = time.monotonic() - started
    stderr = blocked.stderr()
    assert code == 128 + signal.SIGINT, stderr
    assert took < 2.0, f"exited {took:.1f}s after the second signal"
    lines = summary_lines(blocked)
    assert len(lines) == 1 and "drain cut by a second SIGINT: " in lines[0], stderr
    assert "Traceback" not in stderr


def test_a_sensor_that_keeps_up_stays_live_and_drains_completely(tmp_path):
    """Quiet or busy, a loop that keeps polling stays live past the stall timeout; the drain bound changes
    nothing for it: everything is written, exit 0, nothing cut."""
    port = free_port()
    out = tmp_path / "events.ndjson"
    ready = tmp_path / "ready"
    with open(out, "wb") as stdout, open(tmp_path / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            [*sensor_command(), "run", "--ready-file", str(ready), "--log-format", "text",
             "--metrics-address", f"127.0.0.1:{port}", "--stall-timeout", f"{STALL_S:g}s",
             "--drain-timeout", f"{DRAIN_S:g}s"],
            stdout=stdout, stderr=stderr, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        live_until = time.monotonic() + STALL_S + 2.0
        while time.monotonic() < live_until:
            status, body, _ = get(port, "/livez")
            assert status == 200, body
            time.sleep(0.25)
        subprocess.run(["/bin/true"], check=True)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DRAIN_S + 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in (tmp_path / "stderr.log").read_text().splitlines() if "events seen" in line]
    assert len(lines) == 1 and "drain cut" not in lines[0] and "lost at exit" not in lines[0]
    assert out.read_bytes().endswith(b"\n")
