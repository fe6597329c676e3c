"""A bounded, crash-safe FIFO of opaque payloads on disk: the Elasticsearch output's outage buffer.

Layout of the directory (0700, files 0600 whatever the umask):
  <20-digit id>.seg  segments, read in id order. Each starts with SEGMENT_MAGIC, then one frame per payload:
                     `<4-byte marker><u32 sequence><u32 length><u32 crc32 of the payload><u32 crc32 of the 16
                     bytes before>` + payload (whatever the caller packed, msgpack here). The marker and the
                     header's own CRC let a reader find the next intact frame after damage; the sequence number
                     (0, 1, ... within a segment) tells exactly how many frames the damage took.
                     Segments of the first format (LEGACY_MAGIC, `<u32 length><u32 crc32>` frames) are still
                     read; damage there loses the rest of the segment, as it always did.
  ack                the commit point `<u64 segment id><u64 offset>`: everything before it was delivered.
                     Written with rename after each successful bulk, so a crash at any moment re-sends at most
                     what was in flight (at-least-once; deterministic document ids make that exactly-once).
  quarantine/        segments (and an ack file) found at start that another user owns or may write, moved
                     aside and never delivered: under a loose umask another user could otherwise plant events.

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
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sensor.statefiles import FILE_MODE, StateFileError, create_exclusive, make_private_dirs

SEGMENT_MAGIC = b"CSSPOOL2"
LEGACY_MAGIC = b"CSSPOOL1"  # same length: offsets after the magic mean the same in both formats
# 0xc1 is the one byte msgpack never uses as a type, so the marker rarely occurs inside a payload; where it does,
# the header's own CRC tells it from a real frame start.
FRAME_MARKER = b"\xc1SF\x02"
FRAME_HEADER = struct.Struct("<4sIIII")  # marker, sequence, length, crc32 of the payload, crc32 of these 16 bytes
_HEADER_CHECKED = FRAME_HEADER.size - 4
_HEAD = struct.Struct("<4sIII")  # the part of the header its own CRC covers
_CRC = struct.Struct("<I")
LEGACY_FRAME_HEADER = struct.Struct("<II")  # length, crc32
QUARANTINE = "quarantine"
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
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


class _Replaced(OSError):
    """A segment's file is no longer the one the spool wrote (removed, or replaced by someone else)."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ESTALE, "segment file removed or replaced by another", str(path))


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
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file written or checked: reopened by name,
    # it must still be that file, not one put in its place
    legacy: bool = False  # first format: frames without marker and sequence number
    next_seq: int = 0  # sequence number of the next frame appended
    skips: dict[int, int] = field(default_factory=dict)  # damaged stretch start -> next intact frame


def _segment_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:020d}.seg"


def encode_frames(payloads: Iterable[bytes], first_seq: int = 0) -> tuple[bytes, int]:
    """Frames for payloads, numbered from first_seq: (bytes, count)."""
    parts = []
    count = 0
    pack_head, pack_crc, crc32 = _HEAD.pack, _CRC.pack, zlib.crc32
    for payload in payloads:
        head = pack_head(FRAME_MARKER, (first_seq + count) & 0xFFFFFFFF, len(payload), crc32(payload))
        parts += (head, pack_crc(crc32(head)), payload)
        count += 1
    return b"".join(parts), count


