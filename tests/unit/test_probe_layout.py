"""bpf/sensor.h and sensor/probe_layout.py must describe the same bytes (Tetragon keeps its mirrors the same way)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from sensor import probe_layout
from sensor.probe_layout import decode, split_args
from sensor.records import CgroupRecord, ExecRecord, ExitRecord, ForkRecord

HEADER_FILE = Path(__file__).resolve().parents[2] / "bpf" / "sensor.h"
C_SIZES = {"u8": 1, "char": 1, "u16": 2, "s16": 2, "u32": 4, "s32": 4, "u64": 8, "s64": 8}


def parse_header() -> tuple[dict[str, int], dict[str, list[tuple[str, str, int]]]]:
    """(#define and enum constants, struct name -> [(type, member, array length)])."""
    text = re.sub(r"/\*.*?\*/", "", HEADER_FILE.read_text(), flags=re.S)
    consts = {m[0]: int(m[1]) for m in re.findall(r"#define\s+(\w+)\s+(\d+)", text)}
    for body in re.findall(r"enum\s+\w+\s*\{(.*?)\};", text, flags=re.S):
        value = -1
        for item in filter(None, (x.strip() for x in body.split(","))):
            name, _, explicit = item.partition("=")
            value = int(explicit) if explicit.strip() else value + 1
            consts[name.strip()] = value
    structs = {}
    for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, flags=re.S):
        members = []
        for decl in filter(None, (x.strip() for x in body.split(";"))):
            m = re.match(r"(struct\s+\w+|\w+)\s+(\w+)(?:\[(.+)\])?$", decl)
            assert m, decl
            length = 1
            if m[3]:
                length = eval(m[3], {}, consts)  # safe: constants of our own header
            members.append((m[1], m[2], length))
        structs[name] = members
    return consts, structs


def layout(structs: dict, name: str) -> tuple[dict[str, int], int, int]:
    """(member offsets, size, alignment) with the C ABI's natural alignment."""
    offsets, offset, align_max = {}, 0, 1
    for ctype, member, length in structs[name]:
        if ctype.startswith("struct "):
            _, size, align = layout(structs, ctype.split()[1])
        else:
            size = align = C_SIZES[ctype]
        offset = (offset + align - 1) // align * align
        offsets[member] = offset
        offset += size * length
        align_max = max(align_max, align)
    return offsets, (offset + align_max - 1) // align_max * align_max, align_max


def test_constants_match() -> None:
    consts, _ = parse_header()
    for name in ("ARGS_MAX", "FILENAME_MAX_LEN", "CGROUP_PATH_MAX", "RECORD_EXEC", "RECORD_FORK", "RECORD_EXIT",
                 "RECORD_CGROUP_MKDIR", "RECORD_CGROUP_RMDIR", "EXEC_ARGS_TRUNCATED", "EXEC_ARGS_READ_FAILED",
                 "LOSS_RINGBUF_FULL",
                 "CWD_MAX", "EXEC_CWD_TRUNCATED", "LOSS_ARGS_TRUNCATED", "LOSS_ARGS_READ_FAILED", "LOSS_COUNTERS",
                 "EXEC_FILENAME_TRUNCATED", "LOSS_PATH_TRUNCATED"):
        assert getattr(probe_layout, name) == consts[name], name


def test_exec_data_holds_a_whole_path_max_path() -> None:
    """The exec record's data[] has room for the longest cwd, a PATH_MAX path and ARGS_MAX of argv at once (the
    BPF program writes each at the end of the one before), and only what was read is sent."""
    consts, structs = parse_header()
    assert consts["FILENAME_MAX_LEN"] == 4096
    data = next(length for _, member, length in structs["exec_record"] if member == "data")
    assert data >= consts["CWD_MAX"] + consts["CWD_NAME_MAX"] + consts["FILENAME_MAX_LEN"] + consts["ARGS_MAX"]


