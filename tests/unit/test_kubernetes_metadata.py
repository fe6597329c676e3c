"""Kubernetes metadata as ECS means it: the workload kind the pod belongs to (orchestrator.resource.parent.type,
from the labels Kubernetes' controllers set, never a guess), the pod's labels where the runtime keeps them on disk
(CRI-O's and cri-dockerd's sandboxes), and the cluster's name from the configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sensor.config.settings import load_config
from sensor.containers.metadata import MetadataReader, StateRoots, workload_kind
from sensor.ecs.builder import DocumentBuilder
from tests.ecs_fields import ecs_problems
from tests.unit.test_ecs import HOST

SANDBOX = "e" * 64
CONTAINER = "f" * 64


@dataclass
class Pod:
    id: str = CONTAINER
    runtime: str = "cri-o"
    name: str | None = "web"
    image_name: str | None = None
    image_tag: str | None = None
    pod_uid: str | None = "0c5ec5a4-3a43-4f0c-9b8a-1bf2d3f9f0e1"
    pod_name: str | None = "web-7d4b9c8f6-x2x9k"
    pod_namespace: str | None = "shop"
    pod_labels: tuple[tuple[str, str], ...] = ()
    workload_kind: str | None = None
    cgroup_path: str | None = None


def test_kinds_from_the_labels_controllers_set() -> None:
    assert workload_kind({"app": "web", "pod-template-hash": "7d4b9c8f6"}) == "Deployment"
    assert workload_kind({"controller-revision-hash": "db-5b8", "statefulset.kubernetes.io/pod-name": "db-0"}) \
        == "StatefulSet"
    assert workload_kind({"controller-revision-hash": "6c9", "pod-template-generation": "3"}) == "DaemonSet"
    assert workload_kind({"batch.kubernetes.io/job-name": "migrate", "job-name": "migrate"}) == "Job"
    assert workload_kind({"app": "standalone"}) is None  # a bare pod: nothing said, nothing guessed


def test_crio_pod_labels_from_its_sandbox(tmp_path: Path) -> None:
    run = tmp_path / "run/containers/storage/overlay-containers"
    for cid, notes in ((CONTAINER, {"io.kubernetes.cri-o.ContainerType": "container",
                                          "io.kubernetes.container.name": "web",
                                          "io.kubernetes.pod.name": "web-7d4b9c8f6-x2x9k",
                                          "io.kubernetes.pod.namespace": "shop",
                                          "io.kubernetes.cri-o.SandboxID": SANDBOX}),
                             (SANDBOX, {"io.kubernetes.cri-o.ContainerType": "sandbox",
                                        "io.kubernetes.cri-o.Labels": json.dumps({
                                            "app": "web", "pod-template-hash": "7d4b9c8f6",
                                            "io.kubernetes.pod.name": "web-7d4b9c8f6-x2x9k"})})):
        (run / cid / "userdata").mkdir(parents=True)
        (run / cid / "userdata/config.json").write_text(json.dumps({"annotations": notes}))
    meta = MetadataReader(StateRoots.under(tmp_path)).lookup(CONTAINER, "cri-o")
    assert meta.pod_labels == (("app", "web"), ("pod-template-hash", "7d4b9c8f6"))
    assert meta.workload_kind == "Deployment"


def test_cri_dockerd_pod_labels_from_its_pause_container(tmp_path: Path) -> None:
    containers = tmp_path / "var/lib/docker/containers"
    for cid, labels in ((CONTAINER, {"io.kubernetes.container.name": "db", "io.kubernetes.pod.name": "db-0",
                                     "io.kubernetes.sandbox.id": SANDBOX}),
                        (SANDBOX, {"app": "db", "controller-revision-hash": "db-5b8",
                                   "statefulset.kubernetes.io/pod-name": "db-0", "io.kubernetes.pod.name": "db-0"})):
        (containers / cid).mkdir(parents=True)
        (containers / cid / "config.v2.json").write_text(json.dumps({"Config": {"Labels": labels, "Image": "pg"}}))
    meta = MetadataReader(StateRoots.under(tmp_path)).lookup(CONTAINER, "docker")
    assert meta.workload_kind == "StatefulSet" and ("app", "db") in meta.pod_labels


def test_orchestrator_block_as_ecs_has_it() -> None:
    builder = DocumentBuilder(HOST, boot_wall_offset_ns=0, cluster_name="prod-eu-1")
    block = builder.orchestrator_block(Pod(pod_labels=(("app", "web"), ("pod-template-hash", "7d4b9c8f6")),
                                           workload_kind="Deployment"))
    assert block == {"type": "kubernetes", "namespace": "shop", "cluster": {"name": "prod-eu-1"},
                     "resource": {"type": "pod", "name": "web-7d4b9c8f6-x2x9k",
                                  "id": "0c5ec5a4-3a43-4f0c-9b8a-1bf2d3f9f0e1", "parent": {"type": "Deployment"},
                                  "label": ["app:web", "pod-template-hash:7d4b9c8f6"]}}
    assert ecs_problems({"orchestrator": block}) == []
    # unknown kind: no parent at all (it used to say "namespace", which ECS does not mean)
    plain = DocumentBuilder(HOST, boot_wall_offset_ns=0).orchestrator_block(Pod())
    assert "parent" not in plain["resource"] and "cluster" not in plain


def test_cluster_name_from_the_environment() -> None:
    config = load_config(None, {"CONTAINER_SENSOR_KUBERNETES_CLUSTER_NAME": "prod-eu-1"}, {})
    assert config.sections.host.cluster_name == "prod-eu-1"
