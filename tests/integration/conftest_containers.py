"""Real containers for integration tests: podman+runc (rootful and rootless), Docker, containerd's `ctr`, a
kubepods-shaped runc bundle, LXC, systemd-nspawn.

Import the fixtures where they are used (`from tests.integration.conftest_containers import podman_container`)
or into tests/integration/conftest.py. Each skips when its runtime is not installed; Docker, containerd and
rootless podman fail (not skip) when installed but unable to run a container, so a broken runtime is never a
silently green suite. Each cleans up what it started, daemons included. Everything is built from the cached root
filesystem of tests/integration/rootfs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import rootfs as rootfs_mod

PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--network", "none",
              "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
CGROUP_V2 = Path("/sys/fs/cgroup/unified") if Path("/sys/fs/cgroup/unified/cgroup.procs").exists() \
    else Path("/sys/fs/cgroup")


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def v2_cgroup_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"pid {pid} has no v2 cgroup line")


def children_of(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@dataclass(frozen=True)
class RunningContainer:
    runtime: str
    id: str  # what ContainerInfo.id should be
    name: str | None
    pid: int  # the container's init as the host sees it
    image: str | None = None
    pod_uid: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None


@pytest.fixture(scope="session")
def test_rootfs() -> Path:
    try:
        return rootfs_mod.rootfs()
    except rootfs_mod.RootfsUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def podman_image_ref(test_rootfs: Path) -> str:
    _need("podman", "runc")
    return rootfs_mod.podman_image()


@pytest.fixture(scope="session")
def podman_container(podman_image_ref: str) -> Iterator[RunningContainer]:
    """A detached podman (runc) container running `sleep`, started before any sensor of the session."""
    name = f"cs-test-{secrets.token_hex(4)}"
    started = _run([*PODMAN_RUN, "-d", "--name", name, podman_image_ref, "sleep", "3600"])
    if started.returncode != 0:
        pytest.skip(f"podman run failed: {started.stderr.strip()}")
    cid = started.stdout.strip().splitlines()[-1]
    try:
        pid = int(_run(["podman", "inspect", "-f", "{{.State.Pid}}", name]).stdout.strip())
        yield RunningContainer("podman", cid, name, pid, image=podman_image_ref)
    finally:
        _run(["podman", "rm", "-f", "-t", "0", name])


KUBE_POD_UID = "5f0c1e2d-3b4a-4c5d-8e9f-0a1b2c3d4e5f"


@contextlib.contextmanager
def runc_bundle(rootfs: Path, bundle: Path, cid: str, cgroups_path: str,
                annotations: dict[str, str]) -> Iterator[int]:
    """`runc run -d` of a bundle with this cgroupsPath (runc's cgroupfs driver takes any path literally, so
    systemd-driver-shaped kubelet paths can be made for real without systemd) and these annotations.
    Yields the container init's pid; deletes the container and the cgroup directories it made."""
    _need("runc")
    _run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sleep", "3600"]
    spec["linux"]["cgroupsPath"] = cgroups_path
    spec["annotations"] = annotations
    (bundle / "config.json").write_text(json.dumps(spec))
    # the detached container inherits runc's stdio: pipes would never reach EOF, so no capture here
    log = bundle / "runc.log"
    with open(log, "wb") as err:
        started = subprocess.run(["runc", "run", "-d", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err, timeout=30)
    if started.returncode != 0:
        pytest.skip(f"runc run failed: {log.read_text().strip()}")
    try:
        yield json.loads(_run(["runc", "state", cid], check=True).stdout)["pid"]
    finally:
        _run(["runc", "delete", "-f", cid])
        parts = [p for p in cgroups_path.split("/") if p]
        for depth in range(len(parts), 0, -1):
            rel = "/".join(parts[:depth])
            for hierarchy in Path("/sys/fs/cgroup").iterdir():
                with contextlib.suppress(OSError):
                    (hierarchy / rel).rmdir()


def _cri_annotations(name: str, image: str, pod: str, namespace: str, uid: str) -> dict[str, str]:
    # containerd's CRI plugin (pkg/cri/annotations)
    return {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": name,
        "io.kubernetes.cri.image-name": image,
        "io.kubernetes.cri.sandbox-id": secrets.token_hex(32),
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-uid": uid,
    }


@pytest.fixture(scope="session")
def runc_kube_container(test_rootfs: Path, tmp_path_factory) -> Iterator[RunningContainer]:
    """A bundle shaped like a kubelet (cgroupfs driver) + containerd one: kubepods path, CRI annotations."""
    cid = secrets.token_hex(32)
    with runc_bundle(test_rootfs, tmp_path_factory.mktemp("runc-bundle"), cid,
                     f"/kubepods/burstable/pod{KUBE_POD_UID}/{cid}",
                     _cri_annotations("web", "docker.io/library/busybox:1.36", "web-6d9f7c", "shop",
                                      KUBE_POD_UID)) as pid:
        yield RunningContainer("containerd", cid, "web", pid, image="docker.io/library/busybox:1.36",
                               pod_uid=KUBE_POD_UID, pod_name="web-6d9f7c", pod_namespace="shop")


SYSTEMD_POD_UID = "7c1d2e3f-4a5b-4c6d-9e8f-1a2b3c4d5e6f"


@pytest.fixture(scope="session")
def runc_kube_systemd_container(test_rootfs: Path, tmp_path_factory) -> Iterator[RunningContainer]:
    """kubelet systemd driver + containerd: kubepods.slice/.../cri-containerd-<id>.scope (guaranteed QoS)."""
    cid = secrets.token_hex(32)
    uid = SYSTEMD_POD_UID.replace("-", "_")
    with runc_bundle(test_rootfs, tmp_path_factory.mktemp("runc-bundle-systemd"), cid,
                     f"/kubepods.slice/kubepods-pod{uid}.slice/cri-containerd-{cid}.scope",
                     _cri_annotations("api", "registry.k8s.io/pause:3.9", "api-0", "kube-system",
                                      SYSTEMD_POD_UID)) as pid:
        yield RunningContainer("containerd", cid, "api", pid, image="registry.k8s.io/pause:3.9",
                               pod_uid=SYSTEMD_POD_UID, pod_name="api-0", pod_namespace="kube-system")


CRIO_POD_UID = "2b3c4d5e-6f70-4a81-92a3-b4c5d6e7f809"


@pytest.fixture(scope="session")
def runc_crio_container(test_rootfs: Path, tmp_path_factory) -> Iterator[RunningContainer]:
    """kubelet systemd driver + cri-o: kubepods-burstable-pod<uid>.slice/crio-<id>.scope, cri-o's annotations
    (pkg/annotations, and the kubelet labels cri-o copies into annotations)."""
    cid = secrets.token_hex(32)
    uid = CRIO_POD_UID.replace("-", "_")
    annotations = {
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.ImageName": "quay.io/prometheus/node-exporter:v1.7.0",
        "io.kubernetes.container.name": "node-exporter",
        "io.kubernetes.pod.name": "node-exporter-x2x9k",
        "io.kubernetes.pod.namespace": "monitoring",
        "io.kubernetes.pod.uid": CRIO_POD_UID,
    }
    with runc_bundle(test_rootfs, tmp_path_factory.mktemp("runc-bundle-crio"), cid,
                     f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/crio-{cid}.scope",
                     annotations) as pid:
        yield RunningContainer("cri-o", cid, "node-exporter", pid, image="quay.io/prometheus/node-exporter:v1.7.0",
                               pod_uid=CRIO_POD_UID, pod_name="node-exporter-x2x9k", pod_namespace="monitoring")


@pytest.fixture(scope="session")
def lxc_container() -> Iterator[RunningContainer]:
    """`lxc-create -t busybox` with an `empty` network and the host's ssh client, started detached."""
    _need("lxc-create", "lxc-start", "lxc-attach", "busybox")
    name = f"cs-lxc-{secrets.token_hex(3)}"
    created = _run(["lxc-create", "-n", name, "-t", "busybox"])
    if created.returncode != 0:
        pytest.skip(f"lxc-create failed: {created.stderr.strip()}")
    try:
        config = Path(f"/var/lib/lxc/{name}/config")
        lines = [ln for ln in config.read_text().splitlines()
                 if not ln.startswith(("lxc.net.0.", "lxc.apparmor."))]
        lines += ["lxc.net.0.type = empty", "lxc.apparmor.profile = unconfined"]
        config.write_text("\n".join(lines) + "\n")
        # the busybox template has no ssh; its config bind-mounts the host's /lib and /usr/lib for libraries
        ssh_target = Path(f"/var/lib/lxc/{name}/rootfs/usr/bin/ssh")
        ssh_target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(rootfs_mod.SSH_BINARIES[0], ssh_target)
        started = _run(["lxc-start", "-n", name, "-d"])
        if started.returncode != 0:
            pytest.skip(f"lxc-start failed: {started.stderr.strip()}")
        pid = wait_for(lambda: int(_run(["lxc-info", "-n", name, "-pH"]).stdout.strip() or 0), what="lxc init")
        yield RunningContainer("lxc", name, name, pid)
    finally:
        _run(["lxc-stop", "-n", name, "-k"])
        _run(["lxc-destroy", "-n", name])


def _containerd_up() -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect("/run/containerd/containerd.sock")
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def containerd_container(test_rootfs: Path, podman_image_ref: str) -> Iterator[RunningContainer]:
    """`ctr run -d` in containerd's default namespace (cgroup /default/<id>, parent containerd-shim-runc-v2).
    Starts a containerd daemon when none answers (no systemd here) and stops only that one."""
    _need("containerd", "ctr", "containerd-shim-runc-v2", "podman")
    daemon = None
    if not _containerd_up():
        log = open(rootfs_mod.CACHE_DIR / "containerd.log", "ab")  # noqa: SIM115 - closed below
        daemon = subprocess.Popen(["containerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_for(_containerd_up, 15, "containerd")
        except AssertionError:
            daemon.kill()
            daemon.wait()
            pytest.fail(f"containerd is installed but did not start: see {rootfs_mod.CACHE_DIR / 'containerd.log'}")
    cid = f"cs-ctr-{secrets.token_hex(4)}"
    try:
        archive = rootfs_mod.CACHE_DIR / f"{test_rootfs.name}-docker-archive.tar"
        if not archive.exists():
            _run(["podman", "save", "--format", "docker-archive", "-o", str(archive), podman_image_ref], check=True)
        _run(["ctr", "-n", "default", "image", "import", str(archive)], check=True)
        started = subprocess.run(["ctr", "-n", "default", "run", "-d", podman_image_ref, cid, "/bin/sleep", "3600"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 timeout=60)
        if started.returncode != 0:
            pytest.fail(f"ctr run failed: {started.stderr.decode(errors='replace').strip()}")

        def task_pid() -> int:
            for line in _run(["ctr", "-n", "default", "task", "ls"]).stdout.splitlines()[1:]:
                fields = line.split()
                if fields and fields[0] == cid and fields[1].isdigit():
                    return int(fields[1])
            return 0

        yield RunningContainer("containerd", cid, cid, wait_for(task_pid, what="ctr task"))
    finally:
        _run(["ctr", "-n", "default", "task", "rm", "-f", cid])
        _run(["ctr", "-n", "default", "container", "rm", cid])
        if daemon is not None:
            _stop(daemon, 10)


def _stop(daemon: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM a daemon this module started, SIGKILL after GRACE_S."""
    daemon.terminate()
    try:
        daemon.wait(grace_s)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def _docker_up(docker: str) -> bool:
    return _run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=20).returncode == 0


@pytest.fixture(scope="session")
def docker_image_ref(test_rootfs: Path) -> Iterator[str]:
    """The test root filesystem `docker import`ed into a Docker daemon: the one running, or one started here
    (cgroupfs driver, no bridge, no iptables rules) and stopped at the end of the session."""
    _need("docker", "dockerd")
    docker = shutil.which("docker") or "docker"
    daemon = None
    if not _docker_up(docker):
        log_path = rootfs_mod.CACHE_DIR / "dockerd.log"
        with open(log_path, "ab") as log:
            daemon = subprocess.Popen(["dockerd", "--iptables=false", "--bridge=none"], stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: daemon.poll() is not None or _docker_up(docker), 60, "dockerd")
        if daemon.poll() is not None or not _docker_up(docker):
            _stop(daemon)
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            pytest.fail("dockerd is installed but did not start: " + " | ".join(tail))
    ref = "container-sensor-test:1"
    try:
        if _run([docker, "image", "inspect", ref]).returncode != 0:
            tar = subprocess.Popen(["tar", "-C", str(test_rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run([docker, "import", "-c", 'CMD ["/bin/sh"]', "-", ref], stdin=tar.stdout,
                                      capture_output=True, text=True, timeout=120)
            tar.wait()
            if imported.returncode != 0:
                pytest.fail(f"docker import failed: {imported.stderr.strip()}")
        yield ref
    finally:
        if daemon is not None:
            _stop(daemon)


DOCKER_RUN = ["run", "--network", "none"]


@pytest.fixture(scope="session")
def docker_container(docker_image_ref: str) -> Iterator[RunningContainer]:
    """A detached Docker container running `sleep` (cgroup /docker/<id> with the cgroupfs driver)."""
    docker = shutil.which("docker") or "docker"
    name = f"cs-docker-{secrets.token_hex(4)}"
    started = _run([docker, *DOCKER_RUN, "-d", "--name", name, docker_image_ref, "sleep", "3600"], timeout=120)
    if started.returncode != 0:
        pytest.fail(f"docker run failed: {started.stderr.strip()}")
    cid = started.stdout.strip().splitlines()[-1]
    try:
        pid = int(_run([docker, "inspect", "-f", "{{.State.Pid}}", name]).stdout.strip())
        yield RunningContainer("docker", cid, name, pid, image=docker_image_ref)
    finally:
        _run([docker, "rm", "-f", name], timeout=60)


ROOTLESS_USER = "cs-rootless"
ROOTLESS_SUBIDS = "300000-365535"


@dataclass(frozen=True)
class RootlessPodman:
    """podman run by an unprivileged user (user namespace; no cgroup of its own on a cgroup v1 host)."""

    user: str
    uid: int
    image: str

    def argv(self, *podman_args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", "env", f"XDG_RUNTIME_DIR=/run/user/{self.uid}",
                f"HOME=/home/{self.user}", "podman", *podman_args]

    def run_argv(self, *args: str) -> list[str]:
        return self.argv("--runtime", "runc", "run", "--network", "none", "--ulimit", "nofile=1024:1024",
                         "--ulimit", "nproc=4096:4096", *args)

    def run(self, *podman_args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*podman_args), capture_output=True, text=True, cwd="/", **kw)


def _has_subids(user: str, path: str) -> bool:
    try:
        return any(line.split(":", 1)[0] == user for line in Path(path).read_text().splitlines())
    except OSError:
        return False


@pytest.fixture(scope="session")
def rootless_podman(test_rootfs: Path) -> Iterator[RootlessPodman]:
    """An unprivileged user (made here when missing, with subordinate id ranges) and the test image in their own
    podman store. Every process of that user is ended at the end of the session (podman's pause process)."""
    _need("podman", "runc", "newuidmap", "newgidmap", "useradd", "runuser")
    if _run(["id", "-u", ROOTLESS_USER]).returncode != 0:
        made = _run(["useradd", "-m", "-s", "/bin/sh", ROOTLESS_USER])
        if made.returncode != 0:
            pytest.fail(f"useradd failed: {made.stderr.strip()}")
    if not _has_subids(ROOTLESS_USER, "/etc/subuid") or not _has_subids(ROOTLESS_USER, "/etc/subgid"):
        _run(["usermod", "--add-subuids", ROOTLESS_SUBIDS, "--add-subgids", ROOTLESS_SUBIDS, ROOTLESS_USER],
             check=True)
    uid = int(_run(["id", "-u", ROOTLESS_USER]).stdout)
    runtime_dir = Path(f"/run/user/{uid}")
    runtime_dir.mkdir(parents=True, exist_ok=True)
    os.chown(runtime_dir, uid, uid)
    os.chmod(runtime_dir, 0o700)
    rootless = RootlessPodman(ROOTLESS_USER, uid, "localhost/container-sensor-test:1")
    try:
        if rootless.run("image", "exists", rootless.image).returncode != 0:
            tar = subprocess.Popen(["tar", "-C", str(test_rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(rootless.argv("import", "--change", "CMD=/bin/sh", "-", rootless.image),
                                      stdin=tar.stdout, capture_output=True, text=True, cwd="/", timeout=300)
            tar.wait()
            if imported.returncode != 0:
                pytest.fail(f"rootless podman import failed: {imported.stderr.strip()}")
        yield rootless
    finally:
        _run(["pkill", "-KILL", "-u", ROOTLESS_USER])


@pytest.fixture(scope="session")
def rootless_container(rootless_podman: RootlessPodman) -> Iterator[RunningContainer]:
    """A detached rootless podman container running `sleep`, started by the unprivileged user."""
    name = f"cs-rootless-{secrets.token_hex(4)}"
    started = subprocess.run(rootless_podman.run_argv("-d", "--name", name, rootless_podman.image, "sleep", "3600"),
                             capture_output=True, text=True, cwd="/", timeout=120)
    if started.returncode != 0:
        pytest.fail(f"rootless podman run failed: {started.stderr.strip()}")
    cid = started.stdout.strip().splitlines()[-1]
    try:
        pid = int(rootless_podman.run("inspect", "-f", "{{.State.Pid}}", name).stdout.strip())
        yield RunningContainer("podman", cid, name, pid, image=rootless_podman.image)
    finally:
        rootless_podman.run("rm", "-f", "-t", "0", name, timeout=60)


@pytest.fixture
def nspawn_root(test_rootfs: Path, tmp_path: Path) -> Path:
    """A private copy of the root filesystem (nspawn writes into it)."""
    _need("systemd-nspawn")
    return rootfs_mod.copy_rootfs(tmp_path / "nspawn-root")


def nspawn_argv(root: Path, *command: str) -> list[str]:
    """systemd-nspawn without systemd as init: it stays in the caller's cgroup, namespaces set it apart."""
    return ["systemd-nspawn", "--register=no", "--keep-unit", "-q", "--machine", f"cs-{uuid.uuid4().hex[:8]}",
            "-D", str(root), *command]


def pid_ns(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino
