"""The container image, built here and started the way the DaemonSet starts it, detects ssh in another container.

The base image is made locally (packaging/make-base-image.sh: debootstrap, cached under
/var/cache/container-sensor) because no registry is reachable; apt inside the build reaches Debian's mirrors.
The sensor container gets the DaemonSet's host mounts, environment, configuration file, read-only root and
writable scratch volumes, all read from packaging/kubernetes/, so this test breaks when the manifest and the image
stop fitting together.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sensor.ops.server import probe
from tests.integration.rootfs import RootfsUnavailable, podman_image

pytestmark = [pytest.mark.containers, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
IMAGE = "localhost/container-sensor:test"
BASE_IMAGE = "docker.io/library/debian:bookworm"
# The runtime podman needs on these hosts (crun refuses hybrid cgroups) and the rlimits it can set here.
PODMAN_RUN = ["podman", "--runtime", "runc", "run", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sensor_image() -> str:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("needs podman and debootstrap (scripts/install.sh --test)")
    started = time.monotonic()
    subprocess.run([str(PACKAGING / "make-base-image.sh"), BASE_IMAGE], check=True, capture_output=True,
                   timeout=900)
    base_done = time.monotonic()
    build = ["podman", "build", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
             "nproc=4096:4096", "--network", "host", "-f", str(PACKAGING / "Containerfile"),
             "--ignorefile", str(PACKAGING / "containerignore"), "-t", IMAGE]
    if HOST_CA_BUNDLE.is_file():
        # Where PyPI is reached through a TLS-inspecting proxy, the host's CA bundle trusts it.
        build += ["--secret", f"id=pip-ca,src={HOST_CA_BUNDLE}"]
    result = subprocess.run([*build, str(REPO)], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(f"\nbase image {base_done - started:.1f}s, sensor image build {time.monotonic() - base_done:.1f}s")
    return IMAGE


def daemonset_container() -> tuple[dict[str, Any], dict[str, Any]]:
    (ds,) = yaml.safe_load_all((PACKAGING / "kubernetes" / "daemonset.yaml").read_text())
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def security_args(context: dict[str, Any]) -> list[str]:
    """podman's spelling of a Kubernetes securityContext."""
    if context.get("privileged"):
        args = ["--privileged"]
    else:
        capabilities = context.get("capabilities", {})
        args = [f"--cap-drop={','.join(capabilities.get('drop', []))}",
                f"--cap-add={','.join(capabilities.get('add', []))}"]
        if context.get("seccompProfile", {}).get("type") == "Unconfined":
            args.append("--security-opt=seccomp=unconfined")
        if context.get("appArmorProfile", {}).get("type") == "Unconfined":
            args.append("--security-opt=apparmor=unconfined")
        if context.get("allowPrivilegeEscalation") is False:
            args.append("--security-opt=no-new-privileges")
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    return args


