"""Cgroup path layouts of container runtimes, as data, and the one function that matches a path against them.

A path is matched from its deepest component upwards: the first component that is a container's own cgroup
decides (so a container nested in another resolves to the inner one, and sub-cgroups a container makes for
itself, such as podman's trailing `/container` or lxc-attach's `/.lxc`, resolve to the container). A component
in HOST_LAYOUTS stops the walk: it is the runtime's own host-side process (monitor, supervisor), not the
container. Each row names where that shape is seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

HEX64 = r"[0-9a-f]{64}"
_POD_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"


@dataclass(frozen=True, slots=True)
class Layout:
    """One cgroup directory shape: `component` must fullmatch one path component and capture `id`.

    parent: the component right above must fullmatch this (None: anything, including the root).
    depth: the component's index from the root must equal this (None: any depth).
    runtime: the runtime the shape belongs to; None when several share it (the on-disk state decides).
    id_is_name: the captured id is a name (LXC, nspawn machine, ctr id), not a runtime's hex id.
    """

    runtime: str | None
    component: re.Pattern[str]
    seen: str
    parent: re.Pattern[str] | None = None
    depth: int | None = None
    id_is_name: bool = False


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


CONTAINER_LAYOUTS: tuple[Layout, ...] = (
    # docker
    Layout("docker", _re(rf"(?P<id>{HEX64})"), "docker, cgroupfs driver: /docker/<id>", parent=_re("docker")),
    Layout("docker", _re(rf"docker-(?P<id>{HEX64})\.scope"),
           "docker, systemd driver: /system.slice/docker-<id>.scope; kubelet+dockershim systemd driver"),
    # containerd
    Layout("containerd", _re(rf"cri-containerd-(?P<id>{HEX64})\.scope"),
           "containerd CRI, systemd driver: /kubepods.slice/kubepods-besteffort.slice/"
           "kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope"),
    Layout("containerd", _re(rf"(?:.*:)?cri-containerd:(?P<id>{HEX64})"),
           "containerd CRI, systemd-style cgroupsPath on cgroupfs: kubepods-burstable-pod<uid>.slice:"
           "cri-containerd:<id>"),
    Layout("containerd", _re(rf"(?P<id>{HEX64})"), "nerdctl / ctr with a hex id: /default/<id>",
           parent=_re("default"), depth=1),
    Layout("containerd", _re(r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,75})"),
           "containerd `ctr run IMAGE ID`: /<namespace>/<id>, default namespace", parent=_re("default"),
           depth=1, id_is_name=True),
    # cri-o
    Layout("cri-o", _re(rf"crio-(?P<id>{HEX64})(?:\.scope)?"),
           "cri-o, systemd driver: .../kubepods-burstable-pod<uid>.slice/crio-<id>.scope; cgroupfs driver: "
           "/kubepods/burstable/pod<uid>/crio-<id>"),
    Layout("cri-o", _re(rf"(?:.*:)?crio:(?P<id>{HEX64})"),
           "cri-o, systemd-style cgroupsPath on cgroupfs: kubepods-besteffort-pod<uid>.slice:crio:<id>"),
    # podman
    Layout("podman", _re(rf"libpod-(?:payload-)?(?P<id>{HEX64})(?:\.scope)?"),
           "podman cgroupfs: /libpod_parent/libpod-<id> (seen here); systemd: "
           "/machine.slice/libpod-<id>.scope, "
           "rootless user@.service/user.slice/libpod-<id>.scope; pods: libpod-payload-<id>"),
    # Kubernetes, cgroupfs driver: bare id under the pod's cgroup; docker, containerd and cri-o all use it
    Layout(None, _re(rf"(?P<id>{HEX64})"),
           "kubelet cgroupfs driver: /kubepods/burstable/pod<uid>/<id>, /kubepods/pod<uid>/<id> "
           "(guaranteed), "
           "/kubepods/besteffort/pod<uid>/<id>", parent=_re(rf"pod{_POD_UID}")),
    Layout(None, _re(rf"(?P<id>{HEX64})"),
           "containerd in other namespaces (/k8s.io/<id>, /moby/<id>) and other runtimes' /<group>/<id>",
           depth=1),
    # LXC
    Layout("lxc", _re(r"lxc\.payload\.(?P<id>.+)"),
           "LXC 4/5: /lxc.payload.<name> (seen here; lxc-attach adds /.lxc below it)", id_is_name=True),
    Layout("lxc", _re(r"(?P<id>.+)"), "LXC 4.0.0-4.0.x early: /lxc.payload/<name>",
           parent=_re(r"lxc\.payload"), id_is_name=True),
    Layout("lxc", _re(r"(?P<id>[^.].*)"), "LXC 1-3: /lxc/<name>", parent=_re("lxc"), depth=1,
           id_is_name=True),
    # libvirt LXC and systemd-nspawn register machines; qemu VMs use the same slice and are not containers
    Layout("libvirt-lxc", _re(r"machine-lxc\\x2d(?P<id>.+)\.scope"),
           "libvirt LXC: /machine.slice/machine-lxc\\x2d<pid>\\x2d<name>.scope", id_is_name=True),
    Layout("systemd-nspawn", _re(r"machine-(?!qemu\\x2d|lxc\\x2d)(?P<id>.+)\.scope"),
           "systemd-nspawn registered: /machine.slice/machine-<name>.scope (v2: .../payload below it)",
           id_is_name=True),
)

# Host-side processes of a runtime that live in cgroups shaped like a container's: stop, it is the host.
HOST_LAYOUTS: tuple[Layout, ...] = (
    Layout(None, _re("supervisor"), "systemd-nspawn v2: machine-<name>.scope/supervisor is nspawn itself",
           parent=_re(r"machine-.+\.scope")),
    Layout(None, _re(r"lxc\.monitor\..+|lxc\.monitor|lxc\.pivot"),
           "LXC monitor: /lxc.monitor.<name> (seen here: lxc-start's monitor process)"),
    Layout(None, _re(r"(?:libpod|crio)-conmon-.+"),
           "conmon: libpod-conmon-<id>.scope, crio-conmon-<id>.scope"),
)

# pod<uid> (cgroupfs) or kubepods[-<qos>]-pod<uid>.slice (systemd), possibly followed by ":<runtime>:<id>"
_POD_COMPONENT = re.compile(rf"(?:^|-)pod(?P<uid>{_POD_UID})(?:\.slice)?(?::|$)")
_SYSTEMD_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    """A cgroup path recognised as (inside) a container's cgroup."""

    runtime: str | None
    id: str
    id_is_name: bool
    container_cgroup: str  # the container's own cgroup (a prefix of the matched path)
    pod_uid: str | None
    layout: Layout


