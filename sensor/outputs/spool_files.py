"""The spool directory's files: segments found at start (checked, recovered or quarantined), new segments, and
the ack file.

Layout (0700, files 0600 whatever the umask):
  <20-digit id>.seg  segments, read in id order (frames as sensor.outputs.spool_frames describes).
  ack                the commit point `<u64 segment id><u64 offset>`: everything before it was delivered.
  quarantine/        segments (and an ack file) found at start that another user owns or may write, moved
                     aside and never delivered: under a loose umask another user could otherwise plant events.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from sensor.config.statefiles import FILE_MODE, StateFileError, create_exclusive, make_private_dirs
from sensor.outputs.spool_frames import LEGACY_MAGIC, SEGMENT_MAGIC, Survey, scan_frames, survey_frames

QUARANTINE = "quarantine"
OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
ACK_RECORD = struct.Struct("<QQ")

log = logging.getLogger("sensor.outputs.spool")  # the spool's lines keep the logger name they always had


class SpoolError(Exception):
    """The spool directory cannot be used at all (not creatable, not writable)."""


class Replaced(OSError):
    """A segment's file is no longer the one the spool wrote (removed, or replaced by someone else)."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ESTALE, "segment file removed or replaced by another", str(path))


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading stopped: acking it commits every payload before it."""

    segment_id: int
    offset: int

    def passes(self, other: Position) -> bool:
        """True if this position lies beyond `other` in the stream."""
        return (self.segment_id, self.offset) > (other.segment_id, other.offset)


@dataclass(slots=True)
class Segment:
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



def segment_path(directory: Path, segment_id: int) -> Path:
    return directory / f"{segment_id:020d}.seg"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def open_segment(segment: Segment, flags: int) -> int:
    """Opens a segment's file again by name, only if it is still the file written or checked before."""
    try:
        fd = os.open(segment.path, flags | OPEN_FLAGS)
    except FileNotFoundError:
        raise Replaced(segment.path) from None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO):
            raise Replaced(segment.path) from None
        raise
    info = os.fstat(fd)
    if segment.identity is not None and (info.st_dev, info.st_ino) != segment.identity:
        os.close(fd)
        raise Replaced(segment.path)
    os.set_blocking(fd, True)
    return fd


@dataclass(slots=True)
class Recovered:
    """What start-up found in one segment file."""

    segment: Segment | None  # None: nothing left to deliver in it (or not trusted)
    lost: int = 0  # events in damaged frames, counted exactly
    unknown: int = 0  # damaged stretches whose event count cannot be known


