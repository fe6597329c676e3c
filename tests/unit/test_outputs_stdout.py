"""The stdout output: valid NDJSON in UTF-8, prompt flushing, and a clean end when the reader goes away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sensor.outputs.stdout import StdoutOutput


def test_lines_are_compact_valid_utf8_json(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with open(target, "wb") as stream:
        output = StdoutOutput(stream)
        # "\udcff" is how an undecodable argv byte arrives with surrogateescape; it must not break UTF-8.
        output.write({"process": {"args": ["echo", "héllo", "\udcff"]}, "n": 1})
        output.write({"n": 2})
        output.close()
    data = target.read_bytes()
    text = data.decode("utf-8")  # raises if not valid UTF-8
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["process"]["args"][:2] == ["echo", "héllo"]
    assert lines[1] == {"n": 2}
    assert b": " not in data and b", " not in data


def test_flushes_within_the_interval_while_documents_keep_coming() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    with os.fdopen(write_fd, "wb") as stream:
        output = StdoutOutput(stream)
        output.write({"n": 0})
        time.sleep(0.15)
        output.write({"n": 1})  # no flush() call: the interval alone pushes both lines out
        data = os.read(read_fd, 65536)
        assert data.count(b"\n") == 2
    os.close(read_fd)


def test_closed_pipe_ends_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    recording = tmp_path / "rec.bin"
    subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, '.');"
         "from pathlib import Path; from tests.shipping_recording import write_recording;"
         f"write_recording(Path({str(recording)!r}), 20000)"],
        check=True, cwd=Path(__file__).resolve().parents[2],
    )
    sensor = [sys.executable, "-m", "sensor", "replay", str(recording), "--output", "stdout"]
    result = subprocess.run(
        " ".join(sensor) + " | head -n 3 >/dev/null", shell=True, capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[2], timeout=120,
    )
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr
    closed = [line for line in result.stderr.splitlines() if "closed by the reader" in line]
    assert len(closed) == 1, result.stderr
