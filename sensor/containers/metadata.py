"""Container names, images and pod metadata from what the runtimes keep on the host; no API server needed.

Sources, in the order tried for a container id (each a plain file read, done off the hot path):
  podman     <storage>/overlay-containers/containers.json (names, image-name) + <id>/userdata/config.json
  docker     /var/lib/docker/containers/<id>/config.v2.json (Name, Config.Image, Config.Labels)
  containerd /run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/config.json (OCI bundle)
  cri-o      /run/containers/storage/overlay-containers/<id>/userdata/config.json (OCI bundle)
  runc/crun  /run/runc/<id>/state.json (labels carry bundle=<dir>), /run/crun/<id>/status, docker's and
             containerd's runc roots; the bundle's config.json annotations then name runtime, pod and image
  LXC        /var/lib/lxc/<name>/config (the name is the id; LXC has no images)
Every reader returns None when its files are not there (yet): the caller retries later.

`MetadataReader.watch` (run by the worker thread every WATCH_EVERY_S) keeps what it finds about every container
podman, runc and crun list, so a container whose state was removed before its events were handled (a `run --rm`
of a short command, read behind a backlog) still has its name and image: the last REMEMBERED of them are kept.

A reader made with `max_file_bytes` refuses (CostlyLookup) any file larger than that before reading it: the event
loop reads a new container's state itself only when that is cheap, and leaves the rest to the worker thread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from .info import ContainerMetadata

WATCH_EVERY_S = 0.1
REMEMBERED = 1024  # containers remembered by watch(): minutes of churn, a few hundred kilobytes

# Annotations written into the OCI config.json, per manager.
CONTAINERD_CRI = {
    "name": "io.kubernetes.cri.container-name",
    "image": "io.kubernetes.cri.image-name",
    "pod_name": "io.kubernetes.cri.sandbox-name",
    "pod_namespace": "io.kubernetes.cri.sandbox-namespace",
    "pod_uid": "io.kubernetes.cri.sandbox-uid",
}
CRIO = {
    "name": "io.kubernetes.container.name",
    "image": "io.kubernetes.cri-o.ImageName",
    "pod_name": "io.kubernetes.pod.name",
    "pod_namespace": "io.kubernetes.pod.namespace",
    "pod_uid": "io.kubernetes.pod.uid",
}
# dockershim and cri-dockerd put the same keys on docker labels
DOCKER_K8S_LABELS = {
    "name": "io.kubernetes.container.name",
    "pod_name": "io.kubernetes.pod.name",
    "pod_namespace": "io.kubernetes.pod.namespace",
    "pod_uid": "io.kubernetes.pod.uid",
}


@dataclass(frozen=True, slots=True)
class StateRoots:
    """Where each runtime keeps its state; all default to the host's standard locations."""

    podman_storage: tuple[Path, ...] = (Path("/var/lib/containers/storage"),)
    crio_run: tuple[Path, ...] = (Path("/run/containers/storage"),)
    docker: tuple[Path, ...] = (Path("/var/lib/docker"),)
    containerd_tasks: tuple[Path, ...] = (Path("/run/containerd/io.containerd.runtime.v2.task"),)
    runc_roots: tuple[Path, ...] = field(default_factory=lambda: (
        Path("/run/runc"),
        Path("/run/docker/runtime-runc/moby"),
        Path("/run/containerd/runc/k8s.io"),
        Path("/run/containerd/runc/default"),
    ))
    crun_roots: tuple[Path, ...] = (Path("/run/crun"),)
    lxc_paths: tuple[Path, ...] = (Path("/var/lib/lxc"),)

    @classmethod
    def under(cls, root: Path) -> StateRoots:
        """The same layout below ROOT (a test's fake host, or /host in a DaemonSet)."""
        default = cls()
        return cls(**{
            name: tuple(root / p.relative_to("/") for p in getattr(default, name))
            for name in cls.__dataclass_fields__
        })


class CostlyLookup(Exception):
    """A state file is larger than the reader was allowed to read."""


