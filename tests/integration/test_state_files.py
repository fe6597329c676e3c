"""State files against another user and against damage, through the real `container-sensor` command.

The Elasticsearch cases run `container-sensor replay` of an empty recording, which delivers what the spool holds
and exits, against tests/es_server.py. Planted files are made by `nobody` (setpriv), as an unprivileged user of
the host would after a run under `umask 000` left the spool directory world-writable. The modes case runs the
live sensor (real probes) under umask 000 and 022.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from sensor.outputs.spool import FRAME_HEADER, SEGMENT_MAGIC, Spool
from tests.es_server import EsServer

REPO = Path(__file__).resolve().parents[2]
EVENTS = "logs-endpoint.events.process-default"
NOBODY = 65534
SUMMARY_RE = re.compile(r"(\d+) dropped by outputs")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="plants files as another user: needs root")


def sensor_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTAINER_SENSOR_")}
    config = workdir / "empty-config.yaml"
    config.write_text("")
    env["CONTAINER_SENSOR_CONFIG"] = str(config)
    env.update(extra)
    return env


def as_nobody(*command: str, data: bytes | None = None) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                   input=data, check=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def spooled_doc(number: int, tag: str) -> bytes:
    """One spool payload as the Elasticsearch output packs it: [index, id, source]."""
    doc = {"@timestamp": "2024-01-01T00:00:00Z", "event": {"id": f"{tag}-{number:05d}", "kind": "event"},
           "message": tag}
    return msgpack.packb([EVENTS, f"{tag}-{number:05d}", json.dumps(doc).encode()], use_bin_type=True)


def replay_to(server: EsServer, recording: Path, spool: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sensor", "replay", str(recording), "--log-format", "text",
         "--output", f"elasticsearch:{server.url}"],
        env=sensor_env(workdir, CONTAINER_SENSOR_SPOOL_DIR=str(spool)), cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def dropped_in(stderr: str) -> int:
    match = SUMMARY_RE.search(stderr)
    assert match, stderr
    return int(match.group(1))


def test_segment_planted_by_another_user_is_quarantined_not_sent(
    world_tmp: Path, tmp_path: Path, empty_recording: Path, server: EsServer
) -> None:
    # A spool an earlier run under umask 000 left world-writable, holding one undelivered segment of its own.
    spool_dir = world_tmp / "spool"
    spool_dir.mkdir()
    os.chmod(spool_dir, 0o777)
    spool = Spool(spool_dir, max_bytes=1 << 24)
    spool.append([spooled_doc(n, "real") for n in range(50)])
    spool.close()
    # nobody plants a well-formed segment behind it: fake events that would go to Elasticsearch as the sensor's.
    planted_source = Spool(tmp_path / "forged", max_bytes=1 << 24)
    planted_source.append([spooled_doc(n, "forged") for n in range(20)])
    planted_source.close()
    (forged,) = (tmp_path / "forged").glob("*.seg")
    planted = spool_dir / f"{(1 << 40) + 1000:020d}.seg"
    as_nobody("sh", "-c", 'cat > "$1"', "sh", str(planted), data=forged.read_bytes())
    assert os.stat(planted).st_uid == NOBODY

    result = replay_to(server, empty_recording, spool_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    ids = server.ids(EVENTS)
    assert ids == {f"real-{n:05d}" for n in range(50)}
    assert not any(doc_id.startswith("forged") for doc_id in ids)
    quarantine_lines = [line for line in result.stderr.splitlines() if "quarantine" in line]
    assert len(quarantine_lines) == 1 and "owned by uid 65534" in quarantine_lines[0], result.stderr
    assert "writable by group or others" in result.stderr  # the loose directory is named, once
    assert [path.name for path in (spool_dir / "quarantine").iterdir()] == [planted.name]


def test_damaged_frames_mid_segment_lose_only_themselves(
    tmp_path: Path, empty_recording: Path, server: EsServer
) -> None:
    spool_dir = tmp_path / "spool"
    payloads = [spooled_doc(n, "ev") for n in range(300)]
    spool = Spool(spool_dir, max_bytes=1 << 24, segment_bytes=1 << 24)
    spool.append(payloads)
    spool.close()
    (segment,) = spool_dir.glob("*.seg")
    offsets = [len(SEGMENT_MAGIC)]
    for payload in payloads:
        offsets.append(offsets[-1] + FRAME_HEADER.size + len(payload))
    data = bytearray(segment.read_bytes())
    data[offsets[100] + FRAME_HEADER.size + 10] ^= 0x40  # one payload bit
    for index in range(150, 155):  # five frames overwritten with junk, headers and all
        data[offsets[index] : offsets[index + 1]] = b"\xa5" * (offsets[index + 1] - offsets[index])
    data[offsets[200] + 5] ^= 0x01  # a sequence-number bit: the header's own CRC catches it
    segment.write_bytes(bytes(data))

    result = replay_to(server, empty_recording, spool_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    lost = {100, 200, *range(150, 155)}
    assert server.ids(EVENTS) == {f"ev-{n:05d}" for n in range(300) if n not in lost}
    assert dropped_in(result.stderr) == len(lost)
    damage_lines = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(damage_lines) == 1, result.stderr  # one line for the segment
    assert f"{len(lost)} events discarded" in damage_lines[0]


def test_directory_named_like_a_segment_does_not_stop_the_start(
    tmp_path: Path, empty_recording: Path, server: EsServer
) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir, max_bytes=1 << 24)
    spool.append([spooled_doc(n, "ev") for n in range(10)])
    spool.close()
    (spool_dir / f"{(1 << 40) + 99:020d}.seg").mkdir()
    result = replay_to(server, empty_recording, spool_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is a directory, not a segment; skipped" in result.stderr
    assert len(server.ids(EVENTS)) == 10


def run_sensor(*args: str, workdir: Path, umask: int | None = None, **popen: object) -> subprocess.Popen[bytes]:
    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.Popen([sys.executable, "-m", "sensor", *args, "--metrics-address", "off",
                             "--log-format", "text"],
                            env=sensor_env(workdir), cwd=REPO, preexec_fn=preexec, **popen)  # type: ignore[arg-type]


def test_symlinked_ready_file_is_refused_before_the_probes_attach(world_tmp: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    ready = world_tmp / "ready"
    as_nobody("ln", "-s", str(victim), str(ready))
    started = time.monotonic()
    sensor = run_sensor("run", "--ready-file", str(ready), workdir=tmp_path, stderr=subprocess.PIPE)
    _, stderr = sensor.communicate(timeout=60)
    text = stderr.decode()
    assert sensor.returncode == 1, text
    assert text.strip().splitlines()[-1] == f"container-sensor: ready file {ready} is a symbolic link: refusing " \
                                            "to follow it"
    assert "probe attached" not in text and "Traceback" not in text
    assert victim.read_text() == "precious\n"
    assert time.monotonic() - started < 30


def test_missing_ready_file_directory_fails_before_the_probes_attach(tmp_path: Path) -> None:
    sensor = run_sensor("run", "--ready-file", str(tmp_path / "nope" / "ready"), workdir=tmp_path,
                        stderr=subprocess.PIPE)
    _, stderr = sensor.communicate(timeout=60)
    assert sensor.returncode == 1
    assert "directory" in stderr.decode() and "does not exist" in stderr.decode()
    assert "probe attached" not in stderr.decode()


@pytest.mark.parametrize("directory_mode", [0o1777, 0o777], ids=["sticky", "not-sticky"])
def test_symlinked_file_output_is_refused(world_tmp: Path, tmp_path: Path, directory_mode: int) -> None:
    os.chmod(world_tmp, directory_mode)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = world_tmp / "events.ndjson"
    as_nobody("ln", "-s", str(victim), str(out))
    sensor = run_sensor("run", "--output", f"file:{out}", workdir=tmp_path, stderr=subprocess.PIPE)
    _, stderr = sensor.communicate(timeout=60)
    lines = stderr.decode().strip().splitlines()
    assert sensor.returncode == 1
    assert len(lines) == 1 and str(out) in lines[0], lines
    if directory_mode == 0o777:
        # Where the kernel's protected_symlinks does not apply (no sticky bit), O_NOFOLLOW is what refuses it.
        assert "is a symbolic link: refusing to follow it" in lines[0]
    assert victim.read_text() == "precious\n"


@pytest.mark.kernel
@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_live_sensor_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ready = state / "ready"
    out = state / "out" / "events.ndjson"
    recording = state / "run.rec"
    sensor = run_sensor("record", str(recording), "--ready-file", str(ready), "--output", f"file:{out}",
                        workdir=tmp_path, umask=umask, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert sensor.poll() is None, sensor.stderr.read().decode() if sensor.stderr else ""
            assert time.monotonic() < deadline, "sensor not ready"
            time.sleep(0.1)
        subprocess.run(["/bin/true"], check=True)
        assert mode(ready) == 0o600
        assert mode(out) == 0o600 and mode(out.parent) == 0o700
        assert mode(recording) == 0o600
    finally:
        sensor.send_signal(signal.SIGTERM)
        _, stderr = sensor.communicate(timeout=60)
    assert sensor.returncode == 0, stderr.decode()
    assert not ready.exists()
    assert recording.stat().st_size > 0 and mode(recording) == 0o600
