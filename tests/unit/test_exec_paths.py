"""A cut executable path: flagged through every stage, never the source of process.name, never taken for ssh."""

from __future__ import annotations

import io
import os
import sys

import msgpack

from sensor.ecs.builder import DocumentBuilder
from sensor.model.host import HostFacts
from sensor.model.processes import Process, ProcessTable, name_from_comm
from sensor.model.records import ExecRecord, ForkRecord, Namespaces, RecordingWriter, from_wire, read_recording, to_wire
from sensor.model.sessions import SSHD, Leaders, find_leaders
from sensor.probe import layout as probe_layout
from sensor.rules.detector import Detector
from tests.unit.test_probe_layout import _exec_bytes

HOST = HostFacts(hostname="node-1", host_id="abc123", architecture="x86_64", kernel="6.18.0", os_name="Debian",
                 os_version="12", os_family="debian", os_platform="debian", ips=(), macs=(), boot_id="boot-1")
CUT = "/dev/fd/100/" + "a" * 200 + "/sshd"  # what the probe kept of ".../sshd.fake"


def exec_record(**overrides) -> ExecRecord:
    values = dict(
        ktime_ns=2_000_000_000, pid=300, tid=300, old_tid=300, ppid=200, uid=0, gid=0, euid=0, egid=0,
        comm=b"sshd.fake", filename=CUT.encode(), argv=(b"true",), argc=1, args_truncated=False, cgroup_id=77,
        ns=Namespaces(1, 2, 3, 4, 5, 6, 7), sid=300, pgid=300, tty_major=0, tty_minor=0,
        start_boottime_ns=1_999_000_000, exe_ino=11, exe_dev=(254 << 20) | 1, path_truncated=True,
    )
    values.update(overrides)
    return ExecRecord(**values)


def test_the_probe_keeps_path_max_and_counts_cuts() -> None:
    assert probe_layout.FILENAME_MAX_LEN == 4096  # PATH_MAX, its NUL included
    assert probe_layout.LOSS_PATH_TRUNCATED < probe_layout.LOSS_COUNTERS


def test_decode_reads_the_kernel_flag() -> None:
    kept = b"/dev/fd/3/" + b"d" * 4085
    rec = probe_layout.decode(_exec_bytes(kept, b"true\0", 1, probe_layout.EXEC_FILENAME_TRUNCATED))
    assert rec.path_truncated is True and rec.filename == kept
    assert probe_layout.decode(_exec_bytes(b"/bin/true", b"true\0", 1)).path_truncated is False


def test_recordings_carry_the_flag_and_old_ones_still_replay() -> None:
    rec = exec_record()
    buffer = io.BytesIO()
    RecordingWriter(buffer).write(rec)
    buffer.seek(0)
    assert list(read_recording(buffer)) == [rec]
    # a recording made before the field existed (and the fields after it): read as not cut
    old = to_wire(rec)[:-8]
    assert from_wire(msgpack.unpackb(msgpack.packb(old, use_bin_type=True), raw=False)).path_truncated is False


def test_name_from_comm_only_when_comm_is_the_whole_name() -> None:
    assert name_from_comm(b"sshd.fake") == "sshd.fake"
    assert name_from_comm(b"x" * 14) == "x" * 14
    assert name_from_comm(b"x" * 15) == ""  # may be the first 15 bytes of a longer name
    assert name_from_comm(b"") == ""


def test_process_name_never_comes_from_a_cut_path() -> None:
    table = ProcessTable("boot-1")
    proc = table.on_exec(exec_record(), "/")
    assert (proc.executable, proc.name, proc.path_truncated) == (CUT, "sshd.fake", True)
    long_name = table.on_exec(exec_record(pid=301, comm=b"a-rather-long-p"), "/")
    assert long_name.name == "" and long_name.path_truncated
    whole = table.on_exec(exec_record(pid=302, filename=b"/usr/sbin/sshd", path_truncated=False), "/")
    assert (whole.name, whole.path_truncated) == ("sshd", False)


