"""User and group names inside containers, from each container's own /etc/passwd and /etc/group.

A uid means what the container's passwd says, not the host's: uid 1000 is "node" in one image and "app" in
another. The files are read through a process of the container (/proc/PID/root), opened within that root
(rootfs.py: a link in the image cannot lead to the host's /etc/shadow), non-blocking (a FIFO at the path does not
block), at most FILE_MAX_BYTES each; a file that is not a regular file, or larger, gives no names.

Reads happen on a background thread, never in the event loop: a file on a FUSE mount the container controls can
take as long as its server wants. So a container's first documents may go out before its names are known (only
ids then), and the lookup says so in its counters. Names are kept per container and looked at again at most
every REFRESH_S: a file that changed (another inode, size or change time) is read again, an unchanged one keeps
its names object (and the document blocks built from it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from sensor.containers.rootfs import InRootOpener

log = logging.getLogger(__name__)

FILE_MAX_BYTES = 1 << 20  # a passwd of ~20,000 entries: more is no image's
ENTRIES_MAX = 65536
NAME_MAX = 64  # useradd's limit is 32; a longer "name" is not one
REFRESH_S = 30.0
# after reads that found nothing, the next look waits this long (by failures so far): the runtime may not have
# switched the process's root yet (the next document's process has), the process may have gone; an image without
# the files settles at REFRESH_S
RETRY_S = (0.0, 0.0, 0.0, 0.05, 0.2, 1.0, 5.0)
CONTAINERS_MAX = 1024
# A document of a container whose names are not known waits this long for the read it asked for (two small files,
# a fraction of a millisecond), so that it carries them; a read that takes longer (a FUSE mount) leaves it with ids.
WAIT_S = 0.005
QUEUE_MAX = 256


@dataclass(frozen=True, eq=False)
class AccountNames:
    """One container's names by id; the same object for as long as its files do not change."""

    users: dict[int, str] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)

    def user(self, uid: int) -> str | None:
        return self.users.get(uid)

    def group(self, gid: int) -> str | None:
        return self.groups.get(gid)


def parse_ids(text: bytes) -> dict[int, str]:
    """name -> id lines of passwd(5) or group(5) (name:password:id:...) as id -> name, the first name of an id
    winning as getpwuid's does; lines that are not such entries are skipped."""
    out: dict[int, str] = {}
    for line in text.split(b"\n")[:ENTRIES_MAX]:
        parts = line.split(b":", 3)
        if len(parts) < 3 or not parts[2].isdigit() or not parts[0] or len(parts[0]) > NAME_MAX:
            continue
        try:
            name = parts[0].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not name.isprintable():
            continue
        out.setdefault(int(parts[2]), name)
    return out


def _read(opener: InRootOpener, root: str, path: str) -> tuple[tuple[int, ...], bytes] | None:
    """(identity of the file, its bytes), or None when it is missing, not a regular file or too large."""
    try:
        fd = opener.open(root, path)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > FILE_MAX_BYTES:
            return None
        data = os.pread(fd, FILE_MAX_BYTES + 1, 0)
        if len(data) > FILE_MAX_BYTES:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), data
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass
class _Entry:
    names: AccountNames | None
    identity: tuple[Any, ...] | None  # the two files' identities when read
    checked: float  # monotonic time of the last look
    failures: int = 0  # reads in a row that found nothing


