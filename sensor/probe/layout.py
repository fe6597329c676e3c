"""The byte layouts of bpf/sensor.h, and decoding of raw ring-buffer records into sensor.model.records types.

Every member of the C structs is named here with its place in the struct formats. `static_asserts()` turns those
names into C checks of each member's offset, size and sign, compiled against sensor.h by gcc in
tests/unit/test_probe_layout.py and into the BPF program by sensor/probe/loader.py, so a member moved, resized or added
on either side fails the tests and the probe's load, naming the member (Tetragon's alignchecker holds its Go
mirrors to its C structs the same way).
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sensor.model.records import (
    CgroupRecord,
    CredRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    ModuleRecord,
    NetRecord,
    Record,
    interned_namespaces,
)

RECORD_EXEC, RECORD_FORK, RECORD_EXIT, RECORD_CGROUP_MKDIR, RECORD_CGROUP_RMDIR, RECORD_CRED = 1, 2, 3, 4, 5, 6
RECORD_NET, RECORD_MODULE = 7, 8
MODULE_NAME_MAX = 64
NET_ATTEMPTED, NET_ACCEPTED = 1, 2
NET_ACTIONS = {NET_ATTEMPTED: "connection_attempted", NET_ACCEPTED: "connection_accepted"}
AF_INET, AF_INET6 = 2, 10
CRED_UID, CRED_GID, CRED_SID = 1, 2, 3
CRED_CHANGES = {CRED_UID: "uid_change", CRED_GID: "gid_change", CRED_SID: "session_id_change"}
EXEC_ARGS_TRUNCATED, EXEC_ARGS_READ_FAILED, EXEC_FILENAME_TRUNCATED, EXEC_CWD_TRUNCATED = 1, 2, 4, 8
EXEC_ENV_TRUNCATED, EXEC_EXE_TRUNCATED = 16, 32
LOSS_RINGBUF_FULL, LOSS_ARGS_TRUNCATED, LOSS_ARGS_READ_FAILED, LOSS_PATH_TRUNCATED, LOSS_COUNTERS = 0, 1, 2, 3, 4

ARGS_MAX = 16384
FILENAME_MAX_LEN = 4096
CGROUP_PATH_MAX = 512
CWD_MAX = 1024

Fields = tuple[tuple[str, str], ...]
# (C member designator, struct format code), in the structs' order: the decoders unpack by position, in this order.
# A nested struct's members are "hdr.type"; an array's elements are "ns[NS_PID]", which also holds sensor.h's enum
# order to the order the decoder reads them in.
HEADER_FIELDS: Fields = (("type", "I"), ("size", "I"), ("ktime_ns", "Q"))


def _in(member: str, fields: Fields) -> Fields:
    return tuple((f"{member}.{name}", code) for name, code in fields)


EXEC_FIELDS: Fields = (
    *_in("hdr", HEADER_FIELDS),
    ("pid", "I"), ("tid", "I"), ("old_tid", "I"), ("ppid", "I"), ("uid", "I"), ("gid", "I"), ("euid", "I"),
    ("egid", "I"), ("sid", "I"), ("pgid", "I"), ("tty_major", "I"), ("tty_minor", "I"),
    ("cgroup_id", "Q"), ("start_boottime_ns", "Q"), ("exe_ino", "Q"), ("exe_dev", "I"), ("flags", "I"),
    ("exe_ctime_ns", "Q"), ("cap_effective", "Q"), ("cap_permitted", "Q"), ("exe_size", "Q"), ("exe_head_hash", "Q"),
    ("ns[NS_PID]", "I"), ("ns[NS_MNT]", "I"), ("ns[NS_NET]", "I"), ("ns[NS_UTS]", "I"), ("ns[NS_IPC]", "I"),
    ("ns[NS_CGROUP]", "I"), ("ns[NS_USER]", "I"),
    ("argc", "I"), ("filename_len", "H"), ("args_len_lo", "H"), ("args_len_hi", "H"), ("cwd_len", "H"),
    ("env_len", "H"), ("exe_len", "H"), ("comm", "16s"),
)
FORK_FIELDS: Fields = (
    *_in("hdr", HEADER_FIELDS),
    ("parent_pid", "I"), ("pid", "I"), ("start_boottime_ns", "Q"), ("uid", "I"), ("gid", "I"), ("cgroup_id", "Q"),
)
EXIT_FIELDS: Fields = (*_in("hdr", HEADER_FIELDS), ("pid", "I"), ("exit_code", "i"), ("start_boottime_ns", "Q"),
                       ("pid_ns", "I"), ("ns_pid", "I"))
CRED_FIELDS: Fields = (
    *_in("hdr", HEADER_FIELDS), ("pid", "I"), ("change", "I"), ("uid", "I"), ("gid", "I"), ("euid", "I"),
    ("egid", "I"), ("sid", "I"), ("pad", "I"), ("start_boottime_ns", "Q"),
)
NET_FIELDS: Fields = (
    *_in("hdr", HEADER_FIELDS), ("pid", "I"), ("action", "I"), ("start_boottime_ns", "Q"), ("family", "H"),
    ("local_port", "H"), ("remote_port", "H"), ("pad", "H"), ("local_addr", "16s"), ("remote_addr", "16s"),
)
MODULE_FIELDS: Fields = (
    *_in("hdr", HEADER_FIELDS), ("pid", "I"), ("taints", "I"), ("start_boottime_ns", "Q"),
)
CGROUP_FIELDS: Fields = (
    *_in("hdr", HEADER_FIELDS), ("root", "i"), ("level", "i"), ("id", "Q"), ("path_len", "I"), ("pad", "I"),
)


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """One C struct of sensor.h: its fixed members, then the char array the record's lengths index, if any."""

    c_struct: str
    fields: Fields
    tail: str | None = None
    tail_len: int | None = None  # None: sized by build options (ARGS_MAX is a cflag), so only its offset is held

    @property
    def fixed(self) -> struct.Struct:
        # "<": no padding, so a padding hole the C compiler leaves shows up as a member at the wrong offset
        return struct.Struct("<" + "".join(code for _, code in self.fields))


