# ruff: noqa: F401, F811 - pytest fixtures are imported by name and requested as arguments
"""Every runtime a node runs, with the live sensor: Docker (dockerd, cgroupfs driver), containerd without Docker
(`ctr`), and podman run rootless by an unprivileged user (user namespace, no cgroup of its own on this cgroup v1
host). For each: where the container is placed, its metadata (name, image, runtime), an exec into it typed as a
container entry like `podman exec`, and the built-in ssh alert, for a container running before the sensor started
(exec into it) and one started and removed while it runs (`run --rm`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest_containers import (
    DOCKER_RUN,
    RootlessPodman,
    RunningContainer,
    containerd_container,
    docker_container,
    docker_image_ref,
    podman_image_ref,
    rootless_container,
    rootless_podman,
    test_rootfs,
)
from tests.integration.sensor_process import SensorProcess, get, invoked_name

pytestmark = [pytest.mark.kernel, pytest.mark.containers]

BUILTIN = "SSH Client or Server Started Inside a Container"


@pytest.fixture(scope="module")
def live(docker_container, rootless_container, containerd_container) -> Iterator[SensorProcess]:
    with SensorProcess() as running:
        yield running


def marker() -> str:
    return f"cs-rt-{os.urandom(4).hex()}"


def ssh_exec_and_alert(sensor: SensorProcess, mark: str) -> tuple[dict, dict]:
    """The exec document and the built-in alert of `ssh -V -o User=MARK`."""
    def carries(d: dict) -> bool:
        return f"User={mark}" in (get(d, "process.args") or [])
    doc = sensor.wait_for(lambda d: get(d, "event.kind") == "event" and get(d, "event.action") == "exec"
                          and invoked_name(d) == "ssh" and carries(d), 20)[-1]
    alert = sensor.wait_for(lambda d: get(d, "event.kind") == "alert" and get(d, "rule.name") == BUILTIN
                            and carries(d), 20)[-1]
    return doc, alert


def check_identity(doc: dict, *, cid: str, runtime: str, name: str | None, image: str | None) -> None:
    assert get(doc, "container.id") == cid
    assert get(doc, "container.runtime") == runtime
    assert get(doc, "container.name") == name
    if image is None:
        assert get(doc, "container.image.name") is None
    else:
        repo, tag = image.rsplit(":", 1)
        assert get(doc, "container.image.name") == repo
        assert get(doc, "container.image.tag") == [tag]


def docker() -> str:
    return shutil.which("docker") or "docker"


# -- Docker ---------------------------------------------------------------------------------------------------


def test_docker_exec_is_a_container_entry_and_alerts(live, docker_container: RunningContainer) -> None:
    mark = marker()
    subprocess.run([docker(), "exec", docker_container.name, "/usr/bin/ssh", "-V", "-o", f"User={mark}"],
                   capture_output=True, timeout=60)
    doc, alert = ssh_exec_and_alert(live, mark)
    for d in (doc, alert):
        check_identity(d, cid=docker_container.id, runtime="docker", name=docker_container.name,
                       image=docker_container.image)
    assert get(doc, "container_sensor.cgroup.path") == f"/docker/{docker_container.id}"
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.parent.name") in ("runc", "containerd-shim-runc-v2")


def test_docker_run_rm_alerts_with_name_and_image(live, docker_image_ref: str, tmp_path) -> None:
    mark = marker()
    name = f"cs-docker-rm-{mark[-8:]}"
    cidfile = tmp_path / "cid"
    subprocess.run([docker(), *DOCKER_RUN, "--rm", "--cidfile", str(cidfile), "--name", name, docker_image_ref,
                    "/usr/bin/ssh", "-V", "-o", f"User={mark}"], capture_output=True, timeout=120)
    cid = cidfile.read_text().strip()
    doc, alert = ssh_exec_and_alert(live, mark)
    check_identity(alert, cid=cid, runtime="docker", name=name, image=docker_image_ref)
    assert get(doc, "container.id") == cid
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(alert, "container_sensor.alert.container_metadata") in (None, "complete")


# -- containerd without Docker --------------------------------------------------------------------------------


def test_ctr_run_rm_alerts(live, containerd_container: RunningContainer, podman_image_ref: str) -> None:
    # the image was imported into containerd's default namespace by the containerd_container fixture
    mark = marker()
    cid = f"cs-ctr-rm-{mark[-8:]}"
    subprocess.run(["ctr", "-n", "default", "run", "--rm", podman_image_ref, cid, "/usr/bin/ssh", "-V", "-o",
                    f"User={mark}"], stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    doc, alert = ssh_exec_and_alert(live, mark)
    # ctr keeps the image only in containerd's database (not read): the name is the id, no image
    for d in (doc, alert):
        check_identity(d, cid=cid, runtime="containerd", name=cid, image=None)
    assert get(doc, "container_sensor.cgroup.path") == f"/default/{cid}"
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"


def test_ctr_task_exec_is_a_container_entry_and_alerts(live, containerd_container: RunningContainer) -> None:
    mark = marker()
    subprocess.run(["ctr", "-n", "default", "task", "exec", "--exec-id", mark, containerd_container.id,
                    "/usr/bin/ssh", "-V", "-o", f"User={mark}"], capture_output=True, timeout=60)
    doc, alert = ssh_exec_and_alert(live, mark)
    for d in (doc, alert):
        check_identity(d, cid=containerd_container.id, runtime="containerd", name=containerd_container.id,
                       image=None)
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"


# -- rootless podman ------------------------------------------------------------------------------------------


def test_rootless_podman_exec_is_a_container_entry_and_alerts(live, rootless_podman: RootlessPodman,
                                                               rootless_container: RunningContainer) -> None:
    mark = marker()
    rootless_podman.run("exec", rootless_container.name, "/usr/bin/ssh", "-V", "-o", f"User={mark}", timeout=60)
    doc, alert = ssh_exec_and_alert(live, mark)
    for d in (doc, alert):
        check_identity(d, cid=rootless_container.id, runtime="podman", name=rootless_container.name,
                       image=rootless_podman.image)
    # no cgroup of its own: placed by its namespaces, named by the conmon above it
    assert "decided_by=namespaces" in get(doc, "container_sensor.container_evidence")
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    # root in the container is the unprivileged user on the host, whose id the documents carry (as Defend's do)
    assert get(doc, "process.user.id") == str(rootless_podman.uid)


def test_rootless_podman_run_rm_alerts_with_name_and_image(live, rootless_podman: RootlessPodman) -> None:
    mark = marker()
    name = f"cs-rootless-rm-{mark[-8:]}"
    ran = subprocess.run(rootless_podman.run_argv("--rm", "--name", name, rootless_podman.image, "/usr/bin/ssh",
                                                  "-V", "-o", f"User={mark}"),
                         capture_output=True, text=True, cwd="/", timeout=120)
    assert "OpenSSH" in ran.stderr, ran.stderr
    doc, alert = ssh_exec_and_alert(live, mark)
    check_identity(alert, cid=get(alert, "container.id"), runtime="podman", name=name, image=rootless_podman.image)
    assert len(get(alert, "container.id")) == 64 and get(doc, "container.id") == get(alert, "container.id")
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"