class ContainerAccounts:
    """Names by container id. `names` answers at once from what was read; it asks the thread for a (re)read
    when the container is new or its last look is older than REFRESH_S."""

    def __init__(self, proc_root: str = "/proc", *, refresh_s: float = REFRESH_S, start: bool = True) -> None:
        self._proc_root = proc_root
        self._refresh_s = refresh_s
        self._opener = InRootOpener()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._read_done = threading.Condition(self._lock)
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue(QUEUE_MAX)
        self._pending: set[str] = set()
        self._waited: set[str] = set()  # containers whose pending read a document has waited for already
        self.counts = {"account_reads": 0, "account_reads_failed": 0, "account_lookups_refused": 0,
                       "account_names_missing": 0}
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._loop, name="container-accounts", daemon=True)
            self._thread.start()

    def names(self, container_id: str, pid: int) -> AccountNames | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(container_id)
            if entry is not None:
                self._entries.move_to_end(container_id)
            stale = entry is None or now - entry.checked >= self._refresh_s
            if stale and pid and container_id not in self._pending:
                try:
                    self._queue.put_nowait((container_id, pid))
                    self._pending.add(container_id)
                except queue.Full:
                    self.counts["account_lookups_refused"] += 1
            # one wait per read asked for: a read that hangs (a FUSE mount the container serves) must not make
            # every document of the container wait
            if ((entry is None or entry.names is None) and container_id in self._pending
                    and container_id not in self._waited and self._thread):
                self._waited.add(container_id)
                self._read_done.wait_for(lambda: container_id not in self._pending, WAIT_S)
                entry = self._entries.get(container_id)
            if entry is None or entry.names is None:
                self.counts["account_names_missing"] += 1  # under the lock: the reading thread counts too
                return None
            return entry.names

    def refresh(self, container_id: str, pid: int) -> None:
        """Reads the container's files now (the thread's work; tests call it directly)."""
        root = f"{self._proc_root}/{pid}/root"
        if self._is_host_root(root):
            # a runtime's init (runc init) is placed in the container's cgroup before it switches to the
            # container's root: the host's passwd is not the container's
            self._retry_soon(container_id)
            return
        passwd = _read(self._opener, root, "/etc/passwd")
        group = _read(self._opener, root, "/etc/group")
        identity = (passwd[0] if passwd else None, group[0] if group else None)
        with self._lock:
            self.counts["account_reads"] += 1
            entry = self._entries.get(container_id)
            if passwd is None and group is None:
                self.counts["account_reads_failed"] += 1
                if entry is not None and entry.names is not None:  # the process went: keep what was known
                    entry.checked = time.monotonic()
                    return
                names: AccountNames | None = None
                identity = None
            elif entry is not None and entry.identity == identity:
                entry.checked = time.monotonic()
                return
            else:
                names = AccountNames(parse_ids(passwd[1]) if passwd else {}, parse_ids(group[1]) if group else {})
            failures = 0 if names is not None else (entry.failures + 1 if entry is not None else 1)
            self._entries[container_id] = _Entry(names, identity, self._next_look(failures), failures)
            self._entries.move_to_end(container_id)
            while len(self._entries) > CONTAINERS_MAX:
                self._entries.popitem(last=False)

    def _is_host_root(self, root: str) -> bool:
        try:
            mine, host = os.stat(root), os.stat(f"{self._proc_root}/1/root")
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (host.st_dev, host.st_ino)

    def _next_look(self, failures: int) -> float:
        """The `checked` time that makes the entry stale after the wait for this many failures."""
        if failures == 0 or failures > len(RETRY_S):
            return time.monotonic()
        return time.monotonic() - self._refresh_s + RETRY_S[failures - 1]

    def _retry_soon(self, container_id: str) -> None:
        with self._lock:
            entry = self._entries.get(container_id)
            if entry is None:
                self._entries[container_id] = entry = _Entry(None, None, 0.0)
            entry.failures += 1
            entry.checked = self._next_look(entry.failures)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            container_id, pid = item
            try:
                self.refresh(container_id, pid)
            except Exception as exc:  # one container's files must not stop the names of the others
                log.warning("reading the names of container %s failed: %s: %s", container_id,
                            type(exc).__name__, exc)
            finally:
                with self._lock:
                    self._pending.discard(container_id)
                    self._waited.discard(container_id)
                    self._read_done.notify_all()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts, "account_containers": len(self._entries)}

    def close(self) -> None:
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # a daemon thread: it goes with the process
                self._queue.put_nowait(None)
