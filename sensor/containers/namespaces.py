"""Namespace inodes of a process and how they compare with the host's."""

from __future__ import annotations

import os
from pathlib import Path

from sensor.model.records import Namespaces

NAMESPACE_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")
# A namespace-only container has its own pid and mount namespaces and at least one of these: an `unshare
# --mount` shell, a systemd service with PrivateTmp/PrivateNetwork or a browser sandbox does not.
_ISOLATING = frozenset({"uts", "ipc", "net"})


def read_namespaces(pid: int | str = 1, proc_root: Path = Path("/proc")) -> Namespaces:
    """Namespaces of PID from /proc/PID/ns/* (0 where unreadable); pid 1's are the host's."""
    values = {}
    for kind in NAMESPACE_KINDS:
        try:
            values[kind] = os.stat(proc_root / str(pid) / "ns" / kind).st_ino
        except OSError:
            values[kind] = 0
    return Namespaces(**values)


def host_namespaces(proc_root: Path = Path("/proc")) -> Namespaces:
    """The host's namespaces: pid 1's, and for each one pid 1 does not let us read (seen here: /proc/1/ns/*
    gives EACCES to root when pid 1 is not dumpable), the sensor's own, which are the host's when the sensor
    runs on the host or in a privileged pod with hostPID/hostNetwork/hostIPC."""
    init = read_namespaces(1, proc_root)
    own = read_namespaces("self", proc_root)
    return Namespaces(**{kind: getattr(init, kind) or getattr(own, kind) for kind in NAMESPACE_KINDS})


def differing(ns: Namespaces, host: Namespaces) -> tuple[str, ...]:
    """Sorted names of the namespaces known on both sides that differ."""
    out = []
    for kind in NAMESPACE_KINDS:
        mine = getattr(ns, kind)
        theirs = getattr(host, kind)
        if mine and theirs and mine != theirs:
            out.append(kind)
    return tuple(out)


def looks_like_container(diff: tuple[str, ...]) -> bool:
    kinds = set(diff)
    return "pid" in kinds and "mnt" in kinds and bool(kinds & _ISOLATING)
