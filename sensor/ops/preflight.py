"""`container-sensor check`: names each missing prerequisite with the fix."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensor.probe.capabilities import (
    CAP_SYS_ADMIN,
    CAPABILITIES,
    effective_caps,
    grant_hint,
    has_capability,
    privileges_problem,
)
from sensor.probe.kernel_headers import MODULES, fallback_tree, has_headers, running_release
from sensor.probe.tracefs import TracefsError, tracefs_mounted

BTF_PATH = Path("/sys/kernel/btf/vmlinux")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    fatal: bool = True  # the sensor cannot run while this fails


def check_privileges(caps: int | None = None) -> Check:
    """All required capabilities at once: what the probe checks before it loads."""
    problem = privileges_problem(caps)
    if problem is None:
        return Check("privileges", True, f"uid {os.geteuid()}, capabilities present")
    detail, fix = problem
    return Check("privileges", False, detail, fix)


def check_capabilities(caps: int | None = None) -> list[Check]:
    """One line per missing capability with what breaks and the fix; one ok line when none is missing."""
    caps = effective_caps() if caps is None else caps
    missing = [cap for cap in CAPABILITIES if not caps & (1 << cap.bit)]
    if not missing:
        return [Check("capabilities", True,
                      f"uid {os.geteuid()}, {' '.join(cap.name for cap in CAPABILITIES)} present")]
    return [Check(cap.name, False, f"missing, needed for {cap.needed_for}; fix: {grant_hint(cap.name)}",
                  fatal=cap.required) for cap in missing]


def check_btf() -> Check:
    if BTF_PATH.is_file():
        return Check("btf", True, str(BTF_PATH))
    return Check("btf", False, f"{BTF_PATH} is missing",
                 "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions since 2020), or "
                 "mount the host's /sys/kernel/btf into the container")


def check_tracefs() -> Check:
    try:
        found = tracefs_mounted()
    except TracefsError as exc:
        return Check("tracefs", False, str(exc), "run as root (sudo)")
    if found is not None:
        return Check("tracefs", True, f"mounted at {found}")
    if not has_capability(CAP_SYS_ADMIN):
        return Check("tracefs", False, "not mounted, and mounting it needs CAP_SYS_ADMIN, which the sensor lacks",
                     "run 'mount -t tracefs nodev /sys/kernel/tracing' on the host (a DaemonSet mounts the host's "
                     "/sys/kernel/tracing), or grant CAP_SYS_ADMIN")
    return Check("tracefs", True, "not mounted; the sensor mounts it at /sys/kernel/tracing when it starts",
                 "or run 'mount -t tracefs nodev /sys/kernel/tracing'; in a container, mount the host's "
                 "/sys/kernel/tracing", fatal=False)


def check_bcc() -> Check:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return Check("bcc", False, "the bcc Python module cannot be imported",
                     "apt-get install python3-bpfcc, and use a venv made with "
                     "'/usr/bin/python3 -m venv --system-site-packages'")
    return Check("bcc", True, "importable")


def check_headers() -> Check:
    release = running_release()
    build = MODULES / release / "build"
    if has_headers(build):
        return Check("headers", True, f"{build} -> {build.resolve()}")
    tree = fallback_tree()
    if tree is not None:
        return Check("headers", True, f"none for {release}; the fallback tree {tree[0]} will be linked at start",
                     fatal=False)
    return Check("headers", False, f"no kernel headers for {release} and no fallback tree in /usr/src",
                 "apt-get install linux-headers-amd64 (any version: struct offsets come from BTF), or mount the "
                 "host's /lib/modules and /usr/src")


def check_cgroup() -> Check:
    for candidate in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (candidate / "cgroup.controllers").exists():
            return Check("cgroup v2", True, f"mounted at {candidate}")
    return Check("cgroup v2", False, "no cgroup v2 hierarchy found",
                 "mount the host's /sys/fs/cgroup (cgroup2 or hybrid) into the container", fatal=False)


PROC_PID_INIT_INO = 0xEFFFFFFC  # the initial pid namespace's inode number, fixed by the kernel since 3.8


def check_host_pid_namespace() -> Check:
    try:
        same = os.stat("/proc/self/ns/pid").st_ino == PROC_PID_INIT_INO
    except OSError as exc:
        return Check("host pid namespace", False, f"cannot read /proc/self/ns/pid: {exc.strerror}",
                     "mount the host's /proc and run with hostPID: true (DaemonSet) or --pid=host")
    if same:
        return Check("host pid namespace", True, "the sensor sees the host's processes")
    return Check("host pid namespace", False, "the sensor is not in the host's pid namespace",
                 "run with hostPID: true (DaemonSet) or --pid=host (podman/docker)", fatal=False)


CHECKS: tuple[Callable[[], Check | list[Check]], ...] = (
    check_capabilities, check_btf, check_tracefs, check_bcc, check_headers, check_cgroup, check_host_pid_namespace,
)


def run_checks(extra: tuple[Callable[[], Check | list[Check]], ...] = ()) -> list[Check]:
    checks: list[Check] = []
    for check in (*CHECKS, *extra):
        result = check()
        checks.extend(result if isinstance(result, list) else [result])
    return checks


def report(checks: list[Check]) -> tuple[str, bool]:
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else ("FAIL" if check.fatal else "warn")
        line = f"{mark} {check.name}: {check.detail}"
        if check.fix and not check.ok:
            line += f"\n     fix: {check.fix}"
        lines.append(line)
    can_run = all(check.ok or not check.fatal for check in checks)
    lines.append("the sensor can run here" if can_run else "the sensor cannot run here until the FAIL lines are fixed")
    return "\n".join(lines), can_run