LAYOUTS = (
    RecordLayout("record_header", HEADER_FIELDS),
    RecordLayout("exec_record", EXEC_FIELDS, "data"),
    RecordLayout("fork_record", FORK_FIELDS),
    RecordLayout("exit_record", EXIT_FIELDS),
    RecordLayout("cgroup_record", CGROUP_FIELDS, "path", CGROUP_PATH_MAX),
    RecordLayout("cred_record", CRED_FIELDS),
    RecordLayout("net_record", NET_FIELDS),
    RecordLayout("module_record", MODULE_FIELDS, "name", MODULE_NAME_MAX),
)
HEADER, EXEC_FIXED, FORK, EXIT, CGROUP_FIXED, CRED, NET, MODULE_FIXED = (layout.fixed for layout in LAYOUTS)
# the fixed-size layouts, by record type: a record shorter than its layout is damaged
_FIXED_LAYOUTS = {RECORD_FORK: FORK, RECORD_EXIT: EXIT, RECORD_CGROUP_MKDIR: CGROUP_FIXED,
                  RECORD_CGROUP_RMDIR: CGROUP_FIXED, RECORD_CRED: CRED, RECORD_NET: NET,
                  RECORD_MODULE: MODULE_FIXED}

# The constants both sides share. ARGS_MAX and FILENAME_MAX_LEN are left out: the probe sets ARGS_MAX by cflag,
# and the decoder reads neither (the record's lengths say how much was sent).
SHARED_CONSTANTS = (
    "RECORD_EXEC", "RECORD_FORK", "RECORD_EXIT", "RECORD_CGROUP_MKDIR", "RECORD_CGROUP_RMDIR", "RECORD_CRED",
    "RECORD_NET", "RECORD_MODULE", "MODULE_NAME_MAX", "CRED_UID", "CRED_GID", "CRED_SID", "NET_ATTEMPTED",
    "NET_ACCEPTED",
    "EXEC_ARGS_TRUNCATED", "EXEC_ARGS_READ_FAILED", "EXEC_FILENAME_TRUNCATED", "EXEC_CWD_TRUNCATED",
    "EXEC_ENV_TRUNCATED", "EXEC_EXE_TRUNCATED",
    "LOSS_RINGBUF_FULL", "LOSS_ARGS_TRUNCATED", "LOSS_ARGS_READ_FAILED", "LOSS_PATH_TRUNCATED", "LOSS_COUNTERS",
    "CGROUP_PATH_MAX", "CWD_MAX",
)


