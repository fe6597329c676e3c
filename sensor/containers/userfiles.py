"""Reads a small file that an unprivileged host user controls (rootless podman's store in a home directory)
without letting that user freeze or fool the reader.

Such a user can put a FIFO or a device where the file should be (an open or read that never returns), a symbolic
link to a file only root may read, or a FUSE mount they serve themselves (`fusermount` lets any user mount on a
directory they own) whose every lookup they can leave unanswered. So the file is opened with openat2(2) from the
deepest mount point above it, with RESOLVE_NO_XDEV (no other mount may be crossed, a FUSE one mounted later
included), RESOLVE_NO_SYMLINKS and O_NONBLOCK; the mount it lies on must not be FUSE; and it must be a regular
file no larger than the cap. Anything else is refused: the caller goes without, as for a file not there.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
from pathlib import Path

# openat2 has one number on every architecture of the generic syscall table and on x86_64
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
_SUPPORTED_MACHINES = ("x86_64", "aarch64")


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    """The file is not a plain, small file reachable without crossing a mount or a link."""


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> tuple[str, str]:
    """(mount point, file system type) of the deepest mount whose mount point is PATH or above it; the last
    one listed wins where several share a mount point (it is the one on top)."""
    best, best_type = "/", ""
    for line in mountinfo.read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, right.split()[0]
    return best, best_type


def _openat2(dirfd: int, relative: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, relative.encode(), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), relative)
    return int(fd)


def read_small(path: Path, max_bytes: int) -> bytes:
    """PATH's bytes; Refused (with the reason) when it is anything but a regular file of at most MAX_BYTES
    reachable from its mount point without crossing another mount or following a link; OSError when it is
    not there."""
    if platform.machine() not in _SUPPORTED_MACHINES:
        raise Refused(f"openat2 not known on {platform.machine()}")
    text = os.path.normpath(str(path))
    if not os.path.isabs(text):
        raise Refused(f"{text}: not an absolute path")
    point, fstype = mount_of(text)
    if fstype.startswith("fuse"):
        raise Refused(f"{text}: on a {fstype} mount at {point}")
    relative = os.path.relpath(text, point)
    dirfd = os.open(point, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _openat2(dirfd, relative, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY,
                          RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ELOOP):
                raise Refused(f"{text}: crosses a mount or a link") from exc
            if exc.errno == errno.ENOSYS:
                raise Refused("openat2 not available in this kernel") from exc
            raise
    finally:
        os.close(dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{text}: not a regular file")
        if st.st_size > max_bytes:
            raise Refused(f"{text}: {st.st_size} bytes, more than {max_bytes}")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise Refused(f"{text}: grew past {max_bytes} bytes")
        return data
    finally:
        os.close(fd)
