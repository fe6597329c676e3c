"""The byte layouts of bpf/sensor.h, and decoding of raw ring-buffer records into sensor.records types.

tests/unit/test_probe_layout.py compiles nothing: it parses bpf/sensor.h and checks these formats against it,
so the C structs and this mirror cannot drift apart.
"""

from __future__ import annotations

import struct

from sensor.records import (
    CgroupRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    Namespaces,
    Record,
)

RECORD_EXEC, RECORD_FORK, RECORD_EXIT, RECORD_CGROUP_MKDIR, RECORD_CGROUP_RMDIR = 1, 2, 3, 4, 5
EXEC_ARGS_TRUNCATED, EXEC_ARGS_READ_FAILED, EXEC_FILENAME_TRUNCATED, EXEC_CWD_TRUNCATED = 1, 2, 4, 8
LOSS_RINGBUF_FULL, LOSS_ARGS_TRUNCATED, LOSS_ARGS_READ_FAILED, LOSS_PATH_TRUNCATED, LOSS_COUNTERS = 0, 1, 2, 3, 4

HEADER = struct.Struct("<IIQ")
# struct exec_record up to its data[] member
EXEC_FIXED = struct.Struct("<IIQ12IQQQIIQ7II4H16s")
FORK = struct.Struct("<IIQIIQIIQ")
EXIT = struct.Struct("<IIQIiQ")
CGROUP_FIXED = struct.Struct("<IIQiiQII")
# the fixed-size layouts, by record type: a record shorter than its layout is damaged
_FIXED_LAYOUTS = {RECORD_FORK: FORK, RECORD_EXIT: EXIT, RECORD_CGROUP_MKDIR: CGROUP_FIXED,
                  RECORD_CGROUP_RMDIR: CGROUP_FIXED}

ARGS_MAX = 16384
FILENAME_MAX_LEN = 4096
CGROUP_PATH_MAX = 512
CWD_MAX = 1024


# Namespace sets seen, shared: a host has a handful, and one object per set spares the allocation per exec
_namespaces: dict[tuple[int, ...], Namespaces] = {}
NAMESPACES_KEPT = 4096


class DecodeError(ValueError):
    """A ring-buffer record that does not fit its layout."""


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def split_args(blob: bytes) -> tuple[bytes, ...]:
    """argv as the kernel laid it out in the new process's memory: NUL-terminated strings back to back."""
    if not blob:
        return ()
    if blob.endswith(b"\0"):
        blob = blob[:-1]
    return tuple(blob.split(b"\0"))


def join_cwd(blob: bytes, truncated: bool) -> bytes:
    """The working directory from its components, leaf first as the probe walked them."""
    parts = blob.rstrip(b"\0").split(b"\0") if blob else []
    path = b"/" + b"/".join(reversed(parts))
    return b"..." + path if truncated else path


def decode(raw: bytes) -> Record:
    if len(raw) < HEADER.size:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than its header")
    record_type = HEADER.unpack_from(raw)[0]
    if record_type == RECORD_EXEC:
        return decode_exec(raw)
    fixed = _FIXED_LAYOUTS.get(record_type)
    if fixed is not None and len(raw) < fixed.size:
        # struct.error otherwise, which no caller expects from a decoder
        raise DecodeError(f"record of type {record_type} has {len(raw)} bytes, fewer than its {fixed.size}")
    if record_type == RECORD_FORK:
        (_t, _s, ktime, parent_pid, pid, start, uid, gid, cgroup_id) = FORK.unpack_from(raw)
        return ForkRecord(ktime, parent_pid, pid, start, uid, gid, cgroup_id)
    if record_type == RECORD_EXIT:
        (_t, _s, ktime, pid, exit_code, start) = EXIT.unpack_from(raw)
        return ExitRecord(ktime, pid, exit_code, start)
    if record_type in (RECORD_CGROUP_MKDIR, RECORD_CGROUP_RMDIR):
        (_t, _s, ktime, root, level, cgroup_id, path_len, _pad) = CGROUP_FIXED.unpack_from(raw)
        start = CGROUP_FIXED.size
        path = raw[start : start + min(path_len, CGROUP_PATH_MAX)]
        op = "mkdir" if record_type == RECORD_CGROUP_MKDIR else "rmdir"
        return CgroupRecord(ktime, op, root, cgroup_id, level, path)
    raise DecodeError(f"unknown record type {record_type}")


def decode_exec(raw: bytes) -> ExecRecord:
    if len(raw) < EXEC_FIXED.size:
        raise DecodeError(f"exec record of {len(raw)} bytes is shorter than its fixed part")
    (
        _type, _size, ktime,
        pid, tid, old_tid, ppid, uid, gid, euid, egid, sid, pgid, tty_major, tty_minor,
        cgroup_id, start, exe_ino, exe_dev, flags, exe_ctime_ns,
        ns_pid, ns_mnt, ns_net, ns_uts, ns_ipc, ns_cgroup, ns_user,
        argc, filename_len, args_lo, args_hi, cwd_len, comm,
    ) = EXEC_FIXED.unpack_from(raw)
    args_len = args_lo | (args_hi << 16)
    cwd_base = EXEC_FIXED.size
    base = cwd_base + cwd_len
    if base + filename_len + args_len > len(raw):
        raise DecodeError("exec record lengths exceed the record")
    cwd = join_cwd(raw[cwd_base:base], bool(flags & EXEC_CWD_TRUNCATED))
    filename = raw[base : base + filename_len]
    argv = split_args(raw[base + filename_len : base + filename_len + args_len])
    truncated = bool(flags & (EXEC_ARGS_TRUNCATED | EXEC_ARGS_READ_FAILED)) or len(argv) < argc
    ns_values = (ns_pid, ns_mnt, ns_net, ns_uts, ns_ipc, ns_cgroup, ns_user)
    ns = _namespaces.get(ns_values)
    if ns is None:
        if len(_namespaces) >= NAMESPACES_KEPT:
            _namespaces.clear()
        ns = _namespaces[ns_values] = Namespaces(*ns_values)
    # positional, in ExecRecord's field order: a third cheaper than keywords, once per exec
    return ExecRecord(
        ktime, pid, tid, old_tid, ppid, uid, gid, euid, egid, _cstr(comm), filename, argv, max(argc, len(argv)),
        truncated, cgroup_id, ns, sid, pgid, tty_major, tty_minor, start, exe_ino, exe_dev, cwd, exe_ctime_ns,
        bool(flags & EXEC_FILENAME_TRUNCATED),
    )
