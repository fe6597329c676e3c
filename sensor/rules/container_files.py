"""Reading a file a container controls, safely: the executed file's bytes for the ssh identity check.

Whoever runs in the container may change the file while we read: it is never mapped (truncating a mapped file
kills the reader with SIGBUS) but read with bounded `pread`s into one buffer, opened through
sensor/containers/rootfs.py (within the container's root, non-blocking). All reads together are held to a rate
(`ReadBudget`).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

_ELF_MAGIC = b"\x7fELF"
# Strings every build carries: autossh's environment variable; OpenSSH's version prefix, the server's and the
# client's usage lines, and the privilege separation step of the server (sshd and, from OpenSSH 9.8, sshd-session,
# which has no usage line); Dropbear's server and client banners (a multi-call dropbearmulti has both).
_MARKERS = (b"AUTOSSH_GATETIME", b"OpenSSH_", b"usage: sshd ", b"usage: ssh ", b"privsep_preauth",
            b"Dropbear server v", b"Dropbear SSH client v")
_CHUNK = 256 * 1024
# All looks together read at most this much per second (about a tenth of a core here): a container that keeps
# the sensor reading costly files slows its own looks, not the sensor.
DEFAULT_READ_RATE = 64 * 1024 * 1024
_OVERLAP = max(len(marker) for marker in _MARKERS) - 1


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
    autossh, openssh, server_usage, client_usage, privsep, dropbear_server, dropbear_client = _MARKERS
    if autossh in found:
        return "autossh"
    if dropbear_server in found or dropbear_client in found:
        if dropbear_server in found and dropbear_client in found:
            return "dropbearmulti"
        return "dropbear" if dropbear_server in found else "dbclient"
    if openssh not in found:
        return ""
    if server_usage in found or privsep in found:
        return "sshd"
    if client_usage in found:
        return "ssh"
    return ""


def program_from_content(data: bytes, limit: int | None = None) -> str:
    """Which ssh program an ELF image is, from strings every build carries; "" for none. Only the first `limit`
    bytes are searched."""
    if data[:4] != _ELF_MAGIC:
        return ""
    end = len(data) if limit is None else min(limit, len(data))
    return _program_of_markers({marker for marker in _MARKERS if data.find(marker, 0, end) >= 0})