def _read_json(path: Path, max_bytes: int | None = None) -> Any:
    try:
        with open(path, "rb") as fh:
            if max_bytes is not None and os.fstat(fh.fileno()).st_size > max_bytes:
                raise CostlyLookup(str(path))
            data = fh.read()
    except OSError:
        return None
    try:
        # orjson parses these files several times faster than json, and holds the GIL for that much less while
        # the event loop waits for it; it refuses what json still accepts (NaN, integers past 64 bits)
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except ValueError:
        return None


def _from_annotations(annotations: Mapping[str, str], source: str) -> ContainerMetadata:
    if annotations.get("io.container.manager") == "libpod":
        runtime, keys = "podman", CRIO
    elif any(k.startswith("io.kubernetes.cri.") for k in annotations):
        runtime, keys = "containerd", CONTAINERD_CRI
    elif any(k.startswith("io.kubernetes.cri-o.") for k in annotations):
        runtime, keys = "cri-o", CRIO
    else:
        runtime, keys = None, CRIO
    return ContainerMetadata(
        runtime=runtime,
        name=annotations.get(keys["name"]) or None,
        image=annotations.get(keys["image"]) or None,
        pod_uid=annotations.get(keys["pod_uid"]) or None,
        pod_name=annotations.get(keys["pod_name"]) or None,
        pod_namespace=annotations.get(keys["pod_namespace"]) or None,
        source=source,
    )


# Labels the controllers put on the pods they make, and the kind of workload each says made the pod: set by
# Kubernetes itself, so the kind is read, not guessed from the pod's name.
def workload_kind(labels: Mapping[str, str]) -> str | None:
    if "pod-template-hash" in labels:
        return "Deployment"  # through its ReplicaSet
    if "controller-revision-hash" in labels:
        if "statefulset.kubernetes.io/pod-name" in labels:
            return "StatefulSet"
        if "pod-template-generation" in labels:
            return "DaemonSet"
    if "batch.kubernetes.io/job-name" in labels or "job-name" in labels:
        return "Job"
    return None


def _label_pairs(labels: Any) -> tuple[tuple[str, str], ...]:
    """A pod's own labels, sorted; the runtime's io.kubernetes.* bookkeeping left out."""
    if not isinstance(labels, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()
                        if isinstance(k, str) and not k.startswith("io.kubernetes.") and isinstance(v, str | int)))


def _with_pod_labels(found: ContainerMetadata, labels: Any) -> ContainerMetadata:
    pairs = _label_pairs(labels)
    if not pairs:
        return found
    return replace(found, pod_labels=pairs, workload_kind=workload_kind(dict(pairs)))


def _bundle_metadata(bundle: Path, max_bytes: int | None = None) -> ContainerMetadata | None:
    config = _read_json(bundle / "config.json", max_bytes)
    if not isinstance(config, dict):
        return None
    annotations = config.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return _from_annotations(annotations, str(bundle / "config.json"))


