"""The ssh identity check against files a container controls: truncated while read, FIFOs, links out of the
root, and looks that never return. Real files, real FIFOs, real threads."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from sensor.rules.builtin_ssh import UNKNOWN_BUSY, UNKNOWN_DEFERRED, UNKNOWN_TIMEOUT, BuiltinSshRule
from sensor.rules.container_files import scan_file
from sensor.rules.detector import Detector
from sensor.rules.identity import (
    UNKNOWN_REPLACED,
    UNKNOWN_TIME_BUDGET,
    UNKNOWN_UNREACHABLE,
    ExecutableIdentity,
    Outcome,
    Recognition,
)
from sensor.rules.offthread import BoundedWorker

SSH = Path("/usr/bin/ssh")
needs_ssh = pytest.mark.skipif(not SSH.exists(), reason="apt-get install -y openssh-client")


def fake_root(tmp_path: Path, pid: int = 200) -> tuple[Path, Path]:
    proc = tmp_path / "proc"
    root = proc / str(pid) / "root"
    (root / "usr/bin").mkdir(parents=True)
    return proc, root


def within(seconds: float, fn, *args):
    """fn(*args) on a thread; fails the test (instead of hanging the suite) when it has not returned in time."""
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds}s"
    return box.get("result")


@needs_ssh
def test_file_truncated_while_it_is_read_costs_nothing(tmp_path: Path) -> None:
    """A mapped file truncated under the reader kills it with SIGBUS; reads by pread just come up short. This
    test process itself would die under a mapping reader."""
    victim = tmp_path / "victim"
    stop = threading.Event()

    def truncate_forever() -> None:
        while not stop.is_set():
            with open(victim, "r+b") as handle:
                handle.truncate(4096)
                handle.truncate(64 * 1024 * 1024)

    shutil.copy2(SSH, victim)
    with open(victim, "r+b") as handle:
        handle.truncate(64 * 1024 * 1024)
    cutter = threading.Thread(target=truncate_forever, daemon=True)
    cutter.start()
    try:
        for _ in range(200):
            fd = os.open(victim, os.O_RDONLY)
            try:
                program, finished = scan_file(fd, 64 * 1024 * 1024, 64 * 1024 * 1024, time.monotonic() + 5)
            finally:
                os.close(fd)
            assert finished and program in ("", "ssh")
    finally:
        stop.set()
        cutter.join()


def test_a_fifo_at_the_path_does_not_block_and_says_replaced(tmp_path: Path) -> None:
    """The exec'd process is gone; its path inside the container is now a FIFO nobody writes to."""
    proc, root = fake_root(tmp_path)
    os.mkfifo(root / "usr/bin/tool")
    identity = ExecutableIdentity(proc_root=str(proc), host_paths=())
    outcome = within(5, identity.check, "/usr/bin/tool", "tool", 1, 123456789, [999999, 200])
    assert outcome == Outcome(None, UNKNOWN_REPLACED)
    assert identity.counts["identity_replaced"] == 1


def test_a_fifo_with_the_executed_inode_is_never_read(tmp_path: Path) -> None:
    """Even when the (device, inode) matches, only a regular file is read."""
    proc, root = fake_root(tmp_path)
    fifo = root / "usr/bin/tool"
    os.mkfifo(fifo)
    st = os.stat(fifo)
    identity = ExecutableIdentity(proc_root=str(proc), host_paths=())
    outcome = within(5, identity.check, "/usr/bin/tool", "tool", st.st_dev, st.st_ino, [200])
    assert outcome.recognition is None and outcome.unknown == UNKNOWN_REPLACED
    assert identity.counts["identity_content_reads"] == 0


@needs_ssh
def test_links_are_resolved_inside_the_root_by_the_kernel(tmp_path: Path) -> None:
    """An absolute link inside the container means the container's file, never the host's, even in a
    directory component."""
    proc, root = fake_root(tmp_path)
    (root / "opt").mkdir()
    (root / "opt/real").mkdir()
    shutil.copy2(SSH, root / "opt/real/tool")
    (root / "opt/link").symlink_to("/opt/real")        # absolute: the host has no /opt/real
    (root / "usr/bin/tool").symlink_to("../../opt/link/tool")
    st = os.stat(root / "opt/real/tool")
    identity = ExecutableIdentity(proc_root=str(proc), host_paths=())
    found = identity.check("/opt/link/tool", "tool", st.st_dev, st.st_ino, [200])
    assert found.recognition is not None and found.recognition.program == "ssh"
    # A link to a host file of the same path is not followed out of the root: the host's ssh is not read
    # when the container's path leads nowhere inside it.
    host_ssh = os.stat(SSH)
    (root / "usr/bin/escape").symlink_to("/../../../../../../usr/bin/ssh")
    outcome = ExecutableIdentity(proc_root=str(proc), host_paths=()).check(
        "/usr/bin/escape", "escape", host_ssh.st_dev, host_ssh.st_ino, [200])
    assert outcome == Outcome(None, UNKNOWN_UNREACHABLE)


