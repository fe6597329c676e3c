"""Cgroup path layouts: every runtime shape, and the host paths that must stay on the host."""

from __future__ import annotations

import pytest

from sensor.containers.layouts import CONTAINER_LAYOUTS, PathMatcher, match_cgroup_path, unescape_systemd

# Ids below: PODMAN_ID and the LXC name were seen on this machine; the rest are ids of the same shape.
PODMAN_ID = "fddcb0d306ca760e90ae85613be32b63bd36a162373da32b38ab4752fcbee111"
DOCKER_ID = "3f4e8b2f6b4c0f5e9d1a7c2b8e6f4a0d9c3b5e7f1a2d4c6e8b0a9f7d5c3e1b2a"
CTRD_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"
CRIO_ID = "9e1d7c5b3a2f4e6d8c0b1a3f5e7d9c2b4a6f8e0d1c3b5a7f9e2d4c6b8a0f1e3d"
POD_UID = "0e6a4b8c-2d3f-4a1b-9c8d-7e6f5a4b3c2d"
POD_UID_SYSTEMD = POD_UID.replace("-", "_")

CONTAINERS = [
    # (path, runtime, id, pod uid, container cgroup)  -- where the shape is seen
    # podman 4.3 cgroupfs driver, seen here (`podman --runtime runc run`): every hierarchy, unified included
    (f"/libpod_parent/libpod-{PODMAN_ID}", "podman", PODMAN_ID, None, f"/libpod_parent/libpod-{PODMAN_ID}"),
    # podman, systemd driver, root: machine.slice; with --cgroups=split/nested the payload sits in /container
    (f"/machine.slice/libpod-{PODMAN_ID}.scope", "podman", PODMAN_ID, None, None),
    (f"/machine.slice/libpod-{PODMAN_ID}.scope/container", "podman", PODMAN_ID, None,
     f"/machine.slice/libpod-{PODMAN_ID}.scope"),
    # rootless podman under the user's systemd instance
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{PODMAN_ID}.scope", "podman", PODMAN_ID,
     None, None),
    # podman pod infra/payload cgroup (cgroupfs)
    (f"/machine.slice/machine-libpod_pod_x.slice/libpod-payload-{PODMAN_ID}", "podman", PODMAN_ID, None, None),
    # docker, cgroupfs driver (cgroup v1 default): /docker/<id> in every hierarchy
    (f"/docker/{DOCKER_ID}", "docker", DOCKER_ID, None, None),
    # docker, systemd driver (cgroup v2 default)
    (f"/system.slice/docker-{DOCKER_ID}.scope", "docker", DOCKER_ID, None, None),
    # kubelet systemd driver + containerd CRI: burstable, besteffort, guaranteed (no QoS slice)
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID_SYSTEMD}.slice/"
     f"cri-containerd-{CTRD_ID}.scope", "containerd", CTRD_ID, POD_UID, None),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_UID_SYSTEMD}.slice/"
     f"cri-containerd-{CTRD_ID}.scope", "containerd", CTRD_ID, POD_UID, None),
    (f"/kubepods.slice/kubepods-pod{POD_UID_SYSTEMD}.slice/cri-containerd-{CTRD_ID}.scope", "containerd", CTRD_ID,
     POD_UID, None),
    # containerd with a systemd-style cgroupsPath on cgroupfs (the "slice:prefix:name" form kept literally)
    (f"/kubepods-burstable-pod{POD_UID_SYSTEMD}.slice:cri-containerd:{CTRD_ID}", "containerd", CTRD_ID, POD_UID,
     None),
    # kubelet cgroupfs driver: the bare id under the pod cgroup, runtime unknown from the path
    (f"/kubepods/burstable/pod{POD_UID}/{CTRD_ID}", None, CTRD_ID, POD_UID, None),
    (f"/kubepods/besteffort/pod{POD_UID}/{CTRD_ID}", None, CTRD_ID, POD_UID, None),
    (f"/kubepods/pod{POD_UID}/{CTRD_ID}", None, CTRD_ID, POD_UID, None),
    # cri-o, systemd driver and cgroupfs driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID_SYSTEMD}.slice/crio-{CRIO_ID}.scope",
     "cri-o", CRIO_ID, POD_UID, None),
    (f"/kubepods/burstable/pod{POD_UID}/crio-{CRIO_ID}", "cri-o", CRIO_ID, POD_UID, None),
    (f"/kubepods-besteffort-pod{POD_UID_SYSTEMD}.slice:crio:{CRIO_ID}", "cri-o", CRIO_ID, POD_UID, None),
    # containerd `ctr run` (default namespace) and nerdctl
    ("/default/sensor-test", "containerd", "sensor-test", None, None),
    (f"/default/{CTRD_ID}", "containerd", CTRD_ID, None, None),
    (f"/k8s.io/{CTRD_ID}", None, CTRD_ID, None, None),
    # LXC 5.0.2, seen here: the container, and lxc-attach'd processes in its .lxc sub-cgroup
    ("/lxc.payload.cs-probe-lxc", "lxc", "cs-probe-lxc", None, None),
    ("/lxc.payload.cs-probe-lxc/.lxc", "lxc", "cs-probe-lxc", None, "/lxc.payload.cs-probe-lxc"),
    # LXC 4.0.0 .. 4.0.x before the dotted form
    ("/lxc.payload/web1", "lxc", "web1", None, None),
    # LXC 1-3
    ("/lxc/web1", "lxc", "web1", None, None),
    # systemd-nspawn registered machine (systemd escapes '-' as \x2d), and its payload sub-cgroup on v2
    ("/machine.slice/machine-build\\x2dbox.scope", "systemd-nspawn", "build-box", None, None),
    ("/machine.slice/machine-build\\x2dbox.scope/payload", "systemd-nspawn", "build-box", None,
     "/machine.slice/machine-build\\x2dbox.scope"),
    # libvirt LXC
    ("/machine.slice/machine-lxc\\x2d4242\\x2dweb.scope", "libvirt-lxc", "web", None, None),
    # docker in a podman container: the inner (deepest) container wins
    (f"/libpod_parent/libpod-{PODMAN_ID}/docker/{DOCKER_ID}", "docker", DOCKER_ID, None, None),
]

