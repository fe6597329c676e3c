"""The rotating NDJSON file output: every rotated file complete and valid, nothing lost that is not counted."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from sensor.outputs.files import RotatingFileOutput


def doc(number: int) -> dict[str, Any]:
    # Non-ASCII and a long argument so lines differ in length and bytes.
    return {"event": {"id": f"ev-{number:08d}", "kind": "event"},
            "process": {"pid": number, "args": ["/bin/echo", "héllo", "x" * (number % 300)]}}


def read_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path.name} ends in a partial line"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def all_files(base: Path) -> list[Path]:
    """Oldest first: PATH.N ... PATH.1, PATH."""
    rotated = sorted(base.parent.glob(base.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*rotated, base]


def test_rotates_by_size_and_count_on_line_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    output = RotatingFileOutput(path, max_bytes=20_000, backups=50)
    for number in range(2000):
        output.write(doc(number))
    output.close()
    files = all_files(path)
    assert len(files) > 10
    seen = []
    for file in files:
        assert file.stat().st_size <= 20_000
        seen.extend(line["event"]["id"] for line in read_lines(file))
    assert seen == [f"ev-{number:08d}" for number in range(2000)]
    assert output.stats()["written"] == 2000 and output.stats()["dropped"] == 0


def test_keeps_only_the_configured_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    output = RotatingFileOutput(path, max_bytes=10_000, backups=3)
    for number in range(3000):
        output.write(doc(number))
    output.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "events.ndjson", "events.ndjson.1", "events.ndjson.2", "events.ndjson.3"]
    newest = [line["event"]["id"] for file in all_files(path) for line in read_lines(file)]
    assert newest[-1] == "ev-00002999"
    assert newest == sorted(newest)


def test_flushes_without_being_asked(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    output = RotatingFileOutput(path)
    output.write(doc(1))
    # The writer thread flushes within its interval even if nobody calls flush().
    deadline = time.monotonic() + 2
    while not path.stat().st_size and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [line["event"]["id"] for line in read_lines(path)] == ["ev-00000001"]
    output.close()


def test_partial_last_line_from_a_crash_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"event":{"id":"a"}}\n{"event":{"id":"b"')
    output = RotatingFileOutput(path)
    output.write(doc(7))
    output.close()
    assert [line["event"]["id"] for line in read_lines(path)] == ["a", "ev-00000007"]


def test_appends_to_an_existing_file_and_counts_its_size(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b'{"old":1}\n' * 900)  # 9000 bytes
    output = RotatingFileOutput(path, max_bytes=10_000, backups=2)
    for number in range(20):
        output.write(doc(number))
    output.close()
    assert read_lines(path.with_name("events.ndjson.1"))[0] == {"old": 1}
    assert path.with_name("events.ndjson.1").stat().st_size <= 10_000


def test_full_disk_is_counted_and_files_stay_valid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        path = mount / "events.ndjson"
        output = RotatingFileOutput(path, max_bytes=1 << 20, backups=1)
        for number in range(2000):
            output.write(doc(number))
            if number % 100 == 0:
                output.flush()
        output.close()
        stats = output.stats()
        lines = read_lines(path)
        assert stats["dropped_write_error"] > 0
        assert len(lines) == stats["written"]
        assert stats["written"] + stats["dropped"] == 2000
        assert not output.healthy()
        assert len([r for r in caplog.records if "disk full" in r.getMessage()]) == 1
    finally:
        subprocess.run(["umount", str(mount)], check=False)