@needs_ssh
def test_without_openat2_the_last_component_is_not_followed_blindly(tmp_path: Path) -> None:
    proc, root = fake_root(tmp_path)
    shutil.copy2(SSH, root / "usr/bin/kworker")
    st = os.stat(root / "usr/bin/kworker")
    identity = ExecutableIdentity(proc_root=str(proc), host_paths=())
    identity._opener.kernel_resolves = False
    assert identity.check("/usr/bin/kworker", "kworker", st.st_dev, st.st_ino, [200]) == \
        Outcome(Recognition("ssh", "content"))


def test_a_read_that_runs_out_of_time_is_unknown_not_settled(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as out:
        out.write(b"\x7fELF")
        out.truncate(32 * 1024 * 1024)
    st = os.stat(big)
    identity = ExecutableIdentity(host_paths=(), max_read_bytes=32 * 1024 * 1024, max_check_s=0.0)
    outcome = identity.check(str(big), "big", st.st_dev, st.st_ino, [os.getpid()])
    assert outcome == Outcome(None, UNKNOWN_TIME_BUDGET)
    assert not identity.settled_not_ssh(st.st_dev, st.st_ino, st.st_ctime_ns)


def test_a_look_that_never_returns_costs_the_caller_only_its_wait() -> None:
    gate = threading.Event()
    worker = BoundedWorker("test", wait_s=0.05, wait_share=1.0, stuck_after_s=0.1, max_threads=2, max_queued=2)
    started = time.monotonic()
    stuck = worker.call(gate.wait, 30)
    assert not stuck.done.is_set() and stuck.waited > 0 and time.monotonic() - started < 1
    time.sleep(0.15)                          # the first thread is now stuck: the next look gets another
    quick = worker.call(lambda: 7)
    assert quick.done.is_set() and quick.result == 7
    time.sleep(0.15)
    worker.call(gate.wait, 30)                # both threads stuck, at the cap: looks queue up
    queued = [worker.call(lambda: 8) for _ in range(2)]
    assert not any(job.done.is_set() for job in queued)
    refused = worker.call(lambda: 9)
    assert refused.refused and worker.stats()["refused"] == 1 and worker.stats()["stuck_now"] == 2
    gate.set()
    assert stuck.done.wait(5) and stuck.result is True
    assert all(job.done.wait(5) and job.result == 8 for job in queued)
    assert worker.call(lambda: 10).result == 10 and worker.stats()["threads"] == 2


def test_the_loop_waits_only_its_share_of_time_for_looks() -> None:
    """A flood of slow looks queues up instead of slowing every event: once the loop has waited its share of a
    second, it stops waiting (the looks still run)."""
    worker = BoundedWorker("test", wait_s=0.1, wait_share=0.05)
    started = time.monotonic()
    jobs = [worker.call(time.sleep, 0.02) for _ in range(20)]
    assert time.monotonic() - started < 0.2
    assert sum(1 for job in jobs if job.waited == 0) >= 15
    assert worker.stats()["deferred"] >= 15
    assert all(job.done.wait(5) for job in jobs)


class GatedIdentity(ExecutableIdentity):
    """A real identity whose look at one file waits for the test: stands in for a file server (FUSE, NFS) that
    takes as long as its owner wants."""

    def __init__(self, gate: threading.Event, *slow_inodes: int) -> None:
        super().__init__(host_paths=())
        self.gate = gate
        self.slow_inodes = set(slow_inodes)

    def check(self, executable, process_name, device, inode, pids, ctime_ns=None,  # type: ignore[override]
              **kwargs):
        if inode in self.slow_inodes:
            self.gate.wait(30)
        return super().check(executable, process_name, device, inode, pids, ctime_ns, **kwargs)


def container_exec(executable: str, device: int, inode: int, pid: int) -> dict:
    return {
        "event": {"kind": "event", "action": "exec", "type": ["start"], "id": f"e{pid}"},
        "process": {"pid": pid, "name": os.path.basename(executable), "executable": executable,
                    "parent": {"pid": 1}, "entry_leader": {"pid": 1, "entry_meta": {"type": "container"}}},
        "container": {"id": "c" * 64},
        "container_sensor": {"executable": {"device": device, "inode": inode, "ctime_ns": 1}},
    }


def gated_detector(tmp_path: Path, wait_s: float, *slow_inodes: int) -> tuple[Detector, threading.Event, Path,
                                                                               os.stat_result]:
    """A detector whose looks at a copy of ssh (and at SLOW_INODES) wait for the returned gate."""
    copy = tmp_path / "kworker"
    shutil.copy2(SSH, copy)
    st = os.stat(copy)
    gate = threading.Event()
    detector = Detector([], proc_root="/proc", identity_wait_s=wait_s)
    rule = detector._builtin
    assert isinstance(rule, BuiltinSshRule)
    rule.identity = GatedIdentity(gate, st.st_ino, *slow_inodes)
    return detector, gate, copy, st


@needs_ssh
def test_slow_identity_marks_the_document_unknown_and_alerts_late(tmp_path: Path) -> None:
    detector, gate, copy, st = gated_detector(tmp_path, 0.05)
    started = time.monotonic()
    alerts, note = detector.inspect(container_exec(str(copy), st.st_dev, st.st_ino, os.getpid()))
    assert time.monotonic() - started < 1
    assert alerts == [] and note == {"status": "unknown", "reason": UNKNOWN_TIMEOUT}
    assert detector.tick(time.monotonic()) == []
    gate.set()
    deadline = time.monotonic() + 5
    late: list[dict] = []
    while not late and time.monotonic() < deadline:
        time.sleep(0.02)
        late = detector.tick(time.monotonic())
    assert len(late) == 1
    assert late[0]["container_sensor"]["alert"]["identity_late"] is True
    assert late[0]["container_sensor"]["alert"]["recognized_by"] == "content"
    stats = detector.stats()
    assert stats["identity_timeouts"] == 1 and stats["identity_late_matches"] == 1
    assert stats["identity_unknown"] == 1


def test_looks_stuck_everywhere_refuse_new_ones_at_once(tmp_path: Path) -> None:
    gate = threading.Event()
    detector = Detector([], proc_root="/proc", identity_wait_s=0.02)
    rule = detector._builtin
    assert isinstance(rule, BuiltinSshRule)
    rule.identity = GatedIdentity(gate, 4242, 4243, 4244, 4245)
    rule.worker.max_queued = 2
    rule.worker.max_threads = 1
    rule.worker.wait_share = 1.0
    try:
        notes = [detector.inspect(container_exec("/usr/bin/x", 1, 4242 + i, 10 + i))[1] for i in range(3)]
        assert notes == [{"status": "unknown", "reason": UNKNOWN_TIMEOUT}] * 3  # one running, two queued
        # the same file again: answered by the look already under way, not queued a second time
        _, note = detector.inspect(container_exec("/usr/bin/x", 1, 4242, 15))
        assert note == {"status": "unknown", "reason": UNKNOWN_DEFERRED}
        assert detector.stats()["identity_coalesced"] == 1
        started = time.monotonic()
        _, note = detector.inspect(container_exec("/usr/bin/y", 1, 4245, 20))
        assert note == {"status": "unknown", "reason": UNKNOWN_BUSY}
        assert time.monotonic() - started < 0.5
        # ssh by name needs no look: still recognised while the looks are stuck
        alerts, note = detector.inspect(container_exec("/usr/bin/ssh", 1, 9999, 21))
        assert note is None and len(alerts) == 1
    finally:
        gate.set()


@needs_ssh
def test_a_flood_of_one_file_does_not_push_out_the_late_alert_of_another(tmp_path: Path) -> None:
    detector, gate, copy, st = gated_detector(tmp_path, 0.01, 77)
    try:
        assert detector.inspect(container_exec(str(copy), st.st_dev, st.st_ino, os.getpid()))[1] is not None
        for pid in range(100000, 105000):            # one padded file, touched before each exec
            detector.inspect(container_exec("/tmp/pad", st.st_dev, 77, pid))
        assert detector.stats()["identity_coalesced"] >= 4990
    finally:
        gate.set()
    deadline = time.monotonic() + 5
    late: list[dict] = []
    while not late and time.monotonic() < deadline:
        time.sleep(0.02)
        late = [a for a in detector.tick(time.monotonic()) if a["process"]["executable"] == str(copy)]
    assert len(late) == 1 and detector.stats()["identity_pending_dropped"] == 0


@needs_ssh
def test_a_look_still_under_way_at_shutdown_still_alerts(tmp_path: Path) -> None:
    detector, gate, copy, st = gated_detector(tmp_path, 0.01)
    assert detector.inspect(container_exec(str(copy), st.st_dev, st.st_ino, os.getpid()))[1] is not None
    threading.Timer(0.2, gate.set).start()      # the look returns while the sensor is shutting down
    alerts = detector.flush(wait_s=5)
    assert [a["container_sensor"]["alert"]["identity_late"] for a in alerts] == [True]


def test_a_link_whose_file_is_named_ssh_is_ssh_through_a_link_without_a_look(tmp_path: Path) -> None:
    """process.executable is the file the kernel executed: a link /tmp/slogin to /usr/bin/ssh is known at once,
    and said to be a link; a file named ssh run under its own name stays `name`; a link to a file of another
    name is left to the look at the file."""
    identity = ExecutableIdentity(proc_root=str(tmp_path), host_paths=())
    linked = identity.check("/tmp/slogin", "ssh", 1, 2, (), resolved="/usr/bin/ssh").recognition
    assert linked == Recognition("ssh", "symlink", "/usr/bin/ssh")
    direct = identity.check("/usr/bin/sshd", "sshd", 1, 3, ()).recognition
    assert direct == Recognition("sshd", "name")
    assert identity.check("/tmp/x", "busybox", 1, 4, (), resolved="/bin/busybox").recognition is None
