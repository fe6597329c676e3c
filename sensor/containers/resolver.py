"""Decides, per exec, whether the process runs in a container and which one.

Decision, from evidence captured at exec time (cgroup v2 id, namespace inodes) and the ancestors' names:
  1. the cgroup path (from the id, through the map kept by cgroup_mkdir/rmdir) matches a runtime layout:
     that container (BY_CGROUP);
  2. otherwise, the pid namespace is that of a container already known by its cgroup (nsenter, or a runtime's
     exec that does not move into the container's cgroup): that container (BY_NAMESPACE_OF_KNOWN);
  3. otherwise, pid and mnt and one of uts/ipc/net namespaces differ from the host's: a container known only
     by its namespaces (systemd-nspawn --keep-unit, unshare/nsenter made ones); the runtime is named from the
     nearest ancestor that is a known launcher (BY_NAMESPACES). When a conmon in the host's pid namespace is
     among the ancestors (rootless podman on a cgroup v1 host), its argv names the podman container: its id,
     name and image are used (conmon.py; read on the worker, waited for briefly at the container's first exec);
  4. otherwise the host: None. A host service in its own cgroup, or a process that only unshared its mount
     namespace, stays on the host.
Each (cgroup path, namespaces) pair is decided once and cached; the runtimes' on-disk metadata is read by a
worker thread (from the container's cgroup mkdir on, ahead of its first exec). An event is held for it only at a
container's first exec, and only briefly: the event loop reads the state itself when every file is small
(FIRST_LOOK_MAX_FILE_BYTES), else it has the worker run the look at once and waits at most FIRST_LOOK_WAIT_S; all
such looks together take at most FIRST_LOOK_SHARE of each second. Later events go out with what is known then.

Tables, and what bounds them (docs/operations.md, "Tables and their bounds"): the decisions (`_resolved`), pid
namespace -> container (`_by_pid_ns`), (pid, mnt) namespaces -> v1 path (`_v1_by_ns`) and the metadata found
(`_metadata`) each hold at most `cache_size` entries, oldest forgotten first; a container's metadata and first-look
mark are dropped when its cgroup is removed, after the grace period. The cgroup map is pruned by rmdir (see
cgroupmap.py) and the worker's queue is capped (worker.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cachetools import FIFOCache

from sensor.model.records import CgroupRecord, Namespaces

from . import conmon
from .cgroupmap import V2_HIERARCHY, CgroupMap, CgroupMount, find_v2_mount
from .info import (
    BY_CGROUP,
    BY_NAMESPACE_OF_KNOWN,
    BY_NAMESPACES,
    ID_NAME,
    ID_PID_NAMESPACE,
    ID_RUNTIME,
    ContainerInfo,
    ContainerMetadata,
    split_image,
)
from .kubeapi import PodIndex
from .layouts import CgroupMatch, PathMatcher
from .metadata import WATCH_EVERY_S, CostlyLookup, MetadataReader, StateRoots
from .namespaces import differing, looks_like_container, read_namespaces
from .worker import DEFAULT_RETRY_DELAYS, RetryWorker

# Ancestor names (comm, 15 characters at most) that launch containers, nearest ancestor first wins.
LAUNCHERS: tuple[tuple[str, str], ...] = (
    ("systemd-nspawn", "systemd-nspawn"),
    ("lxc-start", "lxc"),
    ("lxc-execute", "lxc"),
    ("lxc-attach", "lxc"),
    ("memfd:lxc-attac", "lxc"),  # lxc-attach re-executes itself from a memfd (seen here, LXC 5.0.2)
    ("conmon", "podman"),
    ("containerd-shim", "containerd"),
    ("crun", "crun"),
    ("runc", "runc"),
    ("nsenter", "nsenter"),
    ("unshare", "unshare"),
    ("bwrap", "bubblewrap"),
    ("firejail", "firejail"),
)

log = logging.getLogger(__name__)

_MISSING = object()
_NO_METADATA_RUNTIMES = frozenset({"systemd-nspawn", "libvirt-lxc"})
_HOST = object()  # cached "not a container"

# A container's first exec: read its runtime state in the event loop when no file is larger than this (a few
# hundred microseconds here), else wait for the worker's look at most FIRST_LOOK_WAIT_S; all first looks together
# take at most FIRST_LOOK_SHARE of each second, so a storm of new containers cannot hold the host's events up.
FIRST_LOOK_MAX_FILE_BYTES = 256 * 1024
FIRST_LOOK_WAIT_S = 0.005
FIRST_LOOK_SHARE = 0.05


def launcher_runtime(ancestry: Sequence[tuple[int, str]]) -> str | None:
    for _pid, name in ancestry:
        for prefix, runtime in LAUNCHERS:
            if name.startswith(prefix):
                return runtime
    return None


class ContainerResolver:
    """Cgroup id + namespaces (+ ancestors' names) -> ContainerInfo, or None on the host.

    Call seed() once after the probe is attached (so no cgroup created in between is missed), then feed
    every CgroupRecord to on_cgroup() in order with the exec records, and call resolve() per exec.
    resolve() and on_cgroup() are meant for one (the pipeline's) thread; the worker thread only adds entries.
    """

    def __init__(
        self,
        *,
        host_ns: Namespaces,
        cgroup_root: Path | None = None,
        proc_root: Path = Path("/proc"),
        state_roots: StateRoots | None = None,
        grace_seconds: float = 30.0,
        cache_size: int = 8192,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        start_worker: bool = True,
        first_look_wait_s: float = FIRST_LOOK_WAIT_S,
        first_look_share: float = FIRST_LOOK_SHARE,
        first_look_max_file_bytes: int = FIRST_LOOK_MAX_FILE_BYTES,
        pods: PodIndex | None = None,
    ) -> None:
        self._host_ns = host_ns
        self._pods = pods  # this node's pods from the API server (kubernetes.api), or None
        self._proc_root = proc_root
        if cgroup_root is not None:
            self._mount: CgroupMount | None = CgroupMount(Path(cgroup_root), "/")
        else:
            self._mount = find_v2_mount(proc_root)
        self._cgroups = CgroupMap(grace_seconds)
        self._matcher = PathMatcher()
        self._reader = MetadataReader(state_roots)  # the worker thread's
        # the event loop's own, for a container's first exec: refuses files too large to read there
        self._first_reader = MetadataReader(state_roots, max_file_bytes=first_look_max_file_bytes)
        self._first_wait_s = first_look_wait_s
        self._first_share = first_look_share
        self._first_window = (0.0, 0.0)  # (start of the current second, time spent on first looks in it)
        # containers whose first exec had its look (so no later exec waits): dropped with their metadata
        self._first_looked: set[tuple[str, bool]] = set()
        # container id key -> its cgroup path, to drop its metadata when that cgroup goes
        self._cgroup_of: dict[tuple[str, bool], str] = {}
        self._metadata_lock = threading.Lock()  # between writers (worker and event loop); readers take none
        # between look-ups the worker remembers every container the runtimes list (metadata.py, watch): a
        # container gone before its events were handled keeps its name and image
        self._worker = RetryWorker(retry_delays, start=start_worker, idle_task=self._reader.watch,
                                   idle_every=WATCH_EVERY_S)
        # (cgroup path, namespaces) -> decision; oldest decided forgotten first. Written by hand, not a cachetools
        # FIFOCache: it is read once per exec, and a FIFOCache's get is three Python calls that hash the key twice
        # (2% more instructions per record in a 20,000-exec storm, counted under callgrind).
        self._resolved: OrderedDict[tuple[str | None, Namespaces], object] = OrderedDict()
        self._cache_size = cache_size
        # (id, id is a name) -> metadata; None: looked up until given up, nothing found. A plain dict, not a
        # cachetools cache: the worker thread writes it while the pipeline thread reads it without a lock, which
        # a dict's single operations allow (atomic under the GIL) and a cachetools cache's do not.
        self._metadata: dict[tuple[str, bool], ContainerMetadata | None] = {}
        # pid namespace -> the cgroup match of the container that owns it (oldest written forgotten first)
        self._by_pid_ns: FIFOCache[int, CgroupMatch] = FIFOCache(cache_size)
        # pid namespace -> (podman id, metadata) read from the conmon above it, None when no conmon of the host's
        # was found above it; written by the worker only
        self._by_conmon: dict[int, tuple[str, ContainerMetadata] | None] = {}
        self._store_refusal_logged = False
        # bumped whenever a pid namespace ends: a conmon look begun before does not store what it found, which
        # could be about the namespace that ended rather than a new one given its inode number
        self._ns_epoch = 0
        # pid namespace (not the host's) -> the keys of `_resolved` decided for it without a container cgroup
        # (by namespaces, by a known container's namespace, or the host): forgotten when the namespace ends,
        # since a new namespace may then get the same inode numbers (seen here: a rootless podman container took
        # every namespace inode of a docker container removed just before). Oldest first out past cache_size.
        self._keys_by_pid_ns: dict[int, set[tuple[str | None, Namespaces]]] = {}
        # (pid, mnt) namespaces -> the v1 cgroup path read once for them
        self._v1_by_ns: FIFOCache[tuple[int, int], str | None] = FIFOCache(cache_size)
        self._last_rescan = 0.0
        # (when, container key, its cgroup path) of removed container cgroups, oldest first: pruned after the grace
        self._gone: deque[tuple[float, tuple[str, bool], str]] = deque()
        self._counts = {
            "resolve_calls": 0, "resolve_cached": 0, "containers_by_cgroup": 0, "containers_by_known_ns": 0,
            "containers_by_namespaces": 0, "host": 0, "unknown_cgroup_ids": 0, "rescans": 0, "proc_reads": 0,
            "metadata_requested": 0, "metadata_found": 0, "metadata_missing": 0, "cgroup_records": 0,
            "cgroup_records_bad": 0, "first_looks": 0, "first_looks_read": 0, "first_looks_waited": 0,
            "first_looks_found": 0, "first_looks_over_budget": 0, "metadata_pruned": 0,
            "conmon_looks": 0, "conmon_found": 0, "conmon_refused": 0, "conmon_store_unreadable": 0,
            "pid_namespaces_forgotten": 0,
        }

    # -- set-up --------------------------------------------------------------------------------------------

    def seed(self) -> None:
        """Walks the cgroup v2 tree once (id -> path) and learns which pid namespaces belong to which
        containers from the processes already running (so nsenter into an older container resolves to it)."""
        if self._mount is not None:
            self._cgroups.seed(self._mount, V2_HIERARCHY)
        self._learn_running_containers()

    def _learn_running_containers(self) -> None:
        try:
            pids = [e.name for e in os.scandir(self._proc_root) if e.name.isdigit()]
        except OSError:
            return
        for pid in pids:
            path = self._proc_v2_path(pid)
            if path is None or self._matcher.match(path) is None:
                continue
            ns = read_namespaces(pid, self._proc_root)
            if self._mount is None or not ns.pid:
                continue
            try:
                cgroup_id = os.stat(self._mount.mountpoint / path.lstrip("/")).st_ino
            except OSError:
                continue
            self.resolve(cgroup_id, ns)

    def _proc_v2_path(self, pid: str) -> str | None:
        try:
            text = (self._proc_root / pid / "cgroup").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
        return None

    # -- cgroup tracking -----------------------------------------------------------------------------------

    def on_cgroup(self, rec: CgroupRecord) -> None:
        self._counts["cgroup_records"] += 1
        self._cgroups.expire()
        self._prune_gone()
        try:
            raw = rec.path
            path = raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else str(raw)
        except (AttributeError, UnicodeError):
            self._counts["cgroup_records_bad"] += 1
            return
        if rec.op == "mkdir":
            self._cgroups.add(rec.root, rec.cgroup_id, path)
            if rec.root == V2_HIERARCHY:
                self._prefetch(path)
        elif rec.op == "rmdir":
            self._cgroups.remove(rec.root, rec.cgroup_id, path)
            if rec.root == V2_HIERARCHY:
                self._forget_container(path)
        else:
            self._counts["cgroup_records_bad"] += 1

    def _prefetch(self, path: str) -> None:
        """A runtime makes the container's cgroup before the container's first exec: start reading its
        state now, so that first exec's document already has the name and image more often than not."""
        match = self._matcher.match(path)
        if match is None or match.runtime in _NO_METADATA_RUNTIMES:
            return
        if (match.id, match.id_is_name) not in self._metadata:
            self._request_metadata(match)

    def _forget_container(self, path: str) -> None:
        """The container's own cgroup is gone: its metadata and first-look mark are dropped once the grace period
        for events still in the ring buffer has passed (checked at every later cgroup record)."""
        match = self._matcher.match(path)
        if match is None or match.container_cgroup not in (None, path):
            return
        self._gone.append((time.monotonic() + self._cgroups.grace_seconds, (match.id, match.id_is_name), path))
        self._prune_gone()

    def _prune_gone(self) -> None:
        now = time.monotonic()
        gone = self._gone
        while gone and gone[0][0] <= now:
            _, mkey, path = gone.popleft()
            if self._cgroup_of.get(mkey, path) != path:
                continue  # a container of the same name came back in another cgroup
            self._cgroup_of.pop(mkey, None)
            self._first_looked.discard(mkey)
            # the decisions made for the container's cgroups: a churn of containers filled this table otherwise
            below = path.rstrip("/") + "/"
            for key in [key for key in self._resolved if key[0] == path or (key[0] or "").startswith(below)]:
                del self._resolved[key]
            with self._metadata_lock:
                if self._metadata.pop(mkey, _MISSING) is not _MISSING:
                    self._counts["metadata_pruned"] += 1

    def known_cgroups(self) -> list[tuple[int, str]]:
        """(id, path) of every cgroup v2 known now: what a recording needs to resolve as the live run did."""
        return self._cgroups.items(V2_HIERARCHY)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self._cgroups.path(V2_HIERARCHY, cgroup_id)

    # -- resolution ----------------------------------------------------------------------------------------

    def resolve(
        self,
        cgroup_id: int,
        ns: Namespaces,
        ancestry: Sequence[tuple[int, str]] = (),
        pid: int = 0,
    ) -> ContainerInfo | None:
        """The container of a process that exec'd in cgroup CGROUP_ID with namespaces NS, or None (host).

        ancestry: (pid, name) of its ancestors, nearest first; read only the first time a namespace-only
        container is seen. pid: used when the v2 cgroup says nothing (a host without cgroup v2, or a runtime
        that made cgroups only in v1 hierarchies) for a process whose pid namespace is not the host's:
        /proc/PID/cgroup is then read once per (pid, mnt) namespace pair.
        """
        self._counts["resolve_calls"] += 1
        path = self._cgroups.path(V2_HIERARCHY, cgroup_id)
        key = (path, ns)
        cached = self._resolved.get(key)
        if cached is not None:
            if cached is _HOST:
                self._counts["resolve_cached"] += 1
                return None
            info: ContainerInfo = cached  # type: ignore[assignment]
            if info.metadata_complete or (self._metadata_key(info) not in self._metadata
                                          and info.pid_namespace not in self._by_conmon):
                self._counts["resolve_cached"] += 1
                return info
        if path is None:
            self._counts["unknown_cgroup_ids"] += 1
            self._schedule_rescan()
        info = self._decide(cgroup_id, path, ns, ancestry, pid)
        if path is not None or info is not None:
            self._resolved[key] = _HOST if info is None else info
            if len(self._resolved) > self._cache_size:
                self._resolved.popitem(last=False)
            if ns.pid != self._host_ns.pid and (info is None or info.decided_by != BY_CGROUP):
                keys = self._keys_by_pid_ns.get(ns.pid)
                if keys is None:
                    if len(self._keys_by_pid_ns) >= self._cache_size:
                        self._keys_by_pid_ns.pop(next(iter(self._keys_by_pid_ns)))
                    keys = self._keys_by_pid_ns[ns.pid] = set()
                keys.add(key)
        return info

    def pid_namespace_ended(self, pid_ns: int) -> None:
        """The init of pid namespace PID_NS ended, and with it the namespace: from now on its inode number may
        name a new one. What was tied to that number goes (the container owning it, the conmon identity, the
        decisions made for it without a container cgroup), so a new container is decided afresh."""
        self._ns_epoch += 1
        forgot = self._by_pid_ns.pop(pid_ns, None) is not None
        forgot |= self._by_conmon.pop(pid_ns, _MISSING) is not _MISSING
        for key in self._keys_by_pid_ns.pop(pid_ns, ()):
            forgot |= self._resolved.pop(key, None) is not None
        if forgot:
            self._counts["pid_namespaces_forgotten"] += 1

    def _decide(self, cgroup_id: int, path: str | None, ns: Namespaces, ancestry: Sequence[tuple[int, str]],
                pid: int) -> ContainerInfo | None:
        diff = differing(ns, self._host_ns)
        match = self._matcher.match(path) if path is not None else None
        known = self._by_pid_ns.get(ns.pid) if match is None and "pid" in diff else None
        if match is None and known is None and pid and (self._mount is None or "pid" in diff):
            # no cgroup v2 at all, or a runtime that made its cgroups only in the v1 hierarchies of a hybrid
            # host: the v1 path tells, read once per (pid, mnt) namespace pair
            v1_path = self._v1_path(pid, ns)
            v1_match = self._matcher.match(v1_path) if v1_path else None
            if v1_match is not None:
                match, path = v1_match, v1_path
        if match is not None:
            info = self._from_match(match, cgroup_id, path or "", ns, diff)
            if "pid" in diff:
                # the latest wins (and is kept longest): namespace inodes are reused once a container is gone
                self._by_pid_ns[ns.pid] = match
            self._counts["containers_by_cgroup"] += 1
            return info
        if known is not None:
            self._counts["containers_by_known_ns"] += 1
            info = self._from_match(known, cgroup_id, path or "", ns, diff)
            return replace(info, cgroup_path=path, decided_by=BY_NAMESPACE_OF_KNOWN)
        if looks_like_container(diff):
            self._counts["containers_by_namespaces"] += 1
            named = self._by_conmon.get(ns.pid, _MISSING)
            monitors: tuple[int, ...] = ()
            if named is _MISSING:
                monitors = tuple(p for p, name in ancestry if name.startswith("conmon"))
                if monitors:
                    named = self._look_at_conmon(ns.pid, monitors)
            if isinstance(named, tuple):
                cid, meta = named
                image_name, image_tag, image_digest = split_image(meta.image)
                return ContainerInfo(
                    id=cid, runtime="podman", name=meta.name, image_name=image_name, image_tag=image_tag,
                    image_digest=image_digest, cgroup_id=cgroup_id, cgroup_path=path, namespaces_differing=diff,
                    pid_namespace=ns.pid, decided_by=BY_NAMESPACES, id_source=ID_RUNTIME, metadata_complete=True,
                )
            return ContainerInfo(
                id=f"pidns-{ns.pid}", runtime=launcher_runtime(ancestry), cgroup_id=cgroup_id,
                cgroup_path=path, namespaces_differing=diff, pid_namespace=ns.pid, decided_by=BY_NAMESPACES,
                id_source=ID_PID_NAMESPACE, metadata_complete=named is not _MISSING or not monitors,
            )
        self._counts["host"] += 1
        return None

    def _from_match(self, match: CgroupMatch, cgroup_id: int, path: str, ns: Namespaces,
                    diff: tuple[str, ...]) -> ContainerInfo:
        runtime = match.runtime
        mkey = (match.id, match.id_is_name)
        complete = True
        meta: ContainerMetadata | None = None
        if runtime not in _NO_METADATA_RUNTIMES:
            # one read: the worker may evict the key between a membership test and a second read
            found = self._metadata.get(mkey, _MISSING)
            if found is _MISSING and mkey not in self._first_looked:
                found = self._first_look(match, path)
            if found is not _MISSING:
                meta = found  # type: ignore[assignment]
            else:
                complete = False
                self._request_metadata(match)
        image_name, image_tag, image_digest = split_image(meta.image if meta else None)
        name = meta.name if meta and meta.name else (match.id if match.id_is_name else None)
        pod_uid = match.pod_uid or (meta.pod_uid if meta else None)
        # what the node's state lacks of a pod (containerd keeps no labels on disk), from the API server when asked
        pod = self._pods.get(pod_uid) if self._pods is not None and pod_uid else None
        return ContainerInfo(
            id=match.id,
            runtime=runtime or (meta.runtime if meta else None),
            name=name,
            image_name=image_name,
            image_tag=image_tag,
            image_digest=image_digest,
            pod_uid=pod_uid,
            pod_name=(meta.pod_name if meta else None) or (pod.name if pod else None),
            pod_namespace=(meta.pod_namespace if meta else None) or (pod.namespace if pod else None),
            pod_labels=(meta.pod_labels if meta else ()) or (pod.labels if pod else ()),
            workload_kind=(meta.workload_kind if meta else None) or (pod.workload_kind if pod else None),
            cgroup_id=cgroup_id,
            cgroup_path=path,
            container_cgroup=match.container_cgroup,
            namespaces_differing=diff,
            pid_namespace=ns.pid,
            decided_by=BY_CGROUP,
            id_source=ID_NAME if match.id_is_name else ID_RUNTIME,
            metadata_complete=complete,
        )

    def _first_look_window(self) -> tuple[float, float]:
        """(start of the current second, time first looks spent in it): the budget every first look shares."""
        now = time.monotonic()
        window_start, spent = self._first_window
        return (now, 0.0) if now - window_start >= 1.0 else (window_start, spent)

    def _first_look(self, match: CgroupMatch, path: str) -> object:
        """A container's first exec: its metadata read here when cheap, else waited for briefly; _MISSING when
        neither gave it (the worker goes on looking, and a later event of the container carries it)."""
        mkey = (match.id, match.id_is_name)
        if len(self._first_looked) >= self._cache_size:
            self._first_looked.clear()  # only costs a second look at containers still running
        self._first_looked.add(mkey)
        if len(self._cgroup_of) >= self._cache_size:
            self._cgroup_of.pop(next(iter(self._cgroup_of)))
        self._cgroup_of[mkey] = match.container_cgroup or path
        window_start, spent = self._first_look_window()
        if spent >= self._first_share:
            self._counts["first_looks_over_budget"] += 1
            return _MISSING
        self._counts["first_looks"] += 1
        found: object = _MISSING
        # charged: the CPU the read took (time the loop was preempted meanwhile is no work of ours), and the wait
        cpu_started = time.thread_time()
        try:
            self._counts["first_looks_read"] += 1
            meta = self._first_reader.lookup(match.id, match.runtime, by_name=match.id_is_name)
            if meta is None and not match.id_is_name:
                meta = self._reader.remembered(match.id)  # gone already: what the worker's watch saw of it
            if meta is not None:
                self._store_metadata(mkey, meta)
                found = meta
        except CostlyLookup:
            self._request_metadata(match)
            wait = min(self._first_wait_s, self._first_share - spent)
            self._counts["first_looks_waited"] += 1
            waited_from = time.monotonic()
            if self._worker.hurry(("meta", mkey), wait):
                found = self._metadata.get(mkey, _MISSING)
            spent += time.monotonic() - waited_from
        if found is not _MISSING:
            self._counts["first_looks_found"] += 1
        self._first_window = (window_start, spent + time.thread_time() - cpu_started)
        return found

    def _store_metadata(self, mkey: tuple[str, bool], value: ContainerMetadata | None) -> None:
        metadata = self._metadata
        with self._metadata_lock:
            while len(metadata) >= self._cache_size:
                metadata.pop(next(iter(metadata)), None)
            metadata[mkey] = value

    @staticmethod
    def _metadata_key(info: ContainerInfo) -> tuple[str, bool]:
        return (info.id, info.id_source == ID_NAME)

    def _request_metadata(self, match: CgroupMatch) -> None:
        mkey = (match.id, match.id_is_name)
        reader = self._reader
        counts = self._counts
        store_metadata = self._store_metadata

        def store(value: ContainerMetadata | None) -> None:
            store_metadata(mkey, value)

        def job() -> bool:
            found = reader.lookup(match.id, match.runtime, by_name=match.id_is_name)
            if found is None:
                return False
            store(found)
            counts["metadata_found"] += 1
            return True

        def give_up() -> None:
            store(None)
            counts["metadata_missing"] += 1

        if self._worker.submit(("meta", mkey), job, give_up):
            counts["metadata_requested"] += 1

    def _look_at_conmon(self, pid_ns: int, monitors: tuple[int, ...]) -> object:
        """Has the worker read the container's identity from the first of MONITORS (ancestors named conmon,
        nearest first) that runs in the host's pid namespace (one in the container is the container's own
        process, whatever its name), waiting for it as long as a first look may wait. Returns what is known
        then: (id, metadata), None (no conmon of the host's above it) or _MISSING (not read yet)."""
        key = ("conmon", pid_ns)
        proc_root = self._proc_root
        host_pid_ns = self._host_ns.pid
        counts = self._counts
        found_by_ns = self._by_conmon
        cache_size = self._cache_size
        epoch = self._ns_epoch

        def remember(value: tuple[str, ContainerMetadata] | None) -> None:
            if self._ns_epoch != epoch:
                return  # a pid namespace ended meanwhile: this may be about it; the next exec looks again
            while len(found_by_ns) >= cache_size:
                found_by_ns.pop(next(iter(found_by_ns)), None)
            found_by_ns[pid_ns] = value

        def job() -> bool:
            for pid in monitors:
                try:
                    if os.stat(proc_root / str(pid) / "ns" / "pid").st_ino != host_pid_ns:
                        continue
                except OSError:
                    continue
                args = conmon.read_conmon(proc_root, pid)
                if args is None:
                    continue
                meta, problem = conmon.lookup(args)
                if problem is not None:
                    counts["conmon_store_unreadable"] += 1
                    if not self._store_refusal_logged:
                        self._store_refusal_logged = True
                        log.warning("podman container %s: its store could not be read (%s); its name comes from "
                                    "conmon and it has no image (counted in container_sensor_resolver_"
                                    "conmon_store_unreadable)", args.container_id[:12], problem)
                remember((args.container_id, meta))
                counts["conmon_found"] += 1
                return True
            counts["conmon_refused"] += 1
            remember(None)
            return True  # no conmon of the host above it (gone, or only the container's own): nothing to retry

        if self._worker.submit(key, job):
            counts["conmon_looks"] += 1
        now = time.monotonic()
        window_start, spent = self._first_look_window()
        wait = min(self._first_wait_s, self._first_share - spent)
        if wait > 0:
            self._worker.hurry(key, wait)
            spent += time.monotonic() - now
        self._first_window = (window_start, spent)
        return found_by_ns.get(pid_ns, _MISSING)

    def _v1_path(self, pid: int, ns: Namespaces) -> str | None:
        key = (ns.pid, ns.mnt)
        if key in self._v1_by_ns:
            return self._v1_by_ns[key]
        self._counts["proc_reads"] += 1
        path = None
        try:
            lines = (self._proc_root / str(pid) / "cgroup").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            _, controllers, cg = line.split(":", 2)
            if controllers == "name=systemd" or (path is None and cg not in ("", "/")):
                path = cg
        self._v1_by_ns[key] = path
        return path

    def _schedule_rescan(self) -> None:
        """An id the map does not know (made before seed(), or records lost): walk again, at most 1/s."""
        now = time.monotonic()
        if self._mount is None or now - self._last_rescan < 1.0:
            return
        self._last_rescan = now
        mount = self._mount
        cgroups = self._cgroups
        counts = self._counts

        def job() -> bool:
            fresh = CgroupMap()
            fresh.seed(mount, V2_HIERARCHY)
            cgroups.merge_missing(fresh)
            counts["rescans"] += 1
            return True

        self._worker.submit(("rescan", now), job)

    # -- housekeeping --------------------------------------------------------------------------------------

    def run_pending(self) -> int:
        """Runs due background look-ups in this thread (tests, and a worker built with start_worker=False)."""
        return self._worker.run_pending()

    def stats(self) -> dict[str, int]:
        """Counters and table sizes; read from the ops server's thread, so it changes nothing (expiry and
        pruning happen on the event loop, at cgroup records)."""
        out = dict(self._counts)
        out.update(
            cgroups_known=len(self._cgroups),
            cgroups_pending_removal=self._cgroups.pending_removal,
            cgroups_expired=self._cgroups.expired,
            cgroups_evicted=self._cgroups.evicted,
            path_cache_hits=self._matcher.hits,
            path_cache_misses=self._matcher.misses,
            resolved_cached_entries=len(self._resolved),
            containers_known_by_pid_ns=len(self._by_pid_ns),
            metadata_queued=self._worker.queued,
            metadata_entries=len(self._metadata),
            metadata_remembered=self._reader.remembered_count,
            metadata_watch_reads=self._reader.watch_reads,
            metadata_refused=self._worker.refused,
            containers_first_looked=len(self._first_looked),
            containers_gone_pending=len(self._gone),
            metadata_retries=self._worker.retries,
            metadata_file_reads=self._reader.file_reads + self._first_reader.file_reads,
            worker_errors=self._worker.failed,
        )
        if self._pods is not None:
            out.update(self._pods.counts, pods_known=self._pods.size)
        return out

    def close(self) -> None:
        self._worker.close()
        if self._pods is not None:
            self._pods.close()
