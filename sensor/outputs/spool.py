"""A bounded, crash-safe FIFO of opaque payloads on disk: the Elasticsearch output's outage buffer.

Layout of the directory:
  <20-digit id>.seg  segments, read in id order. Each starts with SEGMENT_MAGIC, then frames of
                     `<u32 length><u32 crc32>` + payload (the payload is whatever the caller packed, msgpack here).
  ack                the commit point `<u64 segment id><u64 offset>`: everything before it was delivered.
                     Written with rename after each successful bulk, so a crash at any moment re-sends at most
                     what was in flight (at-least-once; deterministic document ids make that exactly-once).

One writer thread may `append` while one reader thread `read`s and `ack`s. `push_front` (reader side only)
puts payloads ahead of everything unread, for a batch that failed while it was held in memory, and
`extend_front` adds more right behind them, for the events queued in memory behind that batch. A full spool
follows its policy: `drop_oldest` deletes the oldest segment, `drop_newest` refuses the new payloads; every
payload lost either way is counted, as is every payload refused for lack of disk space (ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SEGMENT_MAGIC = b"CSSPOOL1"
FRAME_HEADER = struct.Struct("<II")
ACK_RECORD = struct.Struct("<QQ")
# A fresh spool numbers its first segment here so that push_front has ids below it to use.
FIRST_SEGMENT_ID = 1 << 40
POLICIES = ("drop_oldest", "drop_newest")
MAX_FRAME_BYTES = 64 * 1024 * 1024
# A full disk is one episode (one line) until writes have succeeded this long after the last failure:
# near the limit small writes succeed between failures, which must not flood the log.
DISK_FULL_QUIET = 10.0

log = logging.getLogger(__name__)


class SpoolError(Exception):
    """The spool directory cannot be used at all (not creatable, not writable)."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading stopped: acking it commits every payload before it."""

    segment_id: int
    offset: int


@dataclass(slots=True)
class _Segment:
    id: int
    path: Path
    size: int  # bytes on disk that hold complete frames
    read_from: int  # where reading of this segment starts (after a restart: the ack offset)
    frames: int  # complete frames from read_from on
    frames_read: int = 0
    sealed: bool = True
    synced: bool = True  # on stable storage (fsync done), or found there at start-up


def _segment_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:020d}.seg"


