"""Cgroup id -> path, per hierarchy, kept current from the kernel's cgroup_mkdir/rmdir tracepoints.

Cgroup ids are only unique within one hierarchy: on a hybrid host every v1 hierarchy numbers its own cgroups
and a v1 id can equal an unrelated v2 id, so entries are keyed by (hierarchy, id). The v2 (default) hierarchy
is hierarchy 0 in the tracepoints' `root` field (checked on this kernel: mkdir under /sys/fs/cgroup/unified
reported root=0, under /sys/fs/cgroup/memory root=4, matching /proc/cgroups), and a v2 cgroup's id is the
inode number of its directory, which is what bpf_get_current_cgroup_id() returns.

A removed cgroup stays resolvable for a grace period: exec events already in the ring buffer when the
container's cgroup is removed must still find their container.

Bounds: an entry lives from its mkdir (or the walk that found it) to the end of the grace period after its rmdir;
`_removed` holds the rmdirs of the last grace period. Should rmdir records be lost, at most `max_entries` are kept,
the oldest added forgotten first: a live cgroup forgotten that way is found again by the resolver's re-walk at
its next exec (an unknown id triggers one).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

V2_HIERARCHY = 0
DEFAULT_MAX_ENTRIES = 65536  # cgroups of every hierarchy: a hybrid host has about a dozen per container


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """Where the cgroup v2 hierarchy is mounted, and which of its directories the mount shows as its root."""

    mountpoint: Path
    fs_root: str  # "/" unless the sensor sees the hierarchy through a cgroup namespace or a bind mount


def find_v2_mount(proc_root: Path = Path("/proc")) -> CgroupMount | None:
    """The cgroup2 mount in mountinfo: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on pure v2."""
    try:
        lines = (proc_root / "self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        if not sep or tail.split(" ", 1)[0] != "cgroup2":
            continue
        fields = head.split(" ")
        if len(fields) >= 5:
            return CgroupMount(Path(_unescape_mountinfo(fields[4])), _unescape_mountinfo(fields[3]))
    return None


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    if "\\" not in field:
        return field
    return bytes(field, "ascii").decode("unicode_escape")


def _join(fs_root: str, relative: str) -> str:
    if fs_root in ("", "/"):
        return relative or "/"
    return fs_root.rstrip("/") + (relative if relative != "/" else "")


class CgroupMap:
    """(hierarchy, cgroup id) -> path within that hierarchy, with a grace period for removed cgroups."""

    def __init__(self, grace_seconds: float = 30.0, clock: Callable[[], float] | None = None,
                 max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._clock = clock or time.monotonic
        self.grace_seconds = grace_seconds
        self._max_entries = max_entries
        self._paths: dict[tuple[int, int], str] = {}
        self._removed: deque[tuple[float, tuple[int, int], str]] = deque()
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, hierarchy: int, cgroup_id: int) -> str | None:
        return self._paths.get((hierarchy, cgroup_id))

    def add(self, hierarchy: int, cgroup_id: int, path: str) -> None:
        self._paths[(hierarchy, cgroup_id)] = path
        self._bound()

    def _bound(self) -> None:
        paths = self._paths
        while len(paths) > self._max_entries:
            del paths[next(iter(paths))]
            self.evicted += 1

    def remove(self, hierarchy: int, cgroup_id: int, path: str) -> None:
        """Schedules removal after the grace period; ids are reused rarely, and a new mkdir overrides."""
        self._removed.append((self._clock() + self.grace_seconds, (hierarchy, cgroup_id), path))
        self.expire()

    def expire(self) -> None:
        now = self._clock()
        removed = self._removed
        while removed and removed[0][0] <= now:
            _, key, path = removed.popleft()
            # only forget the entry if no newer cgroup took the same id meanwhile
            if self._paths.get(key) == path:
                del self._paths[key]
                self.expired += 1

    def merge_missing(self, other: CgroupMap) -> int:
        """Adds OTHER's entries this map lacks (a re-walk never overrides what the tracepoints said)."""
        added = 0
        for key, path in list(other._paths.items()):
            if key not in self._paths:
                self._paths[key] = path
                added += 1
        self._bound()
        return added

    def items(self, hierarchy: int) -> list[tuple[int, str]]:
        """(cgroup id, path) of every cgroup known in one hierarchy."""
        return [(cgroup_id, path) for (h, cgroup_id), path in self._paths.items() if h == hierarchy]

    @property
    def pending_removal(self) -> int:
        return len(self._removed)

    def seed(self, mount: CgroupMount, hierarchy: int = V2_HIERARCHY) -> int:
        """Walks the mounted hierarchy once, mapping each directory's inode (its cgroup id) to its path."""
        count = 0
        stack = [(mount.mountpoint, "/")]
        try:
            root_ino = os.stat(mount.mountpoint).st_ino
        except OSError:
            return 0
        self._paths[(hierarchy, root_ino)] = _join(mount.fs_root, "/")
        count += 1
        while stack:
            directory, relative = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue  # removed while walking
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    ino = entry.inode()
                except OSError:
                    continue
                child = relative.rstrip("/") + "/" + entry.name
                self._paths[(hierarchy, ino)] = _join(mount.fs_root, child)
                count += 1
                stack.append((Path(entry.path), child))
        self._bound()
        return count
