"""Executable paths up to PATH_MAX in the real kernel: whole when execve(2) accepted them, cut and flagged when the
kernel's own path was longer (execveat(2) with a directory fd makes "/dev/fd/N/" + a relative path of up to
4095 bytes), and a cut path never names the process nor is taken for ssh.

Paths are nested directories (each component under 255 bytes). Directories deeper than PATH_MAX are made and
filled through directory file descriptors, as no absolute path can reach them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rootfs import RootfsUnavailable, copy_rootfs
from tests.integration.sensor_process import SHARED, SensorProcess, get, run_and_wait

pytestmark = pytest.mark.kernel

PATH_MAX = 4096
KEPT = PATH_MAX - 1  # path bytes the probe keeps, its NUL aside
COMPONENT = 200  # bytes per directory name, under NAME_MAX (255)
DIR_FD = 100  # the directory fd execveat is given: fixes the length of the kernel's "/dev/fd/100/" prefix
FD_PREFIX = f"/dev/fd/{DIR_FD}/"
# a relative path execveat takes (under PATH_MAX) that the "/dev/fd/100/" prefix makes too long to keep
CUT_REL = KEPT - 2
BUILTIN = "SSH Client or Server Started Inside a Container"
CLOUD_DEFEND_RULE = "Deprecated - SSH Process Launched From Inside A Container"
PODMAN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
          "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]

# execveat(dir, rel, argv) from the host: python itself, so no compiler is needed for the host cases
EXECVEAT_PY = """
import ctypes, os, sys
fd = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
os.dup2(fd, DIR_FD)
argv = (ctypes.c_char_p * (len(sys.argv) - 2))(*[a.encode() for a in sys.argv[3:]], None)
envp = (ctypes.c_char_p * 1)(None)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall(322, DIR_FD, sys.argv[2].encode(), argv, envp, 0)  # SYS_execveat on x86-64
sys.exit("execveat: " + os.strerror(ctypes.get_errno()))
""".replace("DIR_FD", str(DIR_FD))

# the same inside a container, whose root filesystem has no python: a static binary
EXECVEAT_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int fd = open(argv[1], O_PATH | O_DIRECTORY);
    if (fd < 0 || dup2(fd, DIR_FD) < 0) { perror("open"); return 1; }
    char *envp[] = {0};
    syscall(SYS_execveat, DIR_FD, argv[2], argv + 3, envp, 0);
    perror("execveat");
    return 1;
}
""".replace("DIR_FD", str(DIR_FD))


def components(length: int, letter: str = "d") -> list[str]:
    """Directory names that joined with "/" make exactly `length` bytes, none longer than COMPONENT."""
    names: list[str] = []
    used = -1  # no "/" before the first name
    while used < length:
        room = length - used - 1
        size = min(COMPONENT, room)
        if room - size == 1:  # would leave a "/" with no name after it
            size -= 1
        names.append(chr(ord("a") + (ord(letter) - ord("a") + len(names)) % 26) * size)
        used += 1 + size
    return names


def absolute_dir(base: Path, length: int) -> Path:
    """A directory under base whose absolute path has exactly `length` bytes."""
    names = components(length - len(str(base)) - 1)
    path = base.joinpath(*names)
    path.mkdir(parents=True)
    assert len(str(path)) == length
    return path


def relative_tree(base: Path, names: list[str], leaf: str, source: Path) -> None:
    """base/names.../leaf, a copy of source, made through directory fds (the whole may exceed PATH_MAX)."""
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755, dir_fd=fd)
        try:
            os.write(out, source.read_bytes())
        finally:
            os.close(out)
    finally:
        os.close(fd)