def encode_frames(payloads: Iterable[bytes]) -> tuple[bytes, int]:
    parts = []
    count = 0
    for payload in payloads:
        parts.append(FRAME_HEADER.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
        count += 1
    return b"".join(parts), count


def scan_frames(data: bytes, start: int) -> tuple[list[bytes], int, bool]:
    """Complete, intact frames of `data` from `start`: (payloads, end offset, True if a bad frame stopped it)."""
    payloads = []
    offset = start
    end = len(data)
    header_size = FRAME_HEADER.size
    while offset + header_size <= end:
        length, crc = FRAME_HEADER.unpack_from(data, offset)
        body_end = offset + header_size + length
        if length > MAX_FRAME_BYTES:
            return payloads, offset, True
        if body_end > end:
            break
        payload = data[offset + header_size : body_end]
        if zlib.crc32(payload) != crc:
            return payloads, offset, True
        payloads.append(payload)
        offset = body_end
    return payloads, offset, False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Spool:
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
        self._segments: dict[int, _Segment] = {}
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
        self._ack_failing = False
        self.dropped_oldest = 0
        self.dropped_newest = 0
        self.dropped_disk_full = 0
        self.dropped_corrupt = 0
        self.appended = 0
        self._total_bytes = 0  # sum of the segments' sizes, kept as they change
        self._next_id = FIRST_SEGMENT_ID  # above every id used so far, so no new segment hides behind the ack
        self._lowest_id = FIRST_SEGMENT_ID  # at or below every id used so far (push_front goes below it)
        self._front_id: int | None = None  # the segment the last push_front made, which extend_front extends
        self._open()

    # ---- opening and recovery

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {self.directory}: {error.strerror}") from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.directory} is not writable")
        ack = self._read_ack()
        if ack is not None:
            self._next_id = max(self._next_id, ack.segment_id + 1)
            self._lowest_id = min(self._lowest_id, ack.segment_id)
        for path in sorted(self.directory.glob("*.seg")):
            try:
                segment_id = int(path.stem)
            except ValueError:
                continue
            self._next_id = max(self._next_id, segment_id + 1)
            self._lowest_id = min(self._lowest_id, segment_id)
            if ack is not None and segment_id < ack.segment_id:
                path.unlink(missing_ok=True)  # delivered before the last run ended
                continue
            start = ack.offset if ack is not None and segment_id == ack.segment_id else len(SEGMENT_MAGIC)
            self._recover_segment(segment_id, path, start)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)

    def _read_ack(self) -> Position | None:
        try:
            data = (self.directory / "ack").read_bytes()
        except FileNotFoundError:
            return None
        if len(data) != ACK_RECORD.size:
            log.warning("spool %s: ignoring a damaged ack file; undelivered data is sent again", self.directory)
            return None
        return Position(*ACK_RECORD.unpack(data))

    def _recover_segment(self, segment_id: int, path: Path, start: int) -> None:
        data = path.read_bytes()
        if not data.startswith(SEGMENT_MAGIC):
            log.warning("spool: %s is not a spool segment; removed", path.name)
            self.dropped_corrupt += 1
            path.unlink(missing_ok=True)
            return
        start = max(len(SEGMENT_MAGIC), min(start, len(data)))
        payloads, end, damaged = scan_frames(data, start)
        if end < len(data):
            # A frame cut short (crash mid-write, full disk) or damaged: everything after it is unreadable.
            self.dropped_corrupt += 1
            log.warning(
                "spool: segment %s %s at byte %d; %d bytes after it discarded",
                path.name, "damaged" if damaged else "ends in a partial frame", end, len(data) - end,
            )
            with open(path, "r+b") as handle:
                handle.truncate(end)
        if not payloads:
            path.unlink(missing_ok=True)
            return
        self._segments[segment_id] = _Segment(segment_id, path, end, start, len(payloads))
        self._total_bytes += end
        self._order.append(segment_id)

    # ---- sizes and state

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
            }

    @property
    def dropped(self) -> int:
        return self.dropped_oldest + self.dropped_newest + self.dropped_disk_full

    # ---- writing

    def append(self, payloads: Sequence[bytes]) -> int:
        """Adds payloads at the end; returns how many were kept (the rest are counted as dropped)."""
        if not payloads:
            return 0
        data, count = encode_frames(payloads)
        with self._lock:
            if not self._make_room(len(data)):
                if not self._refusing:
                    self._refusing = True
                    log.warning("spool %s full (%d bytes): new events are dropped and counted until it drains "
                                "(policy drop_newest)", self.directory, self.max_bytes)
                self.dropped_newest += count
                return 0
            if self._refusing:
                self._refusing = False
                log.warning("spool %s: accepting events again; %d dropped while it was full so far",
                            self.directory, self.dropped_newest)
            try:
                tail = self._tail_for_write()
                fd = self._tail_fd
                assert fd is not None
                try:
                    _write_all(fd, data)
                except OSError:
                    os.ftruncate(fd, tail.size)  # never leave half a frame behind
                    raise
            except OSError as error:
                self._note_write_error(error, count)
                return 0
            tail.size += len(data)
            self._total_bytes += len(data)
            tail.frames += count
            self.appended += count
            if self._disk_full and time.monotonic() - self._last_write_error >= DISK_FULL_QUIET:
                self._disk_full = False
                log.warning("spool %s: writing again after the disk had filled up (%d events dropped so far)",
                            self.directory, self.dropped_disk_full)
            if tail.size >= self.segment_bytes:
                self._seal_tail()
            return count

    def _note_write_error(self, error: OSError, count: int) -> None:
        self.dropped_disk_full += count
        self._last_write_error = time.monotonic()
        if not self._disk_full:
            self._disk_full = True
            reason = "disk full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else error.strerror
            log.error(
                "spool %s: cannot write (%s); events are dropped and counted until space is back",
                self.directory, reason,
            )

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

    def _drop_segment(self, segment: _Segment) -> None:
        self.dropped_oldest += segment.frames - segment.frames_read
        if segment.frames - segment.frames_read:
            log.warning(
                "spool %s full: dropped %d oldest events (policy drop_oldest)",
                self.directory, segment.frames - segment.frames_read,
            )
        self._forget(segment)

    def _forget(self, segment: _Segment) -> None:
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

    def _tail_for_write(self) -> _Segment:
        if self._tail_id is not None:
            return self._segments[self._tail_id]
        segment_id = self._next_id
        self._next_id += 1
        path = _segment_path(self.directory, segment_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, SEGMENT_MAGIC)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = _Segment(segment_id, path, len(SEGMENT_MAGIC), len(SEGMENT_MAGIC), 0, sealed=False,
                           synced=False)
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
        for segment in pending:
            try:
                fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # dropped or delivered meanwhile
            try:
                os.fsync(fd)
            except OSError as error:
                log.warning("spool %s: fsync failed: %s", self.directory, error.strerror)
            finally:
                os.close(fd)

    def push_front(self, payloads: Sequence[bytes]) -> int:
        """Puts payloads ahead of everything unread. Only the reader calls this, with nothing in flight.

        These are the oldest events of all (taken from memory before anything now in the spool). Under
        drop_newest they were accepted already and go in even past the limit (by at most the memory queue);
        under drop_oldest, those that do not fit are the ones dropped, oldest first.
        """
        if not payloads:
            return 0
        with self._lock:
            payloads = self._fit_front(payloads, len(SEGMENT_MAGIC))
            if not payloads:
                return 0
            # Below every id used so far: an id is never reused, so a stale position can never name it.
            segment_id = self._lowest_id - 1
            self._lowest_id = segment_id
            self._front_id = segment_id
            # The ack on disk may point past the new segment: move it first, so a crash cannot skip it.
            self._write_ack(Position(segment_id, len(SEGMENT_MAGIC)))
        data, count = encode_frames(payloads)
        path = _segment_path(self.directory, segment_id)
        temp = path.with_suffix(".tmp")
        try:
            # Written and synced outside the lock: the event loop's appends never wait for this disk work.
            with open(temp, "wb") as handle:
                handle.write(SEGMENT_MAGIC)
                handle.write(data)
                handle.flush()
                if self._fsync:
                    os.fsync(handle.fileno())
            os.replace(temp, path)
        except OSError as error:
            temp.unlink(missing_ok=True)
            with self._lock:
                self._note_write_error(error, count)
            return 0
        with self._lock:
            segment = _Segment(segment_id, path, len(SEGMENT_MAGIC) + len(data), len(SEGMENT_MAGIC), count)
            # Where reading of the segment that was current resumes once this one is done.
            if self._cursor_id is not None and self._cursor_id in self._segments:
                self._segments[self._cursor_id].read_from = self._cursor_offset
            self._segments[segment_id] = segment
            self._total_bytes += segment.size
            self._order.insert(0, segment_id)
            self._cursor_id = None
            self.appended += count
            return count

    def extend_front(self, payloads: Sequence[bytes], newer_spooled: bool = False) -> int:
        """Adds payloads right after those of the last `push_front`, ahead of everything else unread: for the
        events queued in memory behind a failed batch, moved to disk in several steps. Only the reader calls
        this, with nothing in flight; when that front segment is gone or being read, it is a `push_front`.

        `newer_spooled`: newer payloads were appended meanwhile, so under drop_newest these (older) were
        accepted already and go in even past the limit, as with push_front."""
        if not payloads:
            return 0
        with self._lock:
            front = self._segments.get(self._front_id) if self._front_id is not None else None
            if front is not None and (front.frames_read or self._cursor_id == front.id or self._order[0] != front.id):
                front = None
            if front is not None:
                # Newer than the rest of the front: drop_newest refuses what does not fit (unless newer ones are
                # in already); drop_oldest drops the front segment, the oldest, and then push_front drops the
                # oldest of these if need be. Segments behind the front can hold newer events: they stay.
                if self.policy == "drop_newest":
                    payloads = payloads if newer_spooled else self._fit_newest(payloads)
                    if not payloads:
                        return 0
                elif self._bytes_locked() + len(encode_frames(payloads)[0]) > self.max_bytes:
                    self._drop_segment(front)
                    front = None
            if front is not None:
                size = front.size
        if front is None:
            return self.push_front(payloads)
        data, count = encode_frames(payloads)
        # Written outside the lock, as push_front does; the event loop may drop this segment meanwhile.
        try:
            fd = os.open(front.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as error:
            with self._lock:
                if front.id in self._segments:
                    self._note_write_error(error, count)
                else:
                    self.dropped_oldest += count
            return 0
        try:
            _write_all(fd, data)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # never leave half a frame behind
            with self._lock:
                self._note_write_error(error, count)
            return 0
        finally:
            os.close(fd)
        with self._lock:
            if self._segments.get(front.id) is not front:
                self.dropped_oldest += count  # dropped to make room while it was written: counted as such
                return 0
            front.size += len(data)
            front.frames += count
            front.synced = False  # sync_sealed flushes it
            self._total_bytes += len(data)
            self.appended += count
            return count

    def _fit_newest(self, payloads: Sequence[bytes]) -> Sequence[bytes]:
        """Under drop_newest, the payloads that still fit; the rest are refused and counted."""
        free = self.max_bytes - self._bytes_locked()
        keep = 0
        used = 0
        while keep < len(payloads) and used + FRAME_HEADER.size + len(payloads[keep]) <= free:
            used += FRAME_HEADER.size + len(payloads[keep])
            keep += 1
        if keep < len(payloads):
            self.dropped_newest += len(payloads) - keep
            if not self._refusing:
                self._refusing = True
                log.warning("spool %s full (%d bytes): new events are dropped and counted until it drains "
                            "(policy drop_newest)", self.directory, self.max_bytes)
        return payloads[:keep]

    def _fit_front(self, payloads: Sequence[bytes], overhead: int) -> Sequence[bytes]:
        """The payloads that go in front under the policy. Under drop_newest they were accepted already and go in
        even past the limit (by at most the memory queue); under drop_oldest those that do not fit are dropped,
        oldest first."""
        if self.policy != "drop_oldest":
            return payloads
        free = self.max_bytes - self._bytes_locked() - overhead
        keep = len(payloads)
        used = 0
        while keep and used + FRAME_HEADER.size + len(payloads[keep - 1]) <= free:
            used += FRAME_HEADER.size + len(payloads[keep - 1])
            keep -= 1
        if keep:
            self.dropped_oldest += keep
            log.warning("spool %s full: dropped %d oldest events (policy drop_oldest)", self.directory, keep)
        return payloads[keep:]

    # ---- reading and acknowledging

    def read(self, max_items: int, max_bytes: int) -> tuple[list[bytes], Position | None]:
        """Up to max_items payloads (at least one if any is unread) after the last read, oldest first."""
        while True:
            with self._lock:
                while self._stale_fds:
                    os.close(self._stale_fds.pop())
                segment = self._current_segment()
                if segment is None:
                    return [], None
                offset = self._cursor_offset
                size = segment.size
                fd = self._reader_fd(segment)
                segment_id = segment.id
            # Read outside the lock: the writer appends beyond `size`, never inside it.
            want = min(size - offset, max(max_bytes, 1) + FRAME_HEADER.size)
            data = os.pread(fd, want, offset)
            payloads, used, damaged = scan_frames(data, 0)
            if not payloads and not damaged and want < size - offset:
                data = os.pread(fd, size - offset, offset)  # one frame larger than max_bytes
                payloads, used, damaged = scan_frames(data, 0)
            payloads, used = self._limit(payloads, max_items, max_bytes)
            with self._lock:
                current = self._segments.get(segment_id)
                if current is None or self._cursor_id != segment_id or self._cursor_offset != offset:
                    continue  # dropped (and counted) or pushed in front of while we read: read again
                if damaged and not payloads:
                    lost = current.frames - current.frames_read
                    self.dropped_corrupt += lost
                    log.error("spool: segment %s damaged at byte %d; %d events lost",
                              current.path.name, offset, lost)
                    current.frames_read = current.frames
                    self._total_bytes -= current.size - offset
                    current.size = offset
                    continue
                self._cursor_offset = offset + used
                current.frames_read += len(payloads)
                return payloads, Position(segment_id, self._cursor_offset)

    @staticmethod
    def _limit(payloads: list[bytes], max_items: int, max_bytes: int) -> tuple[list[bytes], int]:
        kept = []
        total = 0
        used = 0
        for payload in payloads:
            if kept and (len(kept) >= max_items or total + len(payload) > max_bytes):
                break
            kept.append(payload)
            total += len(payload)
            used += FRAME_HEADER.size + len(payload)
        return kept, used

    def _current_segment(self) -> _Segment | None:
        """The segment the cursor is in, moving on past finished segments."""
        if self._cursor_id is None or self._cursor_id not in self._segments:
            ahead = [sid for sid in self._order if self._cursor_id is None or sid > self._cursor_id]
            if not ahead:
                ahead = list(self._order)
            if not ahead:
                return None
            self._cursor_id = ahead[0]
            self._cursor_offset = self._segments[ahead[0]].read_from
        while True:
            segment = self._segments[self._cursor_id]
            if self._cursor_offset < segment.size:
                return segment
            if not segment.sealed:
                return None  # the tail, read to its end
            index = self._order.index(segment.id)
            if index + 1 >= len(self._order):
                return None
            self._cursor_id = self._order[index + 1]
            self._cursor_offset = self._segments[self._cursor_id].read_from

    def _reader_fd(self, segment: _Segment) -> int:
        if self._read_fd_id != segment.id:
            if self._read_fd is not None:
                os.close(self._read_fd)
            self._read_fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
            self._read_fd_id = segment.id
        assert self._read_fd is not None
        return self._read_fd

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
            # A segment below the position left now holds unread payloads (put in front while this batch was
            # out): the ack on disk must not pass it, or a restart would delete it as delivered.
            below = next((sid for sid in self._order if sid < position.segment_id), None)
            if below is not None:
                position = Position(below, self._segments[below].read_from)
            self._write_ack(position)

    def _write_ack(self, position: Position) -> None:
        path = self.directory / "ack"
        temp = self.directory / "ack.tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(ACK_RECORD.pack(position.segment_id, position.offset))
            os.replace(temp, path)
        except OSError as error:
            # Not fatal: an older ack only means delivered events are sent again (and deduplicated by id).
            if not self._ack_failing and not self._disk_full:  # a full disk was reported already
                self._ack_failing = True
                log.warning("spool %s: cannot record delivery progress: %s", self.directory, error.strerror)
            return
        self._ack_failing = False

    def close(self) -> None:
        with self._lock:
            self._seal_tail(sync=True)
            if self._read_fd is not None:
                os.close(self._read_fd)
                self._read_fd = None
                self._read_fd_id = None
            while self._stale_fds:
                os.close(self._stale_fds.pop())
