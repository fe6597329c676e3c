"""ECS documents from finished snapshots: one builder per field set, none of them touching a cache.

The only module that knows ECS field names for events (alerts add theirs in sensor/rules). Fields outside ECS
live under the one custom key CUSTOM_KEY, documented in README.md.
"""

from __future__ import annotations

import datetime as dt
import grp
import pwd
import struct
import time
from functools import lru_cache
from typing import Any, Protocol

from sensor import __version__
from sensor.ecs.encoding import ExtendedBlock, SharedBlock, extend
from sensor.model.host import HostFacts
from sensor.model.processes import Process, boot_prefix, urlsafe_text
from sensor.model.records import Namespaces, NetRecord
from sensor.model.sessions import Leaders

ECS_VERSION = "9.4.0"
CUSTOM_KEY = "container_sensor"
SUMMARY_CACHE_SIZE = 8192
# Exec documents' bodies kept for their end documents: each holds its encoded text too (about 3 KB), and an end
# usually follows its exec within seconds
BODIES_CACHE_SIZE = 4096
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
    pod_labels: tuple[tuple[str, str], ...]
    workload_kind: str | None
    cgroup_path: str | None


# seconds -> "YYYY-MM-DDTHH:MM:SS.": formatting a date is the slow part, and thousands of events share each
# second. A dict, cleared when full, for the cheapest read (an lru_cache is a call and a key tuple each time).
_second_stamps: dict[int, str] = {}
SECOND_STAMPS_KEPT = 1024


def iso_time(wall_ns: int) -> str:
    seconds, ns = divmod(wall_ns, 1_000_000_000)
    stamp = _second_stamps.get(seconds) or _second_stamp(seconds)
    return f"{stamp}{ns // 1000:06d}Z"


def _second_stamp(seconds: int) -> str:
    if len(_second_stamps) >= SECOND_STAMPS_KEPT:
        _second_stamps.clear()
    stamp = _second_stamps[seconds] = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    return stamp


_EVENT_ID = struct.Struct("<9sQIB")
_EVENT_KINDS = {"exec": 1, "exit": 2, "uid_change": 3, "gid_change": 4, "session_id_change": 5, "already_running": 6,
                "fork": 7, "load_module": 8, "net": 9}


def event_id(boot_id: str, kind: str, pid: int, ktime_ns: int) -> str:
    """Deterministic: the same kernel event always gets the same id, so re-delivery deduplicates. Unique: no two
    events of one kind have the same pid and kernel time in one boot, and the boot id is random per boot."""
    return urlsafe_text(_EVENT_ID.pack(boot_prefix(boot_id), ktime_ns, pid & 0xFFFFFFFF, _EVENT_KINDS.get(kind, 0)))


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


@lru_cache(maxsize=SUMMARY_CACHE_SIZE)
def _id_block(ident: int, host_names: bool, is_user: bool) -> SharedBlock:
    """A user or group block ({"id", "name"}): a few ids recur in every document."""
    block: dict[str, Any] = {"id": str(ident)}
    if host_names:
        name = (user_name if is_user else group_name)(ident)
        if name is not None:
            block["name"] = name
    return SharedBlock(block)


@lru_cache(maxsize=SUMMARY_CACHE_SIZE)
def _named_block(ident: int, name: str | None) -> SharedBlock:
    """A user or group block with the name a container's own passwd or group file gives the id."""
    return SharedBlock({"id": str(ident), "name": name} if name else {"id": str(ident)})


@lru_cache(maxsize=SUMMARY_CACHE_SIZE)
def _named_actor_block(effective: int, effective_name: str | None, real: int, real_name: str | None) -> SharedBlock:
    block = dict(_named_block(effective, effective_name))
    block["Ext"] = {"real": _named_block(real, real_name)}
    return SharedBlock(block)


class AccountNamesLike(Protocol):
    """A container's names by id (sensor.containers.accounts.AccountNames)."""

    def user(self, uid: int) -> str | None: ...

    def group(self, gid: int) -> str | None: ...


