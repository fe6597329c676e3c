"""Makes sure tracefs is mounted: BCC attaches tracepoints through it, and some hosts boot without it."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")


class TracefsError(Exception):
    pass


def tracefs_mounted() -> Path | None:
    for candidate in (TRACEFS, DEBUGFS_TRACING):
        try:
            if (candidate / "events").is_dir():
                return candidate
        except PermissionError as exc:
            raise TracefsError(f"{candidate} is not readable ({exc.strerror}): run as root") from exc
    return None


def ensure_tracefs() -> Path:
    found = tracefs_mounted()
    if found is not None:
        return found
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise TracefsError(
            f"tracefs is not mounted and mounting it at {TRACEFS} failed ({os.strerror(err)}): "
            f"run 'mount -t tracefs nodev {TRACEFS}' as root, or mount the host's {TRACEFS} into the container"
        )
    return TRACEFS
