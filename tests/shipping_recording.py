"""Synthetic recordings for shipping tests and benchmarks: many execs of short-lived host processes.

The records are shaped like what the probe captured here for `sh -c true` loops (host namespaces, cgroup v2 id
of a service cgroup); pids cycle through a small range, as on a busy host, so the process table stays bounded.
"""

from __future__ import annotations

from pathlib import Path

from sensor.containers.namespaces import host_namespaces
from sensor.model.records import ExecRecord, Namespaces, RecordingWriter

PID_BASE = 200_000
PID_RANGE = 4096


def exec_record(number: int, ns: Namespaces, start_ns: int = 10_000_000_000) -> ExecRecord:
    pid = PID_BASE + number % PID_RANGE
    ktime = start_ns + number * 50_000
    argv = (b"/bin/sh", b"-c", f"echo {number} > /dev/null".encode())
    return ExecRecord(
        ktime_ns=ktime, pid=pid, tid=pid, old_tid=pid, ppid=1, uid=0, gid=0, euid=0, egid=0,
        comm=b"sh", filename=b"/bin/sh", argv=argv, argc=len(argv), args_truncated=False,
        cgroup_id=0, ns=ns, sid=pid, pgid=pid, tty_major=0, tty_minor=0,
        start_boottime_ns=ktime - 1000, exe_ino=0, exe_dev=0, cwd=b"/",
    )


def write_recording(path: Path, count: int) -> Path:
    ns = host_namespaces()
    with open(path, "wb") as stream:
        writer = RecordingWriter(stream)
        for number in range(count):
            writer.write(exec_record(number, ns))
        writer.flush()
    return path