def test_a_dev_fd_path_is_replaced_only_by_the_same_file() -> None:
    """The probe's "/dev/fd/N/..." becomes the file's own path through /proc/<pid>/exe, and is then whole; if
    that link now shows another file (the process exec'd again), the cut path stays, flagged."""
    me = os.getpid()
    exe = os.readlink(f"/proc/{me}/exe")
    ino = os.stat(f"/proc/{me}/exe").st_ino
    table = ProcessTable("boot-1")
    same = table.on_exec(exec_record(pid=me, exe_ino=ino), "/")
    assert (same.executable, same.path_truncated, same.name) == (exe, False, os.path.basename(exe))
    other = table.on_exec(exec_record(pid=me, exe_ino=ino + 1), "/")
    assert (other.executable, other.path_truncated, other.name) == (CUT, True, "sshd.fake")


def test_document_flags_the_cut_and_leaves_out_an_unknown_name() -> None:
    table = ProcessTable("boot-1")
    parent = Process(pid=200, ppid=1, start_boottime_ns=10**9, entity_id="p", executable="/bin/sh", name="sh")
    table.put(parent)
    builder = DocumentBuilder(HOST, boot_wall_offset_ns=0)

    def document(rec: ExecRecord) -> dict:
        proc = table.on_exec(rec, "/")
        return builder.process_event(kind="exec", ktime_ns=rec.ktime_ns, sequence=1, proc=proc, parent=parent,
                                     leaders=Leaders(group=proc, session=proc, entry=proc, entry_type="unknown"),
                                     container=None, cgroup_path=None)

    doc = document(exec_record())
    assert doc["container_sensor"]["executable"]["path_truncated"] is True
    assert doc["process"]["executable"] == CUT and doc["process"]["name"] == "sshd.fake"
    doc = document(exec_record(pid=301, comm=b"a-rather-long-p"))
    assert "name" not in doc["process"]
    doc = document(exec_record(pid=302, filename=b"/bin/true", comm=b"true", path_truncated=False))
    assert doc["container_sensor"]["executable"]["path_truncated"] is False and doc["process"]["name"] == "true"


def test_session_types_do_not_read_a_cut_path() -> None:
    """A child of "sshd" gets the entry type sshd; a parent whose cut path ends in /sshd is not sshd."""
    def proc(pid: int, ppid: int, exe: str, name: str, cut: bool) -> Process:
        return Process(pid=pid, ppid=ppid, start_boottime_ns=pid, entity_id=f"e{pid}", executable=exe, name=name,
                       sid=pid, pgid=pid, path_truncated=cut)

    for cut, expected in ((False, SSHD), (True, None)):
        table = ProcessTable("boot-1")
        for p in (Process(pid=1, ppid=0, start_boottime_ns=1, entity_id="e1", executable="/sbin/init",
                          name="init", sid=1, pgid=1),
                  proc(700, 1, CUT, "sshd.fake", cut), proc(710, 700, "/usr/bin/bash", "bash", False)):
            table.put(p)
        leaders = find_leaders(table.get(710), table, None)
        assert (leaders.entry_type == SSHD) == (expected == SSHD), cut


def container_doc(executable: str, name: str, cut: bool, device: int, inode: int) -> dict:
    return {
        "event": {"kind": "event", "action": "exec", "type": ["start"], "id": "e1"},
        "process": {"pid": 2**22 + 1, "name": name, "executable": executable, "parent": {"pid": 2**22 + 2},
                    "entry_leader": {"pid": 2**22 + 3, "entry_meta": {"type": "container"}}},
        "container": {"id": "c" * 64},
        "container_sensor": {"executable": {"device": device, "inode": inode, "ctime_ns": 1, "path_truncated": cut}},
    }


