"""Loads bpf/sensor.c with BCC, attaches it, and turns ring-buffer records into sensor.model.records types.

The only module that imports bcc.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sensor.model.records import LossRecord, Record
from sensor.probe import ringbuf
from sensor.probe.btf import BTFError, KernelBTF
from sensor.probe.capabilities import privileges_problem
from sensor.probe.kernel_headers import HeaderError, ensure_kernel_headers
from sensor.probe.kernel_offsets import kernel_macros
from sensor.probe.layout import (
    LOSS_ARGS_READ_FAILED,
    LOSS_ARGS_TRUNCATED,
    LOSS_COUNTERS,
    LOSS_PATH_TRUNCATED,
    LOSS_RINGBUF_FULL,
    DecodeError,
    decode,
    static_asserts,
)
from sensor.probe.ringbuf import RingBufferReader
from sensor.probe.tracefs import TracefsError, ensure_tracefs

log = logging.getLogger("container_sensor")


class ProbeError(Exception):
    """The probe cannot be loaded or attached; the message says why and what to do."""


def bpf_source_dir() -> Path:
    """SENSOR_BPF_DIR, else bpf/ beside the package (a source checkout or an editable install), else the copy a
    regular install puts under <prefix>/share/container-sensor/bpf."""
    override = os.environ.get("SENSOR_BPF_DIR")
    if override:
        return Path(override)
    beside = Path(__file__).resolve().parents[2] / "bpf"
    if (beside / "sensor.c").is_file():
        return beside
    return Path(sys.prefix) / "share" / "container-sensor" / "bpf"


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """The probe's section in the kernel's units; sensor.app.probe_options makes it from the configuration,
    where the defaults are (sensor.config.settings.Config.probe_*)."""

    ringbuf_pages: int  # the ring buffer's size in pages; a power of two
    args_max: int  # argv bytes kept per exec; a power of two
    ring_reader: str  # "mmap", "libbpf" or "auto" (sensor/probe/ringbuf.py says why and where)


class Probe:
    """The loaded BPF program. `poll` delivers each record to the callback given at construction."""

    def __init__(self, on_record: Callable[[Record], None], options: ProbeOptions) -> None:
        self._on_record = on_record
        self._options = options
        self._bpf = None
        self._reader: RingBufferReader | None = None
        self.decode_errors = 0
        self.handler_errors = 0  # records the pipeline failed on: lost, counted, the loop goes on
        self.records = 0

    def load(self) -> None:
        opts = self._options
        if opts.ringbuf_pages & (opts.ringbuf_pages - 1):
            raise ProbeError(f"ring buffer pages must be a power of two, not {opts.ringbuf_pages}")
        problem = privileges_problem()
        if problem is not None:
            detail, fix = problem
            raise ProbeError(f"not enough privileges to load BPF programs: {detail}; {fix}")
        try:
            ensure_tracefs()
            macros = kernel_macros(KernelBTF.from_file())
            ensure_kernel_headers()
        except (TracefsError, BTFError, HeaderError) as exc:
            raise ProbeError(str(exc)) from exc
        try:
            from bcc import BPF  # the one place bcc is imported
        except ImportError as exc:
            raise ProbeError(
                "the bcc Python module is missing: install Debian's python3-bpfcc and use a venv made with "
                "'/usr/bin/python3 -m venv --system-site-packages'"
            ) from exc
        source_dir = bpf_source_dir()
        source = source_dir / "sensor.c"
        if not source.is_file():
            raise ProbeError(f"BPF source not found at {source} (set SENSOR_BPF_DIR)")
        cflags = [f"-I{source_dir}", f"-DRINGBUF_PAGES={opts.ringbuf_pages}", f"-DARGS_MAX={opts.args_max}"]
        cflags += [f"-D{name}={value}" for name, value in macros.items()]
        # sensor/probe/layout.py's checks of every record member's offset and size, compiled for the BPF target
        # itself: a sensor.h that does not match the decoder fails here, naming the member, and sends no records.
        # BCC reads src_file into text the same way, so the program is the same.
        text = source.read_bytes() + b"\n" + static_asserts().encode()
        try:
            self._bpf = BPF(text=text, cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception on compile or load failure
            raise ProbeError(f"cannot compile or load the BPF program {source}: {exc}") from exc
        reader = opts.ring_reader
        if reader == "mmap" and not ringbuf.supported():
            raise ProbeError(f"probe.ring_reader mmap needs an x86 CPU, not {platform.machine()}: use libbpf or auto")
        try:
            if reader == "mmap" or (reader == "auto" and ringbuf.supported()):
                self._reader = RingBufferReader(self._bpf["events"].map_fd)
            else:
                self._bpf["events"].open_ring_buffer(self._callback)
        except Exception as exc:
            raise ProbeError(f"cannot open the BPF ring buffer: {exc}") from exc

    @property
    def reader_name(self) -> str:
        return "mmap" if self._reader is not None else "libbpf"

    def _callback(self, _ctx: object, data: int, size: int) -> int:
        self._handle(ctypes.string_at(data, size))
        return 0

    def _handle(self, raw: bytes) -> None:
        try:
            record = decode(raw)
        except Exception as error:  # DecodeError, or a decoder bug a hostile record found: lost, never fatal
            self.decode_errors += 1
            if self.decode_errors == 1:
                log.error("a ring-buffer record of %d bytes could not be decoded and is counted as lost: %s%s",
                          len(raw), "" if isinstance(error, DecodeError) else f"{type(error).__name__}: ", error)
            return
        self.records += 1
        try:
            self._on_record(record)
        except Exception as error:  # one record the pipeline cannot take must not stop the sensor
            self.handler_errors += 1
            if self.handler_errors == 1:
                log.error("a %s record could not be processed and is counted as lost: %s: %s",
                          type(record).__name__, type(error).__name__, error)

    def poll(self, timeout_ms: int) -> None:
        """Waits up to timeout_ms for a wake-up, then delivers everything in the ring buffer.

        The probe wakes the consumer only every few records (bpf/sensor.c WAKEUP_EVERY) and libbpf's poll only
        reads rings that woke it, so the records written since the last wake-up are consumed explicitly."""
        assert self._bpf is not None
        if self._reader is not None:
            self._reader.wait(timeout_ms)
            self._reader.consume(self._handle)
            return
        self._bpf.ring_buffer_poll(timeout_ms)
        self._bpf.ring_buffer_consume()

    def drain(self) -> None:
        """Delivers what is already in the ring buffer without waiting."""
        if self._reader is not None:
            self._reader.consume(self._handle)
        elif self._bpf is not None:
            self._bpf.ring_buffer_consume()

    def backlog_bytes(self) -> int | None:
        """Bytes of records waiting in the ring buffer, for liveness; None with libbpf's reader, which hides it."""
        reader = self._reader
        return reader.backlog() if reader is not None else None

    def loss(self) -> LossRecord:
        """Kernel-side counters since load."""
        totals = [0] * LOSS_COUNTERS
        if self._bpf is not None:
            table = self._bpf["loss_counters"]
            for index in range(LOSS_COUNTERS):
                totals[index] = sum(table[ctypes.c_int(index)])
        return LossRecord(
            ktime_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            ringbuf_full=totals[LOSS_RINGBUF_FULL],
            argv_truncated=totals[LOSS_ARGS_TRUNCATED],
            argv_read_failed=totals[LOSS_ARGS_READ_FAILED],
            path_truncated=totals[LOSS_PATH_TRUNCATED],
        )

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
