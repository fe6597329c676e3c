"""`record` saves what the probe saw; `replay` turns it into the same documents without BPF."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.sensor_process import REPO, get, run_and_wait

pytestmark = pytest.mark.kernel


def record_while(tmp_path, action) -> tuple[Path, list[dict]]:
    """Runs `container-sensor record` around action(); returns the recording and the live documents."""
    recording = tmp_path / "run.rec"
    ready = tmp_path / "ready"
    out = tmp_path / "live.ndjson"
    with open(out, "wb") as stdout:
        recorder = subprocess.Popen(
            [sys.executable, "-m", "sensor", "record", str(recording), "--ready-file", str(ready),
             "--metrics-address", "off"], stdout=stdout, stderr=subprocess.DEVNULL, cwd=REPO)
        while not ready.exists():
            assert recorder.poll() is None, "record exited early"
            time.sleep(0.05)
        action()
        time.sleep(0.5)
        recorder.terminate()
        assert recorder.wait(30) == 0
    return recording, [json.loads(line) for line in out.read_text().splitlines()]


def replay(recording: Path) -> list[dict]:
    replayed = subprocess.run([sys.executable, "-m", "sensor", "replay", str(recording)], capture_output=True,
                              cwd=REPO, check=True)
    return [json.loads(line) for line in replayed.stdout.decode().splitlines()]


def test_replay_reproduces_the_live_documents(tmp_path) -> None:
    children = []

    def action() -> None:
        children.append(run_and_wait(["/bin/echo", "replay me", b"\xff"]))
        run_and_wait(["/bin/sh", "-c", "exit 5"])

    recording, live_docs = record_while(tmp_path, action)
    child = children[0]
    replay_docs = replay(recording)
    assert len(replay_docs) == len(live_docs)

    def pick(docs):
        return next(d for d in docs if get(d, "process.pid") == child.pid and get(d, "event.action") == "exec")

    live_doc, replay_doc = pick(live_docs), pick(replay_docs)
    for field in ("event.id", "process.args", "process.entity_id", "process.parent.pid", "process.parent.entity_id",
                  "process.parent.executable", "process.session_leader.entity_id", "@timestamp"):
        assert get(replay_doc, field) == get(live_doc, field), field
    assert get(replay_doc, "process.args") == ["/bin/echo", "replay me", "\\xff"]


def test_replay_of_a_file_that_is_not_a_recording_is_one_clear_line(tmp_path) -> None:
    bogus = tmp_path / "bogus.rec"
    bogus.write_bytes(b"\x00\x01not msgpack at all")
    result = subprocess.run([sys.executable, "-m", "sensor", "replay", str(bogus)], capture_output=True, cwd=REPO)
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr.decode()


@pytest.mark.containers
def test_replay_places_container_processes_and_alerts_like_the_live_run(tmp_path) -> None:
    from tests.integration.rootfs import rootfs

    root = rootfs()

    def action() -> None:
        subprocess.run(["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--rootfs", str(root),
                        "/bin/sh", "-c", "ssh -V"], check=True, capture_output=True, timeout=120)

    recording, live_docs = record_while(tmp_path, action)
    replay_docs = replay(recording)

    def ssh_exec(docs):
        return next(d for d in docs if get(d, "event.action") == "exec" and get(d, "process.name") == "ssh"
                    and get(d, "container.id"))

    live_ssh, replay_ssh = ssh_exec(live_docs), ssh_exec(replay_docs)
    assert get(replay_ssh, "container.id") == get(live_ssh, "container.id")
    assert get(replay_ssh, "container.runtime") == "podman"
    assert get(replay_ssh, "process.entry_leader.entry_meta.type") == "container"
    assert get(replay_ssh, "container_sensor.cgroup.path") == get(live_ssh, "container_sensor.cgroup.path")
    alerts = [d for d in replay_docs if get(d, "event.kind") == "alert" and get(d, "process.name") == "ssh"]
    assert alerts, "the built-in rule fires on the replayed ssh exec"
