"""`container-sensor check`, continued: what a DaemonSet or a host install has to give the sensor.

sensor.ops.preflight checks what the probe needs to load (privileges, BTF, tracefs, BCC, headers). These check
what the rest of the sensor needs from its deployment, and name the mount or grant that is missing:
the kernel features the probe relies on, the host's cgroup, pid and network namespaces, the container
runtimes' state directories, and the places the sensor writes (spool, ready file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sensor.ops.preflight import Check

if TYPE_CHECKING:
    from sensor.config.settings import Config

PROC = Path("/proc")


@dataclass(frozen=True)
class Runtime:
    """A container runtime: the process names that show it runs on this node, and the state it keeps."""

    name: str
    processes: tuple[str, ...]  # comm values (15 characters at most)
    state_dirs: tuple[str, ...]  # host paths, as the DaemonSet mounts them
    mount_hint: str


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("containerd", ("containerd", "containerd-shim"), ("/run/containerd",),
            "hostPath /run/containerd, read-only"),
    Runtime("cri-o", ("crio",), ("/run/crio", "/run/containers"),
            "hostPaths /run/crio and /run/containers, read-only"),
    Runtime("podman", ("conmon", "podman"), ("/var/lib/containers", "/run/containers"),
            "hostPaths /var/lib/containers and /run/containers, read-only"),
    Runtime("docker", ("dockerd",), ("/run/docker", "/var/lib/docker/containers"),
            "hostPaths /run/docker and /var/lib/docker/containers, read-only"),
    Runtime("lxc", ("lxc-start", "lxc-monitord"), ("/var/lib/lxc",), "hostPath /var/lib/lxc, read-only"),
)


def _comm_names(proc: Path) -> set[str]:
    names = set()
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                names.add((entry / "comm").read_text().strip())
            except OSError:
                continue  # the process ended while we looked
    return names


def _has_entries(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError:
        return False


def check_runtime_state(proc: Path = PROC, root: Path = Path("/")) -> Check:
    """Each runtime that runs here should have its state directories visible.

    A directory that does not exist at all means the mount is missing. An empty one is what the DaemonSet's
    DirectoryOrCreate mounts give when the runtime keeps its state elsewhere (LXC with its own lxcpath) or has
    none yet: reported, not failed.
    """
    running = _comm_names(proc)
    seen, empty, missing = [], [], []
    for runtime in RUNTIMES:
        if not any(name.startswith(process) for name in running for process in runtime.processes):
            continue
        dirs = [root / d.lstrip("/") for d in runtime.state_dirs]
        if any(_has_entries(d) for d in dirs):
            seen.append(runtime.name)
        elif any(d.is_dir() for d in dirs):
            empty.append(runtime.name)
        else:
            missing.append(runtime)
    parts = []
    if seen:
        parts.append(f"state visible for {', '.join(seen)}")
    if empty:
        parts.append(f"{', '.join(empty)} running, state directories empty")
    if missing:
        dirs = ", ".join(d for r in missing for d in r.state_dirs)
        parts.append(f"{', '.join(r.name for r in missing)} running, state not visible ({dirs})")
        return Check("runtime state", False, "; ".join(parts),
                     "mount " + "; ".join(r.mount_hint for r in missing)
                     + " (containers are still detected, without names, images and pods)", fatal=False)
    if not parts:
        return Check("runtime state", True, "no container runtime runs on this node (or none the sensor knows)")
    return Check("runtime state", True, "; ".join(parts))


def _same_namespace(kind: str, proc: Path) -> bool | None:
    try:
        return os.stat(proc / "self/ns" / kind).st_ino == os.stat(proc / "1/ns" / kind).st_ino
    except OSError:
        return None


def check_host_namespaces(proc: Path = PROC) -> Check:
    """Network and cgroup namespaces: the host's give host.ip/mac and cgroup paths as the host names them."""
    differ = []
    fixes = []
    if _same_namespace("net", proc) is False:
        differ.append("network")
        fixes.append("hostNetwork: true (DaemonSet) or --network=host, for host.ip and host.mac")
    if _same_namespace("cgroup", proc) is False:
        differ.append("cgroup")
        fixes.append("--cgroupns=host (podman/docker), so /proc/PID/cgroup paths are the host's")
    if _same_namespace("pid", proc) is None:
        return Check("host namespaces", True, "pid 1 cannot be inspected; not compared", fatal=False)
    if not differ:
        return Check("host namespaces", True, "network and cgroup namespaces are the host's")
    return Check("host namespaces", False, f"not in the host's {' and '.join(differ)} namespace",
                 "; ".join(fixes), fatal=False)


def check_cgroupfs(mountinfo: Path = PROC / "self/mountinfo") -> Check:
    try:
        text = mountinfo.read_text()
    except OSError as error:
        return Check("cgroupfs", False, f"cannot read {mountinfo}: {error.strerror}", "mount /proc")
    kinds = {}
    for line in text.splitlines():
        # "36 25 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw" (fields before " - " vary)
        left, _, right = line.partition(" - ")
        fstype = right.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            kinds.setdefault(fstype, []).append(left.split(" ")[4])
    if not kinds:
        return Check("cgroupfs", False, "no cgroup file system is mounted",
                     "mount the host's /sys/fs/cgroup (DaemonSet: hostPath /sys/fs/cgroup)")
    for kind, points in kinds.items():
        # Other containers' cgroup mounts show up below the runtimes' state directories; the host's are here.
        usual = [point for point in points if point.startswith("/sys/fs/cgroup")]
        kinds[kind] = usual or points
    parts = [f"cgroup2 at {', '.join(kinds['cgroup2'])}"] if "cgroup2" in kinds else []
    if "cgroup" in kinds:
        parts.append(f"{len(kinds['cgroup'])} cgroup v1 hierarchies")
    return Check("cgroupfs", True, "; ".join(parts))


