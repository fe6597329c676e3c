"""Containers' root directories held open, so a file a container executed can still be reached after the
container is gone.

A file executed in a container is reached through a process of that container (/proc/PID/root): a container that
runs a renamed binary once and is torn down at once leaves none to reach it through. So at the first exec seen in
a mount namespace whose root is not the host's, that root is opened (O_PATH: no read access to anything, only a
reference to the directory and its mount). The reference keeps the mount and its file system alive after the
namespace is gone, as a lazy unmount would: paths under it still resolve (not into mounts that were stacked on
top of it inside the container, such as a tmpfs on /dev/shm, which the namespace's end detaches).

Bounds: at most `per_namespace` roots per mount namespace (a chroot inside a container is another root), at most
`max_total` in all (refusals counted), each released once its namespace has shown no exec for `idle_s` (the
container's file system is held that much longer than the container itself, no more). The event loop takes and
releases pins; the look worker reads them through `dup_roots`, under the same lock, so a descriptor it uses is
never one closed and reused in between.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

DEFAULT_MAX_TOTAL = 256
DEFAULT_PER_NAMESPACE = 2
DEFAULT_IDLE_S = 10.0
_EXPIRE_EVERY_S = 1.0
# namespaces whose last exec time is kept (those without a pin only to be forgotten): a flood of new mount
# namespaces within `idle_s` forgets the unpinned ones early rather than growing the table
_SEEN_MAX = 65536


class RootPins:
    def __init__(self, proc_root: str = "/proc", *, max_total: int = DEFAULT_MAX_TOTAL,
                 per_namespace: int = DEFAULT_PER_NAMESPACE, idle_s: float = DEFAULT_IDLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._proc = proc_root.rstrip("/")
        self._max_total = max(0, max_total)
        self._per_namespace = max(1, per_namespace)
        self._idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        # mount namespace -> {(device, inode) of the root: descriptor}; last exec seen per namespace
        self._pins: dict[int, dict[tuple[int, int], int]] = {}
        self._seen: dict[int, float] = {}
        self._pinned = 0
        self._next_expiry = 0.0
        # init's root is the host's; where init cannot be looked at (a sandbox that hides it), the sensor's own
        self._host_root = self._root_of(1) or self._root_of("self")
        self.counts = {"root_pins_taken": 0, "root_pins_released": 0, "root_pins_refused": 0,
                       "root_pins_unreachable": 0}

    def _root_of(self, pid: int | str) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self._proc}/{pid}/root/")
        except OSError:
            return None
        return st.st_dev, st.st_ino

    @property
    def pinned(self) -> int:
        return self._pinned

    def see(self, pid: int, mnt_ns: int) -> None:
        """An exec of `pid` in mount namespace `mnt_ns` (the event loop, every exec in a container): pins the
        process's root the first time a namespace shows one that is not the host's. A dict lookup otherwise."""
        now = self._clock()
        if now >= self._next_expiry:
            self.expire(now)
        pins = self._pins.get(mnt_ns)
        if len(self._seen) >= _SEEN_MAX and mnt_ns not in self._seen:
            self._seen = {ns: last for ns, last in self._seen.items() if ns in self._pins}
        self._seen[mnt_ns] = now
        if pins is not None and len(pins) >= self._per_namespace:
            return
        try:
            fd = os.open(f"{self._proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.counts["root_pins_unreachable"] += 1   # gone already, or not ours to see (counted, not logged)
            return
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return
        key = (st.st_dev, st.st_ino)
        # the runtime's processes enter the namespace before they change root: the host's root is not the
        # container's, and is reachable anyway
        if key == self._host_root or (pins is not None and key in pins):
            os.close(fd)
            return
        if self._pinned >= self._max_total:
            os.close(fd)
            self.counts["root_pins_refused"] += 1
            return
        with self._lock:
            self._pins.setdefault(mnt_ns, {})[key] = fd
            self._pinned += 1
        self.counts["root_pins_taken"] += 1

    def dup_roots(self, mnt_ns: int) -> list[int]:
        """Descriptors of the namespace's pinned roots, duplicated: the caller (the look worker) closes them."""
        with self._lock:
            pins = self._pins.get(mnt_ns)
            if not pins:
                return []
            out: list[int] = []
            for fd in pins.values():
                try:
                    out.append(os.dup(fd))
                except OSError:
                    continue
            return out

    def expire(self, now: float | None = None) -> None:
        """Release the roots of namespaces idle for `idle_s`."""
        now = self._clock() if now is None else now
        self._next_expiry = now + _EXPIRE_EVERY_S
        idle = [ns for ns, last in self._seen.items() if now - last >= self._idle_s]
        for ns in idle:
            del self._seen[ns]
            self._release(ns)

    def _release(self, mnt_ns: int) -> None:
        with self._lock:
            pins = self._pins.pop(mnt_ns, None)
            if not pins:
                return
            for fd in pins.values():
                os.close(fd)
            self._pinned -= len(pins)
        self.counts["root_pins_released"] += len(pins)

    def close(self) -> None:
        for ns in list(self._pins):
            self._release(ns)
        self._seen.clear()