@dataclass(frozen=True, slots=True)
class MemberCheck:
    """Where the decoder expects one C member: `member` is a designator ("cwd_len", "hdr.type", "ns[NS_USER]"),
    or "" for the whole struct; size None where a build option sets it; signed None for all but integers."""

    c_struct: str
    member: str
    offset: int
    size: int | None
    signed: bool | None = None

    @property
    def label(self) -> str:
        return f"{self.c_struct}.{self.member}" if self.member else f"struct {self.c_struct}"

    @property
    def c_offset(self) -> str:
        return f"__builtin_offsetof(struct {self.c_struct}, {self.member})"

    @property
    def c_size(self) -> str:
        if not self.member:
            return f"sizeof(struct {self.c_struct})"
        return f"sizeof(((struct {self.c_struct} *)0)->{self.member})"

    @property
    def c_signed(self) -> str:
        # an s32 read as unsigned turns exit code -1 into 4294967295: same size, so only this catches it
        return f"((__typeof__(((struct {self.c_struct} *)0)->{self.member}))-1 < 0)"


def member_checks() -> list[MemberCheck]:
    """Every member of every record struct with the offset and size this module reads it at: each element and
    nested member, the nested struct or array as a whole, the trailing char array, and the struct's size."""
    checks = []
    for layout in LAYOUTS:
        offset = 0
        wholes: dict[str, list[int]] = {}  # "hdr", "ns" -> [start, end]
        for name, code in layout.fields:
            size = struct.calcsize("<" + code)
            signed = None if code.endswith("s") else code.islower()
            checks.append(MemberCheck(layout.c_struct, name, offset, size, signed))
            whole = name.partition(".")[0].partition("[")[0]
            if whole != name:
                wholes.setdefault(whole, [offset, offset])[1] = offset + size
            offset += size
        checks += [MemberCheck(layout.c_struct, whole, start, end - start) for whole, (start, end) in wholes.items()]
        if layout.tail is not None:
            checks.append(MemberCheck(layout.c_struct, layout.tail, offset, layout.tail_len))
        if layout.tail is None or layout.tail_len is not None:
            checks.append(MemberCheck(layout.c_struct, "", 0, offset + (layout.tail_len or 0)))
    return checks


def static_asserts() -> str:
    """C11 checks that bpf/sensor.h lays out every record member where and as this module reads it, to compile after
    sensor.h is included. A failure names the member and the Python value; the C value is the compiler's."""
    lines = ["/* From sensor/probe/layout.py static_asserts(): where the decoder reads each record member. */"]
    for check in member_checks():
        if check.member:
            lines.append(f'_Static_assert({check.c_offset} == {check.offset}, '
                         f'"{check.label}: sensor/probe/layout.py reads it at offset {check.offset}");')
        if check.size is not None:
            lines.append(f'_Static_assert({check.c_size} == {check.size}, '
                         f'"{check.label}: sensor/probe/layout.py reads {check.size} bytes");')
        if check.signed is not None:
            sign = "signed" if check.signed else "unsigned"
            lines.append(f'_Static_assert({check.c_signed} == {int(check.signed)}, '
                         f'"{check.label}: sensor/probe/layout.py reads it {sign}");')
    for name in SHARED_CONSTANTS:
        value = globals()[name]
        lines.append(f'_Static_assert({name} == {value}, "{name}: sensor/probe/layout.py has {value}");')
    return "\n".join(lines) + "\n"




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


