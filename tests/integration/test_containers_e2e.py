# ruff: noqa: F401, F811 - pytest fixtures are imported by name and requested as arguments
"""The live sensor end to end: container identity and the entry leader in the documents, per runtime.

The containers of this module start before the module's sensor, so `exec` into them exercises what the
sensor learns at start-up; `podman run --rm`, LXC attach and nspawn sessions start while it runs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest_containers import (
    CGROUP_V2,
    PODMAN_RUN,
    containerd_container,
    lxc_container,
    nspawn_argv,
    nspawn_root,
    podman_container,
    podman_image_ref,
    runc_kube_container,
    test_rootfs,
)
from tests.integration.sensor_process import SHARED, SensorProcess, get, invoked_name

pytestmark = [pytest.mark.kernel, pytest.mark.containers]


# Elastic's rule that keys on process.entry_leader.entry_meta.type == "container" (read from ../shared/rules)
SSH_RULE = SHARED / "rules" / "lateral_movement_ssh_process_launched_inside_container.toml"
SSH_RULE_ID = "5c50ffa6-07f4-4cce-a1b7-c16928a2ed52"


@pytest.fixture(scope="module")
def live(podman_container, runc_kube_container, lxc_container, containerd_container) -> Iterator[SensorProcess]:
    extra = ["--rules", str(SSH_RULE)] if SSH_RULE.exists() else []
    with SensorProcess(*extra) as running:
        yield running


def elastic_ssh_alert(sensor: SensorProcess, mark: str) -> dict:
    if not SSH_RULE.exists():
        pytest.skip(f"{SSH_RULE} not present")
    return sensor.wait_for(lambda d: get(d, "event.kind") == "alert" and get(d, "rule.id") == SSH_RULE_ID
                           and mark in (get(d, "process.command_line") or ""), 15.0)[-1]


def execs(sensor: SensorProcess, name: str, *, marker: str, timeout: float = 15.0) -> list[dict]:
    """Exec documents of NAME whose command line carries MARKER (so concurrent tests never match)."""
    return sensor.wait_for(lambda d: get(d, "event.kind") == "event" and get(d, "event.action") == "exec"
                           and invoked_name(d) == name and marker in (get(d, "process.command_line") or ""),
                           timeout)


def marker() -> str:
    return f"cs-mark-{os.urandom(4).hex()}"


def test_podman_run_rm_command_that_exits_at_once(live, podman_image_ref, tmp_path):
    mark = marker()
    cidfile = tmp_path / "cid"
    subprocess.run([*PODMAN_RUN, "--rm", "--cidfile", str(cidfile), podman_image_ref, "/bin/echo", mark],
                   check=True, capture_output=True, timeout=60)
    cid = cidfile.read_text().strip()
    doc = execs(live, "echo", marker=mark)[-1]
    assert get(doc, "container.id") == cid
    assert get(doc, "container.runtime") == "podman"
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.entry_leader.same_as_process") is True
    assert get(doc, "process.parent.name") == "conmon"
    # the container's only exec goes out without waiting for podman's state; by its end (after the cgroup is
    # gone, within the grace period) the name and image have been read
    end = live.end_of(get(doc, "process.pid"))
    assert get(end, "container.id") == cid
    assert get(end, "container.image.name") == podman_image_ref.rsplit(":", 1)[0]
    assert get(end, "container.image.tag") == [podman_image_ref.rsplit(":", 1)[1]]
    if get(doc, "container.image.name") is not None:
        assert get(doc, "container.image.name") == get(end, "container.image.name")


def test_first_exec_of_a_new_podman_container_carries_its_name_and_image(live, podman_image_ref):
    # podman writes the container's state before starting it, and the files are small: the sensor reads them at
    # the container's first exec instead of sending that document without them
    mark = marker()
    name = f"cs-first-{mark.rsplit('-', 1)[1]}"
    subprocess.run([*PODMAN_RUN, "--rm", "--name", name, podman_image_ref, "/bin/echo", mark],
                   check=True, capture_output=True, timeout=60)
    doc = execs(live, "echo", marker=mark)[-1]
    assert get(doc, "container.name") == name
    assert get(doc, "container.image.name") == podman_image_ref.rsplit(":", 1)[0]
    assert get(doc, "container.image.tag") == [podman_image_ref.rsplit(":", 1)[1]]


def test_exec_into_container_started_before_sensor_with_nested_shells(live, podman_container):
    mark = marker()
    subprocess.run(["podman", "exec", podman_container.name, "/bin/sh", "-c", f"/bin/sh -c '/bin/echo {mark}; true'"],
                   check=True, capture_output=True, timeout=60)
    doc = execs(live, "echo", marker=mark)[-1]
    assert get(doc, "container.id") == podman_container.id
    assert get(doc, "container.name") == podman_container.name
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.entry_leader.name") == "busybox"  # /bin/sh's file, as Elastic Defend names it
    assert get(doc, "process.entry_leader.same_as_process") is False
    assert get(doc, "process.entry_leader.parent.pid") is not None
    assert get(doc, "process.parent.name") == "busybox"


def test_ssh_in_runc_kubepods_bundle(live, runc_kube_container):
    mark = marker()
    subprocess.run(["runc", "exec", runc_kube_container.id, "/usr/bin/ssh", "-V", "-o", f"User={mark}"],
                   capture_output=True, timeout=60)
    doc = execs(live, "ssh", marker=mark)[-1]
    assert get(doc, "container.id") == runc_kube_container.id
    assert get(doc, "container.runtime") == "containerd"
    assert get(doc, "container.name") == "web"
    assert get(doc, "container.image.name") == "docker.io/library/busybox"
    assert get(doc, "orchestrator.resource.name") == "web-6d9f7c"
    assert get(doc, "orchestrator.namespace") == "shop"
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.parent.name") == "runc"


def test_ctr_task_exec(live, containerd_container):
    mark = marker()
    subprocess.run(["ctr", "-n", "default", "task", "exec", "--exec-id", mark, containerd_container.id,
                    "/usr/bin/ssh", "-V", "-o", f"User={mark}"], capture_output=True, timeout=60)
    doc = execs(live, "ssh", marker=mark)[-1]
    assert get(doc, "container.id") == containerd_container.id
    assert get(doc, "container.runtime") == "containerd"
    assert get(doc, "container_sensor.cgroup.path") == f"/default/{containerd_container.id}"
    # at exec time the parent is still `runc exec` (the shim adopts the process later): Elastic's model knows both
    assert get(doc, "process.parent.name") in ("runc", "containerd-shim-runc-v2")
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(elastic_ssh_alert(live, mark), "container.id") == containerd_container.id


def test_lxc_attach_is_a_container_session(live, lxc_container):
    mark = marker()
    subprocess.run(["lxc-attach", "-n", lxc_container.name, "--", "/bin/sh", "-c", f"/bin/echo {mark}; true"],
                   check=True, capture_output=True, timeout=60)
    doc = execs(live, "echo", marker=mark)[-1]
    assert get(doc, "container.id") == lxc_container.name
    assert get(doc, "container.runtime") == "lxc"
    # lxc-attach neither setsids nor has a runtime parent Elastic's model knows: typed from the evidence
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.entry_leader.name") == "busybox"  # /bin/sh's file, as Elastic Defend names it
    # so Elastic's ssh-in-container rule fires where Elastic's own session model would not let it
    subprocess.run(["lxc-attach", "-n", lxc_container.name, "--", "/usr/bin/ssh", "-V", "-o", f"User={mark}"],
                   capture_output=True, timeout=60)
    assert get(elastic_ssh_alert(live, mark), "container.id") == lxc_container.name


def test_nspawn_session(live, nspawn_root):
    mark = marker()
    subprocess.run(nspawn_argv(nspawn_root, "/bin/sh", "-c", f"/bin/echo {mark}; true"), capture_output=True,
                   timeout=60)
    doc = execs(live, "echo", marker=mark)[-1]
    assert get(doc, "container.runtime") == "systemd-nspawn"
    assert get(doc, "container.id", "").startswith("pidns-")
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.entry_leader.name") == "busybox"  # /bin/sh's file, as Elastic Defend names it
    subprocess.run(nspawn_argv(nspawn_root, "/usr/bin/ssh", "-V", "-o", f"User={mark}"), capture_output=True,
                   timeout=60)
    assert get(elastic_ssh_alert(live, mark), "container.runtime") == "systemd-nspawn"


def test_nsenter_into_container_started_before_sensor(live, podman_container):
    mark = marker()
    subprocess.run(["nsenter", "-t", str(podman_container.pid), "-p", "-m", "-u", "-i", "-n", "--",
                    "/bin/sh", "-c", f"/bin/echo {mark}; true"], check=True, capture_output=True, timeout=60)
    doc = execs(live, "echo", marker=mark)[-1]
    # nsenter does not move into the container's cgroup: the pid namespace names the container
    assert get(doc, "container.id") == podman_container.id
    assert get(doc, "container.name") == podman_container.name
    assert "decided_by=namespaces-of-known-container" in get(doc, "container_sensor.container_evidence")
    assert get(doc, "process.entry_leader.entry_meta.type") == "container"
    assert get(doc, "process.entry_leader.name") == "busybox"  # /bin/sh's file, as Elastic Defend names it


def test_host_negatives(live):
    mark = marker()
    service = CGROUP_V2 / "system.slice" / f"cs-e2e-{os.getpid()}.service"
    service.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["/bin/sh", "-c", f"echo $$ > {service}/cgroup.procs && exec /bin/echo {mark}-svc"],
                       check=True, capture_output=True, timeout=30)
        subprocess.run(["unshare", "--mount", "/bin/echo", f"{mark}-mnt"], check=True, capture_output=True,
                       timeout=30)
        svc = execs(live, "echo", marker=f"{mark}-svc")[-1]
        mnt = execs(live, "echo", marker=f"{mark}-mnt")[-1]
    finally:
        service.rmdir()
    for doc in (svc, mnt):
        assert "container" not in doc
        assert get(doc, "process.entry_leader.entry_meta.type") != "container"
    assert get(svc, "container_sensor.cgroup.path") == f"/system.slice/{service.name}"

