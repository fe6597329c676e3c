"""The BPF program is compiled and attached by a short-lived child: the long-lived sensor holds no compiler,
its probes stay attached after the child has gone, and they go when the sensor goes, even by SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from sensor.probe.libbpf import object_exists
from tests.integration.sensor_process import SensorProcess, get, run_and_wait

pytestmark = pytest.mark.kernel

# What BCC brings into a process that imports it: its own library, LLVM's and clang's.
COMPILER_MAPPINGS = re.compile(r"libbcc|libLLVM|libclang|/bcc/", re.IGNORECASE)


def bpf_objects(pid: int) -> tuple[set[int], set[int]]:
    """(program ids, map ids) the process holds descriptors of, from /proc/PID/fdinfo."""
    programs: set[int] = set()
    maps: set[int] = set()
    for entry in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue
        programs.update(int(value) for value in re.findall(r"^prog_id:\s+(\d+)$", text, re.MULTILINE))
        maps.update(int(value) for value in re.findall(r"^map_id:\s+(\d+)$", text, re.MULTILINE))
    return programs, maps


def test_the_sensor_holds_no_compiler_and_its_probes_outlive_the_loader_child() -> None:
    with SensorProcess() as sensor:
        pid = sensor.proc.pid
        maps_text = Path(f"/proc/{pid}/maps").read_text()
        compiler = sorted({line.split()[-1] for line in maps_text.splitlines() if COMPILER_MAPPINGS.search(line)})
        assert compiler == [], f"the long-lived sensor maps {compiler}"
        assert psutil.Process(pid).children() == [], "the loader child is still there"
        # Records still come, from every kind of attach point: the raw tracepoints (exec, fork) and the
        # tracepoints held as perf events (exit).
        child = run_and_wait(["/bin/true", "loader-child-gone"])
        assert get(sensor.exec_of(child.pid), "process.args") == ["/bin/true", "loader-child-gone"]
        sensor.end_of(child.pid)
        programs, maps = bpf_objects(pid)
        assert programs and maps, "the sensor holds no BPF program or map"
        assert all(object_exists("prog", program) for program in programs)


def test_a_killed_sensor_leaves_no_program_attached_and_nothing_pinned() -> None:
    pinned_before = set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()
    sensor = SensorProcess()
    try:
        programs, maps = bpf_objects(sensor.proc.pid)
        assert programs and maps
        sensor.proc.send_signal(signal.SIGKILL)
        sensor.proc.wait(10)
    finally:
        sensor.stop()
    # The kernel frees programs and maps after the last reference goes, a little later (RCU).
    deadline = time.monotonic() + 15
    left = programs | maps
    while time.monotonic() < deadline:
        left = {f"prog {p}" for p in programs if object_exists("prog", p)}
        left |= {f"map {m}" for m in maps if object_exists("map", m)}
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"still in the kernel after the sensor was killed: {sorted(left)}"
    pinned_after = set(os.listdir("/sys/fs/bpf")) if os.path.isdir("/sys/fs/bpf") else set()
    assert pinned_after <= pinned_before
