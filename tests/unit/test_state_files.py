"""State and output files: modes whatever the umask, and nothing followed or written that another user planted.

The planted files are made by `nobody` (setpriv) in a world-writable, sticky directory under /tmp, as an
unprivileged user on the host would; the sensor's side runs as root, as it does in production.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.config.statefiles import ReadyFile, StateFileError, make_private_dirs, open_private
from sensor.model.records import RecordingWriter, create_recording, read_recording
from sensor.outputs.deadletter import DeadLetterFile
from sensor.outputs.files import FileOutputError, RotatingFileOutput

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="plants files as another user: needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def as_nobody(*command: str) -> None:
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command], check=True)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file of root's that a planted link points at: it must come out untouched."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    os.chmod(path, 0o644)
    return path


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


# ---- modes


def test_created_directories_are_0700_existing_ones_untouched(tmp_path: Path, umask: int) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    os.chmod(existing, 0o755)
    make_private_dirs(existing / "a" / "b")
    assert mode(existing) == 0o755
    assert mode(existing / "a") == 0o700 and mode(existing / "a" / "b") == 0o700


def test_file_output_and_its_rotations_are_0600(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "logs" / "events.ndjson"
    output = RotatingFileOutput(path, max_bytes=2000, backups=3)
    for number in range(200):
        output.write({"event": {"id": f"ev-{number}"}, "process": {"args": ["x" * 50]}})
    output.close()
    files = sorted(path.parent.iterdir())
    assert len(files) == 4 and output.rotations >= 3
    assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
    assert mode(path.parent) == 0o700


def test_existing_output_file_keeps_the_mode_its_operator_gave(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"")
    os.chmod(path, 0o640)  # opened to a log shipper's group on purpose
    output = RotatingFileOutput(path)
    output.write({"event": {"id": "one"}})
    output.close()
    assert mode(path) == 0o640


def test_dead_letter_file_is_0600(tmp_path: Path, umask: int) -> None:
    dead = DeadLetterFile(tmp_path / "state" / "dead-letter.ndjson")
    dead.add("logs-x", "id-1", 400, {"type": "mapper_parsing_exception"}, b'{"a":1}')
    dead.close()
    assert dead.written == 1
    assert mode(tmp_path / "state" / "dead-letter.ndjson") == 0o600
    assert mode(tmp_path / "state") == 0o700


def test_recording_is_0600(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "run.rec"
    with create_recording(path) as stream:
        RecordingWriter(stream, {"boot_id": "b"}).flush()
    assert mode(path) == 0o600
    assert list(read_recording(open(path, "rb"))) == []  # noqa: SIM115


def test_ready_file_is_0600_and_replaces_a_stale_one(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "ready"
    path.write_text("12345\n")  # left by a run that was killed
    ready = ReadyFile(path)
    ready.check()
    ready.create("678\n")
    assert path.read_text() == "678\n" and mode(path) == 0o600
    ready.remove()
    assert not path.exists()


# ---- files planted by another user


@needs_root
def test_file_output_refuses_a_planted_symlink(world_tmp: Path, victim: Path) -> None:
    path = world_tmp / "events.ndjson"
    as_nobody("ln", "-s", str(victim), str(path))
    with pytest.raises(FileOutputError, match="symbolic link: refusing to follow it"):
        RotatingFileOutput(path)
    assert victim.read_text() == "precious\n" and mode(victim) == 0o644


@needs_root
def test_file_output_refuses_another_users_file(world_tmp: Path) -> None:
    path = world_tmp / "events.ndjson"
    as_nobody("sh", "-c", f"echo planted > {path}")
    with pytest.raises(FileOutputError, match="belongs to uid 65534"):
        RotatingFileOutput(path)
    assert path.read_text() == "planted\n"  # not written, not truncated


@needs_root
def test_file_output_refuses_a_planted_fifo_without_blocking(world_tmp: Path) -> None:
    path = world_tmp / "events.ndjson"
    as_nobody("mkfifo", "-m", "666", str(path))
    started = time.monotonic()
    with pytest.raises(FileOutputError, match="not a regular file"):
        RotatingFileOutput(path)
    assert time.monotonic() - started < 2


@needs_root
def test_file_output_link_planted_at_rotation_is_refused_and_counted(world_tmp: Path, victim: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = world_tmp / "events.ndjson"
    output = RotatingFileOutput(path, max_bytes=500, backups=1)
    real_replace = os.replace

    def replace_then_plant(source: str | Path, target: str | Path) -> None:
        real_replace(source, target)
        if Path(source) == path and not os.path.lexists(path):
            # The name is free between the rename and the reopen: nobody's link waits there.
            as_nobody("ln", "-s", str(victim), str(path))

    monkeypatch.setattr("sensor.outputs.files.os.replace", replace_then_plant)
    for number in range(30):
        output.write({"event": {"id": f"ev-{number}"}, "process": {"args": ["y" * 40]}})
    output.close()
    assert victim.read_text() == "precious\n"
    assert os.path.islink(path)
    stats = output.stats()
    assert stats["rotations"] >= 1 and stats["dropped_write_error"] > 0
    assert stats["written"] + stats["dropped"] == 30
    assert not output.healthy()


@needs_root
def test_dead_letter_file_refuses_a_planted_symlink(world_tmp: Path, victim: Path) -> None:
    path = world_tmp / "dead-letter.ndjson"
    as_nobody("ln", "-s", str(victim), str(path))
    dead = DeadLetterFile(path)
    dead.add("logs-x", "id-1", 400, "bad", b"{}")
    dead.close()
    assert (dead.written, dead.not_written) == (0, 1)
    assert victim.read_text() == "precious\n"


@needs_root
def test_recording_refuses_a_planted_symlink_or_file(world_tmp: Path, victim: Path) -> None:
    link = world_tmp / "run.rec"
    as_nobody("ln", "-s", str(victim), str(link))
    with pytest.raises(StateFileError, match="symbolic link"):
        create_recording(link)
    planted = world_tmp / "other.rec"
    as_nobody("sh", "-c", f"echo planted > {planted}")
    with pytest.raises(StateFileError, match="belongs to uid 65534"):
        create_recording(planted)
    assert planted.read_text() == "planted\n"  # O_TRUNC waited for the ownership check
    assert victim.read_text() == "precious\n"


@needs_root
def test_ready_file_refuses_a_planted_symlink(world_tmp: Path, victim: Path) -> None:
    path = world_tmp / "ready"
    as_nobody("ln", "-s", str(victim), str(path))
    ready = ReadyFile(path)
    with pytest.raises(StateFileError, match="ready file .* is a symbolic link"):
        ready.check()
    with pytest.raises(StateFileError, match="symbolic link"):
        ready.create("1\n")
    assert victim.read_text() == "precious\n"
    assert os.path.islink(path)


@needs_root
def test_ready_file_planted_between_check_and_create_is_refused(world_tmp: Path, victim: Path) -> None:
    path = world_tmp / "ready"
    ready = ReadyFile(path)
    ready.check()
    as_nobody("ln", "-s", str(victim), str(path))  # while the probes attach
    with pytest.raises(StateFileError):
        ready.create("1\n")
    assert victim.read_text() == "precious\n"


@needs_root
def test_ready_file_removal_leaves_a_replacement_alone(world_tmp: Path) -> None:
    path = world_tmp / "ready"
    ready = ReadyFile(path)
    ready.create("1\n")
    os.unlink(path)
    as_nobody("sh", "-c", f"echo \"someone else's\" > {path}")  # perhaps with the same inode number
    ready.remove()
    assert path.read_text() == "someone else's\n"


def test_ready_file_directory_is_checked(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="does not exist"):
        ReadyFile(tmp_path / "missing" / "ready").check()
    (tmp_path / "dir").mkdir()
    with pytest.raises(StateFileError, match="not a regular file"):
        ReadyFile(tmp_path / "dir").check()


@needs_root
def test_open_private_never_truncates_another_users_file(world_tmp: Path) -> None:
    planted = world_tmp / "f"
    as_nobody("sh", "-c", f"echo keep > {planted}")
    with pytest.raises(StateFileError):
        open_private(planted, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert planted.read_text() == "keep\n"