def _kernel_version(release: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def check_kernel(release: str | None = None, lockdown: Path = Path("/sys/kernel/security/lockdown")) -> Check:
    release = release or os.uname().release
    version = _kernel_version(release)
    if version < (5, 8):
        return Check("kernel", False, f"{release} is older than 5.8, which brought the BPF ring buffer",
                     "run on a kernel >= 5.8")
    try:
        mode = re.search(r"\[(\w+)\]", lockdown.read_text())
    except OSError:
        mode = None
    if mode is not None and mode.group(1) == "confidentiality":
        return Check("kernel", False, f"{release} is in lockdown=confidentiality, which forbids BPF reads of "
                     "kernel memory", "boot with lockdown=integrity or none")
    return Check("kernel", True, f"{release}" + (f", lockdown {mode.group(1)}" if mode else ""))


def _writable_dir(path: Path) -> str | None:
    """None when the sensor could write in `path` (or create it), else why not. Leaves nothing behind."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        # A directory, not a file: it tests the same permission and is removed whatever it is named.
        probe = existing / f".container-sensor-check-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
        return None
    except OSError as error:
        return error.strerror or str(error)


def check_spool(config: Config) -> Check:
    outputs = config.sections.outputs
    spool = outputs.elasticsearch.spool.dir
    needed = "elasticsearch" in outputs.kinds
    why = _writable_dir(spool)
    if why is None:
        return Check("spool", True, f"{spool} is writable" if spool.exists() else f"{spool} can be created")
    return Check("spool", False, f"{spool} is not writable: {why}",
                 "mount a writable directory there (DaemonSet: hostPath /var/lib/container-sensor), or set "
                 "spool.dir", fatal=needed)


def check_ready_file(config: Config) -> Check:
    ready_file = config.sections.ops.ready_file
    if ready_file is None:
        return Check("ready file", True, "none configured")
    directory = ready_file.parent
    why = _writable_dir(directory)
    if why is None:
        return Check("ready file", True, f"{directory} is writable")
    return Check("ready file", False, f"cannot write in {directory}: {why}",
                 "mount a writable volume there (DaemonSet: an emptyDir at /run/container-sensor)")


SYSTEMD_UNITS = (Path("/etc/systemd/system/container-sensor.service"),
                 Path("/lib/systemd/system/container-sensor.service"),
                 Path("/usr/lib/systemd/system/container-sensor.service"))


def unit_writable_paths(unit: Path) -> tuple[Path, ...] | None:
    """The paths the installed systemd unit (with its drop-ins) lets the sensor write, or None when it does not
    make the file system read-only (no ProtectSystem=strict)."""
    files = [unit, *sorted(Path(f"/etc/systemd/system/{unit.name}.d").glob("*.conf"))]
    strict = False
    # not /tmp: with PrivateTmp= it is the unit's own, and what is written there is gone when the unit stops
    writable: list[Path] = []
    prefixes = {"ReadWritePaths": "", "StateDirectory": "/var/lib", "LogsDirectory": "/var/log",
                "RuntimeDirectory": "/run", "CacheDirectory": "/var/cache"}
    for file in files:
        try:
            lines = file.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.strip().partition("=")
            if not sep or key.startswith("#"):
                continue
            if key == "ProtectSystem":
                strict = value.strip() == "strict"
            elif key in prefixes:
                for item in value.split():
                    item = item.lstrip("-+")
                    writable.append(Path(prefixes[key] + "/" + item) if prefixes[key] else Path(item))
    return tuple(writable) if strict else None


def check_file_output(config: Config, units: tuple[Path, ...] = SYSTEMD_UNITS) -> Check:
    outputs = config.sections.outputs
    path = outputs.file.path
    if "file" not in outputs.kinds or path is None:
        return Check("file output", True, "none configured")
    path = path.absolute()
    why = _writable_dir(path.parent)
    if why is not None:
        return Check("file output", False, f"cannot write in {path.parent}: {why}",
                     "give a path in a writable directory (DaemonSet: a hostPath volume)")
    unit = next((u for u in units if u.exists()), None)
    writable = unit_writable_paths(unit) if unit is not None else None
    if writable is not None and not any(path.is_relative_to(w) for w in writable):
        return Check("file output", False, f"{path} is read-only to the sensor run by {unit} "
                     f"(ProtectSystem=strict; writable: {', '.join(str(w) for w in writable)})",
                     "write to /var/log/container-sensor/ (the unit's LogsDirectory), or add "
                     f"ReadWritePaths={path.parent} in a drop-in (systemctl edit container-sensor)", fatal=False)
    return Check("file output", True, f"{path.parent} is writable")


def deployment_checks(config: Config) -> tuple[Callable[[], Check], ...]:
    """The checks for `container-sensor check` beyond sensor.ops.preflight's, bound to the configuration."""
    return (
        check_kernel,
        check_cgroupfs,
        check_host_namespaces,
        lambda: check_runtime_state(root=config.sections.resolver.runtime_state_root),
        lambda: check_spool(config),
        lambda: check_ready_file(config),
        lambda: check_file_output(config),
    )
