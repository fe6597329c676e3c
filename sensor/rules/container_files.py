"""Reading a file a container controls, safely: the executed file's bytes for the ssh identity check.

Whoever runs in the container may change the file while we read: it is never mapped (truncating a mapped file
kills the reader with SIGBUS) but read with bounded `pread`s into one buffer; opened non-blocking (a FIFO planted
at the path must not block the open); and paths inside a container are resolved by the kernel within the
container's root (`openat2` with RESOLVE_IN_ROOT), so a link swapped in between two steps cannot lead to the
host's files. All reads together are held to a rate (`ReadBudget`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
import time
from collections.abc import Callable

_ELF_MAGIC = b"\x7fELF"
_MAX_SYMLINKS = 40
_MARKERS = (b"AUTOSSH_GATETIME", b"OpenSSH_", b"usage: sshd ", b"usage: ssh ")
_CHUNK = 256 * 1024
# All looks together read at most this much per second (about a tenth of a core here): a container that keeps
# the sensor reading costly files slows its own looks, not the sensor.
DEFAULT_READ_RATE = 64 * 1024 * 1024
_OVERLAP = max(len(marker) for marker in _MARKERS) - 1
# O_NONBLOCK: opening a FIFO (or a device) must return at once; O_NOCTTY: a tty planted at the path must
# never become ours.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = 437   # the same number on every architecture (added after the syscall tables were unified)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class InRootOpener:
    """Opens a path inside a directory taken as the root, resolved by the kernel (openat2 RESOLVE_IN_ROOT): `..`
    and absolute links stay inside it, /proc magic links are refused. Where openat2 is missing (kernels before
    5.6, or a seccomp profile that refuses it) the path is resolved in userspace and its last component opened
    with O_NOFOLLOW, which leaves a race with a directory swapped for a link in between."""

    def __init__(self) -> None:
        self._syscall = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._syscall = libc.syscall
            self._syscall.restype = ctypes.c_long
        except (OSError, AttributeError):
            self._syscall = None
        self.kernel_resolves = self._syscall is not None

    def open(self, root: str, path: str) -> int:
        if self.kernel_resolves and self._syscall is not None:
            root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                how = _OpenHow(OPEN_FLAGS, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
                fd = self._syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(root_fd),
                                   ctypes.c_char_p(os.fsencode(path)), ctypes.byref(how),
                                   ctypes.c_size_t(ctypes.sizeof(how)))
                if fd >= 0:
                    return fd
                err = ctypes.get_errno()
                if err not in (errno.ENOSYS, errno.EPERM) or err == errno.EPERM and not self._refused_by_filter():
                    raise OSError(err, os.strerror(err), path)
                self.kernel_resolves = False
            finally:
                os.close(root_fd)
        final = follow_link_in_root(root, path)
        if final is None:
            raise FileNotFoundError(errno.ENOENT, "no file at the path inside the root", path)
        return os.open(resolve_in_root(root, final)[0], OPEN_FLAGS | os.O_NOFOLLOW)

    def _refused_by_filter(self) -> bool:
        """EPERM from openat2 itself (a seccomp filter) rather than from the path: probe with "/"."""
        how = _OpenHow(os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY, 0, 0)
        assert self._syscall is not None
        fd = self._syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(-100), ctypes.c_char_p(b"/"),
                           ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            os.close(fd)
            return False
        return True


class ReadBudget:
    """Bytes per second all looks together may read (a token bucket): a container that makes the sensor read
    costly files over and over gets its looks slowed down, not the sensor's CPU. Shared by the worker threads."""

    def __init__(self, bytes_per_s: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = bytes_per_s
        self.burst = burst if burst is not None else bytes_per_s
        self._tokens = self.burst
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, nbytes: int, deadline: float) -> bool:
        """Wait until NBYTES may be read; False when that would pass DEADLINE (nothing is taken then)."""
        if self.rate <= 0:
            return True
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= nbytes
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
            if wait and now + wait > deadline:
                self._tokens += nbytes
                return False
        if wait:
            time.sleep(wait)
        return True