def _intact_header(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(sequence, length, payload crc) of the frame header at offset, None unless one is there intact."""
    if offset + FRAME_HEADER.size > len(data):
        return None
    marker, seq, length, crc, header_crc = FRAME_HEADER.unpack_from(data, offset)
    if marker != FRAME_MARKER or length > MAX_FRAME_BYTES:
        return None
    if zlib.crc32(data[offset : offset + _HEADER_CHECKED]) != header_crc:
        return None
    return seq, length, crc


def _next_header(data: bytes, offset: int) -> int | None:
    """The offset of the first intact frame header at or after offset."""
    while True:
        found = data.find(FRAME_MARKER, offset)
        if found < 0 or found + FRAME_HEADER.size > len(data):
            return None
        if _intact_header(data, found) is not None:
            return found
        offset = found + 1


def scan_frames(data: bytes, start: int, legacy: bool = False,
                max_items: int | None = None) -> tuple[list[bytes], int, bool]:
    """Complete, intact frames of `data` from `start`, at most max_items: (payloads, end offset, True if a bad
    frame stopped it). A frame cut short by the end of `data` stops it without being bad."""
    payloads: list[bytes] = []
    offset = start
    end = len(data)
    header_size = LEGACY_FRAME_HEADER.size if legacy else FRAME_HEADER.size
    while offset + header_size <= end and (max_items is None or len(payloads) < max_items):
        if legacy:
            length, crc = LEGACY_FRAME_HEADER.unpack_from(data, offset)
            if length > MAX_FRAME_BYTES:
                return payloads, offset, True
        else:
            header = _intact_header(data, offset)
            if header is None:
                return payloads, offset, True
            _, length, crc = header
        body_end = offset + header_size + length
        if body_end > end:
            break
        payload = data[offset + header_size : body_end]
        if zlib.crc32(payload) != crc:
            return payloads, offset, True
        payloads.append(payload)
        offset = body_end
    return payloads, offset, False


@dataclass(slots=True)
class Survey:
    """What a walk over a whole segment (current format) found after damage."""

    frames: int = 0  # intact frames at or after the start
    end: int = 0  # end of the last of them (the start when there is none)
    last_seq: int = -1  # sequence number of the last of them
    skips: dict[int, int] = field(default_factory=dict)  # damaged stretch start -> next intact frame
    lost: int = 0  # frames the damage took, known from the sequence numbers (or from an intact header)
    unknown: int = 0  # damaged stretches at the end whose frame count no header tells
    stretches: int = 0  # damaged stretches at or after the start


def survey_frames(data: bytes, start: int, first: int = len(SEGMENT_MAGIC)) -> Survey:
    """Walks the frames of `data` from `first`, resynchronising after damage on the next intact header.

    Frames before `start` (delivered already) only tell which sequence number comes next. Between two intact
    frames the damage took exactly the frames whose numbers are missing; after the last intact frame, the
    damaged frames whose headers are still intact are counted, and bytes that no header explains are a stretch
    of unknown count."""
    result = Survey(end=start)
    size = len(data)
    header_size = FRAME_HEADER.size
    offset = first
    expected = 0  # sequence number of the next frame
    contiguous = first  # where the next frame would start if nothing were damaged
    tail_seq: int | None = None  # highest number in a damaged frame with an intact header since the last good one
    tail_end = first  # where that frame (as its header says) ends
    while offset < size:
        header = _intact_header(data, offset)
        if header is not None:
            seq, length, crc = header
            body_end = offset + header_size + length
            if body_end <= size and seq >= expected and zlib.crc32(data[offset + header_size : body_end]) == crc:
                if offset >= start:
                    gap_start = max(contiguous, start)
                    if offset > gap_start:
                        result.skips[gap_start] = offset
                        result.stretches += 1
                    result.lost += seq - expected
                    result.frames += 1
                    result.end = body_end
                    result.last_seq = seq
                expected = seq + 1
                contiguous = offset = body_end
                tail_seq = None
                continue
            if seq >= expected and (tail_seq is None or seq > tail_seq):
                tail_seq = seq
                tail_end = min(body_end, size)
        found = _next_header(data, offset + 1)
        if found is None:
            break
        offset = found
    tail_start = max(contiguous, start)
    if tail_start < size:
        result.stretches += 1
        if tail_seq is not None:
            result.lost += tail_seq - expected + 1
            if tail_end < size:
                result.unknown += 1  # bytes after the last header found: perhaps more frames
        else:
            result.unknown += 1
    return result


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
        self.dropped_corrupt = 0  # events in damaged frames, counted exactly
        self.damaged_unknown = 0  # damaged stretches at a segment's end whose event count cannot be known
        self.quarantined = 0  # files moved to quarantine/ (another user's, or writable by others)
        self.appended = 0
        self._total_bytes = 0  # sum of the segments' sizes, kept as they change
        self._next_id = FIRST_SEGMENT_ID  # above every id used so far, so no new segment hides behind the ack
        self._lowest_id = FIRST_SEGMENT_ID  # at or below every id used so far (push_front goes below it)
        self._front_id: int | None = None  # the segment the last push_front made, which extend_front extends
        self._open()

    # ---- opening and recovery

    def _open(self) -> None:
        try:
            make_private_dirs(self.directory, owned=True)
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {self.directory}: {error.strerror}") from None
        if not self.directory.is_dir():
            raise SpoolError(f"spool directory {self.directory} is not a directory")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.directory} is not writable")
        ack = self._read_ack()
        if ack is not None:
            self._next_id = max(self._next_id, ack.segment_id + 1)
            self._lowest_id = min(self._lowest_id, ack.segment_id)
        try:
            entries = sorted(os.scandir(self.directory), key=lambda entry: entry.name)
        except OSError as error:
            raise SpoolError(f"cannot list spool directory {self.directory}: {error.strerror}") from None
        for entry in entries:
            if not entry.name.endswith(".seg"):
                continue
            path = Path(entry.path)
            try:
                segment_id = int(path.stem)
            except ValueError:
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir:
                log.warning("spool: %s is a directory, not a segment; skipped", path)
                continue
            self._next_id = max(self._next_id, segment_id + 1)
            self._lowest_id = min(self._lowest_id, segment_id)
            start = len(SEGMENT_MAGIC)
            if ack is not None:
                if segment_id < ack.segment_id:
                    path.unlink(missing_ok=True)  # delivered before the last run ended
                    continue
                if segment_id == ack.segment_id:
                    start = ack.offset
            self._recover_segment(segment_id, path, start)
        for leftover in self.directory.glob("*.tmp"):
            with contextlib.suppress(OSError):  # a directory of that name is left alone
                leftover.unlink(missing_ok=True)

    def _open_trusted(self, path: Path) -> tuple[int, os.stat_result] | None:
        """A read descriptor and its stat for a file found in the spool, if it can be trusted: a regular file of
        the sensor's user that nobody else may write. Anything else is moved to quarantine/ (None)."""
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as error:
            reason = "a symbolic link" if error.errno == errno.ELOOP else f"unreadable ({error.strerror})"
            self._quarantine(path, reason)
            return None
        info = os.fstat(fd)
        reason = None
        if not stat.S_ISREG(info.st_mode):
            reason = "not a regular file"
        elif info.st_uid != os.geteuid():
            reason = f"owned by uid {info.st_uid}, not by the sensor's user (uid {os.geteuid()})"
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            reason = f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
        if reason is not None:
            os.close(fd)
            self._quarantine(path, reason)
            return None
        return fd, info

    def _quarantine(self, path: Path, reason: str) -> None:
        """Moves a file the spool must not trust out of the way, never to be delivered: one line, one count."""
        self.quarantined += 1
        target = self._quarantine_target(path)
        try:
            os.rename(path, target)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(path)
            log.error("spool: %s is %s; it could not be moved to quarantine (%s), so it was removed",
                      path, reason, error.strerror)
            return
        log.error("spool: %s is %s; moved to %s and not delivered", path, reason, target)

    def _quarantine_target(self, path: Path) -> Path:
        directory = self.directory / QUARANTINE
        try:
            make_private_dirs(directory)
            info = os.lstat(directory)
            usable = stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
        except OSError:
            usable = False
        stamp = time.strftime("%Y%m%dT%H%M%S")
        if not usable:  # beside the original, under a name the spool never reads
            return path.with_name(f"{path.name}.quarantined-{stamp}-{os.getpid()}")
        target = directory / path.name
        if os.path.lexists(target):
            target = directory / f"{path.name}.{stamp}-{os.getpid()}-{self.quarantined}"
        return target

    def _read_ack(self) -> Position | None:
        opened = self._open_trusted(self.directory / "ack")
        if opened is None:
            return None
        fd, _ = opened
        try:
            data = os.read(fd, ACK_RECORD.size + 1)
        except OSError:
            data = b""
        finally:
            os.close(fd)
        if len(data) != ACK_RECORD.size:
            log.warning("spool %s: ignoring a damaged ack file; undelivered data is sent again", self.directory)
            return None
        return Position(*ACK_RECORD.unpack(data))

    def _recover_segment(self, segment_id: int, path: Path, start: int) -> None:
        opened = self._open_trusted(path)
        if opened is None:
            return
        fd, info = opened
        try:
            data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        except OSError as error:
            log.error("spool: cannot read segment %s (%s); skipped", path.name, error.strerror)
            os.close(fd)
            return
        os.close(fd)
        legacy = data.startswith(LEGACY_MAGIC)
        if not legacy and not data.startswith(SEGMENT_MAGIC):
            log.warning("spool: %s is not a spool segment (%d bytes); removed, its events (if any) counted as one "
                        "damaged stretch", path.name, len(data))
            self.damaged_unknown += 1
            path.unlink(missing_ok=True)
            return
        start = max(len(SEGMENT_MAGIC), min(start, len(data)))
        if legacy:
            payloads, end, damaged = scan_frames(data, start, legacy=True)
            survey = Survey(frames=len(payloads), end=end)
            if end < len(data):
                # The first format has no way back in after damage: the rest of the segment is lost.
                survey.unknown = survey.stretches = 1
        else:
            survey = survey_frames(data, start)
        if survey.stretches:
            self.dropped_corrupt += survey.lost
            self.damaged_unknown += survey.unknown
            unknown = f", plus {survey.unknown} damaged stretch of unknown count" if survey.unknown else ""
            log.error("spool: segment %s damaged (%d damaged stretches): %d events discarded%s; the %d intact "
                      "events kept", path.name, survey.stretches, survey.lost, unknown, survey.frames)
        if survey.end < len(data) and survey.end >= start:
            # Nothing intact after this: cut it off, so appends or a restart never meet it again.
            try:
                fd = os.open(path, os.O_WRONLY | _OPEN_FLAGS)
                try:
                    os.ftruncate(fd, survey.end)
                finally:
                    os.close(fd)
            except OSError as error:
                log.warning("spool: cannot cut the damaged end of %s: %s", path.name, error.strerror)
        if not survey.frames:
            path.unlink(missing_ok=True)
            return
        segment = _Segment(segment_id, path, survey.end, start, survey.frames, identity=(info.st_dev, info.st_ino),
                           legacy=legacy, next_seq=survey.last_seq + 1, skips=survey.skips)
        self._segments[segment_id] = segment
        self._total_bytes += survey.end
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
                "spool_damaged_unknown": self.damaged_unknown,
                "spool_quarantined": self.quarantined,
            }

    @property
    def dropped(self) -> int:
        return self.dropped_oldest + self.dropped_newest + self.dropped_disk_full

    # ---- writing

    def append(self, payloads: Sequence[bytes]) -> int:
        """Adds payloads at the end; returns how many were kept (the rest are counted as dropped)."""
        if not payloads:
            return 0
        size, count = sum(FRAME_HEADER.size + len(payload) for payload in payloads), len(payloads)
        with self._lock:
            if not self._make_room(size):
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
                data, _ = encode_frames(payloads, tail.next_seq)
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
            tail.next_seq += count
            self.appended += count
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
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | _OPEN_FLAGS
        try:
            fd = os.open(path, flags, FILE_MODE)
        except FileExistsError:
            # Not made by this spool (every id it used is below _next_id): someone else's, never written into.
            self._quarantine(path, "a file the spool did not make, in the place of a new segment")
            fd = os.open(path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # the umask cannot loosen it, nor make it unreadable to us
            os.set_blocking(fd, True)
            _write_all(fd, SEGMENT_MAGIC)
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = _Segment(segment_id, path, len(SEGMENT_MAGIC), len(SEGMENT_MAGIC), 0, sealed=False,
                           synced=False, identity=(info.st_dev, info.st_ino))
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
                fd = os.open(segment.path, os.O_RDONLY | _OPEN_FLAGS)
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
            fd, info = create_exclusive(temp)
            try:
                _write_all(fd, SEGMENT_MAGIC + data)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except (OSError, StateFileError) as error:
            if not isinstance(error, StateFileError):
                temp.unlink(missing_ok=True)
            with self._lock:
                self._note_write_error(error, count)
            return 0
        with self._lock:
            segment = _Segment(segment_id, path, len(SEGMENT_MAGIC) + len(data), len(SEGMENT_MAGIC), count,
                               identity=(info.st_dev, info.st_ino), next_seq=count)
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
                first_seq = front.next_seq
        if front is None:
            return self.push_front(payloads)
        data, count = encode_frames(payloads, first_seq)
        # Written outside the lock, as push_front does; the event loop may drop this segment meanwhile.
        try:
            fd = self._open_segment(front, os.O_WRONLY | os.O_APPEND)
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
            front.next_seq += count
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
                if self._cursor_offset in segment.skips:
                    self._cursor_offset = segment.skips[self._cursor_offset]  # damage found (and counted) before
                    continue
                offset = self._cursor_offset
                # Up to the next damaged stretch known: the frames before it are read as usual.
                size = min((start for start in segment.skips if start > offset), default=segment.size)
                try:
                    fd = self._reader_fd(segment)
                except OSError as error:
                    self._lose_segment(segment, error)
                    continue
                segment_id = segment.id
                legacy = segment.legacy
                frames_left = segment.frames - segment.frames_read
                segment_size = segment.size
            # Read outside the lock: the writer appends beyond `size`, never inside it.
            header_size = LEGACY_FRAME_HEADER.size if legacy else FRAME_HEADER.size
            want = min(size - offset, max(max_bytes, 1) + header_size)
            data = os.pread(fd, want, offset)
            payloads, used, damaged = scan_frames(data, 0, legacy, max(max_items, 1))
            if not payloads and not damaged and want < size - offset:
                data = os.pread(fd, size - offset, offset)  # one frame larger than max_bytes
                payloads, used, damaged = scan_frames(data, 0, legacy, max(max_items, 1))
            survey = None
            if damaged and not payloads and not legacy:
                # Damaged since it was written: find every intact frame in the rest of the segment at once.
                survey = survey_frames(os.pread(fd, segment_size - offset, offset), 0, first=0)
            payloads, used = self._limit(payloads, max_items, max_bytes, header_size)
            with self._lock:
                current = self._segments.get(segment_id)
                if current is None or self._cursor_id != segment_id or self._cursor_offset != offset:
                    continue  # dropped (and counted) or pushed in front of while we read: read again
                if damaged and not payloads:
                    self._note_damage(current, offset, segment_size, frames_left, survey)
                    continue
                self._cursor_offset = offset + used
                current.frames_read += len(payloads)
                return payloads, Position(segment_id, self._cursor_offset)

    def _note_damage(self, segment: _Segment, offset: int, size: int, frames_left: int,
                     survey: Survey | None) -> None:
        """Damage met while reading from offset (bytes up to size looked at): skips over it, one line, counted."""
        if survey is None:  # first format: no way back in, the rest of the segment is lost
            lost = frames_left
            segment.frames_read = segment.frames
            self._total_bytes -= segment.size - offset
            segment.size = offset
            kept = 0
        else:
            # Every frame still expected between offset and size that is not intact now was taken by the damage.
            lost = max(0, frames_left - survey.frames)
            for start, end in survey.skips.items():
                segment.skips[offset + start] = offset + end
            if survey.end < size - offset:
                segment.skips[offset + survey.end] = size  # nothing intact after it, up to what was looked at
            segment.frames -= lost
            kept = survey.frames
        self.dropped_corrupt += lost
        log.error("spool: segment %s damaged after byte %d: %d events discarded; the %d intact events after it "
                  "are kept", segment.path.name, offset, lost, kept)

    def _lose_segment(self, segment: _Segment, error: OSError) -> None:
        """The segment's file cannot be read back (removed, or replaced by someone else): its unread events are
        lost, counted, and a file put in its place is never read."""
        lost = segment.frames - segment.frames_read
        self.dropped_corrupt += lost
        log.error("spool: segment %s cannot be read (%s): %d events lost", segment.path.name, error.strerror, lost)
        if segment.id == self._tail_id:
            self._seal_tail()
        path = segment.path
        segment.path = path.with_name(path.name + ".gone")  # _forget must not remove what now has its name
        self._forget(segment)
        if isinstance(error, _Replaced) and os.path.lexists(path):
            self._quarantine(path, "not the file the spool wrote")

    @staticmethod
    def _limit(payloads: list[bytes], max_items: int, max_bytes: int,
               header_size: int = FRAME_HEADER.size) -> tuple[list[bytes], int]:
        kept = []
        total = 0
        used = 0
        for payload in payloads:
            if kept and (len(kept) >= max_items or total + len(payload) > max_bytes):
                break
            kept.append(payload)
            total += len(payload)
            used += header_size + len(payload)
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
                self._read_fd = None
                self._read_fd_id = None
            self._read_fd = self._open_segment(segment, os.O_RDONLY)
            self._read_fd_id = segment.id
        assert self._read_fd is not None
        return self._read_fd

    @staticmethod
    def _open_segment(segment: _Segment, flags: int) -> int:
        """Opens a segment's file again by name, only if it is still the file written or checked before."""
        try:
            fd = os.open(segment.path, flags | _OPEN_FLAGS)
        except FileNotFoundError:
            raise _Replaced(segment.path) from None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):
                raise _Replaced(segment.path) from None
            raise
        info = os.fstat(fd)
        if segment.identity is not None and (info.st_dev, info.st_ino) != segment.identity:
            os.close(fd)
            raise _Replaced(segment.path)
        os.set_blocking(fd, True)
        return fd

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
            fd, _ = create_exclusive(temp)  # never through a link planted at that name
            try:
                _write_all(fd, ACK_RECORD.pack(position.segment_id, position.offset))
            finally:
                os.close(fd)
            os.replace(temp, path)
        except (OSError, StateFileError) as error:
            # Not fatal: an older ack only means delivered events are sent again (and deduplicated by id).
            if not self._ack_failing and not self._disk_full:  # a full disk was reported already
                self._ack_failing = True
                log.warning("spool %s: cannot record delivery progress: %s", self.directory,
                            getattr(error, "strerror", None) or error)
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
