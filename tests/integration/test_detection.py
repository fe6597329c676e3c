"""Live detection: ssh, sshd and disguised ssh in a real podman container raise alerts; ssh on the host does not."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ecs_fields import ecs_problems
from tests.integration.rootfs import RootfsUnavailable, copy_rootfs, podman_image
from tests.integration.sensor_process import SHARED, SensorProcess, get, invoked, run_and_wait

pytestmark = [pytest.mark.kernel, pytest.mark.containers]

BUILTIN = "SSH Client or Server Started Inside a Container"
ELASTIC_DEFEND_RULE = "Deprecated - SSH Process Launched From Inside A Container via Elastic Defend"
CLOUD_DEFEND_RULE = "Deprecated - SSH Process Launched From Inside A Container"
AUTOSSH = Path("/usr/lib/autossh/autossh")   # Debian's binary (/usr/bin/autossh is a wrapper script)
PODMAN = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none",
          "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """A private copy of the test root filesystem with an sshd host key and a root login key."""
    if shutil.which("podman") is None:
        pytest.skip("podman missing: scripts/install.sh --test")
    folder = Path(tempfile.mkdtemp(prefix="detection-root-"))
    try:
        try:
            path = copy_rootfs(folder / "root")
        except RootfsUnavailable as exc:
            pytest.skip(str(exc))
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(path / "etc/ssh/ssh_host_ed25519_key")], check=True)
        (path / "etc/ssh/sshd_config").write_text("")
        dot_ssh = path / "root/.ssh"
        dot_ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run([*keygen, "-f", str(dot_ssh / "id_ed25519")], check=True)
        shutil.copy(dot_ssh / "id_ed25519.pub", dot_ssh / "authorized_keys")
        if AUTOSSH.exists():   # links only libc, which the root filesystem has for ssh
            shutil.copy2(AUTOSSH, path / "usr/bin/autossh")
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def detecting() -> Iterator[SensorProcess]:
    with SensorProcess("--rules", str(SHARED / "rules")) as running:
        yield running


def in_container(root: Path, script: str) -> str:
    """Run `sh -c script` in a new container; return the container id."""
    with tempfile.TemporaryDirectory() as scratch:
        cidfile = Path(scratch) / "cid"
        result = subprocess.run([*PODMAN, "--cidfile", str(cidfile), "--rootfs", str(root), "/bin/sh", "-c", script],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return cidfile.read_text().strip()


def alerts_for(sensor: SensorProcess, container_id: str, rule: str, executable: str, count: int = 1) -> list[dict]:
    return sensor.wait_for(
        lambda d: get(d, "event.kind") == "alert" and get(d, "container.id") == container_id
        and get(d, "rule.name") == rule and invoked(d) == executable, timeout=15, count=count)


def test_ssh_sshd_and_disguised_ssh_in_a_container(detecting: SensorProcess, root: Path) -> None:
    container_id = in_container(root, (
        "ssh -V; /usr/sbin/sshd -V;"
        " ln -s /usr/bin/ssh /tmp/slogin; /tmp/slogin -V;"
        " ln /usr/bin/ssh /tmp/backup; /tmp/backup -V;"
        " cp /usr/bin/ssh /tmp/kworker; /tmp/kworker -V;"
        " cp /bin/busybox /tmp/notssh; /tmp/notssh true;"
        # the container stays up while the sensor looks at its files, as a real one would
        " sleep 3"))
    expected = {"/usr/bin/ssh": ("ssh", "name"), "/usr/sbin/sshd": ("sshd", "name"),
                "/tmp/slogin": ("ssh", "symlink"), "/tmp/backup": ("ssh", "hardlink"),
                "/tmp/kworker": ("ssh", "content")}
    for executable, (program, way) in expected.items():
        alert = alerts_for(detecting, container_id, BUILTIN, executable)[0]
        details = alert["container_sensor"]["alert"]
        assert (details["program"], details["recognized_by"]) == (program, way), executable
        assert alert["event"]["kind"] == "alert" and alert["event"]["action"] == "exec"
        assert alert["threat"]["tactic"]["id"] == ["TA0008", "TA0003"]
        assert alert["threat"]["technique"]["subtechnique"]["id"] == ["T1021.004"]
        assert ecs_problems(alert) == []
        assert "container.id" in details["container_evidence"]
        assert alert["container_sensor"]["cgroup"]["path"].endswith(container_id)
        assert alert["container_sensor"]["namespaces"]["mnt"]
        assert get(alert, "process.parent.name") == "busybox"  # the file /bin/sh leads to, as Defend names it
    assert get(alerts_for(detecting, container_id, BUILTIN, "/tmp/slogin")[0],
               "container_sensor.alert.symlink_target") == "/usr/bin/ssh"
    # the name-based Elastic rule sees the names only: a symbolic link's, being the file it leads to (as Elastic
    # Defend names it), but neither a hard link's nor a copy's
    alerts_for(detecting, container_id, CLOUD_DEFEND_RULE, "/usr/bin/ssh")
    alerts_for(detecting, container_id, CLOUD_DEFEND_RULE, "/usr/sbin/sshd")
    alerts_for(detecting, container_id, CLOUD_DEFEND_RULE, "/tmp/slogin")
    disguised = [a for a in detecting.alerts() if get(a, "rule.name") == CLOUD_DEFEND_RULE
                 and get(a, "container.id") == container_id and invoked(a) in ("/tmp/backup", "/tmp/kworker")]
    assert disguised == []
    assert not [a for a in detecting.alerts() if invoked(a) == "/tmp/notssh"]


def test_autossh_in_a_container(detecting: SensorProcess, root: Path) -> None:
    if not (root / "usr/bin/autossh").exists():
        pytest.skip("apt-get install -y autossh")
    container_id = in_container(root, "autossh -V; cp /usr/bin/autossh /tmp/monitor; /tmp/monitor -V; sleep 3")
    for executable, way in (("/usr/bin/autossh", "name"), ("/tmp/monitor", "content")):
        details = alerts_for(detecting, container_id, BUILTIN, executable)[0]["container_sensor"]["alert"]
        assert (details["program"], details["recognized_by"]) == ("autossh", way), executable


def test_disguised_ssh_in_a_container_from_an_image(detecting: SensorProcess, root: Path) -> None:
    """The same from a podman image: files on overlayfs, with the overlay's device and inode numbers."""
    try:
        image = podman_image()
    except (RootfsUnavailable, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no test image: {exc}")
    with tempfile.TemporaryDirectory() as scratch:
        cidfile = Path(scratch) / "cid"
        script = ("cp /usr/bin/ssh /tmp/kworker; /tmp/kworker -V; ln -s /usr/bin/ssh /tmp/slogin;"
                  " /tmp/slogin -V; sleep 3")
        result = subprocess.run([*PODMAN, "--cidfile", str(cidfile), image, "/bin/sh", "-c", script],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        container_id = cidfile.read_text().strip()
    for executable, way in (("/tmp/kworker", "content"), ("/tmp/slogin", "symlink")):
        alert = alerts_for(detecting, container_id, BUILTIN, executable)[0]
        assert alert["container_sensor"]["alert"]["recognized_by"] == way, executable


def test_elastic_defend_rule_needs_entry_leader(detecting: SensorProcess, root: Path) -> None:
    container_id = in_container(root, "ssh -V; true")
    event = detecting.wait_for(lambda d: get(d, "event.kind") == "event" and get(d, "event.action") == "exec"
                               and get(d, "container.id") == container_id
                               and get(d, "process.executable") == "/usr/bin/ssh", timeout=15)[0]
    # Elastic's rule matches on the entry leader's type: the pipeline must say the entry was a container
    assert get(event, "process.entry_leader.entry_meta.type") == "container"
    alerts_for(detecting, container_id, ELASTIC_DEFEND_RULE, "/usr/bin/ssh")


def test_ssh_inside_an_sshd_session_in_a_container(detecting: SensorProcess, root: Path) -> None:
    container_id = in_container(root, (
        "/usr/sbin/sshd -p 2222 -h /etc/ssh/ssh_host_ed25519_key -o PidFile=none -o StrictModes=no;"
        " sleep 0.5; ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes"
        " -p 2222 root@127.0.0.1 '/usr/bin/ssh -V; /usr/bin/ssh -V'"))
    session_ssh = detecting.wait_for(
        lambda d: get(d, "event.kind") == "alert" and get(d, "container.id") == container_id
        and get(d, "rule.name") == BUILTIN and get(d, "process.executable") == "/usr/bin/ssh"
        and get(d, "process.args") == ["/usr/bin/ssh", "-V"], timeout=15)
    assert session_ssh[0]["container_sensor"]["alert"]["recognized_by"] == "name"
    chain = [get(session_ssh[0], "process.parent.name"), get(session_ssh[0], "process.session_leader.name")]
    assert "sshd" in chain or "busybox" in chain
    alerts_for(detecting, container_id, BUILTIN, "/usr/sbin/sshd")


def test_host_ssh_raises_no_alert(detecting: SensorProcess) -> None:
    child = run_and_wait(["/usr/bin/ssh", "-V"])
    detecting.exec_of(child.pid)
    marker = run_and_wait(["/bin/true", "host-ssh-marker"])
    detecting.exec_of(marker.pid)     # everything before the marker has been evaluated
    assert [a for a in detecting.alerts() if get(a, "process.pid") == child.pid] == []
