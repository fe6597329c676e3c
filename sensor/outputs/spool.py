"""A bounded, crash-safe disk queue of opaque payloads with an ack cursor: the Elasticsearch output's outage buffer.

Producers `append` at the end. The consumer `read`s from where its last read stopped, which after a start is
the acknowledged position, and `ack`s a position once everything before it is delivered (or dead-lettered):
finished segments are deleted and the ack file moves, with rename. Nothing is ever put back in front: a batch
that fails is simply not acknowledged; its reader retries its copy, and after a restart it is read again from
the ack. So a crash at any moment re-sends at most what was in flight (at-least-once; deterministic document
ids make that exactly-once). One writer thread may `append` while one reader thread `read`s and `ack`s.

The frame format is in sensor.outputs.spool_frames, the directory's files (modes, quarantine, recovery at
start, the ack file) in sensor.outputs.spool_files. A full spool follows its policy: `drop_oldest` deletes the
oldest segment, `drop_newest` refuses the new payloads; every payload lost either way is counted, as is every
payload refused for lack of disk space (ENOSPC).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sensor.config.statefiles import StateFileError
from sensor.outputs.spool_cursor import SpoolCursor
from sensor.outputs.spool_files import (
    Position,
    Segment,
    SpoolError,
    SpoolFiles,
    write_all,
)
from sensor.outputs.spool_frames import (
    FRAME_HEADER,
    SEGMENT_MAGIC,
    encode_frames,
)

__all__ = ["FRAME_HEADER", "SEGMENT_MAGIC", "POLICIES", "Position", "Spool", "SpoolError"]

# New segments are numbered from here (ids below it are those earlier versions gave segments put in front).
FIRST_SEGMENT_ID = 1 << 40
POLICIES = ("drop_oldest", "drop_newest")
# A full disk is one episode (one line) until writes have succeeded this long after the last failure:
# near the limit small writes succeed between failures, which must not flood the log.
DISK_FULL_QUIET = 10.0

log = logging.getLogger(__name__)


class Spool(SpoolCursor):
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        policy: str = "drop_oldest",
        segment_bytes: int | None = None,
        fsync: bool = True,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"spool policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.policy = policy
        # Small enough that dropping the oldest segment frees a modest share of the limit.
        self.segment_bytes = segment_bytes or max(64 * 1024, min(8 * 1024 * 1024, max_bytes // 8))
        self._fsync = fsync
        self._lock = threading.Lock()
        self._segments: dict[int, Segment] = {}
        self._order: list[int] = []  # segment ids, ascending
        self._tail_fd: int | None = None
        self._tail_id: int | None = None
        self._read_fd: int | None = None
        self._stale_fds: list[int] = []  # reader descriptors of dropped segments, closed by the reader
        self._read_fd_id: int | None = None
        self._cursor_id: int | None = None  # segment being read, None when nothing was read yet
        self._cursor_offset = 0
        self._disk_full = False
        self._last_write_error = 0.0
        self._refusing = False  # drop_newest is refusing new payloads (reported once per episode)
        self.dropped_oldest = 0
        self.dropped_newest = 0
        self.dropped_disk_full = 0
        self.dropped_corrupt = 0  # events in damaged frames, counted exactly
        self.damaged_unknown = 0  # damaged stretches at a segment's end whose event count cannot be known
        self.appended = 0
        self.end: Position | None = None  # just past the last payload appended (by this process)
        self._total_bytes = 0  # sum of the segments' sizes, kept as they change
        self._next_id = FIRST_SEGMENT_ID  # above every id used so far, so no new segment hides behind the ack
        self._files = SpoolFiles(self.directory)
        self._open()

    def _open(self) -> None:
        ack = self._files.read_ack()
        if ack is not None:
            self._next_id = max(self._next_id, ack.segment_id + 1)
        for segment_id, path in self._files.segment_files():
            self._next_id = max(self._next_id, segment_id + 1)
            start = len(SEGMENT_MAGIC)
            if ack is not None:
                if segment_id < ack.segment_id:
                    path.unlink(missing_ok=True)  # delivered before the last run ended
                    continue
                if segment_id == ack.segment_id:
                    start = ack.offset
            found = self._files.recover_segment(segment_id, path, start)
            self.dropped_corrupt += found.lost
            self.damaged_unknown += found.unknown
            if found.segment is not None:
                self._segments[segment_id] = found.segment
                self._total_bytes += found.segment.size
                self._order.append(segment_id)
        self._files.remove_leftovers()

    # ---- sizes and state

    @property
    def quarantined(self) -> int:
        return self._files.quarantined


    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes_locked()

    def _bytes_locked(self) -> int:
        return self._total_bytes

    def check_accounting(self) -> None:
        """Raises AssertionError if the running byte total disagrees with the segments (for tests)."""
        with self._lock:
            actual = sum(segment.size for segment in self._segments.values())
            if actual != self._total_bytes:
                raise AssertionError(f"spool byte total {self._total_bytes} != {actual}")

    def unread(self) -> int:
        """Payloads not yet handed out by `read`."""
        with self._lock:
            return sum(segment.frames - segment.frames_read for segment in self._segments.values())

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "spool_bytes": self._bytes_locked(),
                "spool_segments": len(self._segments),
                "spool_unread": sum(s.frames - s.frames_read for s in self._segments.values()),
                "spool_appended": self.appended,
                "spool_dropped_oldest": self.dropped_oldest,
                "spool_dropped_newest": self.dropped_newest,
                "spool_dropped_disk_full": self.dropped_disk_full,
                "spool_dropped_corrupt": self.dropped_corrupt,
                "spool_damaged_unknown": self.damaged_unknown,
                "spool_quarantined": self._files.quarantined,
            }

    @property
    def dropped(self) -> int:
        return self.dropped_oldest + self.dropped_newest + self.dropped_disk_full

    # ---- writing

    def append(self, payloads: Sequence[bytes], copy: bool = False) -> int:
        """Adds payloads at the end; returns how many were kept. At the limit, drop_newest keeps those that fit
        and drop_oldest the newest; the rest are counted as dropped. `copy`: payloads the caller still holds and
        accounts for itself, kept all or none and never counted."""
        if not payloads:
            return 0
        size, count = sum(FRAME_HEADER.size + len(payload) for payload in payloads), len(payloads)
        with self._lock:
            trimmed = False
            if not copy and self._bytes_locked() + size + len(SEGMENT_MAGIC) > self.max_bytes:
                payloads = self._fit(payloads)
                trimmed = len(payloads) < count
                size, count = sum(FRAME_HEADER.size + len(payload) for payload in payloads), len(payloads)
            if not payloads or not self._make_room(size):
                if not copy:
                    self._refuse(count)
                return 0
            if self._refusing and not (trimmed and self.policy == "drop_newest"):
                self._refusing = False
                log.warning("spool %s: accepting events again; %d dropped while it was full so far",
                            self.directory, self.dropped_newest)
            try:
                tail = self._tail_for_write()
                fd = self._tail_fd
                assert fd is not None
                data, _ = encode_frames(payloads, tail.next_seq)
                try:
                    write_all(fd, data)
                except OSError:
                    os.ftruncate(fd, tail.size)  # never leave half a frame behind
                    raise
            except OSError as error:
                self._note_write_error(error, 0 if copy else count)
                return 0
            tail.size += len(data)
            self._total_bytes += len(data)
            tail.frames += count
            tail.next_seq += count
            self.appended += count
            self.end = Position(tail.id, tail.size)
            if self._disk_full and time.monotonic() - self._last_write_error >= DISK_FULL_QUIET:
                self._disk_full = False
                log.warning("spool %s: writing again after the disk had filled up (%d events dropped so far)",
                            self.directory, self.dropped_disk_full)
            if tail.size >= self.segment_bytes:
                self._seal_tail()
            return count

    def _note_write_error(self, error: OSError | StateFileError, count: int) -> None:
        self.dropped_disk_full += count
        self._last_write_error = time.monotonic()
        if not self._disk_full:
            self._disk_full = True
            code = getattr(error, "errno", None)
            reason = "disk full" if code in (errno.ENOSPC, errno.EDQUOT) else getattr(error, "strerror", None) or error
            log.error(
                "spool %s: cannot write (%s); events are dropped and counted until space is back",
                self.directory, reason,
            )

    def _fit(self, payloads: Sequence[bytes]) -> Sequence[bytes]:
        """The payloads the policy keeps when they do not all fit: the first under drop_newest (the rest are
        refused), the last under drop_oldest (whatever is spooled already makes room for them first)."""
        free = self.max_bytes - len(SEGMENT_MAGIC) - (self._bytes_locked() if self.policy == "drop_newest" else 0)
        sizes = [FRAME_HEADER.size + len(payload) for payload in payloads]
        if sum(sizes) <= free:
            return payloads
        keep = 0
        used = 0
        ordered = sizes if self.policy == "drop_newest" else sizes[::-1]
        while keep < len(ordered) and used + ordered[keep] <= free:
            used += ordered[keep]
            keep += 1
        if self.policy == "drop_newest":
            self._refuse(len(payloads) - keep)
            return payloads[:keep]
        self.dropped_oldest += len(payloads) - keep
        log.warning("spool %s full: dropped %d oldest events (policy drop_oldest)", self.directory,
                    len(payloads) - keep)
        return payloads[len(payloads) - keep:]

    def _refuse(self, count: int) -> None:
        if not count:
            return
        if not self._refusing:
            self._refusing = True
            log.warning("spool %s full (%d bytes): new events are dropped and counted until it drains "
                        "(policy drop_newest)", self.directory, self.max_bytes)
        self.dropped_newest += count

    def _make_room(self, needed: int) -> bool:
        """False when the policy says to refuse the new data."""
        total = self._bytes_locked()
        if total + needed + len(SEGMENT_MAGIC) <= self.max_bytes:
            return True
        if self.policy == "drop_newest":
            return False
        while total + needed + len(SEGMENT_MAGIC) > self.max_bytes and self._order:
            oldest = self._segments[self._order[0]]
            if oldest.id == self._tail_id:
                self._seal_tail()
            total -= oldest.size
            self._drop_segment(oldest)
        return total + needed + len(SEGMENT_MAGIC) <= self.max_bytes

    def _drop_segment(self, segment: Segment) -> None:
        self.dropped_oldest += segment.frames - segment.frames_read
        if segment.frames - segment.frames_read:
            log.warning(
                "spool %s full: dropped %d oldest events (policy drop_oldest)",
                self.directory, segment.frames - segment.frames_read,
            )
        self._forget(segment)

    def _forget(self, segment: Segment) -> None:
        del self._segments[segment.id]
        self._total_bytes -= segment.size
        self._order.remove(segment.id)
        if self._read_fd_id == segment.id and self._read_fd is not None:
            # The reader may be reading from it right now, outside the lock: it closes the descriptor itself
            # on its next read, so the number cannot be reused for another file under its feet.
            self._stale_fds.append(self._read_fd)
            self._read_fd = None
            self._read_fd_id = None
        if self._cursor_id == segment.id:
            self._cursor_id = None
        segment.path.unlink(missing_ok=True)

    def _tail_for_write(self) -> Segment:
        if self._tail_id is not None:
            return self._segments[self._tail_id]
        segment_id = self._next_id
        self._next_id += 1
        segment, fd = self._files.create_segment(segment_id)
        self._total_bytes += segment.size
        self._segments[segment_id] = segment
        self._order.append(segment_id)
        self._tail_fd = fd
        self._tail_id = segment_id
        return segment

    def _seal_tail(self, sync: bool = False) -> None:
        """Closes the tail segment. Its fsync is left to `sync_sealed` (the reader's thread) unless asked."""
        if self._tail_fd is None or self._tail_id is None:
            return
        segment = self._segments[self._tail_id]
        if sync and self._fsync:
            try:
                os.fsync(self._tail_fd)
                segment.synced = True
            except OSError as error:
                log.warning("spool %s: fsync failed: %s", self.directory, error.strerror)
        os.close(self._tail_fd)
        segment.sealed = True
        self._tail_fd = None
        self._tail_id = None

    def sync_sealed(self) -> None:
        """Flushes sealed segments to stable storage; called off the event loop (a kill -9 does not need it,
        a power cut does)."""
        if not self._fsync:
            return
        with self._lock:
            pending = [segment for segment in self._segments.values() if segment.sealed and not segment.synced]
            for segment in pending:
                segment.synced = True
        self._files.fsync(pending)

    # ---- acknowledging (reading: SpoolCursor)

    def drop_in_flight(self, count: int) -> None:
        """A read batch whose segment `drop_oldest` deleted while it was out has failed: its reader's copy was
        the last one, and the policy drops the oldest events. Counted as the segment's other events were."""
        with self._lock:
            self.dropped_oldest += count
        log.warning("spool %s full: dropped %d oldest events (policy drop_oldest)", self.directory, count)

    def holds(self, position: Position) -> bool:
        """False once the segment a read came from was dropped: the reader's copy is then the only one."""
        with self._lock:
            return position.segment_id in self._segments

    def ack(self, position: Position) -> None:
        """Commits everything read up to position: finished segments are deleted, the ack file moves."""
        with self._lock:
            for segment_id in list(self._order):
                segment = self._segments[segment_id]
                if segment.frames_read < segment.frames:
                    continue
                if not segment.sealed:
                    if segment_id != position.segment_id or position.offset < segment.size:
                        continue
                    self._seal_tail()  # the whole backlog is delivered: start the next one afresh
                if segment_id < position.segment_id or (
                    segment_id == position.segment_id and position.offset >= segment.size
                ):
                    self._forget(segment)
            self._files.write_ack(position, quiet=self._disk_full)  # a full disk was reported already

    def close(self) -> None:
        with self._lock:
            self._seal_tail(sync=True)
            if self._read_fd is not None:
                os.close(self._read_fd)
                self._read_fd = None
                self._read_fd_id = None
            while self._stale_fds:
                os.close(self._stale_fds.pop())
