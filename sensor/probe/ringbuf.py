"""Reads a BPF ring buffer through its memory mapping, without a callback per record.

libbpf's consumer calls back into Python once per record through ctypes, which takes the GIL again and converts
three arguments each time: in exec storms that was a sixth of the sensor's CPU. This reader follows the same
protocol as libbpf's ringbuf_process_ring (kernel/bpf/ringbuf.c is the other side): a consumer position page
we write, a producer position page and the data pages mapped twice in a row, so a record that wraps around the
end reads as one slice; each record starts with an 8-byte header whose length carries a busy bit (not committed
yet) and a discard bit.

The kernel publishes a record with a release store; libbpf reads it with an acquire load. Plain loads give that
ordering only on a total-store-order CPU, so `supported()` is true on x86 alone.

Not the default (probe.ring_reader auto takes libbpf's consumer): on kernel 6.18 under CPU contention (two exec
workers, container churn and `stress-ng --cpu 2` on 2 cores), the probe's ring-buffer output failed about 12
times a minute with this reader while the ring held less than 64 KB of its 8 MB (a 64 MB ring failed too), and
never in the same runs with libbpf's consumer, at the same CPU per record. The failures return at once (under a
microsecond in the probe), so they are not the ring filling; the cause was not found. `RingPositions` (below),
which only reads, gives the backlog for either reader.
"""

from __future__ import annotations

import mmap
import platform
import select
import struct
from collections.abc import Callable
from pathlib import Path

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LENGTH_MASK = DISCARD_BIT - 1
HEADER_SIZE = 8
_POSITION = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")


def supported() -> bool:
    return platform.machine().lower() in TSO_MACHINES


def ring_data_size(map_fd: int) -> int:
    """The ring's data size in bytes (the map's max_entries), as the kernel reports it."""
    for line in Path(f"/proc/self/fdinfo/{map_fd}").read_text().splitlines():
        if line.startswith("max_entries:"):
            return int(line.split()[1])
    raise OSError(f"no max_entries in /proc/self/fdinfo/{map_fd}")


class RingPositions:
    """The ring's consumer and producer positions, mapped read-only: the bytes waiting, for liveness and
    /metrics, whichever reader consumes (libbpf hides its own mapping)."""

    def __init__(self, map_fd: int) -> None:
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        self._producer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)

    def backlog(self) -> int:
        """Bytes reserved or committed and not consumed yet: two loads, safe from any thread."""
        return _POSITION.unpack_from(self._producer, 0)[0] - _POSITION.unpack_from(self._consumer, 0)[0]

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()


class RingPeeker:
    """Looks at the records waiting in the ring without consuming them (whichever reader consumes them): the
    consumer page and the data are mapped read-only. Each record is shown once: the next look starts where the
    last one ended. Only from the thread that consumes, before it consumes: the records between the consumer and
    the producer positions cannot be overwritten until that thread frees them."""

    def __init__(self, map_fd: int) -> None:
        page = mmap.PAGESIZE
        data_size = ring_data_size(map_fd)
        if data_size <= 0 or data_size & (data_size - 1):
            raise OSError(f"ring buffer size {data_size} is not a power of two")
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        self._ring = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = page
        self._mask = data_size - 1
        self._seen = 0   # the position the last look reached

    def peek(self, look: Callable[[mmap.mmap, int, int], object], record_type: int) -> int:
        """Calls look(buffer, offset, size) for each committed record of `record_type` (its first u32) not shown
        before, no copy made (the data pages are mapped twice in a row, so a record is contiguous); returns how
        many were shown."""
        ring, data, mask = self._ring, self._data, self._mask
        read_position, read_length = _POSITION.unpack_from, _LENGTH.unpack_from
        position = max(read_position(self._consumer, 0)[0], self._seen)
        produced = read_position(ring, 0)[0]
        shown = 0
        while position < produced:
            at = data + (position & mask)
            length = read_length(ring, at)[0]
            if length & BUSY_BIT:
                break
            size = length & LENGTH_MASK
            if not length & DISCARD_BIT and size >= 4 and read_length(ring, at + HEADER_SIZE)[0] == record_type:
                look(ring, at + HEADER_SIZE, size)
                shown += 1
            position += (size + HEADER_SIZE + 7) & ~7
        self._seen = position
        return shown

    def close(self) -> None:
        self._consumer.close()
        self._ring.close()


class RingBufferReader:
    def __init__(self, map_fd: int) -> None:
        page = mmap.PAGESIZE
        data_size = ring_data_size(map_fd)
        if data_size <= 0 or data_size & (data_size - 1):
            raise OSError(f"ring buffer size {data_size} is not a power of two")
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._ring = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = page  # where the data pages start in self._ring
        self._mask = data_size - 1
        self._poller = select.poll()
        self._poller.register(map_fd, select.POLLIN)

    def wait(self, timeout_ms: int) -> None:
        """Returns when the kernel signals data, or after timeout_ms."""
        self._poller.poll(timeout_ms)

    def consume(self, handle: Callable[[bytes], object]) -> int:
        """Hands every committed record to `handle`, oldest first, and frees its space; returns how many."""
        ring, consumer, data, mask = self._ring, self._consumer, self._data, self._mask
        read_position, read_length, write_position = _POSITION.unpack_from, _LENGTH.unpack_from, _POSITION.pack_into
        position = read_position(consumer, 0)[0]
        handled = 0
        while True:
            produced = read_position(ring, 0)[0]
            if position >= produced:
                return handled
            while position < produced:
                at = data + (position & mask)
                length = read_length(ring, at)[0]
                if length & BUSY_BIT:
                    return handled  # reserved but not committed yet: the next call resumes here
                size = length & LENGTH_MASK
                position += (size + HEADER_SIZE + 7) & ~7
                if not length & DISCARD_BIT:
                    record = ring[at + HEADER_SIZE : at + HEADER_SIZE + size]
                    write_position(consumer, 0, position)
                    handled += 1
                    handle(record)
                else:
                    write_position(consumer, 0, position)

    def backlog(self) -> int:
        """Bytes the kernel has reserved or committed that were not consumed yet: two loads, safe from any thread
        (liveness asks it while the event loop may be stuck)."""
        return _POSITION.unpack_from(self._ring, 0)[0] - _POSITION.unpack_from(self._consumer, 0)[0]

    def close(self) -> None:
        self._ring.close()
        self._consumer.close()
