"""What the sensor knows about the container a process runs in: one frozen value, identity and evidence."""

from __future__ import annotations

from dataclasses import dataclass

# How the container decision was reached (ContainerInfo.decided_by).
BY_CGROUP = "cgroup"  # the process's cgroup path matched a runtime layout
# host cgroup, but the pid namespace of a container already known by its cgroup
BY_NAMESPACE_OF_KNOWN = "namespaces-of-known-container"
BY_NAMESPACES = "namespaces"  # host cgroup, pid+mnt+(uts|ipc|net) namespaces differ from the host's

# Where ContainerInfo.id comes from (ContainerInfo.id_source).
ID_RUNTIME = "runtime"  # the runtime's own id: 64 hex for docker, containerd, cri-o, podman
ID_NAME = "name"  # runtimes without ids name their containers (LXC, systemd-nspawn machines, ctr ids)
ID_PID_NAMESPACE = "pid-namespace"  # a container known only by its namespaces: "pidns-<inode>"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A process's container as the sensor decided it at exec time.

    Identity (None where unknown; never guessed):
      id: the runtime's bare 64-hex id (as Elastic Defend emits container.id) for docker, containerd (CRI),
          cri-o and podman; the container name for LXC and systemd-nspawn machines and named `ctr` containers;
          "pidns-<inode>" for a container known only by its namespaces (see id_source).
      runtime: "docker", "containerd", "cri-o", "podman", "lxc", "systemd-nspawn", "runc", "crun",
          "libvirt-lxc";
          for namespace-only containers the launcher found among the ancestors ("systemd-nspawn", "lxc",
          "nsenter", "unshare", "runc", "crun", ...); None when nothing names it.
      name: the container name (podman/docker name, Kubernetes container name, LXC name, machine name).
      image_name / image_tag: the image reference split at its tag ("registry/repo" and "tag"); image_tag is a
          single string (ECS container.image.tag is an array: the builder wraps it). image_digest when the
          reference pins one ("sha256:...").
      pod_labels / workload_kind: the pod's labels and the kind of workload that made it (sensor.containers.
          metadata.workload_kind), where the runtime keeps them on disk (CRI-O's and cri-dockerd's sandboxes;
          containerd keeps them only in its database, so they are absent there).
      pod_uid / pod_name / pod_namespace: Kubernetes pod of the container (pod_uid from the cgroup path even
          when no runtime state is readable; name and namespace from the runtime's annotations).
    Evidence (for container_sensor.* and for the session model):
      cgroup_id / cgroup_path: the v2 cgroup the process ran in (path relative to the cgroup v2 root).
      container_cgroup: the path of the container's own cgroup (cgroup_path may be a sub-cgroup of it).
      namespaces_differing: names of the namespaces that differ from the host's (pid 1's), sorted.
      decided_by: BY_CGROUP, BY_NAMESPACE_OF_KNOWN or BY_NAMESPACES.
      id_source: ID_RUNTIME, ID_NAME or ID_PID_NAMESPACE.
      metadata_complete: False while the runtime's on-disk state has not (yet) been read; a later event of the
          same container carries what the background lookup found.
    """

    id: str
    runtime: str | None = None
    name: str | None = None
    image_name: str | None = None
    image_tag: str | None = None
    image_digest: str | None = None
    pod_uid: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_labels: tuple[tuple[str, str], ...] = ()  # the pod's labels, where the runtime's state on disk has them
    workload_kind: str | None = None  # the pod's controller (Deployment, StatefulSet, DaemonSet, Job), from its labels
    cgroup_id: int = 0
    cgroup_path: str | None = None
    container_cgroup: str | None = None
    namespaces_differing: tuple[str, ...] = ()
    pid_namespace: int = 0
    decided_by: str = BY_CGROUP
    id_source: str = ID_RUNTIME
    metadata_complete: bool = False

    @property
    def evidence(self) -> tuple[str, ...]:
        """Why this is a container, as short "key=value" strings for container_sensor.container_evidence."""
        out = [f"decided_by={self.decided_by}"]
        if self.container_cgroup:
            out.append(f"container_cgroup={self.container_cgroup}")
        if self.namespaces_differing:
            out.append("namespaces_differing=" + ",".join(self.namespaces_differing))
        return tuple(out)


@dataclass(frozen=True, slots=True)
class ContainerMetadata:
    """What a runtime keeps on the host about one container; every field optional."""

    runtime: str | None = None
    name: str | None = None
    image: str | None = None  # the full reference as the runtime recorded it
    pod_uid: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    pod_labels: tuple[tuple[str, str], ...] = ()
    workload_kind: str | None = None
    source: str = ""  # the file it came from, for debugging


def split_image(reference: str | None) -> tuple[str | None, str | None, str | None]:
    """("registry:5000/repo", "tag", "sha256:...") from an image reference; a bare id has no name."""
    if not reference:
        return None, None, None
    ref = reference.strip()
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    if ref.startswith("sha256:") or (len(ref) == 64 and all(c in "0123456789abcdef" for c in ref)):
        return None, None, digest or (ref if ref.startswith("sha256:") else f"sha256:{ref}")
    tag = None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref, tag = ref[:colon], ref[colon + 1:]
    return (ref or None), (tag or None), digest
