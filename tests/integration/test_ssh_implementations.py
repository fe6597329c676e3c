"""Every ssh implementation a container may carry, in a real container: OpenSSH's client, server, sshd-session and
sshd-auth, Dropbear's server and client (Debian's dropbear-bin), each by name and as a renamed copy (by content),
the alert naming the program, the implementation and the role. And none of them alerts on the host: run plainly,
as another user, in a new session, in a service's cgroup, in a private mount namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ecs_fields import ecs_problems
from tests.integration.conftest_containers import CGROUP_V2, podman_image_ref, test_rootfs  # noqa: F401
from tests.integration.rootfs import RootfsUnavailable, _copy_into, _shared_libraries, copy_rootfs
from tests.integration.sensor_process import SensorProcess, get, invoked
from tests.integration.test_detection import in_container

pytestmark = pytest.mark.kernel

BUILTIN = "SSH Client or Server Started Inside a Container"
DROPBEAR = Path("/usr/sbin/dropbear")
DBCLIENT = Path("/usr/bin/dbclient")
SSHD = Path("/usr/sbin/sshd")
PROGRAM_NAMES = {"ssh", "sshd", "dropbear", "dbclient", "autossh"}


def _needs_dropbear() -> None:
    missing = [str(p) for p in (DROPBEAR, DBCLIENT) if not p.exists()]
    if missing:
        # installed by scripts/install.sh --test: missing means the set-up is broken, not that the test is optional
        pytest.fail("missing " + ", ".join(missing) + ": apt-get install -y dropbear-bin (scripts/install.sh --test)")


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """The test root filesystem plus Dropbear's binaries and libraries, and OpenSSH's server under the names
    OpenSSH 9.8 and 10.0 split it into (Debian 12 ships 9.2: copies stand in for them)."""
    _needs_dropbear()
    folder = Path(tempfile.mkdtemp(prefix="ssh-impl-root-"))
    try:
        try:
            root = copy_rootfs(folder / "root")
        except RootfsUnavailable as exc:
            pytest.skip(str(exc))
        for binary in (DROPBEAR, DBCLIENT):
            _copy_into(root, binary)
            for lib in _shared_libraries(binary):
                _copy_into(root, lib)
        (root / "usr/lib/openssh").mkdir(parents=True, exist_ok=True)
        for name in ("sshd-session", "sshd-auth"):
            shutil.copy2(root / "usr/sbin/sshd", root / "usr/lib/openssh" / name)
        # a host key, so that a server in the container really listens
        key = root / "etc/ssh/ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                       capture_output=True, timeout=30)
        yield root
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def detecting() -> Iterator[SensorProcess]:
    with SensorProcess() as running:
        yield running


def test_every_implementation_in_a_container_by_name_and_by_content(detecting: SensorProcess, root: Path) -> None:
    container_id = in_container(root, (
        "dropbear -V; dbclient -V;"
        " cp /usr/sbin/dropbear /tmp/web; /tmp/web -V; cp /usr/bin/dbclient /tmp/cli; /tmp/cli -V;"
        " /usr/lib/openssh/sshd-session -V; /usr/lib/openssh/sshd-auth -V;"
        " cp /usr/sbin/sshd /tmp/sess; /tmp/sess -V; sleep 3"))
    expected = {
        "/usr/sbin/dropbear": ("dropbear", "name", "dropbear", "server"),
        "/usr/bin/dbclient": ("dbclient", "name", "dropbear", "client"),
        "/tmp/web": ("dropbear", "content", "dropbear", "server"),
        "/tmp/cli": ("dbclient", "content", "dropbear", "client"),
        "/usr/lib/openssh/sshd-session": ("sshd-session", "name", "openssh", "server"),
        "/usr/lib/openssh/sshd-auth": ("sshd-auth", "name", "openssh", "server"),
        "/tmp/sess": ("sshd", "content", "openssh", "server"),
    }
    for executable, (program, way, implementation, role) in expected.items():
        alert = detecting.wait_for(
            lambda d, path=executable: get(d, "event.kind") == "alert" and get(d, "rule.name") == BUILTIN
            and get(d, "container.id") == container_id and invoked(d) == path, timeout=15)[0]
        details = alert["container_sensor"]["alert"]
        assert (details["program"], details["recognized_by"], details["implementation"], details["role"]) == (
            program, way, implementation, role), executable
        if way == "content":
            assert details["evidence"] in ("executed_file", "container_root", "pinned_root"), executable
        assert ecs_problems(alert) == []


def test_no_implementation_alerts_on_the_host(detecting: SensorProcess) -> None:
    """The host's own ssh, sshd, autossh and Dropbear, run the ways a host runs them: never an alert."""
    _needs_dropbear()
    mark = f"host-{os.urandom(3).hex()}"
    programs = [f"/usr/bin/ssh -V -o User={mark}", f"{SSHD} -V -o User={mark}", f"{DROPBEAR} -V -o {mark}",
                f"{DBCLIENT} -V -o {mark}"]
    if shutil.which("autossh"):
        programs.append(f"autossh -V -o User={mark}")
    runs = []
    for line in programs:
        runs.append(["/bin/sh", "-c", line])                                          # plainly
        runs.append(["setsid", "/bin/sh", "-c", line])                                # a new session
        runs.append(["runuser", "-u", "nobody", "--", "/bin/sh", "-c", line])         # another user, nested
        runs.append(["su", "-s", "/bin/sh", "nobody", "-c", f"/bin/sh -c '{line}'"])  # a login-style session
        runs.append(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", line])  # private mounts
    service = CGROUP_V2 / "system.slice" / f"cs-ssh-{os.getpid()}.service"
    service.mkdir(parents=True, exist_ok=True)
    try:
        for line in programs:                                                          # a service's cgroup
            runs.append(["/bin/sh", "-c", f"echo $$ > {service}/cgroup.procs && {line}"])
        for argv in runs:
            subprocess.run(argv, capture_output=True, timeout=30)
    finally:
        time.sleep(0.2)
        service.rmdir()
    # every one of them was seen (so the absence of alerts means something), then give late alerts time
    seen = detecting.wait_for(lambda d: get(d, "event.kind") == "event" and get(d, "event.action") == "exec"
                              and mark in (get(d, "process.command_line") or "")
                              and str((get(d, "process.args") or [""])[0]).rsplit("/", 1)[-1] in PROGRAM_NAMES,
                              count=len(runs), timeout=30)
    assert all("container" not in doc for doc in seen)
    time.sleep(2)
    alerts = [a for a in detecting.alerts() if mark in (get(a, "process.command_line") or "")]
    assert alerts == []


NETWORK_RULE = "SSH Connection To or From a Container"


def test_ssh_connections_in_a_container_alert_with_both_ends(detecting: SensorProcess, root: Path) -> None:
    """A renamed sshd on port 8022 (daemonised: its listener is a fork of what was executed) accepting an ssh
    client, and a plain nc to port 22: the network rule names the reason, the ssh side's port, both ends and the
    container."""
    container_id = in_container(root, (
        "cp /usr/sbin/sshd /tmp/web; /tmp/web -f /dev/null -p 8022 -h /etc/ssh/ssh_host_ed25519_key"
        " -o PidFile=none -o StrictModes=no; sleep 1;"
        " ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -p 8022"
        " root@127.0.0.1 true; nc -w 1 127.0.0.1 22 </dev/null; sleep 2"))

    def network_alert(predicate) -> dict:
        return detecting.wait_for(lambda d: get(d, "event.kind") == "alert" and get(d, "rule.name") == NETWORK_RULE
                                  and get(d, "container.id") == container_id and predicate(d), timeout=20)[0]

    accepted = network_alert(lambda d: get(d, "event.action") == "connection_accepted")
    assert get(accepted, "source.port") == 8022 and get(accepted, "destination.ip") == "127.0.0.1"
    assert get(accepted, "container_sensor.alert.reason") == "ssh_process"
    assert get(accepted, "container_sensor.alert.program") == "sshd"
    client = network_alert(lambda d: get(d, "event.action") == "connection_attempted"
                           and get(d, "destination.port") == 8022 and get(d, "process.name") == "ssh")
    assert get(client, "container_sensor.alert.reason") == "ssh_process"
    plain = network_alert(lambda d: get(d, "destination.port") == 22)
    assert get(plain, "container_sensor.alert.reason") == "ssh_port"
    assert get(plain, "container_sensor.alert.ssh_port") == 22
    for alert in (accepted, client, plain):
        assert get(alert, "event.category") == ["network"] and ecs_problems(alert) == []


SHORT_CASES = {
    "copy": "cp /usr/bin/ssh /tmp/{n}; /tmp/{n} -V -o User={mark}",
    "replaced": "cp /usr/bin/ssh /tmp/{n}; cp /bin/busybox /tmp/o; /tmp/{n} -V -o User={mark}; mv -f /tmp/o /tmp/{n}",
    "deleted": "cp /usr/bin/ssh /tmp/{n}; /tmp/{n} -V -o User={mark}; rm -f /tmp/{n}",
    "overwritten": "cp /usr/bin/ssh /tmp/{n}; /tmp/{n} -V -o User={mark}; cat /bin/busybox > /tmp/{n}",
}


def test_a_renamed_ssh_in_a_container_gone_at_once_still_alerts(detecting: SensorProcess,
                                                                podman_image_ref: str) -> None:  # noqa: F811
    """The copy runs once as the container's last command (the shell execs it in place), and the container is
    removed (--rm, overlayfs upper layer deleted) right after; or the copy is replaced, deleted or written over
    first. Each alerts, saying what the verdict was read from."""
    from tests.integration.test_detection import PODMAN as RUN
    marks = {}
    for case, script in SHORT_CASES.items():
        for i in range(3):
            mark = f"short-{case}-{i}-{os.urandom(3).hex()}"
            subprocess.run([*RUN, podman_image_ref, "/bin/sh", "-c", script.format(n=f"kw{i}", mark=mark)],
                           capture_output=True, timeout=120)
            marks[mark] = case
    for mark, case in marks.items():
        alert = detecting.wait_for(lambda d, m=mark: get(d, "event.kind") == "alert" and get(d, "rule.name") == BUILTIN
                                   and f"User={m}" in (get(d, "process.args") or []), timeout=20)[0]
        details = alert["container_sensor"]["alert"]
        assert details["program"] == "ssh" and details["recognized_by"] in ("content", "fingerprint"), (case, details)
        assert details["evidence"] in ("executed_file", "container_root", "pinned_root", "head_fingerprint"), case
