"""ECS documents from finished snapshots: one builder per field set, none of them touching a cache.

The only module that knows ECS field names for events (alerts add theirs in sensor/rules). Fields outside ECS
live under the one custom key CUSTOM_KEY, documented in README.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import grp
import hashlib
import pwd
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from sensor import __version__
from sensor.host import HostFacts
from sensor.processes import Process

ECS_VERSION = "9.4.0"
CUSTOM_KEY = "container_sensor"
SUMMARY_CACHE_SIZE = 8192
NS_NAMES = ("pid", "mnt", "net", "uts", "ipc", "cgroup", "user")


class ContainerLike(Protocol):
    """What the builder reads of a resolved container (sensor.containers.ContainerInfo)."""

    id: str
    runtime: str
    name: str | None
    image_name: str | None
    image_tag: str | None
    pod_uid: str | None
    pod_name: str | None
    pod_namespace: str | None
    cgroup_path: str | None


@dataclass(frozen=True, slots=True)
class Leaders:
    group: Process | None = None
    session: Process | None = None
    entry: Process | None = None
    entry_type: str | None = None
    entry_parent: Process | None = None


def iso_time(wall_ns: int) -> str:
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns // 1000:06d}Z"


def event_id(boot_id: str, kind: str, pid: int, ktime_ns: int) -> str:
    """Deterministic: the same kernel event always gets the same id, so re-delivery deduplicates."""
    digest = hashlib.sha256(f"{boot_id}:{kind}:{pid}:{ktime_ns}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:15]).decode()


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return None


def _id_block(ident: int, host_names: bool, lookup: Any) -> dict[str, Any]:
    block: dict[str, Any] = {"id": str(ident)}
    if host_names:
        name = lookup(ident)
        if name is not None:
            block["name"] = name
    return block


def exit_code_of(status: int) -> tuple[int, int | None]:
    """(exit code, terminating signal) from a wait(2) status; a signal death reads as 128 + signal."""
    signal = status & 0x7F
    if signal:
        return 128 + signal, signal
    return (status >> 8) & 0xFF, None


class DocumentBuilder:
    def __init__(
        self,
        host: HostFacts,
        *,
        boot_wall_offset_ns: int,
        data_stream_dataset: str = "endpoint.events.process",
        data_stream_namespace: str = "default",
        agent_id: str = "",
    ) -> None:
        self.boot_wall_offset_ns = boot_wall_offset_ns
        self._dataset = data_stream_dataset
        self._namespace = data_stream_namespace
        self._host = self._host_block(host)
        self._agent = {"type": "container-sensor", "version": __version__, "name": host.hostname,
                       "id": agent_id or host.host_id}
        self._boot_id = host.boot_id
        self.hostname = host.hostname
        self._summaries: dict[int, tuple[Process, dict[str, Any]]] = {}

    def wall(self, boot_ns: int) -> int:
        return self.boot_wall_offset_ns + boot_ns

    @staticmethod
    def _host_block(host: HostFacts) -> dict[str, Any]:
        block: dict[str, Any] = {
            "hostname": host.hostname,
            "name": host.hostname,
            "architecture": host.architecture,
            "os": {
                "type": "linux",
                "kernel": host.kernel,
                "name": host.os_name,
                "family": host.os_family,
                "platform": host.os_platform,
            },
        }
        if host.os_version:
            block["os"]["version"] = host.os_version
        if host.host_id:
            block["id"] = host.host_id
        if host.ips:
            block["ip"] = list(host.ips)
        if host.macs:
            block["mac"] = list(host.macs)
        return block

    # -- field sets -------------------------------------------------------------------------------------

    def process_summary(self, proc: Process) -> dict[str, Any]:
        """The fields ECS gives the parent and the leaders: who, what, since when.

        The same few processes (a shell, its session leader, the container's init) recur in thousands of
        documents, and a Process never changes, so their blocks are built once and shared; callers copy
        before adding to one."""
        cached = self._summaries.get(id(proc))
        if cached is not None and cached[0] is proc:
            return cached[1]
        block = self._build_summary(proc)
        if len(self._summaries) >= SUMMARY_CACHE_SIZE:
            del self._summaries[next(iter(self._summaries))]
        self._summaries[id(proc)] = (proc, block)
        return block

    def _build_summary(self, proc: Process) -> dict[str, Any]:
        block: dict[str, Any] = {
            "pid": proc.pid,
            "entity_id": proc.entity_id,
            "start": iso_time(self.wall(proc.start_boottime_ns)),
        }
        if proc.executable:
            block["executable"] = proc.executable
        if proc.name:
            block["name"] = proc.name
        if proc.args:
            block["args"] = list(proc.args)
            block["args_count"] = proc.args_count
            block["command_line"] = proc.command_line
        if proc.uid >= 0:
            block["real_user"] = {"id": str(proc.uid)}
            block["user"] = {"id": str(proc.euid)}
            block["real_group"] = {"id": str(proc.gid)}
            block["group"] = {"id": str(proc.egid)}
        block["interactive"] = proc.interactive
        return block

    def process_block(self, proc: Process, parent: Process | None, leaders: Leaders, in_container: bool) -> dict:
        host_names = not in_container
        block = dict(self.process_summary(proc))
        if proc.uid >= 0:
            block["user"] = _id_block(proc.euid, host_names, user_name)
            block["group"] = _id_block(proc.egid, host_names, group_name)
            block["real_user"] = _id_block(proc.uid, host_names, user_name)
            block["real_group"] = _id_block(proc.gid, host_names, group_name)
        if proc.cwd:
            block["working_directory"] = proc.cwd
        if proc.tty_major:
            block["tty"] = {"char_device": {"major": proc.tty_major, "minor": proc.tty_minor}}
        if parent is not None:
            block["parent"] = self.process_summary(parent)
        elif proc.ppid:
            block["parent"] = {"pid": proc.ppid}
        for key, leader in (("group_leader", leaders.group), ("session_leader", leaders.session)):
            if leader is not None:
                block[key] = self.leader(leader, proc)
        if leaders.entry is not None:
            entry = self.leader(leaders.entry, proc)
            if leaders.entry_type:
                entry["entry_meta"] = {"type": leaders.entry_type}
            if leaders.entry_parent is not None:
                ep = leaders.entry_parent
                entry["parent"] = {"pid": ep.pid, "entity_id": ep.entity_id,
                                   "start": iso_time(self.wall(ep.start_boottime_ns))}
            block["entry_leader"] = entry
        return block

    def leader(self, leader: Process, proc: Process) -> dict[str, Any]:
        block = dict(self.process_summary(leader))
        block["same_as_process"] = leader.pid == proc.pid and leader.start_boottime_ns == proc.start_boottime_ns
        return block

    @staticmethod
    def container_block(container: ContainerLike) -> dict[str, Any]:
        block: dict[str, Any] = {"id": container.id}
        if container.runtime:
            block["runtime"] = container.runtime
        if container.name:
            block["name"] = container.name
        if container.image_name:
            block["image"] = {"name": container.image_name}
            if container.image_tag:
                block["image"]["tag"] = [container.image_tag]
        return block

    @staticmethod
    def orchestrator_block(container: ContainerLike) -> dict[str, Any] | None:
        if not (container.pod_name or container.pod_uid):
            return None
        resource: dict[str, Any] = {"type": "pod", "parent": {"type": "namespace"}}
        if container.pod_name:
            resource["name"] = container.pod_name
        if container.pod_uid:
            resource["id"] = container.pod_uid
        block: dict[str, Any] = {"type": "kubernetes", "resource": resource}
        if container.pod_namespace:
            block["namespace"] = container.pod_namespace
        return block

    def custom_block(self, proc: Process, container: ContainerLike | None, cgroup_path: str | None) -> dict:
        cgroup: dict[str, Any] = {"id": proc.cgroup_id}
        if cgroup_path:
            cgroup["path"] = cgroup_path
        block: dict[str, Any] = {
            "cgroup": cgroup,
            "namespaces": dict(zip(NS_NAMES, (getattr(proc.ns, n) for n in NS_NAMES), strict=True)),
            "args_truncated": proc.args_truncated,
        }
        if proc.exe_ino:
            block["executable"] = {"inode": proc.exe_ino, "device": proc.exe_dev}
        if container is not None:
            evidence = getattr(container, "evidence", None)
            if evidence:
                block["container_evidence"] = list(evidence)
        return block

    # -- documents --------------------------------------------------------------------------------------

    def envelope(self, *, kind: str, ktime_ns: int, pid: int, sequence: int, event_type: str,
                 action: str) -> dict[str, Any]:
        now = iso_time(self.wall(ktime_ns))
        return {
            "@timestamp": now,
            "ecs": {"version": ECS_VERSION},
            "event": {
                "kind": "event",
                "category": ["process"],
                "type": [event_type],
                "action": action,
                "created": iso_time(time.time_ns()),
                "id": event_id(self._boot_id, kind, pid, ktime_ns),
                "sequence": sequence,
                "dataset": self._dataset,
                "module": CUSTOM_KEY,
            },
            "data_stream": {"type": "logs", "dataset": self._dataset, "namespace": self._namespace},
            "host": self._host,
            "agent": self._agent,
        }

    def process_event(
        self,
        *,
        kind: str,
        ktime_ns: int,
        sequence: int,
        proc: Process,
        parent: Process | None,
        leaders: Leaders,
        container: ContainerLike | None,
        cgroup_path: str | None,
        exit_status: int | None = None,
    ) -> dict[str, Any]:
        """An exec (kind "exec") or end (kind "exit") document."""
        if kind == "exec":
            doc = self.envelope(kind=kind, ktime_ns=ktime_ns, pid=proc.pid, sequence=sequence,
                                event_type="start", action="exec")
        else:
            doc = self.envelope(kind=kind, ktime_ns=ktime_ns, pid=proc.pid, sequence=sequence,
                                event_type="end", action="end")
        process = self.process_block(proc, parent, leaders, container is not None)
        custom = self.custom_block(proc, container, cgroup_path)
        if exit_status is not None:
            code, signal = exit_code_of(exit_status)
            process["exit_code"] = code
            process["end"] = doc["@timestamp"]
            if signal is not None:
                custom["exit_signal"] = signal
        doc["process"] = process
        if container is not None:
            doc["container"] = self.container_block(container)
            orchestrator = self.orchestrator_block(container)
            if orchestrator is not None:
                doc["orchestrator"] = orchestrator
        doc[CUSTOM_KEY] = custom
        return doc
