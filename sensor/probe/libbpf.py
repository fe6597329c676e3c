"""The few bpf() calls the long-lived sensor makes on objects it holds as file descriptors, through Debian's
libbpf (libbpf1: a small C library, no compiler): per-CPU map reads, object ids, and libbpf's ring-buffer
consumer for CPUs where sensor/probe/ringbuf.py's plain loads are not enough.

BCC is not used here on purpose: importing it maps LLVM (about 115 MB resident) for the life of the process,
and BCC is needed only for the second it takes to compile (sensor/probe/bcc_loader.py, in a child process).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
from collections.abc import Callable
from functools import cache
from pathlib import Path

LIBRARY_NAMES = ("libbpf.so.1", "libbpf.so")
POSSIBLE_CPUS = Path("/sys/devices/system/cpu/possible")


class LibbpfError(OSError):
    """libbpf is missing or a call failed; the message says which."""


@cache
def library() -> ctypes.CDLL:
    last: OSError | None = None
    for name in (*LIBRARY_NAMES, ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as error:
            last = error
            continue
        _declare(lib)
        return lib
    raise LibbpfError(errno.ENOENT, f"libbpf cannot be loaded ({last}): apt-get install libbpf1")


def _declare(lib: ctypes.CDLL) -> None:
    lib.bpf_map_lookup_elem.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    lib.bpf_map_lookup_elem.restype = ctypes.c_int
    lib.bpf_map_get_fd_by_id.argtypes = (ctypes.c_uint32,)
    lib.bpf_map_get_fd_by_id.restype = ctypes.c_int
    lib.bpf_prog_get_fd_by_id.argtypes = (ctypes.c_uint32,)
    lib.bpf_prog_get_fd_by_id.restype = ctypes.c_int
    lib.ring_buffer__new.argtypes = (ctypes.c_int, SAMPLE_CALLBACK, ctypes.c_void_p, ctypes.c_void_p)
    lib.ring_buffer__new.restype = ctypes.c_void_p
    lib.ring_buffer__poll.argtypes = (ctypes.c_void_p, ctypes.c_int)
    lib.ring_buffer__poll.restype = ctypes.c_int
    lib.ring_buffer__consume.argtypes = (ctypes.c_void_p,)
    lib.ring_buffer__consume.restype = ctypes.c_int
    lib.ring_buffer__free.argtypes = (ctypes.c_void_p,)
    lib.ring_buffer__epoll_fd.restype = ctypes.c_int
    lib.ring_buffer__epoll_fd.argtypes = (ctypes.c_void_p,)
    lib.ring_buffer__free.restype = None


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SAMPLE_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def _failed(call: str) -> LibbpfError:
    # libbpf returns -errno (libbpf 1.x's strict mode) and sets errno as well
    code = ctypes.get_errno() or errno.EIO
    return LibbpfError(code, f"{call}: {os.strerror(code)}")


@cache
def possible_cpus() -> int:
    """How many values a per-CPU map holds per key: one per possible CPU ("0-1", "0,2-5")."""
    count = 0
    for part in POSSIBLE_CPUS.read_text().strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def percpu_u64_values(map_fd: int, key: int) -> list[int]:
    """Each CPU's u64 at `key` of a BPF_MAP_TYPE_PERCPU_ARRAY (the kernel copies one 8-byte slot per CPU)."""
    cpus = possible_cpus()
    values = (ctypes.c_uint64 * cpus)()
    index = ctypes.c_uint32(key)
    if library().bpf_map_lookup_elem(map_fd, ctypes.byref(index), values) != 0:
        raise _failed(f"reading key {key} of BPF map fd {map_fd}")
    return list(values)


def object_exists(kind: str, object_id: int) -> bool:
    """Whether the kernel still holds the map or program with this id ("map" or "prog")."""
    lib = library()
    fd = lib.bpf_map_get_fd_by_id(object_id) if kind == "map" else lib.bpf_prog_get_fd_by_id(object_id)
    if fd >= 0:
        os.close(fd)
        return True
    if ctypes.get_errno() == errno.ENOENT:
        return False
    raise _failed(f"looking up BPF {kind} id {object_id}")


class LibbpfRingReader:
    """libbpf's ring-buffer consumer: one ctypes callback per record, with the acquire loads the kernel's
    release stores need on CPUs without total store order.

    libbpf consumes until the ring is empty, which under a storm faster than the consumer is never: a callback
    that returns a negative number makes it stop after that record (libbpf 1.1 has no ring_buffer__consume_n).
    That is how a call hands control back after BATCH records, so that the loop can flush its outputs and tick,
    and how an exception raised in the callback (a drain deadline, which ctypes would print and swallow) ends
    the call and is raised again here."""

    BATCH = 4096
    _STOP = -1

    def __init__(self, map_fd: int, handle: Callable[[bytes], object]) -> None:
        lib = library()
        self._lib = lib
        self._taken = 0
        self._raised: BaseException | None = None

        def sample(_ctx: int | None, data: int, size: int) -> int:
            try:
                handle(ctypes.string_at(data, size))
            except BaseException as error:  # carried out of the C call, raised again
                self._raised = error
                return self._STOP
            self._taken += 1
            return self._STOP if self._taken >= self.BATCH else 0

        self._callback = SAMPLE_CALLBACK(sample)  # referenced for as long as libbpf may call it
        ring = lib.ring_buffer__new(map_fd, self._callback, None, None)
        if not ring:
            raise _failed(f"opening the ring buffer of BPF map fd {map_fd}")
        self._ring: int | None = ring
        self._epoll_fd = -1   # libbpf's own: readable when a ring has data

    def _after(self) -> bool:
        """Raises what the callback caught; says whether the call stopped at BATCH records (more may wait)."""
        full = self._taken >= self.BATCH
        self._taken = 0
        raised, self._raised = self._raised, None
        if raised is not None:
            raise raised
        return full

    def wait(self, timeout_ms: int) -> None:
        """Waits up to timeout_ms for a wake-up, consuming nothing (a look ahead comes between)."""
        if self._ring is None:
            return
        if self._epoll_fd < 0:
            self._epoll_fd = self._lib.ring_buffer__epoll_fd(self._ring)
        select.select([self._epoll_fd], [], [], timeout_ms / 1000)

    def wait_and_consume(self, timeout_ms: int) -> None:
        """Waits up to timeout_ms for a wake-up, then consumes up to BATCH records: the probe wakes the consumer
        only every few records, and poll reads only the rings that woke it."""
        if self._ring is None:
            return
        self._lib.ring_buffer__poll(self._ring, timeout_ms)
        if not self._after():
            self.consume()

    def consume(self) -> bool:
        """Consumes up to BATCH records without waiting; True when it stopped there with more maybe waiting."""
        if self._ring is None:
            return False
        self._lib.ring_buffer__consume(self._ring)
        return self._after()

    def close(self) -> None:
        if self._ring is not None:
            self._lib.ring_buffer__free(self._ring)
            self._ring = None
