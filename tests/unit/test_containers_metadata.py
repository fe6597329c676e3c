"""Runtime state files -> container metadata, over a fake host root laid out like the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sensor.containers.info import split_image
from sensor.containers.metadata import MetadataReader, StateRoots

PODMAN_ID = "fddcb0d306ca760e90ae85613be32b63bd36a162373da32b38ab4752fcbee111"
KUBE_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"

# Seen here: podman 4.3.1 `podman --runtime runc run -d --name cs-probe1 localhost/container-sensor-test:1`,
# trimmed to the fields read. containers.json entry, the bundle's config.json and runc's state.json.
PODMAN_CONTAINERS_JSON = [{
    "id": PODMAN_ID,
    "names": ["cs-probe1"],
    "image": "5581720f3d247d3b5610483851f10e4f727a3f534b82b4bdb0653ba132fe8cbc",
    "metadata": json.dumps({"image-name": "localhost/container-sensor-test:1",
                            "image-id": "5581720f3d247d3b5610483851f10e4f727a3f534b82b4bdb0653ba132fe8cbc",
                            "name": "cs-probe1", "created-at": 1795813672}),
}]
PODMAN_CONFIG = {"ociVersion": "1.0.2-dev", "annotations": {
    "io.container.manager": "libpod", "io.kubernetes.cri-o.Created": "2026-11-27T21:13:47.905063801Z",
    "io.kubernetes.cri-o.TTY": "false", "io.podman.annotations.autoremove": "FALSE",
    "org.opencontainers.image.stopSignal": "15"},
    "linux": {"cgroupsPath": f"/libpod_parent/libpod-{PODMAN_ID}"}}
# containerd's CRI plugin annotations (containerd 1.7 pkg/cri/annotations), as on a kubelet node's bundle
CRI_CONFIG = {"ociVersion": "1.1.0", "annotations": {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.container-name": "web",
    "io.kubernetes.cri.image-name": "docker.io/library/nginx:1.25",
    "io.kubernetes.cri.sandbox-id": "b" * 64,
    "io.kubernetes.cri.sandbox-name": "web-7d4b9c",
    "io.kubernetes.cri.sandbox-namespace": "shop",
    "io.kubernetes.cri.sandbox-uid": "0e6a4b8c-2d3f-4a1b-9c8d-7e6f5a4b3c2d"}}
# cri-o 1.28 bundle annotations (pkg/annotations + kubelet labels copied as annotations)
CRIO_CONFIG = {"ociVersion": "1.0.2-dev", "annotations": {
    "io.kubernetes.cri-o.ContainerType": "container",
    "io.kubernetes.cri-o.ImageName": "quay.io/prometheus/node-exporter:v1.7.0",
    "io.kubernetes.container.name": "node-exporter",
    "io.kubernetes.pod.name": "node-exporter-x2x9k",
    "io.kubernetes.pod.namespace": "monitoring",
    "io.kubernetes.pod.uid": "5f0c1e2d-3b4a-4c5d-8e9f-0a1b2c3d4e5f"}}
# moby's container.Container serialisation (/var/lib/docker/containers/<id>/config.v2.json), trimmed
DOCKER_CONFIG_V2 = {"ID": KUBE_ID, "Name": "/happy_turing", "Image": "sha256:" + "c" * 64,
                    "Config": {"Image": "redis:7.2-alpine", "Labels": {}}}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return tmp_path


def test_podman_store(host: Path):
    storage = host / "var/lib/containers/storage/overlay-containers"
    _write(storage / "containers.json", PODMAN_CONTAINERS_JSON)
    _write(storage / PODMAN_ID / "userdata/config.json", PODMAN_CONFIG)
    meta = MetadataReader(StateRoots.under(host)).lookup(PODMAN_ID, "podman")
    assert (meta.runtime, meta.name, meta.image) == ("podman", "cs-probe1", "localhost/container-sensor-test:1")
    assert meta.pod_name is None


def test_runc_state_leads_to_bundle_annotations(host: Path):
    bundle = host / "bundles/k1"
    _write(bundle / "config.json", CRI_CONFIG)
    _write(host / "run/runc" / KUBE_ID / "state.json",
           {"id": KUBE_ID, "config": {"labels": [f"bundle={bundle}"]}})
    meta = MetadataReader(StateRoots.under(host)).lookup(KUBE_ID, None)
    assert meta.runtime == "containerd"
    assert (meta.name, meta.image) == ("web", "docker.io/library/nginx:1.25")
    assert (meta.pod_name, meta.pod_namespace, meta.pod_uid) == (
        "web-7d4b9c", "shop", "0e6a4b8c-2d3f-4a1b-9c8d-7e6f5a4b3c2d")


def test_runc_state_without_annotations_is_runc(host: Path):
    bundle = host / "bundles/plain"
    _write(bundle / "config.json", {"ociVersion": "1.0.2"})
    _write(host / "run/runc/plain1/state.json", {"id": "plain1", "config": {"labels": [f"bundle={bundle}"]}})
    meta = MetadataReader(StateRoots.under(host)).lookup("plain1", None)
    assert meta.runtime == "runc" and meta.name is None


def test_containerd_task_dir(host: Path):
    _write(host / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / KUBE_ID / "config.json", CRI_CONFIG)
    meta = MetadataReader(StateRoots.under(host)).lookup(KUBE_ID, "containerd")
    assert meta.runtime == "containerd" and meta.pod_namespace == "shop"


def test_crio_bundle(host: Path):
    _write(host / "run/containers/storage/overlay-containers" / KUBE_ID / "userdata/config.json", CRIO_CONFIG)
    meta = MetadataReader(StateRoots.under(host)).lookup(KUBE_ID, "cri-o")
    assert meta.runtime == "cri-o"
    assert (meta.name, meta.pod_name, meta.pod_namespace) == ("node-exporter", "node-exporter-x2x9k", "monitoring")
    assert meta.image == "quay.io/prometheus/node-exporter:v1.7.0"


def test_docker_config(host: Path):
    _write(host / "var/lib/docker/containers" / KUBE_ID / "config.v2.json", DOCKER_CONFIG_V2)
    meta = MetadataReader(StateRoots.under(host)).lookup(KUBE_ID, "docker")
    assert (meta.runtime, meta.name, meta.image) == ("docker", "happy_turing", "redis:7.2-alpine")


def test_lxc_config(host: Path):
    # written by `lxc-create -n cs-probe-lxc -t busybox` here (first line)
    _write(host / "var/lib/lxc/cs-probe-lxc/config",
           "# Template used to create this container: /usr/share/lxc/templates/lxc-busybox\n")
    meta = MetadataReader(StateRoots.under(host)).lookup("cs-probe-lxc", "lxc", by_name=True)
    assert (meta.runtime, meta.name) == ("lxc", "cs-probe-lxc")


def test_missing_and_malformed_state_is_none(host: Path):
    _write(host / "run/runc" / KUBE_ID / "state.json", "{not json")
    _write(host / "var/lib/containers/storage/overlay-containers/containers.json", "[]")
    reader = MetadataReader(StateRoots.under(host))
    assert reader.lookup(KUBE_ID, None) is None
    assert reader.lookup("nope", "lxc", by_name=True) is None


@pytest.mark.parametrize(("ref", "expected"), [
    ("localhost/container-sensor-test:1", ("localhost/container-sensor-test", "1", None)),
    ("docker.io/library/nginx:1.25", ("docker.io/library/nginx", "1.25", None)),
    ("registry.local:5000/team/app", ("registry.local:5000/team/app", None, None)),
    ("registry.local:5000/team/app:v2", ("registry.local:5000/team/app", "v2", None)),
    ("nginx@sha256:" + "d" * 64, ("nginx", None, "sha256:" + "d" * 64)),
    ("sha256:" + "e" * 64, (None, None, "sha256:" + "e" * 64)),
    ("", (None, None, None)),
])
def test_split_image(ref, expected):
    assert split_image(ref) == expected
