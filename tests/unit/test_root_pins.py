"""Roots held open: a file under a container's root stays reachable after every process of it is gone, within
bounds, and the host's root is never taken for a container's."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sensor.containers.rootpins import RootPins
from sensor.rules.identity import EVIDENCE_PINNED_ROOT, ExecutableIdentity

SSH = Path("/usr/bin/ssh")


@contextmanager
def chrooted(root: Path) -> Iterator[int]:
    """A child process whose root is `root` (no exec needed: python chroots itself and sleeps)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.chroot(root)
            os.chdir("/")
            os.write(ready_w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"x"
        yield pid
    finally:
        os.close(ready_r)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_root_stays_reachable_after_its_last_process_is_gone(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "kworker").write_bytes(b"payload")
    pins = RootPins()
    with chrooted(tmp_path) as pid:
        pins.see(pid, 4026530000)
    assert pins.pinned == 1 and pins.counts["root_pins_taken"] == 1
    roots = pins.dup_roots(4026530000)
    try:
        assert len(roots) == 1
        assert Path(f"/proc/self/fd/{roots[0]}/tmp/kworker").read_bytes() == b"payload"
    finally:
        for fd in roots:
            os.close(fd)
    pins.see(os.getpid(), 4026530000)   # the same namespace again: nothing new opened (the host's root)
    assert pins.pinned == 1


def test_the_hosts_root_is_not_pinned(tmp_path: Path) -> None:
    """The runtime's processes enter a container's namespaces before they change root."""
    pins = RootPins()
    pins.see(os.getpid(), 4026530001)
    assert pins.pinned == 0 and pins.dup_roots(4026530001) == []


def test_bounds_per_namespace_in_all_and_idle_release(tmp_path: Path) -> None:
    now = [100.0]
    pins = RootPins(max_total=2, per_namespace=1, idle_s=10.0, clock=lambda: now[0])
    roots = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        roots.append(tmp_path / name)
    with chrooted(roots[0]) as first, chrooted(roots[1]) as second, chrooted(roots[2]) as third:
        pins.see(first, 1)
        pins.see(second, 1)   # a second root in namespace 1: over its bound of one
        pins.see(second, 2)
        pins.see(third, 3)    # over the bound of two in all: refused and counted
    assert pins.pinned == 2 and pins.counts["root_pins_refused"] == 1
    now[0] += 5.0
    pins.see(os.getpid(), 2)  # namespace 2 is still active; 1 is not seen again
    now[0] += 6.0
    pins.see(os.getpid(), 2)
    assert pins.pinned == 1 and pins.counts["root_pins_released"] == 1
    assert pins.dup_roots(1) == []
    pins.close()
    assert pins.pinned == 0


def test_a_gone_process_is_counted_not_raised() -> None:
    pins = RootPins()
    pins.see(2**22 + 12345, 7)
    assert pins.counts["root_pins_unreachable"] == 1 and pins.pinned == 0


@pytest.mark.skipif(not SSH.exists(), reason="openssh-client missing")
def test_a_copy_of_ssh_in_a_gone_container_is_read_through_the_pinned_root(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    copy = tmp_path / "tmp" / "kworker"
    copy.write_bytes(SSH.read_bytes())
    copy.chmod(0o755)
    st = copy.stat()
    pins = RootPins()
    with chrooted(tmp_path) as pid:
        pins.see(pid, 4026530002)
        gone = pid
    roots = pins.dup_roots(4026530002)
    try:
        identity = ExecutableIdentity(host_paths=())
        outcome = identity.check("/tmp/kworker", "kworker", st.st_dev, st.st_ino, [gone], st.st_ctime_ns,
                                 roots=roots)
    finally:
        for fd in roots:
            os.close(fd)
    assert outcome.recognition is not None
    assert (outcome.recognition.program, outcome.recognition.evidence) == ("ssh", EVIDENCE_PINNED_ROOT)


@pytest.mark.skipif(not SSH.exists(), reason="openssh-client missing")
def test_the_file_held_since_the_exec_outlives_mv_and_rm_and_a_rewrite_is_not_settled(tmp_path: Path) -> None:
    """`held` is the executed file itself: replaced by `mv -f` or deleted, it is still what ran. Written into
    after the process ended (its change time moved), what it says now is not what ran: undecided, not 'not ssh'."""
    copy = tmp_path / "kworker"
    copy.write_bytes(SSH.read_bytes())
    st = copy.stat()
    held = os.open(copy, os.O_RDONLY)
    try:
        other = tmp_path / "other"
        other.write_bytes(b"\x7fELF" + b"\0" * 4096)
        other.replace(copy)                          # mv -f
        identity = ExecutableIdentity(host_paths=())
        outcome = identity.check(str(copy), "kworker", st.st_dev, st.st_ino, [], st.st_ctime_ns, held=held)
        assert outcome.recognition is not None and outcome.recognition.program == "ssh"
        assert outcome.recognition.evidence == "executed_file"
        os.lseek(held, 0, os.SEEK_SET)
        with open(f"/proc/self/fd/{held}", "r+b") as rewrite:   # the same inode, written into
            rewrite.write(b"\x7fELF" + b"\0" * 64)
            rewrite.truncate()
        later = ExecutableIdentity(host_paths=())
        outcome = later.check(str(copy), "kworker", st.st_dev, st.st_ino, [], st.st_ctime_ns, held=held)
        assert outcome.recognition is None and outcome.unknown == "replaced"
    finally:
        os.close(held)


@pytest.mark.skipif(not SSH.exists(), reason="openssh-client missing")
def test_a_gone_file_is_known_by_the_head_the_kernel_read() -> None:
    """Nothing left to read (process, container and file gone): the size and the hash of the first 256 bytes the
    kernel read at exec name the build, learned from the host's ssh; a file of another build stays unknown."""
    from sensor.rules.identity import EVIDENCE_FINGERPRINT, head_hash
    head = SSH.read_bytes()[:256]
    fingerprint = (SSH.stat().st_size, head_hash(head))
    identity = ExecutableIdentity()   # learns the host's ssh binaries, and their builds
    outcome = identity.check("/tmp/kworker", "kworker", 1, 999_999_999, [], 5, fingerprint=fingerprint)
    assert outcome.recognition is not None
    assert (outcome.recognition.program, outcome.recognition.way, outcome.recognition.evidence) == (
        "ssh", "fingerprint", EVIDENCE_FINGERPRINT)
    other = identity.check("/tmp/other", "other", 1, 999_999_998, [], 5, fingerprint=(fingerprint[0] + 1,
                                                                                   fingerprint[1]))
    assert other.recognition is None and other.unknown == "unreachable"


def test_the_head_hash_is_the_probes() -> None:
    """The same FNV-1a as bpf/sensor.c: a short file is hashed as the kernel's zero-filled buffer."""
    from sensor.rules.identity import head_hash
    assert head_hash(b"") == head_hash(b"\0" * 256)
    assert head_hash(b"\x7fELF") != head_hash(b"\x7fELF\x01")
    assert head_hash(b"x" * 300) == head_hash(b"x" * 256)


@pytest.mark.skipif(not SSH.exists(), reason="openssh-client missing")
def test_written_over_within_the_tick_of_the_copy_the_head_tells(tmp_path: Path) -> None:
    """A change time ticks coarsely: a copy written over within the same tick keeps the ctime the kernel recorded
    at exec. The size and head recorded at exec still tell the file is not what ran, and name its build."""
    from sensor.rules.identity import head_hash
    copy = tmp_path / "kworker"
    data = SSH.read_bytes()
    fingerprint = (len(data), head_hash(data[:256]))
    copy.write_bytes(Path("/bin/true").read_bytes())   # what is there now
    st = copy.stat()
    identity = ExecutableIdentity()
    with open(copy, "rb") as held:
        outcome = identity.check(str(copy), "kworker", st.st_dev, st.st_ino, [], st.st_ctime_ns, held=held.fileno(),
                                 fingerprint=fingerprint)
    assert outcome.recognition is not None and outcome.recognition.way == "fingerprint"
    assert not identity.settled_not_ssh(st.st_dev, st.st_ino, st.st_ctime_ns)
