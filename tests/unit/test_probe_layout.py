"""bpf/sensor.h and sensor/probe/layout.py must describe the same bytes (Tetragon keeps its mirrors the same way).

gcc compiles sensor/probe/layout.py's checks of every member's offset and size against sensor.h, and a program
that prints where C puts each member, so a failure says which member moved and where to.
"""

from __future__ import annotations

import operator
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sensor.model.records import CgroupRecord, ExecRecord, ExitRecord, ForkRecord, Namespaces
from sensor.probe import layout as probe_layout
from sensor.probe.layout import LAYOUTS, decode, member_checks, split_args, static_asserts

HEADER_FILE = Path(__file__).resolve().parents[2] / "bpf" / "sensor.h"
# BCC's integer types. The BPF target aligns 64-bit integers to 8 bytes; x86-64 does too, i386 would not unasked.
C_PRELUDE = """\
typedef unsigned char u8;
typedef unsigned short u16;
typedef short s16;
typedef unsigned int u32;
typedef int s32;
typedef unsigned long long u64 __attribute__((aligned(8)));
typedef long long s64 __attribute__((aligned(8)));
"""
C_SIZES = {"u8": 1, "char": 1, "u16": 2, "s16": 2, "u32": 4, "s32": 4, "u64": 8, "s64": 8}