def _actors(proc: Process, host_names: bool, names: AccountNamesLike | None) -> tuple[SharedBlock, SharedBlock]:
    """The document's top-level user and group."""
    if names is None:
        return (_actor_block(proc.euid, proc.uid, host_names, True),
                _actor_block(proc.egid, proc.gid, host_names, False))
    return (_named_actor_block(proc.euid, names.user(proc.euid), proc.uid, names.user(proc.uid)),
            _named_actor_block(proc.egid, names.group(proc.egid), proc.gid, names.group(proc.gid)))


@lru_cache(maxsize=SUMMARY_CACHE_SIZE)
def _actor_block(effective: int, real: int, host_names: bool, is_user: bool) -> SharedBlock:
    """The document's top-level user or group, as Elastic Defend writes them on process events: the effective
    id (and name), the real one under Ext.real."""
    block = dict(_id_block(effective, host_names, is_user))
    block["Ext"] = {"real": _id_block(real, host_names, is_user)}
    return SharedBlock(block)


# Capability names by bit number (include/uapi/linux/capability.h); a bit beyond the list reads CAP_<N>.
CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)


# The kernel's taint letters by TAINT_* bit (kernel/panic.c taint_flags), as /proc/modules shows them
TAINT_LETTERS = "PFSRMBUDAWCIOELKXTN"


def taint_letters(bits: int) -> str:
    return "".join(TAINT_LETTERS[n] if n < len(TAINT_LETTERS) else "?" for n in range(32) if bits >> n & 1)


def capability_names(bits: int) -> list[str]:
    return [CAPABILITY_NAMES[n] if n < len(CAPABILITY_NAMES) else f"CAP_{n}" for n in range(64) if bits >> n & 1]


@lru_cache(maxsize=256)
def _thread_block(effective: int, permitted: int) -> SharedBlock:
    """process.thread.capabilities as Elastic Defend writes them: a handful of sets recur in every document."""
    return SharedBlock({"capabilities": {"effective": capability_names(effective),
                                         "permitted": capability_names(permitted)}})


@lru_cache(maxsize=SUMMARY_CACHE_SIZE)
def _namespaces_block(ns: Namespaces) -> SharedBlock:
    """A host has a handful of namespace sets, each shared by all its processes' documents."""
    return SharedBlock({"pid": ns.pid, "mnt": ns.mnt, "net": ns.net, "uts": ns.uts, "ipc": ns.ipc,
                        "cgroup": ns.cgroup, "user": ns.user})


def exit_code_of(status: int) -> tuple[int, int | None]:
    """(exit code, terminating signal) from a wait(2) status; a signal death reads as 128 + signal."""
    signal = status & 0x7F
    if signal:
        return 128 + signal, signal
    return (status >> 8) & 0xFF, None


# document kind -> Elastic Defend's (event.type, event.action); the rest (uid_change, gid_change,
# session_id_change) are (change, the kind)
_DEFEND_EVENTS = {"exec": ("start", "exec"), "exit": ("end", "end"), "fork": ("start", "fork"),
                  "load_module": ("start", "load_module"), "already_running": ("info", "already_running")}


