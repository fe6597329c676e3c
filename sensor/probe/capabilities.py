"""The capabilities the probe needs to load, and how to tell whether this process has them.

The probe checks them before it loads (one clear line instead of the kernel's EPERM); `container-sensor check`
(sensor.ops.preflight) reports the same table line by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_SYS_NICE, CAP_PERFMON, CAP_BPF = 2, 19, 21, 23, 38, 39


@dataclass(frozen=True, slots=True)
class Capability:
    """One capability of the least-privilege set: what breaks without it (proven on a real kernel by
    tests/integration/test_least_privilege.py)."""

    name: str
    bit: int
    needed_for: str
    required: bool = True  # False: the sensor runs without it, with the loss `needed_for` names


# The whole set the sensor needs when tracefs is already mounted. Not CAP_SYS_ADMIN: only mounting tracefs
# needs it (check_tracefs). Not CAP_SYS_RESOURCE: since 5.11 BPF maps are charged to the memory cgroup, not
# to RLIMIT_MEMLOCK.
CAPABILITIES: tuple[Capability, ...] = (
    Capability("CAP_BPF", CAP_BPF, "creating BPF maps (the ring buffer) and loading the program"),
    Capability("CAP_PERFMON", CAP_PERFMON,
               "loading tracing programs, attaching them to tracepoints and reading kernel memory"),
    Capability("CAP_SYS_PTRACE", CAP_SYS_PTRACE,
               "reading /proc/PID/{exe,root,ns} of other processes: copies of ssh under other names go "
               "unrecognised and containers unnamed"),
    Capability("CAP_DAC_READ_SEARCH", CAP_DAC_READ_SEARCH,
               "reading executables and runtime state whatever their modes: an execute-only copy of ssh goes "
               "unrecognised"),
    Capability("CAP_SYS_NICE", CAP_SYS_NICE,
               "priority_boost: without it the sensor runs at normal priority and events wait longer under load",
               required=False),
)


def effective_caps(status: Path = Path("/proc/self/status")) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_capability(bit: int, caps: int | None = None) -> bool:
    return bool((effective_caps() if caps is None else caps) & (1 << bit))


def grant_hint(name: str) -> str:
    short = name.removeprefix("CAP_")
    return (f"grant {name} (DaemonSet: securityContext.capabilities.add [{short}]; systemd: "
            f"CapabilityBoundingSet= and AmbientCapabilities= {name}), or run as root")


def privileges_problem(caps: int | None = None) -> tuple[str, str] | None:
    """(what is missing, the fix) naming every missing required capability at once; None when all are present."""
    caps = effective_caps() if caps is None else caps
    missing = [cap for cap in CAPABILITIES if cap.required and not caps & (1 << cap.bit)]
    if not missing:
        return None
    return ("missing " + "; ".join(f"{cap.name} ({cap.needed_for})" for cap in missing),
            "grant " + ", ".join(cap.name for cap in missing) + " (DaemonSet: "
            "securityContext.capabilities.add, see packaging/kubernetes-least-privilege; systemd: "
            "CapabilityBoundingSet= and AmbientCapabilities=), or run as root")
