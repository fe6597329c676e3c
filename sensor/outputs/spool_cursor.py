"""The reading side of the spool: a cursor that moves from the acknowledged position through the segments, over
damage (skipped, counted, one line) and past segments that cannot be read back."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from sensor.outputs.spool_files import Position, Replaced, Segment, SpoolFiles, open_segment
from sensor.outputs.spool_frames import (
    FRAME_HEADER,
    LEGACY_FRAME_HEADER,
    Survey,
    limit_batch,
    scan_frames,
    survey_frames,
)

log = logging.getLogger("sensor.outputs.spool")  # the spool's lines keep the logger name they always had


class SpoolCursor:
    """Mixed into Spool, whose state (under its lock) it reads and moves; one reader thread calls `read`."""

    _lock: threading.Lock
    _files: SpoolFiles
    _segments: dict[int, Segment]
    _order: list[int]
    _stale_fds: list[int]
    _read_fd: int | None
    _read_fd_id: int | None
    _cursor_id: int | None
    _cursor_offset: int
    _tail_id: int | None
    _total_bytes: int
    dropped_corrupt: int
    _seal_tail: Callable[..., None]
    _forget: Callable[[Segment], None]

    def read(self, max_items: int, max_bytes: int,
             until: Position | None = None) -> tuple[list[bytes], Position | None]:
        """Up to max_items payloads (at least one if any is unread) after the last read, oldest first; none
        beyond `until` when it is given."""
        while True:
            with self._lock:
                while self._stale_fds:
                    os.close(self._stale_fds.pop())
                segment = self._current_segment()
                if segment is None or (until is not None and segment.id > until.segment_id):
                    return [], None
                if self._cursor_offset in segment.skips:
                    self._cursor_offset = segment.skips[self._cursor_offset]  # damage found (and counted) before
                    continue
                offset = self._cursor_offset
                # Up to the next damaged stretch known: the frames before it are read as usual.
                size = min((start for start in segment.skips if start > offset), default=segment.size)
                if until is not None and segment.id == until.segment_id:
                    size = min(size, until.offset)
                    if offset >= size:
                        return [], None
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
            payloads, used = limit_batch(payloads, max_items, max_bytes, header_size)
            with self._lock:
                current = self._segments.get(segment_id)
                if current is None or self._cursor_id != segment_id or self._cursor_offset != offset:
                    continue  # dropped (and counted) while we read: read again
                if damaged and not payloads:
                    self._note_damage(current, offset, segment_size, frames_left, survey)
                    continue
                self._cursor_offset = offset + used
                current.frames_read += len(payloads)
                return payloads, Position(segment_id, self._cursor_offset)

    def _note_damage(self, segment: Segment, offset: int, size: int, frames_left: int,
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

    def _lose_segment(self, segment: Segment, error: OSError) -> None:
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
        if isinstance(error, Replaced) and os.path.lexists(path):
            self._files.quarantine(path, "not the file the spool wrote")

    def _current_segment(self) -> Segment | None:
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

    def _reader_fd(self, segment: Segment) -> int:
        if self._read_fd_id != segment.id:
            if self._read_fd is not None:
                os.close(self._read_fd)
                self._read_fd = None
                self._read_fd_id = None
            self._read_fd = open_segment(segment, os.O_RDONLY)
            self._read_fd_id = segment.id
        assert self._read_fd is not None
        return self._read_fd