def parse_header(header: Path = HEADER_FILE) -> tuple[dict[str, int], dict[str, list[tuple[str, str, int]]]]:
    """(#define and enum constants, struct name -> [(type, member, array length)])."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
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


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc: scripts/install.sh --test installs it")
    return gcc


def compile_static_asserts(header_dir: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """gcc on sensor.h followed by the checks sensor/probe/loader.py also compiles into the BPF program."""
    source = work / "layout_asserts.c"
    source.write_text(C_PRELUDE + '#include "sensor.h"\n' + static_asserts())
    return subprocess.run([_gcc(), "-std=c11", "-Wall", "-Werror", "-fsyntax-only", f"-I{header_dir}", str(source)],
                          capture_output=True, text=True, check=False)


def c_layout(header_dir: Path, work: Path) -> dict[str, tuple[int, int, int]]:
    """Member label -> (offset, size, signed) as gcc lays out sensor.h, for every member sensor/probe/layout.py
    reads (signed is 0 for arrays and structs)."""
    prints = [f'    printf("%s %zu %zu %d\\n", "{c.label}", (size_t){c.c_offset if c.member else 0}, '
              f'(size_t){c.c_size}, {c.c_signed if c.signed is not None else 0});' for c in member_checks()]
    source, program = work / "layout_print.c", work / "layout_print"
    source.write_text("#include <stdio.h>\n" + C_PRELUDE + '#include "sensor.h"\n'
                      + "int main(void)\n{\n" + "\n".join(prints) + "\n    return 0;\n}\n")
    subprocess.run([_gcc(), "-std=c11", "-Wall", "-Werror", f"-I{header_dir}", "-o", str(program), str(source)],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    # labels have no spaces but "struct X": split from the right
    rows = (line.rsplit(" ", 3) for line in out.splitlines())
    return {label: (int(offset), int(size), int(signed)) for label, offset, size, signed in rows}


def layout_mismatches(c: dict[str, tuple[int, int, int]]) -> list[str]:
    found = []
    for check in member_checks():
        c_offset, c_size, c_signed = c[check.label]
        if check.member and c_offset != check.offset:
            found.append(f"{check.label}: C offset {c_offset}, Python {check.offset}")
        if check.size is not None and c_size != check.size:
            found.append(f"{check.label}: C size {c_size}, Python {check.size}")
        if check.signed is not None and bool(c_signed) != check.signed:
            found.append(f"{check.label}: C {'signed' if c_signed else 'unsigned'}, Python "
                         f"{'signed' if check.signed else 'unsigned'}")
    return found


def test_every_member_is_where_the_decoder_reads_it(tmp_path: Path) -> None:
    mismatches = layout_mismatches(c_layout(HEADER_FILE.parent, tmp_path))
    assert not mismatches, "bpf/sensor.h and sensor/probe/layout.py differ:\n" + "\n".join(mismatches)


def test_the_static_asserts_hold_for_sensor_h(tmp_path: Path) -> None:
    result = compile_static_asserts(HEADER_FILE.parent, tmp_path)
    assert result.returncode == 0, result.stderr


def test_every_c_member_has_a_place_in_the_python_layout() -> None:
    """A member added on the C side only (in a padding hole, or after the trailing array) is caught here: the
    offset checks only cover the members Python names."""
    _, structs = parse_header()
    assert set(structs) == {layout.c_struct for layout in LAYOUTS}
    for layout in LAYOUTS:
        python = [name.partition(".")[0].partition("[")[0] for name, _ in layout.fields] + [layout.tail]
        python = list(dict.fromkeys(name for name in python if name))
        assert python == [member for _, member, _ in structs[layout.c_struct]], layout.c_struct


def test_a_member_moved_within_the_same_size_fails_and_is_named(tmp_path: Path) -> None:
    """cwd_len moved ahead of filename_len: every size stays the same, which the size checks alone let through."""
    original = HEADER_FILE.read_text()
    assert original.count("    u16 cwd_len;\n") == 1
    moved = original.replace("    u16 cwd_len;\n", "").replace("    u16 filename_len;\n",
                                                               "    u16 cwd_len;\n    u16 filename_len;\n")
    (tmp_path / "sensor.h").write_text(moved)
    _, structs = parse_header(tmp_path / "sensor.h")
    assert layout(structs, "exec_record")[0]["data"] == probe_layout.EXEC_FIXED.size

    mismatches = layout_mismatches(c_layout(tmp_path, tmp_path))
    assert "exec_record.cwd_len: C offset 168, Python 174" in mismatches
    assert "exec_record.filename_len: C offset 170, Python 168" in mismatches
    assert not [m for m in mismatches if not m.startswith(("exec_record.cwd_len:", "exec_record.filename_len:",
                                                           "exec_record.args_len_lo:", "exec_record.args_len_hi:"))]
    result = compile_static_asserts(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "exec_record.cwd_len: sensor/probe/layout.py reads it at offset 174" in result.stderr


def test_a_resized_member_fails_and_is_named(tmp_path: Path) -> None:
    """exit_code widened to 64 bits: the offsets after it move and its size differs."""
    (tmp_path / "sensor.h").write_text(HEADER_FILE.read_text().replace("    s32 exit_code;", "    s64 exit_code;"))
    mismatches = layout_mismatches(c_layout(tmp_path, tmp_path))
    assert "exit_record.exit_code: C offset 24, Python 20" in mismatches
    assert "exit_record.exit_code: C size 8, Python 4" in mismatches
    assert all(m.startswith(("exit_record.", "struct exit_record:")) for m in mismatches), mismatches
    assert "exit_record.exit_code: sensor/probe/layout.py reads 4 bytes" in compile_static_asserts(tmp_path,
                                                                                                   tmp_path).stderr


def test_a_member_whose_sign_changed_fails_and_is_named(tmp_path: Path) -> None:
    """exit_code made unsigned: same size, same offsets, and -1 would decode as 4294967295."""
    (tmp_path / "sensor.h").write_text(HEADER_FILE.read_text().replace("    s32 exit_code;", "    u32 exit_code;"))
    assert layout_mismatches(c_layout(tmp_path, tmp_path)) == ["exit_record.exit_code: C unsigned, Python signed"]
    assert "exit_record.exit_code: sensor/probe/layout.py reads it signed" in compile_static_asserts(tmp_path,
                                                                                                     tmp_path).stderr


def _pack(fields: probe_layout.Fields, values: dict[str, int | bytes]) -> bytes:
    return probe_layout.RecordLayout("", fields).fixed.pack(*(values[name] for name, _ in fields))


def _distinct(fields: probe_layout.Fields) -> dict[str, int | bytes]:
    return {name: 1000 + i for i, (name, code) in enumerate(fields) if not code.endswith("s")}


def _assert_read_by_name(record: object, values: dict[str, int | bytes], attributes: dict[str, str]) -> None:
    for member, attribute in attributes.items():
        assert operator.attrgetter(attribute)(record) == values[member], f"{member} decoded as {attribute}"


def test_the_decoders_read_each_member_by_its_name() -> None:
    """The decoders unpack by position: each member, given a value of its own, comes out in its record field."""
    common = {"hdr.ktime_ns": "ktime_ns", "pid": "pid", "start_boottime_ns": "start_boottime_ns"}
    values = _distinct(probe_layout.EXEC_FIELDS) | {
        "hdr.type": probe_layout.RECORD_EXEC, "flags": 0, "argc": 1, "filename_len": 6, "args_len_lo": 2,
        "args_len_hi": 0, "cwd_len": 0, "env_len": 0, "exe_len": 0, "comm": b"sh",
    }
    rec = decode(_pack(probe_layout.EXEC_FIELDS, values) + b"/bin/x" + b"x\0")
    assert isinstance(rec, ExecRecord) and (rec.comm, rec.filename, rec.argv) == (b"sh", b"/bin/x", (b"x",))
    namespaces = {f"ns[NS_{kind.upper()}]": f"ns.{kind}" for kind in ("pid", "mnt", "net", "uts", "ipc", "cgroup",
                                                                        "user")}
    _assert_read_by_name(rec, values, common | namespaces | {m: m for m in (
        "tid", "old_tid", "ppid", "uid", "gid", "euid", "egid", "sid", "pgid", "tty_major", "tty_minor", "cgroup_id",
        "exe_ino", "exe_dev", "exe_ctime_ns", "cap_effective", "cap_permitted", "exe_size", "exe_head_hash")})

    values = _distinct(probe_layout.FORK_FIELDS) | {"hdr.type": probe_layout.RECORD_FORK}
    _assert_read_by_name(decode(_pack(probe_layout.FORK_FIELDS, values)), values, common | {
        "parent_pid": "parent_pid", "uid": "uid", "gid": "gid", "cgroup_id": "cgroup_id"})

    values = _distinct(probe_layout.EXIT_FIELDS) | {"hdr.type": probe_layout.RECORD_EXIT}
    _assert_read_by_name(decode(_pack(probe_layout.EXIT_FIELDS, values)), values, common | {"exit_code": "exit_code"})

    values = _distinct(probe_layout.CGROUP_FIELDS) | {"hdr.type": probe_layout.RECORD_CGROUP_RMDIR, "path_len": 3}
    cgroup = decode(_pack(probe_layout.CGROUP_FIELDS, values) + b"/a/")
    assert isinstance(cgroup, CgroupRecord) and (cgroup.op, cgroup.path) == ("rmdir", b"/a/")
    _assert_read_by_name(cgroup, values, {"hdr.ktime_ns": "ktime_ns", "root": "root", "level": "level",
                                          "id": "cgroup_id"})


def _exec_bytes(filename: bytes, args: bytes, argc: int, flags: int = 0, cwd: bytes = b"", env: bytes = b"") -> bytes:
    fixed = probe_layout.EXEC_FIXED.pack(
        probe_layout.RECORD_EXEC, 0, 123, 10, 10, 10, 1, 0, 0, 1000, 1000, 5, 10, 136, 2,
        77, 99, 4242, (8 << 20) | 1, flags, 1_700_000_000_123_456_789, (1 << 21) | 1, (1 << 41) - 1,
        1129504, 0x446972CFB1684848, 1, 2, 3, 4, 5, 6, 7, argc, len(filename),
        len(args) & 0xFFFF,
        len(args) >> 16, len(cwd), len(env), 0, b"bash\0" + b"\0" * 11,
    )
    return fixed + cwd + filename + args + env


def test_decode_exec() -> None:
    rec = decode(_exec_bytes(b"/bin/bash", b"bash\0-c\0echo hi\0", 3))
    assert isinstance(rec, ExecRecord)
    assert rec.argv == (b"bash", b"-c", b"echo hi")
    assert (rec.filename, rec.comm, rec.argc, rec.args_truncated) == (b"/bin/bash", b"bash", 3, False)
    assert (rec.euid, rec.egid, rec.tty_major, rec.tty_minor, rec.ns.user) == (1000, 1000, 136, 2, 7)
    assert rec.exe_ctime_ns == 1_700_000_000_123_456_789
    assert (rec.cap_effective, rec.cap_permitted) == ((1 << 21) | 1, (1 << 41) - 1)


def test_decode_exec_shares_one_namespaces_object_per_set() -> None:
    first = decode(_exec_bytes(b"/bin/true", b"true\0", 1))
    second = decode(_exec_bytes(b"/bin/false", b"false\0", 1))
    assert first.ns == Namespaces(1, 2, 3, 4, 5, 6, 7)
    assert second.ns is first.ns


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
    exit_ = decode(probe_layout.EXIT.pack(3, 40, 6, 101, 256, 555, 4026532249, 1))
    assert exit_ == ExitRecord(6, 101, 256, 555, 4026532249, 1)
    path = b"/libpod_parent/libpod-abc"
    cg = decode(probe_layout.CGROUP_FIXED.pack(4, 0, 7, 0, 2, 4242, len(path), 0) + path)
    assert cg == CgroupRecord(7, "mkdir", 0, 4242, 2, path)


def test_split_args_keeps_empty_arguments() -> None:
    assert split_args(b"a\0\0b\0") == (b"a", b"", b"b")
    assert split_args(b"") == ()


def test_only_the_configured_environment_variables_leave_the_decoder() -> None:
    env = b"HOME=/root\0AWS_SECRET_ACCESS_KEY=hunter2\0LD_PRELOAD=/tmp/x.so\0XLD_PRELOAD=no\0http_proxy=socks5h://h\0"
    raw = _exec_bytes(b"/bin/sh", b"sh\0", 1, env=env)
    keep = probe_layout.env_filter(["LD_PRELOAD", "http_proxy", "HTTP_PROXY"])
    rec = decode(raw, keep)
    assert rec.env_vars == (b"LD_PRELOAD=/tmp/x.so", b"http_proxy=socks5h://h")
    assert rec.argv == (b"sh",) and not rec.env_truncated
    assert decode(raw).env_vars == ()  # no names configured: none kept
    cut = decode(_exec_bytes(b"/bin/sh", b"sh\0", 1, flags=probe_layout.EXEC_ENV_TRUNCATED, env=b"LD_PRELOAD=/a"),
                 keep)
    assert cut.env_truncated and cut.env_vars == (b"LD_PRELOAD=/a",)
    with pytest.raises(ValueError):
        probe_layout.env_filter(["LD_PRELOAD|.*"])
    with pytest.raises(probe_layout.DecodeError):
        decode(_exec_bytes(b"/bin/sh", b"sh\0", 1, env=env)[:-1], keep)  # env_len beyond the record


def test_the_executed_files_own_path_is_decoded_and_a_cut_one_dropped() -> None:
    exe = b"dash\0bin\0usr\0"  # leaf first, as the probe walks it
    fixed = bytearray(_exec_bytes(b"/bin/sh", b"sh\0", 1))
    values = list(probe_layout.EXEC_FIXED.unpack_from(fixed))
    names = [name for name, _code in probe_layout.EXEC_FIELDS]
    values[names.index("exe_len")] = len(exe)
    raw = probe_layout.EXEC_FIXED.pack(*values) + exe + b"/bin/sh" + b"sh\0"
    assert decode(raw).exe_path == b"/usr/bin/dash" and decode(raw).filename == b"/bin/sh"
    values[names.index("flags")] |= probe_layout.EXEC_EXE_TRUNCATED
    assert decode(probe_layout.EXEC_FIXED.pack(*values) + exe + b"/bin/sh" + b"sh\0").exe_path == b""
