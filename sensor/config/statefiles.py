"""Files and directories the sensor writes (spool, ack, dead letters, file outputs, recordings, the ready file),
created with explicit modes and opened without following links.

Files are 0600 and directories the sensor creates 0700 whatever the umask: the mode is set again with fchmod
after creation, because the umask can only take bits away and an `umask 000` run must not leave captured
command lines readable (or a spool writable) by other users. A path is opened with O_NOFOLLOW, so a symbolic
link planted in a world-writable directory (/tmp) is refused rather than followed to a file of someone else's
choosing, and with O_NONBLOCK, so a FIFO planted there cannot block the open; only a regular file owned by the
sensor's user is written to.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class StateFileError(Exception):
    """A path the sensor would write is unsafe (a symbolic link, not a regular file, another user's file) or
    cannot be used at all. The message is one line naming the path and the reason."""


def _euid() -> int:
    return os.geteuid()


def make_private_dirs(directory: Path, *, owned: bool = False) -> None:
    """Creates `directory` and its missing parents with mode 0700 (set again after creation, so the umask does
    not matter). Directories that exist keep their mode: the user chose them (/var/log). With `owned` (a state
    directory of the sensor's own, like the spool) one warning when other users can write to it."""
    missing = []
    current = Path(directory)
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by someone else: treated as existing
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)
    if owned and not missing:
        warn_if_others_can_write(Path(directory))


def warn_if_others_can_write(directory: Path) -> bool:
    """One warning when group or others may write to a state directory; True if so."""
    try:
        info = os.stat(directory)
    except OSError:
        return False
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("state directory %s is writable by group or others (mode %04o): other users could plant or "
                    "remove the sensor's files there; run chmod 700 %s", directory, stat.S_IMODE(info.st_mode),
                    directory)
        return True
    return False


def check_regular_and_ours(fd: int, path: Path | str) -> os.stat_result:
    """fstat of an open descriptor; StateFileError unless it is a regular file of the sensor's user."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StateFileError(f"{path} is not a regular file: refusing to use it")
    if info.st_uid != _euid():
        raise StateFileError(f"{path} belongs to uid {info.st_uid}, not to the sensor's user (uid {_euid()}): "
                             "refusing to use it")
    return info


def open_private(path: Path | str, flags: int, *, chmod_existing: bool = True) -> int:
    """os.open for writing a state or output file: never through a symbolic link, only a regular file of the
    sensor's user, mode 0600 when created (and with `chmod_existing`, when it existed too). Returns a
    blocking descriptor. StateFileError when the path is unsafe; OSError for every other failure."""
    created = False
    if flags & os.O_CREAT and not flags & os.O_EXCL:
        # Created here, or it existed: told apart by trying to create it first.
        try:
            fd = os.open(path, (flags | os.O_EXCL) & ~os.O_TRUNC | _OPEN_FLAGS, FILE_MODE)
            created = True
        except FileExistsError:
            fd = _open_existing(path, flags & ~os.O_CREAT)
    else:
        fd = _open_existing(path, flags) if not flags & os.O_CREAT else _create(path, flags)
        created = bool(flags & os.O_CREAT)
    try:
        check_regular_and_ours(fd, path)
        if created or chmod_existing:
            os.fchmod(fd, FILE_MODE)
        if flags & os.O_TRUNC and not created:
            os.ftruncate(fd, 0)  # only now that the file is known to be ours
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create(path: Path | str, flags: int) -> int:
    try:
        return os.open(path, flags | _OPEN_FLAGS, FILE_MODE)
    except FileExistsError:
        if os.path.islink(path):
            raise StateFileError(f"{path} is a symbolic link: refusing to follow it") from None
        raise


def _open_existing(path: Path | str, flags: int) -> int:
    try:
        # O_TRUNC waits for the ownership check: another user's file must not be emptied either.
        return os.open(path, flags & ~os.O_TRUNC | _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise StateFileError(f"{path} is a symbolic link: refusing to follow it") from None
        if error.errno == errno.ENXIO:
            raise StateFileError(f"{path} is not a regular file (a FIFO or socket): refusing to use it") from None
        raise


def create_exclusive(path: Path | str, *, replace_stale: bool = True) -> tuple[int, os.stat_result]:
    """Creates a new file at `path` with O_EXCL and O_NOFOLLOW, mode 0600; returns the descriptor and its stat.

    A regular file of the sensor's user already there (a stale file of an earlier run) is removed and the
    creation tried once more; anything else there (a symbolic link, another user's file, a directory) is a
    StateFileError. O_EXCL makes the file the one created here even if a link is planted between the two steps.
    """
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, FILE_MODE)
        except FileExistsError:
            describe_unsafe(path)
            if not replace_stale or attempt:
                raise StateFileError(f"{path} exists and could not be replaced") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        try:
            os.fchmod(fd, FILE_MODE)
            os.set_blocking(fd, True)
            return fd, os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
    raise AssertionError("unreachable")


def describe_unsafe(path: Path | str) -> None:
    """StateFileError when what is at `path` (not followed) is not a regular file of the sensor's user."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise StateFileError(f"{path} is a symbolic link: refusing to follow it")
    if not stat.S_ISREG(info.st_mode):
        raise StateFileError(f"{path} exists and is not a regular file: refusing to use it")
    if info.st_uid != _euid():
        raise StateFileError(f"{path} belongs to uid {info.st_uid}, not to the sensor's user (uid {_euid()}): "
                             "refusing to use it")


def check_writable_directory(path: Path | str, what: str) -> None:
    """StateFileError unless the directory that will hold `path` exists and the sensor may create files in it,
    and nothing unsafe sits at `path` itself."""
    directory = Path(path).parent
    if not directory.is_dir():
        raise StateFileError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StateFileError(f"{what} {path}: directory {directory} is not writable")
    try:
        describe_unsafe(path)
    except StateFileError as error:
        raise StateFileError(f"{what} {error}") from None


class ReadyFile:
    """The file that says the probes are attached: checked before they attach, created (never through a link)
    once they are, removed at exit only if it is still the file created here."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._identity: tuple[int, int] | None = None

    def check(self) -> None:
        check_writable_directory(self.path, "ready file")

    def create(self, text: str) -> None:
        try:
            fd, info = create_exclusive(self.path)
        except StateFileError as error:
            raise StateFileError(f"ready file {error}") from None
        except OSError as error:
            raise StateFileError(f"ready file {self.path}: {error.strerror}") from None
        try:
            os.write(fd, text.encode())
            info = os.fstat(fd)
        finally:
            os.close(fd)
        self._identity = _identity(info)

    def remove(self) -> None:
        if self._identity is None:
            return
        with contextlib.suppress(OSError):
            if _identity(os.lstat(self.path)) == self._identity:
                os.unlink(self.path)
        self._identity = None


def _identity(info: os.stat_result) -> tuple[int, ...]:
    # The inode number alone can be reused at once by a file made after ours was removed.
    return info.st_dev, info.st_ino, info.st_uid, info.st_ctime_ns
