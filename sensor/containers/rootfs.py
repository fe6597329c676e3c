"""Opening a file inside a container's root filesystem, safely.

Paths inside a container are resolved by the kernel within the container's root (`openat2` with
RESOLVE_IN_ROOT), so `..`, absolute links and a link swapped in between two steps cannot lead to the host's files;
files are opened non-blocking (a FIFO planted at the path must not block the open). Used to read the executed
file for the ssh identity check (sensor/rules) and the container's own passwd and group files (accounts.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

_MAX_SYMLINKS = 40
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