def execveat_doc(sensor: SensorProcess, pid: int) -> dict:
    """The exec document of the execveat, not the one of the python that made it (same pid, earlier)."""
    return sensor.wait_for(lambda d: get(d, "event.action") == "exec" and get(d, "process.pid") == pid
                           and str(get(d, "process.executable")).startswith(FD_PREFIX))[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric(address: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^container_sensor_{name} (\S+)$", text, flags=re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def metrics_address() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def paths_sensor(metrics_address: str) -> Iterator[SensorProcess]:
    """Its own sensor, with the Elastic rules (name-based) and /metrics on."""
    with SensorProcess("--rules", str(SHARED / "rules"), "--metrics-address", metrics_address) as running:
        yield running


@pytest.mark.parametrize("length", [300, 1100, 2000, KEPT - 1, KEPT])
def test_long_path_is_kept_whole(paths_sensor: SensorProcess, tmp_path: Path, length: int) -> None:
    """Up to the longest path execve(2) takes (PATH_MAX less its NUL): 1100 was past the old 1024-byte limit,
    KEPT exactly fills the probe's buffer, which alone does not mean the path was cut."""
    folder = absolute_dir(tmp_path, length - len("/true"))
    target = folder / "true"
    shutil.copy2("/bin/true", target)
    assert len(str(target)) == length
    child = run_and_wait([str(target), "long-path"])
    assert child.returncode == 0
    doc = paths_sensor.exec_of(child.pid)
    assert get(doc, "process.executable") == str(target)
    assert get(doc, "process.name") == "true"
    assert get(doc, "container_sensor.executable.path_truncated") is False
    assert get(doc, "process.args") == [str(target), "long-path"]


def test_short_path_says_not_truncated(paths_sensor: SensorProcess) -> None:
    child = run_and_wait(["/bin/true"])
    doc = paths_sensor.exec_of(child.pid)
    assert get(doc, "container_sensor.executable.path_truncated") is False
    # the file itself, as Elastic Defend writes it: /usr/bin/true where /bin is a link to usr/bin
    assert (get(doc, "process.executable"), get(doc, "process.name")) == (os.path.realpath("/bin/true"), "true")


def test_a_link_is_resolved_in_the_kernel_to_the_file_executed(paths_sensor: SensorProcess) -> None:
    """/bin/true is /usr/bin/true on a merged-/usr system, /bin/sh a link to dash: process.executable and
    process.name are the file itself as the kernel walked it (as Elastic Defend writes them), and
    container_sensor.executable.passed keeps the path as passed."""
    for path in ("/bin/true", "/bin/sh", "/usr/bin/true"):
        child = run_and_wait([path, "-c", "true"] if path == "/bin/sh" else [path])
        doc = paths_sensor.exec_of(child.pid)
        real = os.path.realpath(path)
        assert get(doc, "process.executable") == real
        assert get(doc, "process.name") == os.path.basename(real)
        assert get(doc, "container_sensor.executable.passed") == (path if real != path else None)


def test_path_longer_than_the_kernel_keeps_is_cut_flagged_and_never_names(
        paths_sensor: SensorProcess, metrics_address: str, tmp_path: Path) -> None:
    """execveat(dir, rel): the kernel's path is "/dev/fd/100/" + rel, longer than PATH_MAX. What is kept ends in
    "/sshd" where the cut falls; the file is really called "sshd.fake", which is what comm says."""
    leaf = "sshd.fake"
    names = components(KEPT - len(FD_PREFIX) - len("/sshd"), "a")
    relative_tree(tmp_path, names, leaf, Path("/bin/true"))
    rel = "/".join([*names, leaf])
    assert len(rel) < PATH_MAX and len(FD_PREFIX + rel) > KEPT
    before = metric(metrics_address, "path_truncated_total")
    child = run_and_wait([sys.executable, "-c", EXECVEAT_PY, str(tmp_path), rel, "true", "cut"])
    assert child.returncode == 0
    doc = execveat_doc(paths_sensor, child.pid)
    executable = get(doc, "process.executable")
    assert executable == (FD_PREFIX + rel)[:KEPT] and executable.endswith("/sshd")
    assert get(doc, "container_sensor.executable.path_truncated") is True
    assert get(doc, "process.name") == leaf  # the kernel's comm, not the cut path's "sshd"
    assert get(doc, "process.args") == ["true", "cut"]
    deadline = time.monotonic() + 10
    while metric(metrics_address, "path_truncated_total") < before + 1:
        assert time.monotonic() < deadline, "path_truncated_total did not count the cut path"
        time.sleep(0.2)


def test_cut_path_with_a_long_file_name_has_no_name(paths_sensor: SensorProcess, tmp_path: Path) -> None:
    """A file name of 15 bytes or more: comm holds only its first 15, which may be a cut name too."""
    leaf = "a-rather-long-program-name"
    names = components(CUT_REL - 1 - len(leaf), "k")
    relative_tree(tmp_path, names, leaf, Path("/bin/true"))
    rel = "/".join([*names, leaf])
    child = run_and_wait([sys.executable, "-c", EXECVEAT_PY, str(tmp_path), rel, "true"])
    assert child.returncode == 0
    doc = execveat_doc(paths_sensor, child.pid)
    assert get(doc, "container_sensor.executable.path_truncated") is True
    assert get(doc, "process.name") is None
    assert len(get(doc, "process.executable")) == KEPT


def test_summary_counts_cut_paths(tmp_path: Path) -> None:
    """A sensor of its own, so its summary line covers this exec alone."""
    names = components(CUT_REL - len("/true"), "m")
    relative_tree(tmp_path, names, "true", Path("/bin/true"))
    rel = "/".join([*names, "true"])
    with SensorProcess() as sensor:
        child = run_and_wait([sys.executable, "-c", EXECVEAT_PY, str(tmp_path), rel, "true"])
        assert get(execveat_doc(sensor, child.pid), "container_sensor.executable.path_truncated") is True
        time.sleep(1.5)  # the kernel counters are read once a second
        assert sensor.stop(signal.SIGTERM) == 0
    assert re.search(r", [1-9]\d* executable paths cut$", sensor.stderr(), flags=re.M), sensor.stderr()[-500:]


# -- inside a podman container ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def container_root() -> Iterator[Path]:
    """The test root filesystem with a static execveat helper and three long paths under /p:
    - full/.../sshd: a copy of sshd at a path of ~2000 bytes (kept whole);
    - fake/.../sshd.fake: busybox, reached by execveat so the kept path ends in "/sshd";
    - hidden/.../ssh: a copy of ssh, reached by execveat so the cut falls before "/ssh"."""
    if shutil.which("podman") is None:
        pytest.skip("podman missing: scripts/install.sh --test")
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing (the container has no python for execveat): scripts/install.sh --test")
    folder = Path(tempfile.mkdtemp(prefix="exec-paths-root-"))
    try:
        try:
            root = copy_rootfs(folder / "root")
        except RootfsUnavailable as exc:
            pytest.skip(str(exc))
        source = folder / "execat.c"
        source.write_text(EXECVEAT_C)
        built = subprocess.run(["gcc", "-static", "-O2", "-o", str(root / "bin/execat"), str(source)],
                               capture_output=True, text=True)
        if built.returncode != 0:
            pytest.skip(f"cannot build a static helper (libc6-dev?): {built.stderr.strip()[-300:]}")
        (root / "p").mkdir()
        full = components(2000 - len("/p/full/") - len("/sshd"), "f")
        relative_tree(root / "p", ["full", *full], "sshd", root / "usr/sbin/sshd")
        fake = components(KEPT - len(FD_PREFIX) - len("/sshd"), "a")
        relative_tree(root / "p", ["fake", *fake], "sshd.fake", root / "bin/busybox")
        hidden = components(CUT_REL - len("/ssh"), "h")
        relative_tree(root / "p", ["hidden", *hidden], "ssh", root / "usr/bin/ssh")
        (root / "p/paths").write_text("\n".join([
            "/p/full/" + "/".join([*full, "sshd"]), "/".join([*fake, "sshd.fake"]),
            "/".join([*hidden, "ssh"])]) + "\n")
        yield root
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_long_paths_to_ssh_in_a_container(paths_sensor: SensorProcess, container_root: Path) -> None:
    full, fake, hidden = (container_root / "p/paths").read_text().splitlines()
    assert len(full) == 2000 and len(FD_PREFIX + fake) > KEPT and len(FD_PREFIX + hidden) > KEPT
    script = (f"{full} -V; execat /p/fake {fake} true; execat /p/hidden {hidden} ssh -V;"
              " sleep 3")  # the container stays up while the sensor looks at its files, as a real one would
    with tempfile.TemporaryDirectory() as scratch:
        cidfile = Path(scratch) / "cid"
        result = subprocess.run([*PODMAN, "--cidfile", str(cidfile), "--rootfs", str(container_root),
                                 "/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        container_id = cidfile.read_text().strip()

    def docs(kind: str, rule: str | None, executable: str, count: int = 1) -> list[dict]:
        return paths_sensor.wait_for(
            lambda d: get(d, "event.kind") == kind and get(d, "container.id") == container_id
            and (rule is None or get(d, "rule.name") == rule) and get(d, "process.executable") == executable,
            timeout=15, count=count)

    # a whole path ending in sshd: alerted on by name, as a short one would be
    alert = docs("alert", BUILTIN, full)[0]
    assert (get(alert, "container_sensor.alert.program"), get(alert, "container_sensor.alert.recognized_by")) \
        == ("sshd", "name")
    assert get(alert, "container_sensor.executable.path_truncated") is False
    docs("alert", CLOUD_DEFEND_RULE, full)

    # busybox at a path whose cut reads ".../sshd": the exec is reported, flagged, and raises no alert
    cut_fake = (FD_PREFIX + fake)[:KEPT]
    assert cut_fake.endswith("/sshd")
    event = docs("event", None, cut_fake)[0]
    assert get(event, "container_sensor.executable.path_truncated") is True
    assert get(event, "process.name") == "sshd.fake"

    # real ssh at a path cut before its name: comm names it, the built-in rule and Elastic's both alert
    cut_hidden = (FD_PREFIX + hidden)[:KEPT]
    assert not cut_hidden.endswith("ssh")
    alert = docs("alert", BUILTIN, cut_hidden)[0]
    assert get(alert, "process.name") == "ssh"
    assert get(alert, "container_sensor.executable.path_truncated") is True
    assert get(alert, "container_sensor.alert.program") == "ssh"
    docs("alert", CLOUD_DEFEND_RULE, cut_hidden)

    time.sleep(2)  # an alert for the fake would have come with or soon after the others
    wrong = [a for a in paths_sensor.alerts() if get(a, "container.id") == container_id
             and get(a, "process.executable") == cut_fake]
    assert wrong == []
