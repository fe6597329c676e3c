"""What the sensor's event documents can hold: every field name and every event.category/type/action value,
read off documents that the real DocumentBuilder makes (not a hand-kept list, which would drift from it).

The documents are built from made-up processes chosen so that every optional member appears at least once: a
container with a pod, a tty, a working directory, arguments, a previous image, environment variables, every leader
with an entry parent, a parent, an end by a signal, each change document (events.cred_changes), the start-up
inventory (events.already_running) and both network documents (events.network), all on by default. `rules coverage`
classifies Elastic's rules against this inventory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sensor.ecs.builder import DocumentBuilder
from sensor.model.host import HostFacts
from sensor.model.processes import PreviousImage, Process
from sensor.model.records import Namespaces, NetRecord
from sensor.model.sessions import Leaders


@dataclass(frozen=True)
class FieldInventory:
    fields: frozenset[str]  # dotted names of every leaf (an array of objects counts as its members' names)
    # event.category value -> the event.type and event.action values documents of that category carry
    event_types: dict[str, frozenset[str]] = field(default_factory=dict)
    event_actions: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self.event_types)

    def as_dict(self) -> dict[str, Any]:
        return {"fields": sorted(self.fields),
                "events": {category: {"type": sorted(self.event_types[category]),
                                      "action": sorted(self.event_actions.get(category, ()))}
                           for category in sorted(self.event_types)}}


@dataclass(frozen=True)
class _Container:
    """A resolved container with every member set (sensor.ecs.builder.ContainerLike)."""

    id: str = "0" * 64
    runtime: str = "containerd"
    name: str | None = "app"
    image_name: str | None = "registry.example/app"
    image_tag: str | None = "1.0"
    pod_uid: str | None = "00000000-0000-0000-0000-000000000000"
    pod_name: str | None = "app-0"
    pod_namespace: str | None = "default"
    cgroup_path: str | None = "/kubepods/pod0/" + "0" * 64
    evidence: tuple[str, ...] = ("cgroup",)


def _process(pid: int, ppid: int, name: str, **members: Any) -> Process:
    return Process(pid=pid, ppid=ppid, start_boottime_ns=pid * 1_000_000, entity_id=f"entity-{pid}",
                   executable=f"/usr/bin/{name}", name=name, args=(f"/usr/bin/{name}", "-x"), args_count=2,
                   uid=0, gid=0, euid=0, egid=0, sid=pid, pgid=pid, cgroup_id=7,
                   ns=Namespaces(4026531836, 4026531840, 4026531992, 4026531838, 4026531839, 4026531835, 4026531837),
                   exe_ino=11, exe_dev=2049, exe_ctime_ns=5, cwd="/root", exec_seen=True, cap_effective=1 << 21,
                   cap_permitted=(1 << 41) - 1, **members)


def sample_documents() -> Iterator[dict[str, Any]]:
    host = HostFacts(hostname="node", host_id="host-id", architecture="x86_64", kernel="6.1.0", os_name="Debian",
                     os_version="12", os_family="debian", os_platform="debian", ips=("192.0.2.1",),
                     macs=("00-00-5E-00-53-00",), boot_id="0" * 32)
    builder = DocumentBuilder(host, boot_wall_offset_ns=1_700_000_000 * 10**9)
    entry_parent = _process(1, 0, "init")
    entry = _process(10, 1, "sshd")
    session = _process(20, 10, "bash", tty_major=136, tty_minor=1)
    group = _process(30, 20, "sh", tty_major=136, tty_minor=1)
    proc = _process(40, 30, "curl", tty_major=136, tty_minor=1,  # a re-exec: process.previous
                    previous=(PreviousImage("/usr/bin/sh", ("sh", "-c", "curl"), 3),),
                    env_vars=("LD_PRELOAD=/tmp/x.so",), env_truncated=True)
    leaders = Leaders(group=group, session=session, entry=entry, entry_type="sshd", entry_parent=entry_parent)
    own = Leaders(group=proc, session=proc, entry=proc, entry_type="container", entry_parent=entry_parent)
    for container in (None, _Container()):
        for who, its_leaders in ((proc, leaders), (proc, own)):
            for kind, status in (("exec", None), ("fork", None), ("exit", 9), ("exit", 256), ("uid_change", None),
                                 ("gid_change", None), ("session_id_change", None), ("already_running", None)):
                yield builder.process_event(kind=kind, ktime_ns=10**9, sequence=1, proc=who, parent=group,
                                            leaders=its_leaders, container=container,
                                            cgroup_path="/system.slice/x.service", exit_status=status)
            yield builder.process_event(kind="load_module", ktime_ns=10**9, sequence=1, proc=who, parent=group,
                                        leaders=its_leaders, container=container, cgroup_path=None,
                                        module=("evil", (1 << 12) | (1 << 13)))
            for action in ("connection_attempted", "connection_accepted"):
                record = NetRecord(10**9, who.pid, action, who.start_boottime_ns, "192.0.2.1", 40000,
                                   "198.51.100.7", 443)
                yield builder.network_event(rec=record, sequence=1, proc=who, parent=group, leaders=its_leaders,
                                            container=container, cgroup_path="/system.slice/x.service")


def _leaves(value: Any, prefix: str) -> Iterator[str]:
    if isinstance(value, dict):
        for key, member in value.items():
            yield from _leaves(member, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for item in value:
            yield from _leaves(item, prefix)
    else:
        yield prefix


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def inventory(documents: Iterator[dict[str, Any]] | None = None) -> FieldInventory:
    names: set[str] = set()
    types: dict[str, set[str]] = {}
    actions: dict[str, set[str]] = {}
    for doc in sample_documents() if documents is None else documents:
        names.update(_leaves(doc, ""))
        event = doc.get("event") or {}
        for category in _as_list(event.get("category")):
            types.setdefault(category, set()).update(_as_list(event.get("type")))
            actions.setdefault(category, set()).update(_as_list(event.get("action")))
    return FieldInventory(frozenset(names), {k: frozenset(v) for k, v in types.items()},
                          {k: frozenset(v) for k, v in actions.items()})