def test_fixed_parts_match_the_c_structs() -> None:
    _, structs = parse_header()
    exec_offsets, _, _ = layout(structs, "exec_record")
    assert probe_layout.EXEC_FIXED.size == exec_offsets["data"]
    for struct_name, fmt in (("fork_record", probe_layout.FORK), ("exit_record", probe_layout.EXIT)):
        assert fmt.size == layout(structs, struct_name)[1], struct_name
    assert probe_layout.CGROUP_FIXED.size == layout(structs, "cgroup_record")[0]["path"]
    assert probe_layout.HEADER.size == layout(structs, "record_header")[1]


def _exec_bytes(filename: bytes, args: bytes, argc: int, flags: int = 0, cwd: bytes = b"") -> bytes:
    fixed = probe_layout.EXEC_FIXED.pack(
        probe_layout.RECORD_EXEC, 0, 123, 10, 10, 10, 1, 0, 0, 1000, 1000, 5, 10, 136, 2,
        77, 99, 4242, (8 << 20) | 1, flags, 1_700_000_000_123_456_789, 1, 2, 3, 4, 5, 6, 7, argc, len(filename),
        len(args) & 0xFFFF,
        len(args) >> 16, len(cwd), b"bash\0" + b"\0" * 11,
    )
    return fixed + cwd + filename + args


def test_decode_exec() -> None:
    rec = decode(_exec_bytes(b"/bin/bash", b"bash\0-c\0echo hi\0", 3))
    assert isinstance(rec, ExecRecord)
    assert rec.argv == (b"bash", b"-c", b"echo hi")
    assert (rec.filename, rec.comm, rec.argc, rec.args_truncated) == (b"/bin/bash", b"bash", 3, False)
    assert (rec.euid, rec.egid, rec.tty_major, rec.tty_minor, rec.ns.user) == (1000, 1000, 136, 2, 7)
    assert rec.exe_ctime_ns == 1_700_000_000_123_456_789


def test_decode_exec_working_directory_from_leaf_first_components() -> None:
    rec = decode(_exec_bytes(b"/bin/x", b"x\0", 1, cwd=b"d\0c c\0tmp\0"))
    assert rec.cwd == b"/tmp/c c/d" and rec.filename == b"/bin/x" and rec.argv == (b"x",)
    assert decode(_exec_bytes(b"/bin/x", b"x\0", 1)).cwd == b"/"
    deep = decode(_exec_bytes(b"/bin/x", b"x\0", 1, probe_layout.EXEC_CWD_TRUNCATED, cwd=b"z\0y\0"))
    assert deep.cwd == b".../y/z"


def test_decode_exec_flags_truncation_when_fewer_args_than_argc() -> None:
    rec = decode(_exec_bytes(b"/bin/x", b"x\0a", 5, probe_layout.EXEC_ARGS_TRUNCATED))
    assert rec.args_truncated and rec.argc == 5 and rec.argv == (b"x", b"a")


def test_decode_rejects_lengths_beyond_the_record() -> None:
    raw = _exec_bytes(b"/bin/x", b"x\0", 1)[:-1]
    try:
        decode(raw)
    except probe_layout.DecodeError:
        return
    raise AssertionError("a short record must not decode")


def test_decode_fork_exit_cgroup() -> None:
    fork = decode(probe_layout.FORK.pack(2, 48, 5, 100, 101, 555, 0, 0, 9))
    assert fork == ForkRecord(5, 100, 101, 555, 0, 0, 9)
    exit_ = decode(probe_layout.EXIT.pack(3, 32, 6, 101, 256, 555))
    assert exit_ == ExitRecord(6, 101, 256, 555)
    path = b"/libpod_parent/libpod-abc"
    cg = decode(probe_layout.CGROUP_FIXED.pack(4, 0, 7, 0, 2, 4242, len(path), 0) + path)
    assert cg == CgroupRecord(7, "mkdir", 0, 4242, 2, path)


def test_split_args_keeps_empty_arguments() -> None:
    assert split_args(b"a\0\0b\0") == (b"a", b"", b"b")
    assert split_args(b"") == ()
    assert struct.calcsize("<Q") == 8
