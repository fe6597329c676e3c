"""Both ring-buffer readers against the real kernel: the mmap reader (sensor/probe/ringbuf.py) and libbpf's."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.integration.sensor_process import SensorProcess, get, run_and_wait

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("reader", ["mmap", "libbpf"])
def test_each_reader_delivers_exact_documents(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_SENSOR_PROBE_RING_READER", reader)
    sensor = SensorProcess()
    try:
        argv = ["/bin/echo", f"reader-{reader}", "two words", "x" * 3000]
        child = run_and_wait(argv)
        doc = sensor.exec_of(child.pid)
        assert get(doc, "process.args") == argv
        assert get(sensor.end_of(child.pid), "process.exit_code") == 0
    finally:
        assert sensor.stop() == 0
    assert f"ring buffer read by {reader}" in sensor.stderr()


@pytest.mark.parametrize("reader", ["mmap", "libbpf"])
def test_reader_reads_records_that_wrap_around_the_ring(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 128 KiB ring wraps every few hundred records: each record read across the end must come out whole (a
    record cut at the end would not decode, and count as lost)."""
    monkeypatch.setenv("CONTAINER_SENSOR_PROBE_RING_READER", reader)
    monkeypatch.setenv("CONTAINER_SENSOR_PROBE_RINGBUF_SIZE", "131072")
    sensor = SensorProcess()
    marker = f"wrap-{os.getpid()}"
    count = 600
    # argv lengths vary so records fall at every alignment against the end of the ring
    script = f'i=0; while [ $i -lt {count} ]; do /bin/true {marker} $i "$(printf "%${{i}}s" "")"; i=$((i+1)); done'
    try:
        subprocess.run(["/bin/sh", "-c", script], check=True, timeout=120)
        run_and_wait(["/bin/true", f"{marker}-last"])
        sensor.wait_for(lambda d: get(d, "process.args") == ["/bin/true", f"{marker}-last"], timeout=30)
    finally:
        assert sensor.stop() == 0
    ours = [d for d in sensor.docs if get(d, "event.action") == "exec"
            and (get(d, "process.args") or [])[1:2] == [marker]]   # other execs on the machine may have one arg
    lost = int(re.search(r"(\d+) lost", sensor.stderr()).group(1))
    if reader == "libbpf":
        assert lost == 0
        assert len(ours) == count
    else:
        # the mmap reader is not the default: with it the probe's writes have been seen to fail now and then
        # (sensor/probe/ringbuf.py); each such record is counted, and every record it did deliver is whole
        assert len(ours) + lost >= count and len(ours) >= count - 10
    for doc in ours:
        index = int(get(doc, "process.args")[2])
        assert get(doc, "process.args") == ["/bin/true", marker, str(index), " " * index]


@pytest.mark.parametrize("reader", ["mmap", "libbpf"])
def test_an_endless_storm_does_not_hold_the_sensor_after_sigterm(reader: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read hands control back after a batch, and the drain detaches first: a storm that never lets the
    ring run empty neither keeps the loop from seeing SIGTERM nor makes the drain last until its deadline."""
    monkeypatch.setenv("CONTAINER_SENSOR_PROBE_RING_READER", reader)
    sensor = SensorProcess("--drain-timeout", "60")
    storm = subprocess.Popen(["/bin/sh", "-c", "while :; do /bin/true; /bin/true; /bin/true; done"])
    try:
        time.sleep(3)
        began = time.monotonic()
        status = sensor.stop(timeout=50)
        took = time.monotonic() - began
    finally:
        storm.kill()
        storm.wait()
    assert status == 0, sensor.stderr()
    assert "drain cut" not in sensor.stderr()
    assert took < 20, f"the sensor took {took:.1f}s to stop"


@pytest.mark.parametrize("reader", ["mmap", "libbpf"])
def test_the_look_ahead_sees_each_exec_before_it_is_handled(reader: str) -> None:
    """The look ahead in the ring (sensor.probe.ringbuf.RingPeeker) is shown every exec record, with the fields
    the decoder reads, before the record is handled; records are still all handled, in order."""
    from sensor.model.records import ExecRecord
    from sensor.probe.loader import Probe, ProbeOptions

    ahead: dict[int, tuple[int, ...]] = {}
    handled: list[tuple[ExecRecord, bool]] = []

    def look(found: tuple[int, int, int, int, int, int]) -> None:
        ahead.setdefault(found[0], found)

    def on_record(record: object) -> None:
        if isinstance(record, ExecRecord):
            handled.append((record, record.pid in ahead))

    probe = Probe(on_record, ProbeOptions(ringbuf_pages=256, args_max=4096, ring_reader=reader), look_ahead=look)
    probe.load()
    try:
        marker = f"ahead-{os.getpid()}"
        subprocess.run(["/bin/sh", "-c", f"i=0; while [ $i -lt 200 ]; do /bin/true {marker}; i=$((i+1)); done"],
                       check=True, timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(1 for r, _ in handled if marker.encode() in r.argv) < 200:
            probe.poll(5)
    finally:
        probe.close()
    ours = [(r, seen) for r, seen in handled if marker.encode() in r.argv]
    assert len(ours) == 200
    for record, seen in ours:
        assert seen, record.pid
        pid, start, ino, dev, ctime, mnt = ahead[record.pid]
        assert (start, ino, dev, ctime, mnt) == (record.start_boottime_ns, record.exe_ino, record.exe_dev,
                                                 record.exe_ctime_ns, record.ns.mnt)