def least_privilege_context() -> dict[str, Any]:
    (patch,) = yaml.safe_load_all((PACKAGING / "kubernetes-least-privilege" / "least-privilege.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    return container["securityContext"]


def podman_args_from_daemonset(workdir: Path, metrics_port: int, host_headers: bool,
                               least_privilege: bool = False) -> list[str]:
    """`podman run` flags that give the container what the DaemonSet gives it on a node."""
    pod, container = daemonset_container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = ["--pid=host" if pod["hostPID"] else "--pid=private",
            "--network=host" if pod["hostNetwork"] else "--network=none"]
    args += security_args(least_privilege_context() if least_privilege else container["securityContext"])
    (configmap,) = yaml.safe_load_all((PACKAGING / "kubernetes" / "configmap.yaml").read_text())
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        options = ["ro"] if mount.get("readOnly") else []
        if mount.get("mountPropagation") == "HostToContainer":
            options.append("rslave")
        suffix = f":{','.join(options)}" if options else ""
        if "hostPath" in volume:
            source = Path(volume["hostPath"]["path"])
            headers = source.parts[1:3] == ("lib", "modules") or source == Path("/usr/src")
            if headers and not host_headers:
                continue  # a node without kernel headers: the image's own tree must serve
            if not source.exists():
                if volume["hostPath"].get("type") != "DirectoryOrCreate":
                    continue
                # What the kubelet does for DirectoryOrCreate; made in the test's scratch space, not on the host.
                source = workdir / "created" / source.relative_to("/")
                source.mkdir(parents=True, exist_ok=True)
            if source == Path("/var/lib/container-sensor"):
                source = workdir / "spool"  # the spool of this run only
                source.mkdir(exist_ok=True)
            args += ["-v", f"{source}:{target}{suffix}"]
        elif "configMap" in volume:
            config_dir = workdir / volume["name"]
            config_dir.mkdir(exist_ok=True)
            if volume["configMap"]["name"] == configmap["metadata"]["name"]:
                for key, text in configmap["data"].items():
                    (config_dir / key).write_text(text)
            else:  # the rules, generated by kustomization.yaml from the files it names
                (kustomization,) = yaml.safe_load_all((PACKAGING / "kubernetes" / "kustomization.yaml").read_text())
                (generator,) = [g for g in kustomization["configMapGenerator"]
                                if g["name"] == volume["configMap"]["name"]]
                for name in generator["files"]:
                    source = PACKAGING / "kubernetes" / name
                    (config_dir / source.name).write_text(source.read_text())
            args += ["-v", f"{config_dir}:{target}:ro"]
        elif "emptyDir" in volume:
            args += ["--tmpfs", f"{target}:rw,exec"]
        # The optional Elasticsearch Secret does not exist here, as on a cluster before it is created.
    for env in container["env"]:
        if "value" in env:
            args += ["-e", f"{env['name']}={env['value']}"]
        elif "fieldRef" in env.get("valueFrom", {}):
            args += ["-e", f"{env['name']}={socket.gethostname()}"]
    # Another sensor on this machine may hold the default port; everything else is as shipped.
    args += ["-e", f"CONTAINER_SENSOR_METRICS_ADDRESS=127.0.0.1:{metrics_port}"]
    return [*args, *container.get("args", [])]


class SensorContainer:
    def __init__(self, image: str, workdir: Path, host_headers: bool, least_privilege: bool = False) -> None:
        self.name = f"container-sensor-test-{uuid.uuid4().hex[:8]}"
        self.least_privilege = least_privilege
        self.metrics_address = f"127.0.0.1:{free_port()}"
        port = int(self.metrics_address.rsplit(":", 1)[1])
        flags = podman_args_from_daemonset(workdir, port, host_headers, least_privilege)
        *options, command = flags
        subprocess.run([*PODMAN_RUN, "-d", "--name", self.name, *options, image, command],
                       check=True, capture_output=True, text=True, timeout=60)

    def logs(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
        """(documents on stdout, log lines on stderr, the tail of both as text)."""
        result = podman("logs", self.name, check=False)

        def parse(text: str) -> list[dict[str, Any]]:
            parsed = []
            for line in text.splitlines():
                if line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        parsed.append(json.loads(line))
            return parsed

        return parse(result.stdout), parse(result.stderr), result.stdout[-3000:] + result.stderr[-3000:]

    def running(self) -> bool:
        result = podman("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return result.stdout.strip() == "true"

    def wait_healthy(self, timeout: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            ok, _ = probe(self.metrics_address, "/healthz", timeout=2)
            if ok:
                return time.monotonic() - started
            if not self.running():
                raise AssertionError(f"sensor container exited:\n{self.logs()[2]}")
            time.sleep(0.5)
        raise AssertionError(f"/healthz not 200 after {timeout}s:\n{self.logs()[2]}")

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False, timeout=60)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def ssh_image() -> str:
    try:
        return podman_image()
    except RootfsUnavailable as error:
        pytest.skip(str(error))


def start_ssh_container(image: str, workdir: Path) -> str:
    cidfile = workdir / f"ssh-{uuid.uuid4().hex[:8]}.cid"
    result = subprocess.run([*PODMAN_RUN, "--rm", "--network", "none", "--cidfile", str(cidfile), image,
                             "/usr/bin/ssh", "-V"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "OpenSSH" in result.stderr
    return cidfile.read_text().strip()


@pytest.fixture
def sensor_container(request, sensor_image: str, workdir: Path) -> Iterator[SensorContainer]:
    variant = request.param
    # Without privileges the container cannot mount tracefs: the node must have (docs/operations.md).
    if variant == "least-privilege" and not Path("/sys/kernel/tracing/events").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    container = SensorContainer(sensor_image, workdir, host_headers=variant == "host-headers",
                                least_privilege=variant == "least-privilege")
    try:
        yield container
    finally:
        container.remove()


@pytest.mark.parametrize("sensor_container", ["host-headers", "image-headers", "least-privilege"],
                         indirect=True)
def test_image_detects_ssh_in_another_container(sensor_container: SensorContainer, ssh_image: str,
                                                 workdir: Path):
    startup = sensor_container.wait_healthy(timeout=120)
    ok, metrics = probe(sensor_container.metrics_address, "/metrics")
    assert ok and "container_sensor_healthy 1" in metrics

    started = time.monotonic()
    container_id = start_ssh_container(ssh_image, workdir)
    alert = None
    while alert is None and time.monotonic() - started < 30:
        docs, _, _ = sensor_container.logs()
        alert = next((d for d in docs if d.get("event", {}).get("kind") == "alert"
                      and d.get("process", {}).get("name") == "ssh"
                      and d.get("container", {}).get("id") == container_id), None)
        time.sleep(0.5)
    docs, log_lines, tail = sensor_container.logs()
    assert alert is not None, f"no ssh alert for container {container_id}:\n{tail}"
    assert alert["process"]["args"] == ["/usr/bin/ssh", "-V"]
    assert alert["container"]["runtime"] == "podman"
    # The exec event itself came out too, and the sensor logs in JSON as the image sets.
    assert any(d.get("event", {}).get("action") == "exec" and d.get("container", {}).get("id") == container_id
               for d in docs)
    assert any(line.get("log.level") == "info" for line in log_lines), tail
    print(f"\nsensor healthy {startup:.1f}s after start; alert within {time.monotonic() - started:.1f}s")

    # Everything the DaemonSet mounts is what `check` asks for.
    check = podman("exec", sensor_container.name, "container-sensor", "check", check=False, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    runtime_line = next(line for line in check.stdout.splitlines() if "runtime state:" in line)
    # Other runtimes may run on this machine too; podman's state, at least, must be visible.
    assert runtime_line.startswith("ok   runtime state: state visible for"), check.stdout
    assert "podman" in runtime_line.split(";")[0], check.stdout
    assert "ok   spool: /var/lib/container-sensor/spool" in check.stdout, check.stdout

    # The selftest as an operator runs it in the pod: no runtime there, so ssh goes into new namespaces, which
    # needs CAP_SYS_ADMIN: without it (least privilege) the selftest says so in one line and fails.
    selftest = podman("exec", sensor_container.name, "container-sensor", "selftest", check=False, timeout=120)
    if sensor_container.least_privilege:
        assert selftest.returncode == 1, selftest.stdout + selftest.stderr
        assert "needs CAP_SYS_ADMIN, which this process lacks" in selftest.stdout, selftest.stdout
        return
    assert selftest.returncode == 0, selftest.stdout + selftest.stderr
    assert "selftest: started ssh -V in new namespaces (unshare)" in selftest.stdout
    assert "selftest: PASS:" in selftest.stdout


def test_image_check_names_what_is_missing_without_privileges(sensor_image: str):
    """`container-sensor check` in an unprivileged container says what to grant, and exits non-zero."""
    result = subprocess.run([*PODMAN_RUN, "--rm", "--network", "none", sensor_image, "check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "CAP_BPF" in result.stdout + result.stderr


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


SYSTEMD_CONTAINERFILE = """\
FROM {image}
RUN apt-get update && apt-get install -y --no-install-recommends systemd systemd-sysv \\
 && rm -rf /var/lib/apt/lists/*
COPY container-sensor.service /etc/systemd/system/container-sensor.service
COPY environment /etc/container-sensor/environment
RUN systemctl enable container-sensor
ENTRYPOINT ["/lib/systemd/systemd"]
CMD []
"""


def test_systemd_unit_runs_the_sensor_under_its_hardening(sensor_image: str, tmp_path: Path):
    """The shipped unit, unchanged, under a real systemd: the sensor attaches and emits despite the sandbox."""
    context = tmp_path / "systemd-image"
    context.mkdir()
    shutil.copy(PACKAGING / "systemd" / "container-sensor.service", context)
    address = f"127.0.0.1:{free_port()}"
    # A non-editable install keeps the probe's C sources in the copied tree, as docs/operations.md says.
    (context / "environment").write_text(
        f"SENSOR_BPF_DIR=/opt/container-sensor/src/bpf\nCONTAINER_SENSOR_METRICS_ADDRESS={address}\n"
    )
    (context / "Containerfile").write_text(SYSTEMD_CONTAINERFILE.format(image=sensor_image))
    image = "localhost/container-sensor-systemd:test"
    build = subprocess.run(["podman", "build", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
                            "nproc=4096:4096", "--network", "host", "-t", image, str(context)],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    name = f"container-sensor-systemd-{uuid.uuid4().hex[:8]}"
    subprocess.run([*PODMAN_RUN, "-d", "--name", name, "--privileged", "--systemd=always", "--network=host",
                    image], check=True, capture_output=True, timeout=60)
    try:
        deadline = time.monotonic() + 120
        ok, body = probe(address)
        while not ok and time.monotonic() < deadline:
            time.sleep(0.5)
            ok, body = probe(address)
        journal = podman("exec", name, "journalctl", "-u", "container-sensor", "--no-pager", "-o", "cat",
                         check=False).stdout
        assert ok, f"{body}\n{journal[-3000:]}"
        state = podman("exec", name, "systemctl", "show", "-p", "ActiveState", "-p", "NRestarts",
                       "container-sensor").stdout.split()
        assert state == ["NRestarts=0", "ActiveState=active"], state
        marker = f"unit-test-{uuid.uuid4().hex}"
        podman("exec", name, "/bin/true", marker)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            journal = podman("exec", name, "journalctl", "-u", "container-sensor", "--no-pager", "-o", "cat",
                             check=False)
            if any(marker in line and '"action":"exec"' in line for line in journal.stdout.splitlines()):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no exec document for /bin/true {marker} in the journal:\n"
                                 f"{journal.stdout[-2000:]}\n{journal.stderr[-1000:]}")
    finally:
        podman("rm", "-f", "-t", "5", name, check=False, timeout=60)
