"""Hostile argv and working directories against the real probe: every line the sensor writes is one line of valid
UTF-8 JSON with the expected escapes, the compact format shows escape sequences instead of obeying them, and the
sensor keeps running and keeps reporting."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sensor_process import SensorProcess, get, run_and_wait

pytestmark = pytest.mark.kernel

ARGS_MAX = 16384  # the probe's default argv capture (Config.probe_argv_max_bytes)
TRUE = os.path.realpath("/bin/true")  # process.executable: the file itself (/usr/bin/true on merged /usr)


@pytest.fixture(scope="module")
def own_sensor() -> Iterator[SensorProcess]:
    """A sensor of this module's own: its whole output file is checked line by line."""
    with SensorProcess() as running:
        yield running


def _raw_lines(sensor: SensorProcess) -> list[bytes]:
    data = sensor.out_path.read_bytes()
    return data[: data.rfind(b"\n") + 1].splitlines(keepends=True)


def _check_every_line(sensor: SensorProcess) -> int:
    """Every complete line: valid UTF-8, one JSON object, no raw U+2028/U+2029 and no raw C0 control (DEL and
    C1 controls are valid raw in JSON and break no line)."""
    lines = _raw_lines(sensor)
    for line in lines:
        text = line.decode("utf-8")  # strict
        assert text.endswith("\n") and text.count("\n") == 1
        assert not re.search("[\u2028\u2029\x00-\x1f]", text[:-1]), ascii(text[:200])
        assert isinstance(json.loads(text), dict)
    return len(lines)


def _line_of(sensor: SensorProcess, pid: int) -> bytes:
    marker = f'"pid":{pid},'.encode()
    for line in _raw_lines(sensor):
        if marker in line and b'"action":"exec"' in line and json.loads(line)["process"]["pid"] == pid:
            return line
    raise AssertionError(f"no exec line for pid {pid}")


def test_invalid_utf8_separators_controls_and_escape_sequences(own_sensor: SensorProcess) -> None:
    argv = [b"/bin/true", b"caf\xe9", b"\xff\xfe\xc0\xaf\xed\xa0\x80", "a\u2028b\u2029c".encode(),
            b"\x01\x02\t\x0b\x0c\r\n\x1f\x7f", b"\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]52;c;cm0gLXJm\x07",
            b"\x9b31m", "\u009b1m \u202etxt.exe".encode()]
    child = run_and_wait(argv)
    doc = own_sensor.exec_of(child.pid, timeout=30)
    assert get(doc, "process.args") == [
        "/bin/true", "caf\\xe9", "\\xff\\xfe\\xc0\\xaf\\xed\\xa0\\x80", "a\u2028b\u2029c",
        "\x01\x02\t\x0b\x0c\r\n\x1f\x7f", "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b]52;c;cm0gLXJm\x07",
        "\\x9b31m", "\u009b1m \u202etxt.exe"]
    assert get(doc, "process.args_count") == len(argv)
    line = _line_of(own_sensor, child.pid)
    assert b"a\\u2028b\\u2029c" in line and b"\xe2\x80\xa8" not in line and b"\xe2\x80\xa9" not in line
    assert b"\\u001b[2J" in line and b"\x1b" not in line
    _check_every_line(own_sensor)


def test_one_argument_of_16_kib_and_ten_thousand_tiny_ones(own_sensor: SensorProcess) -> None:
    big = run_and_wait(["/bin/true", "\u2028" + "y" * ARGS_MAX])
    doc = own_sensor.exec_of(big.pid, timeout=30)
    args = get(doc, "process.args")
    assert get(doc, "container_sensor.args_truncated") is True and get(doc, "process.args_count") == 2
    assert args[0] == "/bin/true" and args[1].startswith("\u2028yyy") and len(args[1].encode()) < ARGS_MAX

    tiny = run_and_wait(["/bin/true", *["z"] * 10_000])
    doc = own_sensor.exec_of(tiny.pid, timeout=30)
    args = get(doc, "process.args")
    assert get(doc, "process.args_count") == 10_001, "the true count, though the bytes did not all fit"
    assert get(doc, "container_sensor.args_truncated") is True
    kept = ARGS_MAX - 1 - len(b"/bin/true\0")  # bytes of "z\0z\0..." the probe had room for
    assert args[0] == "/bin/true" and set(args[1:]) == {"z"} and len(args) == 1 + (kept + 1) // 2
    _check_every_line(own_sensor)


