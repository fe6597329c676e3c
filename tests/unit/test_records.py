from __future__ import annotations

import io

import pytest

from sensor.model.records import (
    CgroupRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    LossRecord,
    Namespaces,
    RecordingWriter,
    read_recording,
)


def sample_exec() -> ExecRecord:
    return ExecRecord(
        ktime_ns=1, pid=42, tid=42, old_tid=42, ppid=1, uid=0, gid=0, euid=0, egid=0, comm=b"ssh",
        filename=b"/usr/bin/ssh", argv=(b"ssh", b"\xff\x00bin"), argc=2, args_truncated=False, cgroup_id=7,
        ns=Namespaces(1, 2, 3, 4, 5, 6, 7), sid=1, pgid=42, tty_major=136, tty_minor=0, start_boottime_ns=5,
        exe_ino=9, exe_dev=10,
    )


def test_recording_round_trip_is_bit_exact() -> None:
    records = [sample_exec(), ForkRecord(2, 1, 43, 6), ExitRecord(3, 42, 256, 5),
               CgroupRecord(4, "mkdir", 0, 99, 2, b"/a/b"), LossRecord(5, 1, 2, 3)]
    buffer = io.BytesIO()
    writer = RecordingWriter(buffer)
    for record in records:
        writer.write(record)
    buffer.seek(0)
    assert list(read_recording(buffer)) == records


def test_not_a_recording_is_refused() -> None:
    with pytest.raises(ValueError, match="not a container-sensor recording"):
        list(read_recording(io.BytesIO(b"\x92\x01\x02")))