def test_builtin_rule_does_not_take_a_cut_path_for_ssh() -> None:
    st = os.stat(sys.executable)  # some file that is not ssh, under pids that do not exist
    detector = Detector([], proc_root="/proc", identity_wait_s=0.5)
    alerts, _ = detector.inspect(container_doc(CUT, "sshd.fake", True, st.st_dev, st.st_ino))
    assert alerts == []
    # the same document without the flag: its path's last component is believed, as for any whole path
    alerts, _ = detector.inspect(container_doc(CUT, "sshd.fake", False, st.st_dev, st.st_ino + 1))
    assert [a["container_sensor"]["alert"]["recognized_by"] for a in alerts] == ["name"]
    # a cut path hiding ssh: comm, the kernel's own name for the file, still says ssh
    alerts, _ = detector.inspect(container_doc("/dev/fd/100/" + "b" * 200, "ssh", True, st.st_dev, st.st_ino + 2))
    assert [a["container_sensor"]["alert"]["program"] for a in alerts] == ["ssh"]


def _table() -> ProcessTable:
    return ProcessTable(boot_id="boot-1")


def _document(proc: Process) -> dict:
    return DocumentBuilder(HOST, boot_wall_offset_ns=0).process_event(
        kind="exec", ktime_ns=2_000_000_000, sequence=1, proc=proc, parent=None,
        leaders=Leaders(group=proc, session=proc, entry=proc, entry_type="unknown"), container=None,
        cgroup_path=None)


def test_the_file_walked_in_the_kernel_is_the_executable_and_the_path_passed_is_kept() -> None:
    """/bin/sh -> /usr/bin/dash: Elastic Defend's process.executable and process.name are the file's."""
    proc = _table().on_exec(exec_record(filename=b"/bin/sh", path_truncated=False, exe_path=b"/usr/bin/dash"))
    assert (proc.executable, proc.name, proc.passed, proc.path_truncated) == ("/usr/bin/dash", "dash", "/bin/sh",
                                                                              False)
    doc = _document(proc)
    assert doc["process"]["executable"] == "/usr/bin/dash" and doc["process"]["name"] == "dash"
    assert doc["container_sensor"]["executable"]["passed"] == "/bin/sh"


def test_a_relative_path_passed_is_made_absolute_and_left_out_when_it_is_the_file() -> None:
    table = _table()
    relative = table.on_exec(exec_record(filename=b"./bin/tool", path_truncated=False, exe_path=b"/usr/bin/true"),
                             cwd="/work")
    assert (relative.executable, relative.passed) == ("/usr/bin/true", "/work/bin/tool")
    same = table.on_exec(exec_record(pid=301, filename=b"bin/true", path_truncated=False, exe_path=b"/usr/bin/true"),
                         cwd="/usr")
    assert (same.executable, same.passed) == ("/usr/bin/true", "")
    assert "passed" not in _document(same)["container_sensor"]["executable"]


def test_a_cut_path_passed_gives_way_to_the_whole_file_walked() -> None:
    """The cut path is no path: the walked file names the process, and the cut one is kept nowhere."""
    proc = _table().on_exec(exec_record(exe_path=b"/tmp/deep/sshd.fake"))
    assert (proc.executable, proc.name, proc.passed, proc.path_truncated) == ("/tmp/deep/sshd.fake", "sshd.fake",
                                                                              "", False)


def test_without_the_walk_the_path_passed_names_the_process_as_before() -> None:
    """A recording made before the walk, or a file deeper than the probe walks."""
    proc = _table().on_exec(exec_record(filename=b"/bin/sh", path_truncated=False))
    assert (proc.executable, proc.name, proc.passed) == ("/bin/sh", "sh", "")
    assert _table().on_exec(exec_record()).path_truncated is True


def test_a_fork_keeps_the_path_its_parent_was_run_by() -> None:
    table = _table()
    table.on_exec(exec_record(filename=b"/bin/sh", path_truncated=False, exe_path=b"/usr/bin/dash"))
    child = table.on_fork(ForkRecord(ktime_ns=3, parent_pid=300, pid=302, start_boottime_ns=2_000_000_001,
                                     cgroup_id=77))
    assert (child.executable, child.passed) == ("/usr/bin/dash", "/bin/sh")