def test_empty_argv0_and_no_argv_at_all(own_sensor: SensorProcess) -> None:
    empty0 = subprocess.Popen([""], executable="/bin/true")
    empty0.wait(30)
    doc = own_sensor.exec_of(empty0.pid, timeout=30)
    assert get(doc, "process.args") == [""] and get(doc, "process.executable") == TRUE
    assert get(doc, "process.name") == "true"
    # execve with argv = {NULL}: since Linux 5.18 the kernel gives the program one empty argument
    none = subprocess.Popen([sys.executable, "-c", "import ctypes; argv = (ctypes.c_char_p * 1)(None); "
                             "ctypes.CDLL(None).execve(b'/bin/true', argv, argv)"])
    none.wait(30)
    doc = own_sensor.wait_for(lambda d: get(d, "event.action") == "exec" and get(d, "process.pid") == none.pid
                              and get(d, "process.executable") == TRUE, timeout=30)[-1]
    assert get(doc, "process.executable") == TRUE and get(doc, "process.name") == "true"
    assert get(doc, "process.args", [""]) == [""]
    _check_every_line(own_sensor)


def test_hostile_working_directories(own_sensor: SensorProcess, tmp_path: Path) -> None:
    names = [b"line\nbreak", b"esc\x1b]0;x\x07", "sep\u2028".encode(), b"bad\xff\xfe", b"tab\tdel\x7f"]
    hostile = os.path.join(os.fsencode(tmp_path), *names)
    os.makedirs(hostile)
    child = run_and_wait(["/bin/true", "cwd-hostile"], cwd=hostile)
    doc = own_sensor.exec_of(child.pid, timeout=30)
    assert get(doc, "process.working_directory") == hostile.decode("utf-8", "backslashreplace")
    line = _line_of(own_sensor, child.pid)
    assert b"sep\\u2028" in line and b"bad\\\\xff\\\\xfe" in line
    _check_every_line(own_sensor)


def test_a_full_length_working_directory_is_cut_and_flagged_never_reported_as_root(own_sensor: SensorProcess,
                                                                                    tmp_path: Path) -> None:
    """Four names of 255 bytes fill the probe's 1024 bytes of working directory exactly: that length wrapped to
    0 under the probe's mask, and a process in /A.../B.../C.../D... of its root (a container's, here a chroot's)
    was reported in "/"."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("needs busybox")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(busybox, root / "busybox")
    inner = "/" + "/".join(c * 255 for c in "ABCD")
    os.makedirs(str(root) + inner)
    done = subprocess.run(["chroot", str(root), "/busybox", "sh", "-c", f"cd {inner} && /busybox true full-cwd"],
                          timeout=30)
    if done.returncode == 127:
        pytest.skip("busybox is not a static binary: it cannot run in a bare chroot")
    assert done.returncode == 0
    doc = own_sensor.wait_for(lambda d: get(d, "process.args") == ["/busybox", "true", "full-cwd"], timeout=30)[-1]
    cwd = get(doc, "process.working_directory")
    assert cwd != "/"
    assert cwd == "..." + "/" + "/".join(c * 255 for c in "BCD"), cwd[:80]


def test_the_sensor_still_runs_and_reports_after_all_of_it(own_sensor: SensorProcess) -> None:
    for _ in range(3):
        run_and_wait(["/bin/true", "\x1b[31m\u2028", "\xff"])
    after = run_and_wait(["/bin/echo", "still", "here"])
    assert get(own_sensor.exec_of(after.pid, timeout=30), "process.args") == ["/bin/echo", "still", "here"]
    assert own_sensor.proc.poll() is None
    assert _check_every_line(own_sensor) > 10
    assert "Traceback" not in own_sensor.stderr()


class _CompactSensor(SensorProcess):
    """Its lines are not JSON: the test reads the output file itself."""

    def _read_new(self) -> None:
        pass


def test_compact_format_shows_escape_sequences_instead_of_obeying_them() -> None:
    with _CompactSensor("--format", "compact") as sensor:
        child = run_and_wait([b"/bin/true", b"compact-marker", b"\x1b]0;pwned\x07\x1b[2J", b"\x9b1m", b"\xc2\x9b2J",
                              "\u2028\u202e".encode()])
        deadline = time.monotonic() + 30
        line = b""
        while time.monotonic() < deadline:
            found = [x for x in sensor.out_path.read_bytes().splitlines() if f"pid={child.pid} ".encode() in x]
            if found:
                line = found[0]
                break
            time.sleep(0.05)
        assert line, "no compact line for the child"
        assert sensor.proc.poll() is None
        output = sensor.out_path.read_bytes()
    assert b"\x1b" not in output and b"\xc2\x9b" not in output and b"\xe2\x80\xa8" not in output
    text = line.decode("utf-8")
    assert text.endswith("compact-marker \\e]0;pwned\\x07\\e[2J \\x9b1m \\x9b2J \\u2028\\u202e"), text