def _next_data(fd: int, offset: int) -> int:
    """The next offset at or after OFFSET that holds data: holes read as zeros, and no marker has a zero byte,
    so a file padded with holes costs only its data. -1 when there is none."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return -1                 # only a hole (or the end) from here on
        return offset                 # the filesystem cannot tell: read everything


def scan_file(fd: int, size: int, limit: int, deadline: float,
              budget: ReadBudget | None = None) -> tuple[str, bool]:
    """Which program the open regular file `fd` is, reading at most its first `limit` bytes by `pread` into one
    buffer (the file may shrink or grow meanwhile: a short read is its end). Returns (program, finished): not
    finished when the time ran out before the searched head was read."""
    if os.pread(fd, 4, 0) != _ELF_MAGIC:
        return "", True
    end = min(limit, max(size, 4))
    found: set[bytes] = set()
    buffer = bytearray(_OVERLAP + _CHUNK)
    view = memoryview(buffer)
    kept = 0          # bytes at the start of the buffer carried over from the previous chunk
    offset = 0
    while offset < end:
        data = _next_data(fd, offset)
        if data < 0 or data >= end:
            break
        if data != offset:
            offset, kept = data, 0
        want = min(_CHUNK, end - offset)
        if budget is not None and not budget.take(want, deadline):
            return "", False
        got = os.preadv(fd, [view[kept:kept + want]], offset)
        if got <= 0:
            break
        filled = kept + got
        for marker in _MARKERS:
            if marker not in found and buffer.find(marker, 0, filled) >= 0:
                found.add(marker)
        if _MARKERS[0] in found:
            break                       # autossh wins whatever else is there
        offset += got
        kept = min(_OVERLAP, filled)
        buffer[:kept] = buffer[filled - kept:filled]
        if offset < end and time.monotonic() > deadline:
            return "", False
    return _program_of_markers(found), True


def _program_of_markers(found: set[bytes]) -> str:
    if _MARKERS[0] in found:
        return "autossh"
    if _MARKERS[1] not in found:
        return ""
    if _MARKERS[2] in found:
        return "sshd"
    if _MARKERS[3] in found:
        return "ssh"
    return ""


def program_from_content(data: bytes, limit: int | None = None) -> str:
    """Which OpenSSH/autossh program an ELF image is, from strings every build carries; "" for none.
    Only the first `limit` bytes are searched."""
    if data[:4] != _ELF_MAGIC:
        return ""
    end = len(data) if limit is None else min(limit, len(data))
    if data.find(b"AUTOSSH_GATETIME", 0, end) >= 0:
        return "autossh"
    if data.find(b"OpenSSH_", 0, end) < 0:
        return ""
    if data.find(b"usage: sshd ", 0, end) >= 0:
        return "sshd"
    if data.find(b"usage: ssh ", 0, end) >= 0:
        return "ssh"
    return ""


def resolve_in_root(root: str, path: str) -> tuple[str, bool]:
    """Resolve the directories of `path` inside `root` without escaping it; report whether its last component
    is itself a symbolic link. Returns (host path of the last component, final component is a link)."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    index = 0
    while index < len(parts):
        part = parts[index]
        index += 1
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root + "/" + "/".join([*resolved, part])
        is_last = index == len(parts)
        if is_last:
            try:
                return candidate, stat.S_ISLNK(os.lstat(candidate).st_mode)
            except OSError:
                return candidate, False
        try:
            if not os.path.islink(candidate):
                resolved.append(part)
                continue
            target = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            break
        target_parts = [p for p in target.split("/") if p and p != "."]
        if target.startswith("/"):
            resolved = []
        parts = target_parts + parts[index:]
        index = 0
    return root + "/" + "/".join(resolved), False


def follow_link_in_root(root: str, path: str) -> str | None:
    """The in-root path a chain of symbolic links at `path` ends at (None if it loops or breaks)."""
    current = path
    for _ in range(_MAX_SYMLINKS):
        host_path, is_link = resolve_in_root(root, current)
        if not is_link:
            return current if os.path.exists(host_path) else None
        try:
            target = os.readlink(host_path)
        except OSError:
            return None
        if not target.startswith("/"):
            target = os.path.join(os.path.dirname(current) or "/", target)
        current = os.path.normpath(target)
    return None
