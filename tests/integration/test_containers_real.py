# ruff: noqa: F811 - pytest fixtures are imported by name and requested as arguments
"""The resolver against real containers, fed what the kernel would give it for their processes: the cgroup v2 id
(the inode of the cgroup's directory) and the namespace inodes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sensor.containers import ContainerResolver, host_namespaces, match_cgroup_path, read_namespaces
from sensor.containers.info import BY_CGROUP, BY_NAMESPACE_OF_KNOWN, BY_NAMESPACES
from tests.integration.conftest_containers import (  # noqa: F401 - fixtures
    CGROUP_V2,
    RunningContainer,
    children_of,
    containerd_container,
    lxc_container,
    nspawn_argv,
    nspawn_root,
    podman_container,
    podman_image_ref,
    runc_crio_container,
    runc_kube_container,
    runc_kube_systemd_container,
    test_rootfs,
    v2_cgroup_of,
    wait_for,
)

pytestmark = pytest.mark.containers


def evidence(pid: int) -> tuple[int, object]:
    return os.stat(CGROUP_V2 / v2_cgroup_of(pid).lstrip("/")).st_ino, read_namespaces(pid)


@pytest.fixture
def resolver():
    r = ContainerResolver(host_ns=host_namespaces(), cgroup_root=CGROUP_V2)
    r.seed()
    yield r
    r.close()


def settled(r: ContainerResolver, pid: int, ancestry=(), timeout: float = 5.0):
    """Resolves until the runtime's state has been read (the worker thread retries while it is not there)."""
    cgroup_id, ns = evidence(pid)
    return wait_for(lambda: (i := r.resolve(cgroup_id, ns, ancestry)) is not None and i.metadata_complete and i,
                    timeout, "container metadata")


def check(info, expected: RunningContainer) -> None:
    assert info.id == expected.id
    assert info.runtime == expected.runtime
    assert info.name == expected.name
    if expected.image:
        name, _, tag = expected.image.rpartition(":")
        assert (info.image_name, info.image_tag) == (name, tag)
    assert (info.pod_uid, info.pod_name, info.pod_namespace) == (
        expected.pod_uid, expected.pod_name, expected.pod_namespace)


def test_podman_runc(resolver, podman_container):
    info = settled(resolver, podman_container.pid)
    check(info, podman_container)
    assert info.decided_by == BY_CGROUP and "pid" in info.namespaces_differing
    assert info.cgroup_path == f"/libpod_parent/libpod-{podman_container.id}"


def test_podman_exec_reuses_the_known_container_without_reading(resolver, podman_container):
    first = settled(resolver, podman_container.pid)
    reads = resolver.stats()["metadata_file_reads"]
    exec_proc = subprocess.Popen(["podman", "exec", podman_container.name, "sleep", "5"])
    try:
        pid = wait_for(lambda: next((c for c in _descendants_named("sleep") if
                                     read_namespaces(c).pid == first.pid_namespace and c != podman_container.pid),
                                    None), what="podman exec'd sleep")
        info = settled(resolver, pid)
        assert info.id == first.id and info.name == first.name
        assert resolver.stats()["metadata_file_reads"] == reads
        assert resolver.stats()["proc_reads"] == 0
    finally:
        exec_proc.kill()
        exec_proc.wait()