class _PodmanIndex:
    """containers.json parsed once per change of the file (it lists every container of the store).

    Written by hand: an entry is valid while the file's (mtime, size) stamp is unchanged, which neither
    lru_cache nor cachetools checks; it holds one entry per podman store, so it needs no bound."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._stamp: dict[Path, tuple[int, int]] = {}
        self._entries: dict[Path, dict[str, dict]] = {}
        self._max_bytes = max_bytes

    def get(self, storage: Path, container_id: str) -> dict | None:
        path = storage / "overlay-containers/containers.json"
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if self._stamp.get(path) != stamp:
            if self._max_bytes is not None and st.st_size > self._max_bytes:
                raise CostlyLookup(str(path))
            data = _read_json(path)
            self._entries[path] = {c.get("id"): c for c in data if isinstance(c, dict)} if isinstance(
                data, list) else {}
            self._stamp[path] = stamp
        return self._entries[path].get(container_id)

    def ids(self, storage: Path) -> list[str]:
        """The ids the store lists now (re-reading the file if it changed)."""
        self.get(storage, "")
        return [cid for cid in self._entries.get(storage / "overlay-containers/containers.json", {}) if cid]


class MetadataReader:
    """Looks a container up in every runtime's on-disk state; one instance per thread.

    max_file_bytes: refuse (CostlyLookup) a file larger than this instead of reading it; None reads any."""

    def __init__(self, roots: StateRoots | None = None, max_file_bytes: int | None = None) -> None:
        self.roots = roots or StateRoots()
        self._max_bytes = max_file_bytes
        self._podman = _PodmanIndex(max_file_bytes)
        self.file_reads = 0  # by look-ups
        self.watch_reads = 0  # by watch(), counted apart: they follow the runtimes' churn, not the events
        # container id -> what watch() found while it existed; written by the thread that runs watch() only,
        # read by others without a lock (a dict's get and set are atomic under the GIL); oldest first out
        self._remembered: dict[str, ContainerMetadata] = {}

    def remembered(self, container_id: str) -> ContainerMetadata | None:
        """What watch() found about a container, even if its state is gone since."""
        return self._remembered.get(container_id)

    @property
    def remembered_count(self) -> int:
        return len(self._remembered)

    def watch(self) -> int:
        """Reads the state of every container podman, runc and crun list now that is not remembered yet, and
        remembers it. Returns how many were new."""
        reads_before = self.file_reads
        try:
            return self._watch()
        finally:
            self.watch_reads += self.file_reads - reads_before
            self.file_reads = reads_before

    def _watch(self) -> int:
        new = 0
        for storage in self.roots.podman_storage:
            try:
                ids = self._podman.ids(storage)
            except CostlyLookup:
                continue
            new += self._remember(ids, self._podman_store)
        for root in (*self.roots.runc_roots, *self.roots.crun_roots):
            try:
                ids = [entry.name for entry in os.scandir(root) if entry.is_dir()]
            except OSError:
                continue
            new += self._remember(ids, self._runc_state)
        return new

    def _remember(self, ids: list[str], reader: Callable[[str], ContainerMetadata | None]) -> int:
        new = 0
        remembered = self._remembered
        for container_id in ids:
            if container_id in remembered:
                continue
            found = reader(container_id)
            if found is None:
                continue
            while len(remembered) >= REMEMBERED:
                del remembered[next(iter(remembered))]
            remembered[container_id] = found
            new += 1
        return new

    def _json(self, path: Path) -> Any:
        return _read_json(path, self._max_bytes)

    def _bundle(self, bundle: Path) -> ContainerMetadata | None:
        return _bundle_metadata(bundle, self._max_bytes)

    def lookup(self, container_id: str, runtime_hint: str | None,
               by_name: bool = False) -> ContainerMetadata | None:
        readers: list[Callable[[str], ContainerMetadata | None]]
        if by_name or runtime_hint == "lxc":
            readers = [self._lxc, self._containerd, self._runc_state]
        else:
            order = {
                "podman": [self._podman_store, self._runc_state],
                "docker": [self._docker, self._runc_state],
                "containerd": [self._containerd, self._runc_state],
                "cri-o": [self._crio, self._runc_state],
            }
            readers = order.get(runtime_hint or "", [
                self._podman_store, self._docker, self._containerd, self._crio, self._runc_state,
            ])
        for reader in readers:
            found = reader(container_id)
            if found is not None:
                return found
        return self._remembered.get(container_id)

    def _podman_store(self, container_id: str) -> ContainerMetadata | None:
        for storage in self.roots.podman_storage:
            entry = self._podman.get(storage, container_id)
            self.file_reads += 1
            if entry is None:
                continue
            try:
                meta = json.loads(entry.get("metadata") or "{}")
            except ValueError:
                meta = {}
            names = entry.get("names") or []
            bundle = self._bundle(storage / "overlay-containers" / container_id / "userdata")
            return ContainerMetadata(
                runtime="podman",
                name=meta.get("name") or (names[0] if names else None),
                image=meta.get("image-name") or None,
                pod_uid=bundle.pod_uid if bundle else None,
                pod_name=bundle.pod_name if bundle else None,
                pod_namespace=bundle.pod_namespace if bundle else None,
                source=str(storage / "overlay-containers/containers.json"),
            )
        return None

    def _docker(self, container_id: str) -> ContainerMetadata | None:
        for root in self.roots.docker:
            path = root / "containers" / container_id / "config.v2.json"
            data = self._json(path)
            self.file_reads += 1
            if not isinstance(data, dict):
                continue
            config = data.get("Config") or {}
            labels = config.get("Labels") or {}
            name = (data.get("Name") or "").lstrip("/") or None
            if labels.get(DOCKER_K8S_LABELS["name"]):
                name = labels[DOCKER_K8S_LABELS["name"]]
            found = ContainerMetadata(
                runtime="docker",
                name=name,
                image=config.get("Image") or None,
                pod_uid=labels.get(DOCKER_K8S_LABELS["pod_uid"]),
                pod_name=labels.get(DOCKER_K8S_LABELS["pod_name"]),
                pod_namespace=labels.get(DOCKER_K8S_LABELS["pod_namespace"]),
                source=str(path),
            )
            sandbox = labels.get("io.kubernetes.sandbox.id")
            if isinstance(sandbox, str) and re.fullmatch(r"[0-9a-f]{64}", sandbox):
                # cri-dockerd puts the pod's labels on its sandbox (pause) container
                sandbox_data = self._json(root / "containers" / sandbox / "config.v2.json")
                self.file_reads += 1
                sandbox_labels = (sandbox_data.get("Config") or {}).get("Labels") if isinstance(
                    sandbox_data, dict) else None
                found = _with_pod_labels(found, sandbox_labels)
            return found
        return None

    def _containerd(self, container_id: str) -> ContainerMetadata | None:
        for tasks in self.roots.containerd_tasks:
            try:
                namespaces = [e.name for e in os.scandir(tasks) if e.is_dir()]
            except OSError:
                continue
            for namespace in namespaces:
                bundle = tasks / namespace / container_id
                found = self._bundle(bundle)
                self.file_reads += 1
                if found is not None:
                    return replace(found, runtime="containerd")
        return None

    def _crio(self, container_id: str) -> ContainerMetadata | None:
        for run in self.roots.crio_run:
            userdata = run / "overlay-containers" / container_id / "userdata"
            found = self._bundle(userdata)
            self.file_reads += 1
            if found is not None:
                found = replace(found, runtime=found.runtime or "cri-o")
                return _with_pod_labels(found, self._crio_pod_labels(run, userdata))
        return None

    def _crio_pod_labels(self, run: Path, userdata: Path) -> Any:
        """The pod's labels: CRI-O writes them (JSON) into its sandbox's annotations, which each container's name."""
        config = self._json(userdata / "config.json")
        annotations = config.get("annotations") if isinstance(config, dict) else None
        sandbox = annotations.get("io.kubernetes.cri-o.SandboxID") if isinstance(annotations, dict) else None
        if not isinstance(sandbox, str) or not re.fullmatch(r"[0-9a-f]{64}", sandbox):
            return None
        sandbox_config = self._json(run / "overlay-containers" / sandbox / "userdata" / "config.json")
        self.file_reads += 1
        sandbox_annotations = sandbox_config.get("annotations") if isinstance(sandbox_config, dict) else None
        text = sandbox_annotations.get("io.kubernetes.cri-o.Labels") if isinstance(sandbox_annotations, dict) \
            else None
        try:
            return json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None

    def _runc_state(self, container_id: str) -> ContainerMetadata | None:
        for root in self.roots.runc_roots:
            state = self._json(root / container_id / "state.json")
            self.file_reads += 1
            if not isinstance(state, dict):
                continue
            labels = (state.get("config") or {}).get("labels") or []
            bundle = next((lb.split("=", 1)[1] for lb in labels if isinstance(lb, str) and
                           lb.startswith("bundle=")), None)
            found = self._bundle(Path(bundle)) if bundle else None
            if found is None:
                return ContainerMetadata(runtime="runc", source=str(root / container_id / "state.json"))
            return replace(found, runtime=found.runtime or "runc")
        for root in self.roots.crun_roots:
            status = self._json(root / container_id / "status")
            self.file_reads += 1
            if not isinstance(status, dict):
                continue
            bundle = status.get("bundle")
            found = self._bundle(Path(bundle)) if bundle else None
            if found is None:
                return ContainerMetadata(runtime="crun", source=str(root / container_id / "status"))
            return replace(found, runtime=found.runtime or "crun")
        return None

    def _lxc(self, name: str) -> ContainerMetadata | None:
        for lxc_path in self.roots.lxc_paths:
            config = lxc_path / name / "config"
            self.file_reads += 1
            if not config.is_file():
                continue
            # LXC containers have no image and the name is the id: the config existing is what is confirmed
            return ContainerMetadata(runtime="lxc", name=name, source=str(config))
        return None