HOST = [
    "/",  # init's cgroup on a hybrid host without systemd, seen here
    "/init.scope",  # systemd's pid 1
    "/system.slice/ssh.service",  # a host service in its own cgroup
    "/system.slice/docker.service",
    "/system.slice/containerd.service",
    "/user.slice/user-0.slice/session-3.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
    "/process_api/89d8cf8229356c1a76d7b814a7942d07",  # this machine's memory-v1 cgroup of the agent, seen here
    "/libpod_parent/conmon",  # podman cgroupfs: conmon's own cgroup
    f"/machine.slice/libpod-conmon-{PODMAN_ID}.scope",  # podman systemd driver: conmon
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID_SYSTEMD}.slice/"
    f"crio-conmon-{CRIO_ID}.scope",
    "/kubepods.slice/kubepods-burstable.slice",  # QoS parent, no container
    f"/kubepods/burstable/pod{POD_UID}",  # the pod's cgroup itself
    "/lxc.monitor.cs-probe-lxc",  # LXC's monitor process (lxc-start), seen here
    "/lxc.pivot",
    "/machine.slice/machine-qemu\\x2d1\\x2dwin10.scope",  # a libvirt VM: not a container
    "/machine.slice/machine-build\\x2dbox.scope/supervisor",  # nspawn itself (systemd >= 249 on v2)
    "/default",  # containerd namespace directory
    "/docker",
]


@pytest.mark.parametrize(("path", "runtime", "ident", "pod_uid", "container_cgroup"), CONTAINERS)
def test_container_paths(path, runtime, ident, pod_uid, container_cgroup):
    match = match_cgroup_path(path)
    assert match is not None, path
    assert match.runtime == runtime
    assert match.id == ident
    assert match.pod_uid == pod_uid
    assert match.container_cgroup == (container_cgroup or path)


@pytest.mark.parametrize("path", HOST)
def test_host_paths(path):
    assert match_cgroup_path(path) is None


def test_every_layout_is_exercised():
    used = {match_cgroup_path(p).layout for p, *_ in CONTAINERS}
    assert used == set(CONTAINER_LAYOUTS)


def test_systemd_unescape():
    assert unescape_systemd("build\\x2dbox") == "build-box"
    assert unescape_systemd("plain") == "plain"


def test_matcher_caches_hits_and_misses():
    matcher = PathMatcher(capacity=2)
    host, container = "/system.slice/ssh.service", f"/docker/{DOCKER_ID}"
    assert matcher.match(host) is None
    assert matcher.match(host) is None
    assert matcher.match(container).id == DOCKER_ID
    assert (matcher.hits, matcher.misses) == (1, 2)
    matcher.match("/third")  # evicts the least recently used (host)
    matcher.match(host)
    assert matcher.misses == 4
