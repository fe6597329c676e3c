"""Plain records of what the probe saw, and their msgpack encoding.

These are the only types that cross from the probe to the rest of the pipeline. They hold ints and bytes
exactly as the kernel gave them (argv bytes are not decoded here), so a recording replays bit for bit. Nothing
changes a record once made; the per-event ones are not frozen dataclasses only because that cuts their
construction cost by a third. Nothing in this module imports bcc.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, ClassVar

import msgpack

from sensor.config.statefiles import open_private


@dataclass(frozen=True, slots=True)
class Namespaces:
    """Namespace inode numbers of a task, as in /proc/PID/ns/*; 0 where unknown."""

    pid: int = 0
    mnt: int = 0
    net: int = 0
    uts: int = 0
    ipc: int = 0
    cgroup: int = 0
    user: int = 0


# Namespace sets seen, shared: a host has a handful, and one object per set spares an allocation per record and
# lets the document builder know a set by its identity
NAMESPACES_KEPT = 4096
interned_namespaces = lru_cache(maxsize=NAMESPACES_KEPT)(Namespaces)


@dataclass(slots=True)
class ExecRecord:
    """One successful execve/execveat, captured at sched_process_exec."""

    kind: ClassVar[str] = "exec"
    ktime_ns: int  # CLOCK_BOOTTIME of the event
    pid: int  # thread group id after the exec
    tid: int
    old_tid: int  # thread that called execve (differs from pid when a non-leader thread execs)
    ppid: int  # thread group id of the real parent
    uid: int
    gid: int
    euid: int
    egid: int
    comm: bytes
    filename: bytes  # the path as the kernel resolved it for the binary (bprm->filename)
    argv: tuple[bytes, ...]
    argc: int  # the real argument count, which may exceed len(argv)
    args_truncated: bool  # argv was cut by the capture limits (count or bytes)
    cgroup_id: int  # cgroup v2 id (inode of the directory under the unified hierarchy)
    ns: Namespaces
    sid: int  # session id in the initial pid namespace; 0 where unknown
    pgid: int
    tty_major: int  # controlling tty device numbers; 0/0 when none
    tty_minor: int
    start_boottime_ns: int  # task start, CLOCK_BOOTTIME, stable for the life of the process
    exe_ino: int  # inode and device of the executed file; 0 where unknown
    exe_dev: int
    cwd: bytes = b""  # the working directory as the process saw it, walked in the kernel
    exe_ctime_ns: int = 0  # change time of the executed file's inode; 0 where unknown
    # `filename` is a cut prefix of a path longer than the probe keeps (PATH_MAX): its last component is not the
    # file's name. Last, with a default, so recordings made before it replay unchanged (from_wire fills defaults).
    path_truncated: bool = False
    # capability sets after the exec (bit N: capability N); -1 in recordings made before they were captured
    cap_effective: int = -1
    cap_permitted: int = -1
    # the configured variables of the new image's environment ("NAME=value"), in its order; nothing else of it
    env_vars: tuple[bytes, ...] = ()
    env_truncated: bool = False  # the environment was longer than the probe keeps: a variable may be missing
    # the file actually executed, walked in the kernel from the new image's file (/usr/bin/dash for a /bin/sh
    # link), as the process sees it; b"" where unknown (recordings made before it, a path too deep)
    exe_path: bytes = b""
    # the executed file's size and the hash of its first 256 bytes as the kernel read them to load it (see
    # sensor.rules.identity.head_fingerprint); 0 in recordings made before they were captured
    exe_size: int = 0
    exe_head_hash: int = 0


@dataclass(slots=True)
class ForkRecord:
    """A new process (thread group) created by fork/clone; threads are not reported."""

    kind: ClassVar[str] = "fork"
    ktime_ns: int
    parent_pid: int  # thread group id of the parent
    pid: int  # thread group id of the child
    start_boottime_ns: int
    uid: int = 0
    gid: int = 0
    cgroup_id: int = 0


@dataclass(slots=True)
class ExitRecord:
    """The end of a thread group (its last thread exited)."""

    kind: ClassVar[str] = "exit"
    ktime_ns: int
    pid: int
    exit_code: int  # as wait(2) reports it: (status << 8) | signal
    start_boottime_ns: int = 0
    pid_ns: int = 0  # the process's own pid namespace (inode number); 0 in recordings made before it was sent
    ns_pid: int = 0  # its pid in that namespace: 1 is the namespace's init, whose end ends the namespace


@dataclass(frozen=True, slots=True)
class CredRecord:
    """A process's credentials or session just after a successful set*id(2) or setsid(2) call."""

    kind: ClassVar[str] = "cred"
    ktime_ns: int
    pid: int
    change: str  # "uid_change", "gid_change" or "session_id_change" (Elastic Defend's event.action)
    uid: int
    gid: int
    euid: int
    egid: int
    sid: int
    start_boottime_ns: int


@dataclass(frozen=True, slots=True)
class NetRecord:
    """A TCP connection a process opened (connect) or took (accept), with both ends' addresses."""

    kind: ClassVar[str] = "net"
    ktime_ns: int
    pid: int  # 0: the connecting process is not known (its probe entry was pushed out)
    action: str  # "connection_attempted" or "connection_accepted" (Elastic Defend's event.action)
    start_boottime_ns: int
    local_ip: str  # IPv4-mapped IPv6 addresses as the IPv4 address
    local_port: int
    remote_ip: str
    remote_port: int


@dataclass(frozen=True, slots=True)
class ModuleRecord:
    """A kernel module loaded, by the process whose init_module/finit_module call loaded it."""

    kind: ClassVar[str] = "module"
    ktime_ns: int
    pid: int
    start_boottime_ns: int
    name: bytes
    taints: int  # the module's taint bits (the kernel's TAINT_* numbers)


@dataclass(frozen=True, slots=True)
class CgroupRecord:
    """A cgroup created or removed, keyed by hierarchy (root) and id, with its path in that hierarchy."""

    kind: ClassVar[str] = "cgroup"
    ktime_ns: int
    op: str  # "mkdir" or "rmdir"
    root: int  # hierarchy id: cgroup ids are only unique within one hierarchy
    cgroup_id: int
    level: int
    path: bytes


@dataclass(frozen=True, slots=True)
class LossRecord:
    """Counters of records the kernel could not deliver or had to cut, reported periodically."""

    kind: ClassVar[str] = "loss"
    ktime_ns: int
    ringbuf_full: int  # records dropped because the ring buffer had no room
    argv_truncated: int  # exec records whose argv was cut
    argv_read_failed: int  # exec records whose argv could not be read at all
    path_truncated: int = 0  # exec records whose executable path was cut


@dataclass(frozen=True, slots=True)
class ProcessSnapshotRecord:
    """A process that was already running when the probe attached, as read from /proc.

    Live runs seed the process table from /proc directly; a recording starts with one of these per process so
    that a replay knows the same parents and leaders."""

    kind: ClassVar[str] = "snapshot"
    ktime_ns: int
    pid: int
    ppid: int
    start_boottime_ns: int
    executable: bytes
    argv: tuple[bytes, ...]
    uid: int
    gid: int
    euid: int
    egid: int
    sid: int
    pgid: int
    tty_major: int
    tty_minor: int
    cgroup_id: int
    ns: Namespaces
    exe_ino: int
    exe_dev: int
    cwd: bytes
    kthread: bool
    cap_effective: int = -1  # -1: not known (recordings made before capabilities were captured)
    cap_permitted: int = -1


Record = (ExecRecord | ForkRecord | ExitRecord | CgroupRecord | LossRecord | ProcessSnapshotRecord | CredRecord
          | NetRecord | ModuleRecord)

RECORD_TYPES: dict[str, type] = {
    cls.kind: cls
    for cls in (ExecRecord, ForkRecord, ExitRecord, CgroupRecord, LossRecord, ProcessSnapshotRecord, CredRecord,
                NetRecord, ModuleRecord)
}


def to_wire(record: Record) -> list:
    """A msgpack-ready list: [kind, field values...] in field order."""
    out: list = [record.kind]
    for f in fields(record):
        value = getattr(record, f.name)
        if isinstance(value, Namespaces):
            value = list(astuple(value))
        elif isinstance(value, tuple):
            value = list(value)
        out.append(value)
    return out


# The wire type of each annotation in the record classes: a damaged recording can decode to well-formed msgpack
# of the wrong shape, which must be refused here rather than fail deep in the pipeline.
_WIRE_TYPES = {"int": int, "bytes": bytes, "bool": bool, "str": str, "tuple[bytes, ...]": list, "Namespaces": list}
_NS_COUNT = len(fields(Namespaces))


def _check_wire(cls: type, values: list) -> None:
    for f, value in zip(fields(cls), values, strict=False):
        expected = _WIRE_TYPES[f.type] if isinstance(f.type, str) else f.type
        if type(value) is not expected:
            raise ValueError(f"{cls.kind} record field {f.name} is {type(value).__name__}, not {expected.__name__}")
        if f.type == "Namespaces" and (len(value) != _NS_COUNT or any(type(v) is not int for v in value)):
            raise ValueError(f"{cls.kind} record field {f.name} is not {_NS_COUNT} integers")
        if f.type == "tuple[bytes, ...]" and any(type(v) is not bytes for v in value):
            raise ValueError(f"{cls.kind} record field {f.name} holds something other than bytes")


def from_wire(item: list) -> Record:
    kind, *values = item
    cls = RECORD_TYPES.get(kind)
    if cls is None:
        raise ValueError(f"unknown record kind {kind!r}")
    _check_wire(cls, values)
    kwargs = dict(zip([f.name for f in fields(cls)], values, strict=False))
    if "ns" in kwargs:
        kwargs["ns"] = interned_namespaces(*kwargs["ns"])
    if "argv" in kwargs:
        kwargs["argv"] = tuple(kwargs["argv"])
    if "env_vars" in kwargs:
        kwargs["env_vars"] = tuple(kwargs["env_vars"])
    return cls(**kwargs)


RECORDING_MAGIC = b"CSREC1"


def create_recording(path: Path) -> IO[bytes]:
    """The stream for a new recording at path: 0600 whatever the umask (it holds every command line the node
    ran), never opened through a symbolic link or into another user's file (StateFileError)."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")


class RecordingWriter:
    """Writes a recording file: a magic header, a metadata map, then one msgpack array per record.

    The metadata carries what the documents depend on besides the records (the boot id behind entity and event
    ids, the boot-to-wall-clock offset behind timestamps), so a replay reproduces the same documents."""

    def __init__(self, stream: IO[bytes], meta: dict[str, Any] | None = None) -> None:
        self._stream = stream
        self._packer = msgpack.Packer(use_bin_type=True)
        self.count = 0
        stream.write(self._packer.pack(RECORDING_MAGIC))
        stream.write(self._packer.pack(meta or {}))

    def write(self, record: Record) -> None:
        self._stream.write(self._packer.pack(to_wire(record)))
        self.count += 1

    def flush(self) -> None:
        self._stream.flush()


class RecordingReader:
    """Reads a recording: `meta` at once, the records by iterating. ValueError on a file that is not one."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        try:
            self._start = stream.tell()
        except (OSError, AttributeError, ValueError):
            self._start = 0
        self._unpacker = msgpack.Unpacker(stream, raw=False, use_list=True, max_buffer_size=64 * 1024 * 1024)
        self.meta: dict[str, Any] = {}
        self._first: list | None = None
        try:
            magic = next(self._unpacker)
        except StopIteration:
            raise ValueError("empty file, not a container-sensor recording") from None
        except (msgpack.UnpackException, ValueError) as exc:
            raise ValueError(f"not a container-sensor recording ({exc})") from None
        if magic != RECORDING_MAGIC:
            raise ValueError("not a container-sensor recording (bad magic)")
        for item in self._unpacker:
            if isinstance(item, dict):
                self.meta = item
            else:
                self._first = item
            break

    def __iter__(self) -> Iterator[Record]:
        count = 0
        unpacker = self._unpacker
        whole = unpacker.tell()  # bytes of whole objects so far
        try:
            if self._first is not None:
                yield from_wire(self._first)
                count += 1
            for item in unpacker:
                whole = unpacker.tell()
                yield from_wire(item)
                count += 1
        except (msgpack.UnpackException, TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"corrupt record in recording after {count} records ({exc})") from None
        # The unpacker ends quietly at a record cut short (a recorder killed mid-write, a copy cut off): say so.
        try:
            left = self._stream.tell() - self._start - whole
        except (OSError, AttributeError, ValueError):
            left = 0  # not seekable (a pipe): cannot tell
        if left > 0:
            raise ValueError(f"recording cut short after {count} records: its last {left} bytes are not a whole "
                             "record")


def read_recording(stream: IO[bytes]) -> Iterator[Record]:
    """The records of a recording file; raises ValueError on a file that is not one."""
    return iter(RecordingReader(stream))