class SpoolFiles:
    """The files of one spool directory. Only the spool calls it, under its lock where state is shared."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.quarantined = 0  # files moved to quarantine/ (another user's, or writable by others)
        self._ack_failing = False
        try:
            make_private_dirs(self.directory, owned=True)
        except OSError as error:
            raise SpoolError(f"cannot create spool directory {self.directory}: {error.strerror}") from None
        if not self.directory.is_dir():
            raise SpoolError(f"spool directory {self.directory} is not a directory")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise SpoolError(f"spool directory {self.directory} is not writable")

    def segment_files(self) -> list[tuple[int, Path]]:
        """(id, path) of the segment files present, in id order."""
        try:
            entries = sorted(os.scandir(self.directory), key=lambda entry: entry.name)
        except OSError as error:
            raise SpoolError(f"cannot list spool directory {self.directory}: {error.strerror}") from None
        found = []
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
            found.append((segment_id, path))
        return found

    def remove_leftovers(self) -> None:
        for leftover in self.directory.glob("*.tmp"):
            with contextlib.suppress(OSError):  # a directory of that name is left alone
                leftover.unlink(missing_ok=True)

    def open_trusted(self, path: Path) -> tuple[int, os.stat_result] | None:
        """A read descriptor and its stat for a file found in the spool, if it can be trusted: a regular file of
        the sensor's user that nobody else may write. Anything else is moved to quarantine/ (None)."""
        try:
            fd = os.open(path, os.O_RDONLY | OPEN_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as error:
            reason = "a symbolic link" if error.errno == errno.ELOOP else f"unreadable ({error.strerror})"
            self.quarantine(path, reason)
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
            self.quarantine(path, reason)
            return None
        return fd, info

    def quarantine(self, path: Path, reason: str) -> None:
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

    def read_ack(self) -> Position | None:
        opened = self.open_trusted(self.directory / "ack")
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

    def recover_segment(self, segment_id: int, path: Path, start: int) -> Recovered:
        """Checks a segment found at start and reads it from `start`: damage is counted and skipped, a
        damaged end cut off, an empty or foreign file removed."""
        opened = self.open_trusted(path)
        if opened is None:
            return Recovered(None)
        fd, info = opened
        try:
            data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        except OSError as error:
            log.error("spool: cannot read segment %s (%s); skipped", path.name, error.strerror)
            os.close(fd)
            return Recovered(None)
        os.close(fd)
        legacy = data.startswith(LEGACY_MAGIC)
        if not legacy and not data.startswith(SEGMENT_MAGIC):
            log.warning("spool: %s is not a spool segment (%d bytes); removed, its events (if any) counted as one "
                        "damaged stretch", path.name, len(data))
            path.unlink(missing_ok=True)
            return Recovered(None, unknown=1)
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
            unknown = f", plus {survey.unknown} damaged stretch of unknown count" if survey.unknown else ""
            log.error("spool: segment %s damaged (%d damaged stretches): %d events discarded%s; the %d intact "
                      "events kept", path.name, survey.stretches, survey.lost, unknown, survey.frames)
        if survey.end < len(data) and survey.end >= start:
            # Nothing intact after this: cut it off, so appends or a restart never meet it again.
            try:
                fd = os.open(path, os.O_WRONLY | OPEN_FLAGS)
                try:
                    os.ftruncate(fd, survey.end)
                finally:
                    os.close(fd)
            except OSError as error:
                log.warning("spool: cannot cut the damaged end of %s: %s", path.name, error.strerror)
        if not survey.frames:
            path.unlink(missing_ok=True)
            return Recovered(None, survey.lost, survey.unknown)
        segment = Segment(segment_id, path, survey.end, start, survey.frames, identity=(info.st_dev, info.st_ino),
                          legacy=legacy, next_seq=survey.last_seq + 1, skips=survey.skips)
        return Recovered(segment, survey.lost, survey.unknown)

    def write_ack(self, position: Position, quiet: bool = False) -> None:
        """Moves the commit point with rename. `quiet`: a failure was reported already (a full disk)."""
        path = self.directory / "ack"
        temp = self.directory / "ack.tmp"
        try:
            fd, _ = create_exclusive(temp)  # never through a link planted at that name
            try:
                write_all(fd, ACK_RECORD.pack(position.segment_id, position.offset))
            finally:
                os.close(fd)
            os.replace(temp, path)
        except (OSError, StateFileError) as error:
            # Not fatal: an older ack only means delivered events are sent again (and deduplicated by id).
            if not self._ack_failing and not quiet:
                self._ack_failing = True
                log.warning("spool %s: cannot record delivery progress: %s", self.directory,
                            getattr(error, "strerror", None) or error)
            return
        self._ack_failing = False

    def create_segment(self, segment_id: int) -> tuple[Segment, int]:
        """A new, empty tail segment and its append descriptor."""
        path = segment_path(self.directory, segment_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | OPEN_FLAGS
        try:
            fd = os.open(path, flags, FILE_MODE)
        except FileExistsError:
            # Not made by this spool (every id it used is below the new one): someone else's, never written into.
            self.quarantine(path, "a file the spool did not make, in the place of a new segment")
            fd = os.open(path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # the umask cannot loosen it, nor make it unreadable to us
            os.set_blocking(fd, True)
            write_all(fd, SEGMENT_MAGIC)
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        segment = Segment(segment_id, path, len(SEGMENT_MAGIC), len(SEGMENT_MAGIC), 0, sealed=False,
                          synced=False, identity=(info.st_dev, info.st_ino))
        return segment, fd

    def fsync(self, segments: list[Segment]) -> None:
        """Flushes segments to stable storage (a kill -9 does not need it, a power cut does)."""
        for segment in segments:
            try:
                fd = os.open(segment.path, os.O_RDONLY | OPEN_FLAGS)
            except OSError:
                continue  # dropped or delivered meanwhile
            try:
                os.fsync(fd)
            except OSError as error:
                log.warning("spool %s: fsync failed: %s", self.directory, error.strerror)
            finally:
                os.close(fd)