class DocumentBuilder:
    def __init__(
        self,
        host: HostFacts,
        *,
        boot_wall_offset_ns: int,
        data_stream_dataset: str = "endpoint.events.process",
        network_dataset: str = "endpoint.events.network",
        data_stream_namespace: str = "default",
        agent_id: str = "",
        cluster_name: str | None = None,
    ) -> None:
        self.boot_wall_offset_ns = boot_wall_offset_ns
        self.cluster_name = cluster_name  # orchestrator.cluster.name of Kubernetes containers
        self._dataset = data_stream_dataset
        # The members every document of this host shares, built once (see SharedBlock).
        self._host_base = SharedBlock({
            "ecs": SharedBlock({"version": ECS_VERSION}),
            "data_stream": SharedBlock({"type": "logs", "dataset": data_stream_dataset,
                                        "namespace": data_stream_namespace}),
            "host": SharedBlock(self._host_block(host)),
            "agent": SharedBlock({"type": "container-sensor", "version": __version__, "name": host.hostname,
                                  "id": agent_id or host.host_id}),
        })
        self._network_dataset = network_dataset
        self._network_stream = SharedBlock({"type": "logs", "dataset": network_dataset,
                                            "namespace": data_stream_namespace})
        self._boot_id = host.boot_id
        self.hostname = host.hostname
        # The caches below are written by hand, not lru_cache or cachetools, for what those cannot do:
        # - they are keyed by the identity of a process or container (id(), with the object kept in the entry and
        #   checked with `is`, so an id reused after the object died never hits). A Process is a mutable,
        #   unhashable dataclass, and a ContainerInfo hashes by value (every field, on every look-up);
        # - they clear when full instead of evicting one key per insert: in an exec storm they are read several
        #   times per document, and a dict's get is the cheapest read there is (an LRU moves its key on every hit,
        #   and cachetools' reads are Python calls), while relearning a few thousand blocks is cheap.
        self._summaries: dict[int, tuple[Process, SharedBlock]] = {}
        self._leaders: dict[tuple[int, bool], tuple[Process, SharedBlock]] = {}
        self._entries: dict[tuple[int, bool, str | None, int], tuple[Process, Process | None, SharedBlock]] = {}
        # (event.type, event.action) -> event block: one per kind of document, a handful
        self._event_bases: dict[tuple[str, str], SharedBlock] = {}
        # id(container) (0: the host) -> its base with the network data stream, for network documents
        self._network_bases: dict[int, tuple[ContainerLike | None, SharedBlock]] = {}
        self._containers: dict[int, tuple[ContainerLike, SharedBlock]] = {}
        self._placements: dict[tuple, tuple[ContainerLike | None, Namespaces, SharedBlock]] = {}
        # id(process) -> (process, container, leaders, process block, custom block, document base) of its
        # exec document, which its end document reuses when nothing it depends on has changed since
        self._bodies: dict[int, tuple[Process, Any, Leaders, SharedBlock, ExtendedBlock, SharedBlock, Any]] = {}
        # id(entry leader) -> its keys in _entries, so that forgetting a process is not a scan of them
        self._entry_keys: dict[int, list[tuple[int, bool, str | None, int]]] = {}

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

    def process_summary(self, proc: Process) -> SharedBlock:
        """The fields ECS gives the parent and the leaders: who, what, since when.

        The same few processes (a shell, its session leader, the container's init) recur in thousands of
        documents, and a Process never changes, so their blocks are built once and shared; callers copy
        before adding to one."""
        cached = self._summaries.get(id(proc))
        if cached is not None and cached[0] is proc:
            return cached[1]
        block = SharedBlock(self._build_summary(proc))
        if len(self._summaries) >= SUMMARY_CACHE_SIZE:
            self._summaries.clear()  # dropping the first key of a full dict each time costs a scan per insert
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
        if proc.cwd:
            # Defend writes it for the parent and the leaders too; Elastic's rules read process.parent's
            block["working_directory"] = proc.cwd
        block["interactive"] = proc.interactive
        return block

    def process_block(self, proc: Process, parent: Process | None, leaders: Leaders,
                      in_container: bool, names: AccountNamesLike | None = None) -> SharedBlock:
        """The process of an exec (and then of its end) document; shared by the two. NAMES: the container's
        own user and group names (a container's ids have no names without them)."""
        host_names = not in_container
        # The summary again, not a copy of the cached one: most exec'd processes (a storm's /bin/true) never
        # become a parent or leader, whose blocks are the only readers of that cache.
        cached = self._summaries.get(id(proc))
        block = SharedBlock(cached[1] if cached is not None and cached[0] is proc else self._build_summary(proc))
        if proc.uid >= 0 and names is not None:
            block["user"] = _named_block(proc.euid, names.user(proc.euid))
            block["group"] = _named_block(proc.egid, names.group(proc.egid))
            block["real_user"] = _named_block(proc.uid, names.user(proc.uid))
            block["real_group"] = _named_block(proc.gid, names.group(proc.gid))
        elif proc.uid >= 0:
            block["user"] = _id_block(proc.euid, host_names, True)
            block["group"] = _id_block(proc.egid, host_names, False)
            block["real_user"] = _id_block(proc.uid, host_names, True)
            block["real_group"] = _id_block(proc.gid, host_names, False)
        if proc.cwd:
            block["working_directory"] = proc.cwd
        if proc.cap_effective >= 0 and proc.cap_permitted >= 0:
            block["thread"] = _thread_block(proc.cap_effective, proc.cap_permitted)
        if proc.tty_major:
            block["tty"] = {"char_device": {"major": proc.tty_major, "minor": proc.tty_minor}}
        if proc.env_vars:
            block["env_vars"] = list(proc.env_vars)
        if proc.previous:
            block["previous"] = [{"executable": image.executable, "args": list(image.args),
                                  "args_count": image.args_count} for image in proc.previous]
        if parent is not None:
            block["parent"] = self.process_summary(parent)
        elif proc.ppid:
            block["parent"] = {"pid": proc.ppid}
        for key, leader in (("group_leader", leaders.group), ("session_leader", leaders.session)):
            if leader is not None:
                block[key] = self.leader(leader, proc)
        if leaders.entry is not None:
            block["entry_leader"] = self.entry_leader(leaders, proc)
        return block

    def entry_leader(self, leaders: Leaders, proc: Process) -> SharedBlock:
        """Shared like the other leaders: a whole session's processes carry the same entry leader."""
        entry, parent = leaders.entry, leaders.entry_parent
        assert entry is not None
        if entry is proc:
            own = self.leader(entry, proc)
            self._add_entry_fields(own, leaders)
            return own
        same = entry.pid == proc.pid and entry.start_boottime_ns == proc.start_boottime_ns
        key = (id(entry), same, leaders.entry_type, id(parent))
        hit = self._entries.get(key)
        if hit is not None and hit[0] is entry and hit[1] is parent:
            return hit[2]
        block = SharedBlock(self.leader(entry, proc))
        self._add_entry_fields(block, leaders)
        if len(self._entries) >= SUMMARY_CACHE_SIZE:
            self._entries.clear()
            self._entry_keys.clear()
        self._entries[key] = (entry, parent, block)
        self._entry_keys.setdefault(id(entry), []).append(key)
        return block

    def _add_entry_fields(self, block: dict[str, Any], leaders: Leaders) -> None:
        if leaders.entry_type:
            block["entry_meta"] = {"type": leaders.entry_type}
        parent = leaders.entry_parent
        if parent is not None:
            block["parent"] = {"pid": parent.pid, "entity_id": parent.entity_id,
                               "start": iso_time(self.wall(parent.start_boottime_ns))}

    def leader(self, leader: Process, proc: Process) -> dict[str, Any]:
        same = leader.pid == proc.pid and leader.start_boottime_ns == proc.start_boottime_ns
        if leader is proc:
            # A process leading its own group or session: nothing else shares this block, so it stays a plain
            # dict, encoded with the rest of the document rather than cached.
            own = dict(self.process_summary(leader))
            own["same_as_process"] = True
            return own
        key = (id(leader), same)
        hit = self._leaders.get(key)
        if hit is not None and hit[0] is leader:
            return hit[1]
        block = SharedBlock(self.process_summary(leader))
        block["same_as_process"] = same
        if len(self._leaders) >= SUMMARY_CACHE_SIZE:
            self._leaders.clear()
        self._leaders[key] = (leader, block)
        return block

    def _container_base(self, container: ContainerLike) -> SharedBlock:
        """The host's shared members plus container and orchestrator, shared by every document of one resolved
        container (the resolver hands out a new object when what it knows of the container changes)."""
        hit = self._containers.get(id(container))
        if hit is not None and hit[0] is container:
            return hit[1]
        base = SharedBlock(self._host_base)
        base["container"] = SharedBlock(self.container_block(container))
        orchestrator = self.orchestrator_block(container)
        if orchestrator is not None:
            base["orchestrator"] = SharedBlock(orchestrator)
        if len(self._containers) >= SUMMARY_CACHE_SIZE:
            self._containers.clear()
        self._containers[id(container)] = (container, base)
        return base

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

    def orchestrator_block(self, container: ContainerLike) -> dict[str, Any] | None:
        if not (container.pod_name or container.pod_uid):
            return None
        resource: dict[str, Any] = {"type": "pod"}
        if container.pod_name:
            resource["name"] = container.pod_name
        if container.pod_uid:
            resource["id"] = container.pod_uid
        kind = getattr(container, "workload_kind", None)
        if kind:
            # ECS: the kind of the workload resource the pod belongs to (Deployment, StatefulSet, DaemonSet, Job)
            resource["parent"] = {"type": kind}
        labels = getattr(container, "pod_labels", ())
        if labels:
            resource["label"] = [f"{key}:{value}" for key, value in labels]
        block: dict[str, Any] = {"type": "kubernetes", "resource": resource}
        if container.pod_namespace:
            block["namespace"] = container.pod_namespace
        if self.cluster_name:
            block["cluster"] = {"name": self.cluster_name}
        return block

    def custom_block(self, proc: Process, container: ContainerLike | None,
                     cgroup_path: str | None) -> ExtendedBlock:
        own: dict[str, Any] = {"args_truncated": proc.args_truncated}
        executable: dict[str, Any] = {}
        if proc.exe_ino:
            executable["inode"] = proc.exe_ino
            executable["device"] = proc.exe_dev
            if proc.exe_ctime_ns:
                executable["ctime_ns"] = proc.exe_ctime_ns
        # always a boolean, like args_truncated: true when process.executable is a cut prefix of a longer path
        executable["path_truncated"] = proc.path_truncated
        if proc.exe_head_hash:
            # what the kernel read of the file to load it: a build of a binary, known even once the file is gone
            executable["size"] = proc.exe_size
            executable["head_hash"] = f"{proc.exe_head_hash:016x}"
        if proc.passed:
            executable["passed"] = proc.passed  # the path as passed, where process.executable is the file it led to
        own["executable"] = executable
        if proc.env_truncated:
            own["env_vars_truncated"] = True
        return extend(self._placement(proc.cgroup_id, cgroup_path, proc.ns, container), own)

    def _placement(self, cgroup_id: int, cgroup_path: str | None, ns: Namespaces,
                   container: ContainerLike | None) -> SharedBlock:
        """cgroup, namespaces and container evidence: the same for every process of a cgroup (a container's
        storm shares one block)."""
        # by identity: the decoder and the recording reader hand out one Namespaces object per set, and hashing one
        # by value is a Python call per document; the entry keeps both objects, so neither id is reused
        key = (cgroup_id, cgroup_path, id(ns), id(container))
        hit = self._placements.get(key)
        if hit is not None and hit[0] is container and hit[1] is ns:
            return hit[2]
        cgroup: dict[str, Any] = {"id": cgroup_id}
        if cgroup_path:
            cgroup["path"] = cgroup_path
        block = SharedBlock({"cgroup": cgroup, "namespaces": _namespaces_block(ns)})
        if container is not None:
            evidence = getattr(container, "evidence", None)
            if evidence:
                block["container_evidence"] = list(evidence)
        if len(self._placements) >= SUMMARY_CACHE_SIZE:
            self._placements.clear()
        self._placements[key] = (container, ns, block)
        return block

    # -- forgetting -------------------------------------------------------------------------------------
    # The caches above are bounded, but at their bounds they hold tens of megabytes; what they keep about a
    # process or a cgroup goes when the process table forgets the process or the cgroup is removed, so that
    # container churn does not fill them (a dropped block is rebuilt if it is needed again).

    def forget_process(self, proc: Process) -> None:
        key = id(proc)
        hit = self._summaries.get(key)
        if hit is not None and hit[0] is proc:
            del self._summaries[key]
        for same in (True, False):
            led = self._leaders.get((key, same))
            if led is not None and led[0] is proc:
                del self._leaders[(key, same)]
        body = self._bodies.get(key)
        if body is not None and body[0] is proc:
            del self._bodies[key]
        for entry_key in self._entry_keys.pop(key, ()):
            hit_entry = self._entries.get(entry_key)
            if hit_entry is not None and hit_entry[0] is proc:
                del self._entries[entry_key]

    def forget_cgroup(self, cgroup_id: int, path: str) -> None:
        """A removed cgroup: its placement blocks and the bases of containers that ran in it (or below it)."""
        for key in [key for key in self._placements if key[0] == cgroup_id]:
            del self._placements[key]
        below = path.rstrip("/") + "/"
        for key in [key for key, (container, _base) in self._containers.items()
                    if container.cgroup_path == path or (container.cgroup_path or "").startswith(below)]:
            del self._containers[key]
            self._network_bases.pop(key, None)

    # -- documents --------------------------------------------------------------------------------------

    def event_block(self, *, kind: str, ktime_ns: int, pid: int, sequence: int, event_type: str,
                    action: str) -> ExtendedBlock:
        base = self._event_bases.get((event_type, action))
        if base is None:
            base = self._event_bases[(event_type, action)] = SharedBlock({
                "kind": "event", "category": ["process"], "type": [event_type], "action": action,
                "dataset": self._dataset, "module": CUSTOM_KEY})
        return extend(base, {"created": iso_time(time.time_ns()), "id": event_id(self._boot_id, kind, pid, ktime_ns),
                             "sequence": sequence})

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
        names: AccountNamesLike | None = None,
        module: tuple[str, int] | None = None,
    ) -> dict[str, Any]:
        """An exec (kind "exec"), fork (kind "fork"), module load (kind "load_module", MODULE: its name and taint
        bits, under process.Ext.load_module), end (kind "exit"), start-up inventory
        (kind "already_running", event.type info) or change document (kind "uid_change", "gid_change" or
        "session_id_change", event.type change), with Elastic Defend's event.action.

        An ExtendedBlock: the members every document of the host (and of the container) shares are its base,
        encoded once."""
        timestamp = iso_time(self.wall(ktime_ns))
        event_type, action = _DEFEND_EVENTS.get(kind, ("change", kind))
        event = self.event_block(kind=kind, ktime_ns=ktime_ns, pid=proc.pid, sequence=sequence,
                                 event_type=event_type, action=action)
        body = self._exec_body(proc, container, leaders, names)
        if body is not None:
            process, custom, base = body
        else:
            process = self.process_block(proc, parent, leaders, container is not None, names)
            custom = self.custom_block(proc, container, cgroup_path)
            base = self._container_base(container) if container is not None else self._host_base
            if kind == "exec":
                if len(self._bodies) >= BODIES_CACHE_SIZE:
                    self._bodies.clear()
                self._bodies[id(proc)] = (proc, container, leaders, process, custom, base, names)
        if module is not None:
            load: dict[str, Any] = {"name": module[0]}
            if module[1]:
                load["taint_flags"] = taint_letters(module[1])
            process = extend(process, {"Ext": {"load_module": load}})
        if exit_status is not None:
            code, signal = exit_code_of(exit_status)
            process = extend(process, {"exit_code": code, "end": timestamp})
            if signal is not None:
                custom = extend(custom, {"exit_signal": signal})
            self._bodies.pop(id(proc), None)
        own: dict[str, Any] = {"@timestamp": timestamp, "event": event, "process": process}
        if proc.uid >= 0:
            own["user"], own["group"] = _actors(proc, container is None, names)
        own[CUSTOM_KEY] = custom
        return extend(base, own)

    def _exec_body(self, proc: Process, container: ContainerLike | None, leaders: Leaders | None,
                   names: AccountNamesLike | None) -> tuple[SharedBlock, ExtendedBlock, SharedBlock] | None:
        """The process block, custom block and base of PROC's exec document, when nothing they were built from
        has changed since (its later documents reuse them), else None."""
        body = self._bodies.get(id(proc))
        if (body is not None and body[0] is proc and body[1] is container and body[2] is leaders
                and body[6] is names):
            return body[3], body[4], body[5]
        return None

    def _network_base(self, container: ContainerLike | None) -> SharedBlock:
        """The host's (or the container's) shared members with the network data stream: network documents go
        to logs-endpoint.events.network-*, where Elastic's rules over network events look for them."""
        key = id(container) if container is not None else 0
        hit = self._network_bases.get(key)
        if hit is not None and hit[0] is container:
            return hit[1]
        base = SharedBlock(self._container_base(container) if container is not None else self._host_base)
        base["data_stream"] = self._network_stream
        if len(self._network_bases) >= SUMMARY_CACHE_SIZE:
            self._network_bases.clear()
        self._network_bases[key] = (container, base)
        return base

    def network_event(self, *, rec: NetRecord, sequence: int, proc: Process | None, parent: Process | None,
                      leaders: Leaders | None, container: ContainerLike | None,
                      cgroup_path: str | None, names: AccountNamesLike | None = None) -> dict[str, Any]:
        """A connection_attempted or connection_accepted document (event.category network, event.type start),
        as Elastic Defend writes them. `source` is this host's end and `destination` the peer, for both
        actions (Elastic's rules test destination.ip as the remote address of either); network.direction says
        who opened it. PROC None: the process is not known (only its pid, if the probe had it)."""
        attempted = rec.action == "connection_attempted"
        base_event = self._event_bases.get(("network", rec.action))
        if base_event is None:
            base_event = self._event_bases[("network", rec.action)] = SharedBlock({
                "kind": "event", "category": ["network"], "type": ["start"], "action": rec.action,
                "dataset": self._network_dataset, "module": CUSTOM_KEY})
        event = extend(base_event, {"created": iso_time(time.time_ns()),
                                    "id": event_id(self._boot_id, "net", rec.pid, rec.ktime_ns),
                                    "sequence": sequence})
        own: dict[str, Any] = {
            "@timestamp": iso_time(self.wall(rec.ktime_ns)),
            "event": event,
            "source": {"ip": rec.local_ip, "port": rec.local_port, "address": rec.local_ip},
            "destination": {"ip": rec.remote_ip, "port": rec.remote_port, "address": rec.remote_ip},
            "network": {"transport": "tcp", "type": "ipv6" if ":" in rec.local_ip else "ipv4",
                        "direction": "egress" if attempted else "ingress"},
        }
        if proc is None:
            if rec.pid:
                own["process"] = {"pid": rec.pid}
            return extend(self._network_base(container), own)
        body = self._exec_body(proc, container, leaders, names)
        if body is not None:
            own["process"], own[CUSTOM_KEY], _base = body
        else:
            own["process"] = self.process_block(proc, parent, leaders or Leaders(), container is not None, names)
            own[CUSTOM_KEY] = self.custom_block(proc, container, cgroup_path)
        if proc.uid >= 0:
            own["user"], own["group"] = _actors(proc, container is None, names)
        return extend(self._network_base(container), own)

    @staticmethod
    def with_custom(doc: dict[str, Any], members: dict[str, Any]) -> dict[str, Any]:
        """DOC with MEMBERS added under the custom key: a new document over the same blocks (blocks are never
        changed once made, since their text is kept)."""
        custom = doc.get(CUSTOM_KEY)
        if (isinstance(doc, ExtendedBlock) and CUSTOM_KEY in doc.own
                and isinstance(custom, (SharedBlock, ExtendedBlock))):
            return extend(doc.base, {**doc.own, CUSTOM_KEY: extend(custom, members)})
        copied = dict(doc)
        copied[CUSTOM_KEY] = {**(custom if isinstance(custom, dict) else {}), **members}
        return copied
