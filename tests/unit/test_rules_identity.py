"""Recognising ssh/sshd/autossh by identity on real files: name, symlink, hard link, renamed copy, content."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sensor.containers.rootfs import resolve_in_root
from sensor.rules import identity as identity_module
from sensor.rules.container_files import program_from_content
from sensor.rules.identity import UNREADABLE_RETRY_S, ExecutableIdentity, Recognition

SSH = Path("/usr/bin/ssh")
SSHD = Path("/usr/sbin/sshd")
AUTOSSH = Path("/usr/lib/autossh/autossh")   # Debian's binary; /usr/bin/autossh is a wrapper script

needs_ssh = pytest.mark.skipif(not SSH.exists() or not SSHD.exists(),
                               reason="apt-get install -y openssh-client openssh-server")


@pytest.fixture
def beside_ssh() -> Iterator[Path]:
    """A scratch folder on the same filesystem as /usr/bin/ssh, so hard links to it can be made."""
    folder = Path(tempfile.mkdtemp(prefix="identity-", dir="/var/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def classify(identity: ExecutableIdentity, path: Path, name: str | None = None) -> Recognition | None:
    st = os.stat(path)
    return identity.classify(str(path), name or path.name, st.st_dev, st.st_ino, [os.getpid()])


@needs_ssh
def test_name(beside_ssh: Path) -> None:
    identity = ExecutableIdentity(host_paths=())
    assert classify(identity, SSH) == Recognition("ssh", "name")
    assert classify(identity, SSHD) == Recognition("sshd", "name")


@needs_ssh
def test_symlink(beside_ssh: Path) -> None:
    link = beside_ssh / "slogin"
    link.symlink_to(SSH)
    recognition = classify(ExecutableIdentity(), link)
    assert recognition is not None
    assert (recognition.program, recognition.way, recognition.target) == ("ssh", "symlink", str(SSH))
    chained = beside_ssh / "rlogin"
    chained.symlink_to("slogin")   # relative, through the first link
    recognition = classify(ExecutableIdentity(host_paths=()), chained)
    assert recognition is not None and recognition.way == "symlink" and recognition.target == str(SSH)


@needs_ssh
def test_hard_link(beside_ssh: Path) -> None:
    if os.stat(beside_ssh).st_dev != os.stat(SSH).st_dev:
        pytest.skip("/var/tmp is not on the filesystem of /usr/bin/ssh")
    link = beside_ssh / "scp-helper"
    os.link(SSH, link)
    assert classify(ExecutableIdentity(), link) == Recognition("ssh", "hardlink")
    # known by content alone as well (no host inventory)
    assert classify(ExecutableIdentity(host_paths=()), link) == Recognition("ssh", "hardlink")


@needs_ssh
def test_renamed_copy_is_recognised_by_content(beside_ssh: Path) -> None:
    copy = beside_ssh / "kworker"
    shutil.copy2(SSH, copy)
    daemon = beside_ssh / "httpd"
    shutil.copy2(SSHD, daemon)
    identity = ExecutableIdentity()
    assert classify(identity, copy) == Recognition("ssh", "content")
    assert classify(identity, daemon) == Recognition("sshd", "content")
    assert identity.counts["identity_content_reads"] == 2


@pytest.mark.skipif(not AUTOSSH.exists(), reason="apt-get install -y autossh")
def test_autossh_copy(beside_ssh: Path) -> None:
    copy = beside_ssh / "monitor"
    shutil.copy2(AUTOSSH, copy)
    assert classify(ExecutableIdentity(), copy) == Recognition("autossh", "content")


def test_other_programs_are_not_ssh(beside_ssh: Path) -> None:
    identity = ExecutableIdentity()
    true = Path(shutil.which("true") or "/bin/true")
    assert classify(identity, true) is None
    script = beside_ssh / "x"
    script.write_text("#!/bin/sh\necho OpenSSH_9.2p1 usage: ssh [\n")
    assert classify(identity, script) is None


def test_exec_storm_costs_one_lookup() -> None:
    identity = ExecutableIdentity()
    true = Path(shutil.which("true") or "/bin/true")
    for _ in range(1000):
        assert classify(identity, true) is None
    assert identity.counts["identity_lookups"] == 1
    assert identity.counts["identity_content_reads"] == 1
    assert identity.counts["identity_cache_hits"] == 999


def test_cached_verdict_is_rechecked_when_the_file_changed(beside_ssh: Path) -> None:
    """A recycled inode number shows up as a new ctime on /proc/<pid>/exe: the verdict is looked up again."""
    sleeper = beside_ssh / "napper"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", sleeper)
    child = subprocess.Popen([str(sleeper), "30"])
    try:
        st = os.stat(sleeper)
        identity = ExecutableIdentity()
        for _ in range(2):
            assert identity.classify(str(sleeper), "napper", st.st_dev, st.st_ino, [child.pid]) is None
        assert (identity.counts["identity_lookups"], identity.counts["identity_cache_hits"]) == (1, 1)
        os.chmod(sleeper, 0o700)   # new ctime, as a new file under the same inode number would have
        assert identity.classify(str(sleeper), "napper", st.st_dev, st.st_ino, [child.pid]) is None
        assert identity.counts["identity_stale"] == 1 and identity.counts["identity_lookups"] == 2
    finally:
        child.kill()
        child.wait()


def test_kernel_ctime_checks_the_cache_without_looking_at_the_file(beside_ssh: Path) -> None:
    """With the change time the probe took at exec, a cached verdict needs no stat of /proc/<pid>/exe: the
    process may be long gone, and a new file under a recycled inode number still gets a fresh look."""
    sleeper = beside_ssh / "napper"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", sleeper)
    st = os.stat(sleeper)
    gone = [2**22 + 12345]  # a pid no process has: only the kernel's ctime can vouch for the cache
    identity = ExecutableIdentity()
    assert identity.classify(str(sleeper), "napper", st.st_dev, st.st_ino, [os.getpid()], st.st_ctime_ns) is None
    for _ in range(3):
        assert identity.classify(str(sleeper), "napper", st.st_dev, st.st_ino, gone, st.st_ctime_ns) is None
    assert (identity.counts["identity_lookups"], identity.counts["identity_cache_hits"]) == (1, 3)
    assert identity.classify(str(sleeper), "napper", st.st_dev, st.st_ino, gone, st.st_ctime_ns + 1) is None
    assert identity.counts["identity_stale"] == 1 and identity.counts["identity_lookups"] == 2


@needs_ssh
def test_only_the_head_of_a_large_file_is_searched(beside_ssh: Path) -> None:
    padded = beside_ssh / "padded"
    shutil.copy2(SSH, padded)
    with open(padded, "r+b") as out:
        out.truncate(3 * 1024 * 1024)          # a copy of ssh padded with zeros still runs and is still ssh
    big = beside_ssh / "big"
    with open(big, "wb") as out:
        out.write(b"\x7fELF")
        out.truncate(3 * 1024 * 1024)
        out.seek(2 * 1024 * 1024)
        out.write(b"OpenSSH_9 usage: ssh [")   # beyond the searched head
    identity = ExecutableIdentity(max_read_bytes=2 * 1024 * 1024)
    assert classify(identity, padded) == Recognition("ssh", "content")
    assert classify(identity, big) is None
    assert identity.counts["identity_partial_scans"] == 2 and identity.counts["identity_content_reads"] == 2


def test_unreachable_file_is_counted_and_retried_only_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = ExecutableIdentity(host_paths=())
    for _ in range(100):
        assert identity.classify("/nonexistent/x", "x", 1, 1, [os.getpid()]) is None
    assert identity.counts["identity_unreadable"] == 100
    assert identity.counts["identity_lookups"] == 1
    later = time.monotonic() + UNREADABLE_RETRY_S + 1
    monkeypatch.setattr(identity_module.time, "monotonic", lambda: later)
    assert identity.classify("/nonexistent/x", "x", 1, 1, [os.getpid()]) is None
    assert identity.counts["identity_lookups"] == 2


@needs_ssh
def test_content_markers() -> None:
    assert program_from_content(SSH.read_bytes()) == "ssh"
    assert program_from_content(SSHD.read_bytes()) == "sshd"
    assert program_from_content(Path(shutil.which("true") or "/bin/true").read_bytes()) == ""
    assert program_from_content(b"OpenSSH_9 usage: ssh [") == ""   # not ELF


def test_resolution_stays_inside_the_container_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("inside")
    (root / "bin").symlink_to("/usr/bin")          # absolute: must mean <root>/usr/bin, not the host's
    (root / "usr/bin/alias").symlink_to("/usr/bin/tool")
    host_path, is_link = resolve_in_root(str(root), "/bin/tool")
    assert (host_path, is_link) == (f"{root}/usr/bin/tool", False)
    host_path, is_link = resolve_in_root(str(root), "/bin/alias")
    assert (host_path, is_link) == (f"{root}/usr/bin/alias", True)
    host_path, _ = resolve_in_root(str(root), "/../../../etc/passwd")
    assert host_path == f"{root}/etc/passwd"


@needs_ssh
def test_a_root_where_the_path_is_another_file_is_not_believed(tmp_path: Path) -> None:
    """/proc/<pid>/root of a relative outside the container (a runtime shim's parent) shows another tree; a
    symlink there at the same path must not be taken for the one executed. A fake proc root, real files."""
    proc = tmp_path / "proc"
    host_like = proc / "100" / "root"
    container = proc / "200" / "root"
    for root in (host_like, container):
        (root / "usr/bin").mkdir(parents=True)
    (host_like / "usr/bin/other").write_bytes(b"not ssh")
    (host_like / "usr/bin/slogin").symlink_to("other")
    shutil.copy2(SSH, container / "usr/bin/ssh")
    (container / "usr/bin/slogin").symlink_to("/usr/bin/ssh")
    st = os.stat(container / "usr/bin/ssh")
    identity = ExecutableIdentity(proc_root=str(proc), host_paths=())
    found = identity.classify("/usr/bin/slogin", "slogin", st.st_dev, st.st_ino, [100, 200])
    assert found == Recognition("ssh", "symlink", "/usr/bin/ssh")
    assert ExecutableIdentity(proc_root=str(proc), host_paths=()).classify(
        "/usr/bin/slogin", "slogin", st.st_dev, st.st_ino, [100]) is None


DROPBEAR = Path("/usr/sbin/dropbear")
DBCLIENT = Path("/usr/bin/dbclient")


@pytest.mark.skipif(not DROPBEAR.exists() or not DBCLIENT.exists(), reason="apt-get install -y dropbear-bin")
def test_dropbear_server_and_client_by_content() -> None:
    assert program_from_content(DROPBEAR.read_bytes()) == "dropbear"
    assert program_from_content(DBCLIENT.read_bytes()) == "dbclient"


def test_a_multi_call_dropbear_and_a_session_server_by_content() -> None:
    """dropbearmulti carries both banners; OpenSSH's sshd-session (9.8+) has no usage line, only the server's
    privilege separation step beside the version."""
    elf = b"\x7fELF" + b"\0" * 60
    assert program_from_content(elf + b"Dropbear server v%s\0Dropbear SSH client v%s\0") == "dropbearmulti"
    assert program_from_content(elf + b"OpenSSH_9.8\0privsep_preauth failed\0") == "sshd"
    assert program_from_content(elf + b"privsep_preauth failed\0") == ""   # not OpenSSH's


def test_implementation_and_role_of_each_program() -> None:
    from sensor.rules.identity import program_kind
    assert program_kind("sshd-session") == ("openssh", "server")
    assert program_kind("sshd-auth") == ("openssh", "server")
    assert program_kind("ssh") == ("openssh", "client")
    assert program_kind("autossh") == ("autossh", "client")
    assert program_kind("dropbear") == ("dropbear", "server")
    assert program_kind("dbclient") == ("dropbear", "client")
    assert program_kind("dropbearmulti", "dbclient") == ("dropbear", "client")
    assert program_kind("dropbearmulti", "dropbear") == ("dropbear", "server")
    assert program_kind("dropbearmulti", "kworker") == ("dropbear", "unknown")


def test_every_implementation_is_known_by_name() -> None:
    for name in ("sshd-session", "sshd-auth", "dropbear", "dbclient", "dropbearmulti"):
        assert ExecutableIdentity.by_name(f"/usr/lib/x/{name}", None) == name
    assert ExecutableIdentity.by_name("/usr/bin/dropbearkey", "dropbearkey") is None   # a key tool, no ssh