def unescape_systemd(name: str) -> str:
    """`\\x2d` -> `-`, as systemd escapes unit names."""
    return _SYSTEMD_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def _pod_uid(components: list[str]) -> str | None:
    if not any(c.startswith("kubepods") for c in components):
        return None
    for comp in reversed(components):
        m = _POD_COMPONENT.search(comp)
        if m:
            return m.group("uid").replace("_", "-")
    return None


def match_cgroup_path(
    path: str,
    layouts: tuple[Layout, ...] = CONTAINER_LAYOUTS,
    host_layouts: tuple[Layout, ...] = HOST_LAYOUTS,
) -> CgroupMatch | None:
    """The container whose cgroup PATH is or lies under, or None for a host cgroup."""
    components = [c for c in path.split("/") if c]
    for index in range(len(components) - 1, -1, -1):
        comp = components[index]
        parent = components[index - 1] if index else ""
        for layout in host_layouts:
            if _fits(layout, comp, parent, index):
                return None
        for layout in layouts:
            m = _fits(layout, comp, parent, index)
            if m is None:
                continue
            ident = m.group("id")
            if layout.id_is_name:
                ident = unescape_systemd(ident)
                if layout.runtime == "libvirt-lxc":
                    ident = ident.split("-", 1)[-1]  # drop libvirt's "<pid>-" prefix
            return CgroupMatch(
                runtime=layout.runtime,
                id=ident,
                id_is_name=layout.id_is_name,
                container_cgroup="/" + "/".join(components[: index + 1]),
                pod_uid=_pod_uid(components[: index + 1]),
                layout=layout,
            )
    return None


def _fits(layout: Layout, comp: str, parent: str, index: int) -> re.Match[str] | None:
    if layout.depth is not None and layout.depth != index:
        return None
    if layout.parent is not None and not layout.parent.fullmatch(parent):
        return None
    return layout.component.fullmatch(comp)


class PathMatcher:
    """match_cgroup_path behind an LRU keyed by path that remembers misses (host cgroups) too."""

    def __init__(self, capacity: int = 4096) -> None:
        # one cache per matcher (not one for the module), so each resolver's hit and miss counts are its own
        self.match = lru_cache(maxsize=capacity)(match_cgroup_path)

    @property
    def hits(self) -> int:
        return self.match.cache_info().hits

    @property
    def misses(self) -> int:
        return self.match.cache_info().misses