def _descendants_named(comm: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def test_runc_kubepods_bundle(resolver, runc_kube_container):
    info = settled(resolver, runc_kube_container.pid)
    check(info, runc_kube_container)
    assert info.cgroup_path.startswith("/kubepods/burstable/pod")


def test_runc_kubepods_systemd_driver_containerd(resolver, runc_kube_systemd_container):
    info = settled(resolver, runc_kube_systemd_container.pid)
    check(info, runc_kube_systemd_container)
    assert info.cgroup_path.endswith(f"/cri-containerd-{runc_kube_systemd_container.id}.scope")


def test_runc_kubepods_systemd_driver_crio(resolver, runc_crio_container):
    info = settled(resolver, runc_crio_container.pid)
    check(info, runc_crio_container)
    assert info.cgroup_path.endswith(f"/crio-{runc_crio_container.id}.scope")


def test_containerd_ctr(resolver, containerd_container):
    info = settled(resolver, containerd_container.pid)
    # ctr records no annotations: the name is the id, the image is only in containerd's own database
    check(info, containerd_container)
    assert info.cgroup_path == f"/default/{containerd_container.id}"


def test_lxc_and_lxc_attach(resolver, lxc_container):
    info = settled(resolver, lxc_container.pid)
    check(info, lxc_container)
    attach = subprocess.Popen(["lxc-attach", "-n", lxc_container.name, "--", "/bin/sleep", "5"])
    try:
        pid = wait_for(lambda: next((c for c in children_of(attach.pid)), None), what="lxc-attach child")
        wait_for(lambda: v2_cgroup_of(pid).endswith("/.lxc"), what="attached process in the container cgroup")
        attached = settled(resolver, pid)
        assert attached.id == lxc_container.id and attached.container_cgroup == f"/lxc.payload.{lxc_container.id}"
    finally:
        attach.kill()
        attach.wait()


def test_nspawn_is_known_by_namespaces_only(resolver, nspawn_root):
    proc = subprocess.Popen(nspawn_argv(nspawn_root, "/bin/sleep", "5"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def payload() -> int | None:
            for child in children_of(proc.pid):
                for grandchild in [child, *children_of(child)]:
                    if Path(f"/proc/{grandchild}/comm").read_text().strip() == "sleep":
                        return grandchild
            return None

        pid = wait_for(payload, what="nspawn payload")
        # systemd 252 puts the payload in a "payload" child of the caller's cgroup: not a runtime's layout
        assert v2_cgroup_of(pid) == v2_cgroup_of(os.getpid()).rstrip("/") + "/payload"
        assert match_cgroup_path(v2_cgroup_of(pid)) is None
        cgroup_id, ns = evidence(pid)
        info = resolver.resolve(cgroup_id, ns, [(proc.pid, "systemd-nspawn")])
        assert info.decided_by == BY_NAMESPACES and info.runtime == "systemd-nspawn"
        assert {"pid", "mnt", "uts", "ipc"} <= set(info.namespaces_differing)
    finally:
        proc.kill()
        proc.wait()


def test_nsenter_into_podman_container(resolver, podman_container):
    settled(resolver, podman_container.pid)
    proc = subprocess.Popen(["nsenter", "-t", str(podman_container.pid), "-p", "-m", "-u", "-i", "-n", "--",
                             "/bin/sleep", "5"])
    try:
        pid = wait_for(lambda: next((c for c in [proc.pid, *children_of(proc.pid)]
                                     if Path(f"/proc/{c}/comm").read_text().strip() == "sleep"
                                     and read_namespaces(c).pid != host_namespaces().pid), None),
                       what="nsenter'd sleep")
        cgroup_id, ns = evidence(pid)
        info = resolver.resolve(cgroup_id, ns, [(proc.pid, "nsenter")])
        assert info.id == podman_container.id and info.decided_by == BY_NAMESPACE_OF_KNOWN
    finally:
        proc.kill()
        proc.wait()


def test_host_negatives(tmp_path):
    # a process moved into a service-like cgroup of its own, made before the resolver walks the tree
    service = CGROUP_V2 / "system.slice" / f"cs-test-{os.getpid()}.service"
    service.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["sleep", "5"])
    unshared = subprocess.Popen(["unshare", "--mount", "sleep", "5"])
    host = host_namespaces()
    resolver = ContainerResolver(host_ns=host, cgroup_root=CGROUP_V2)
    try:
        resolver.seed()
        (service / "cgroup.procs").write_text(str(proc.pid))
        cgroup_id, ns = evidence(proc.pid)
        assert resolver.cgroup_path(cgroup_id) == f"/system.slice/cs-test-{os.getpid()}.service"
        assert resolver.resolve(cgroup_id, ns) is None
        wait_for(lambda: read_namespaces(unshared.pid).mnt != host.mnt, what="unshare --mount")
        cgroup_id, ns = evidence(unshared.pid)
        assert ns.pid == host.pid and ns.mnt != host.mnt
        assert resolver.resolve(cgroup_id, ns, [(1, "unshare")]) is None
        assert resolver.stats()["host"] == 2
    finally:
        resolver.close()
        for p in (proc, unshared):
            p.kill()
            p.wait()
        service.rmdir()