def decode(raw: bytes, env_vars: re.Pattern[bytes] | None = None) -> Record:
    if len(raw) < HEADER.size:
        raise DecodeError(f"record of {len(raw)} bytes is shorter than its header")
    record_type = HEADER.unpack_from(raw)[0]
    if record_type == RECORD_EXEC:
        return decode_exec(raw, env_vars)
    fixed = _FIXED_LAYOUTS.get(record_type)
    if fixed is not None and len(raw) < fixed.size:
        # struct.error otherwise, which no caller expects from a decoder
        raise DecodeError(f"record of type {record_type} has {len(raw)} bytes, fewer than its {fixed.size}")
    if record_type == RECORD_FORK:
        (_t, _s, ktime, parent_pid, pid, start, uid, gid, cgroup_id) = FORK.unpack_from(raw)
        return ForkRecord(ktime, parent_pid, pid, start, uid, gid, cgroup_id)
    if record_type == RECORD_EXIT:
        (_t, _s, ktime, pid, exit_code, start, pid_ns, ns_pid) = EXIT.unpack_from(raw)
        return ExitRecord(ktime, pid, exit_code, start, pid_ns, ns_pid)
    if record_type == RECORD_CRED:
        (_t, _s, ktime, pid, change, uid, gid, euid, egid, sid, _pad, start) = CRED.unpack_from(raw)
        kind = CRED_CHANGES.get(change)
        if kind is None:
            raise DecodeError(f"credential record with unknown change {change}")
        return CredRecord(ktime, pid, kind, uid, gid, euid, egid, sid, start)
    if record_type == RECORD_NET:
        return decode_net(raw)
    if record_type == RECORD_MODULE:
        (_t, _s, ktime, pid, taints, start) = MODULE_FIXED.unpack_from(raw)
        name = _cstr(raw[MODULE_FIXED.size : MODULE_FIXED.size + MODULE_NAME_MAX])
        return ModuleRecord(ktime, pid, start, name, taints)
    if record_type in (RECORD_CGROUP_MKDIR, RECORD_CGROUP_RMDIR):
        (_t, _s, ktime, root, level, cgroup_id, path_len, _pad) = CGROUP_FIXED.unpack_from(raw)
        start = CGROUP_FIXED.size
        path = raw[start : start + min(path_len, CGROUP_PATH_MAX)]
        op = "mkdir" if record_type == RECORD_CGROUP_MKDIR else "rmdir"
        return CgroupRecord(ktime, op, root, cgroup_id, level, path)
    raise DecodeError(f"unknown record type {record_type}")


def ip_text(family: int, raw: bytes) -> str:
    """An address as text; an IPv4 address carried in IPv6 (::ffff:a.b.c.d, a dual-stack socket's peer) as the
    IPv4 address it is, so that rules matching IPv4 ranges see it."""
    if family == AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def decode_net(raw: bytes) -> NetRecord:
    (_t, _s, ktime, pid, action, start, family, local_port, remote_port, _pad, local_addr,
     remote_addr) = NET.unpack_from(raw)
    kind = NET_ACTIONS.get(action)
    if kind is None:
        raise DecodeError(f"network record with unknown action {action}")
    if family not in (AF_INET, AF_INET6):
        raise DecodeError(f"network record with unknown address family {family}")
    return NetRecord(ktime, pid, kind, start, ip_text(family, local_addr), local_port,
                     ip_text(family, remote_addr), remote_port)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_filter(names: Iterable[str]) -> re.Pattern[bytes] | None:
    """What keeps the named variables of an environment block (NUL-separated NAME=value entries) and nothing
    else: the rest of an environment (tokens, keys) never leaves the decoder. None for no names."""
    names = list(dict.fromkeys(names))
    if not names:
        return None
    bad = [name for name in names if not _ENV_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"not environment variable names: {', '.join(bad)}")
    return re.compile(rb"(?:^|(?<=\0))(?:" + b"|".join(re.escape(n.encode()) for n in names) + rb")=[^\0]*")


def _offset(fields: Fields, member: str) -> int:
    at = 0
    for name, code in fields:
        if name == member:
            return at
        at += struct.calcsize("<" + code)
    raise KeyError(member)


# What the look ahead reads of an exec record, without decoding it: (pid, start, exe_ino, exe_dev, ctime, mnt ns)
_PEEK_PID = _offset(EXEC_FIELDS, "pid")
_PEEK_FILE = struct.Struct("<QQQIIQ")   # start_boottime_ns, exe_ino ... exe_ctime_ns, with cgroup_id first
_PEEK_FILE_AT = _offset(EXEC_FIELDS, "cgroup_id")
_PEEK_MNT_AT = _offset(EXEC_FIELDS, "ns[NS_MNT]")


def peek_exec(buffer: Any, offset: int, size: int) -> tuple[int, int, int, int, int, int] | None:
    """(pid, start_boottime_ns, exe_ino, exe_dev, exe_ctime_ns, mnt namespace) of the exec record (its type
    checked by the caller) at `offset` of `buffer`, else None when too short: a few fixed-offset reads and no
    copy, for looking ahead in the ring before the records are handled in order."""
    if size < EXEC_FIXED.size:
        return None
    pid = struct.unpack_from("<I", buffer, offset + _PEEK_PID)[0]
    _cgroup, start, ino, dev, _flags, ctime = _PEEK_FILE.unpack_from(buffer, offset + _PEEK_FILE_AT)
    return pid, start, ino, dev, ctime, struct.unpack_from("<I", buffer, offset + _PEEK_MNT_AT)[0]


def decode_exec(raw: bytes, env_vars: re.Pattern[bytes] | None = None) -> ExecRecord:
    if len(raw) < EXEC_FIXED.size:
        raise DecodeError(f"exec record of {len(raw)} bytes is shorter than its fixed part")
    (
        _type, _size, ktime,
        pid, tid, old_tid, ppid, uid, gid, euid, egid, sid, pgid, tty_major, tty_minor,
        cgroup_id, start, exe_ino, exe_dev, flags, exe_ctime_ns, cap_effective, cap_permitted, exe_size, head_hash,
        ns_pid, ns_mnt, ns_net, ns_uts, ns_ipc, ns_cgroup, ns_user,
        argc, filename_len, args_lo, args_hi, cwd_len, env_len, exe_len, comm,
    ) = EXEC_FIXED.unpack_from(raw)
    args_len = args_lo | (args_hi << 16)
    cwd_base = EXEC_FIXED.size
    exe_base = cwd_base + cwd_len
    base = exe_base + exe_len
    env_base = base + filename_len + args_len
    if env_base + env_len > len(raw):
        raise DecodeError("exec record lengths exceed the record")
    env: tuple[bytes, ...] = ()
    if env_len and env_vars is not None:
        env = tuple(env_vars.findall(raw, env_base, env_base + env_len))
    cwd = join_cwd(raw[cwd_base:exe_base], bool(flags & EXEC_CWD_TRUNCATED))
    # the executed file's own path; none when cut (a guess at a path is worse than the path as passed)
    exe_path = join_cwd(raw[exe_base:base], False) if exe_len and not flags & EXEC_EXE_TRUNCATED else b""
    filename = raw[base : base + filename_len]
    argv = split_args(raw[base + filename_len : base + filename_len + args_len])
    truncated = bool(flags & (EXEC_ARGS_TRUNCATED | EXEC_ARGS_READ_FAILED)) or len(argv) < argc
    ns = interned_namespaces(ns_pid, ns_mnt, ns_net, ns_uts, ns_ipc, ns_cgroup, ns_user)
    # positional, in ExecRecord's field order: a third cheaper than keywords, once per exec
    return ExecRecord(
        ktime, pid, tid, old_tid, ppid, uid, gid, euid, egid, _cstr(comm), filename, argv, max(argc, len(argv)),
        truncated, cgroup_id, ns, sid, pgid, tty_major, tty_minor, start, exe_ino, exe_dev, cwd, exe_ctime_ns,
        bool(flags & EXEC_FILENAME_TRUNCATED), cap_effective, cap_permitted, env,
        bool(flags & EXEC_ENV_TRUNCATED), exe_path, exe_size, head_hash,
    )
