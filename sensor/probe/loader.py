"""Loads bpf/sensor.c through a short-lived child process (sensor/probe/bcc_loader.py, the only module that
imports bcc), keeps the file descriptors it sends back, and turns ring-buffer records into sensor.model.records
types.

The long-lived sensor never imports bcc: BCC's LLVM would stay mapped for the life of the process (about 115 MB
resident) for a compile that takes a second. The child compiles, loads and attaches, sends the maps and the
attach links over a Unix socket and exits; the links held here keep the probes attached, and closing them (at
exit, or by the kernel when the sensor is killed) detaches them. Nothing is pinned, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sensor.model.records import ExecRecord, LossRecord, Record
from sensor.probe import ringbuf
from sensor.probe.capabilities import privileges_problem
from sensor.probe.layout import (
    LOSS_ARGS_READ_FAILED,
    LOSS_ARGS_TRUNCATED,
    LOSS_COUNTERS,
    LOSS_PATH_TRUNCATED,
    LOSS_RINGBUF_FULL,
    RECORD_EXEC,
    DecodeError,
    decode,
    env_filter,
    peek_exec,
)
from sensor.probe.libbpf import LibbpfError, LibbpfRingReader, percpu_u64_values
from sensor.probe.ringbuf import RingBufferReader, RingPeeker, RingPositions

log = logging.getLogger("container_sensor")

# A compile takes about a second on an idle machine and several on a saturated one.
LOAD_TIMEOUT_S = 120.0
MAX_DESCRIPTORS = 64
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


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


def env_from_proc(rec: ExecRecord, keep: re.Pattern[bytes], proc_root: str = "/proc") -> ExecRecord:
    """An exec whose environment was longer than the probe reads (padding can push a variable out of its window):
    the whole environment from /proc, while the process still runs that image (same start, same file), else the
    record as it came, still flagged."""
    base = f"{proc_root}/{rec.pid}"
    try:
        if rec.exe_ino and os.stat(f"{base}/exe").st_ino != rec.exe_ino:
            return rec
        with open(f"{base}/environ", "rb") as environ:
            blob = environ.read(1 << 20)
        if rec.exe_ino and os.stat(f"{base}/exe").st_ino != rec.exe_ino:
            return rec  # it exec'd again while being read
    except OSError:
        return rec
    return replace(rec, env_vars=tuple(keep.findall(blob)), env_truncated=False)


# Bytes of each exec's environment the probe reads when variables are configured: most environments fit (a login
# shell's is 2-3 KB, a container's less); a longer one is cut, and its documents say so (env_vars_truncated).
ENV_MAX_BYTES = 8192


@dataclass(frozen=True, slots=True)
class ProbeOptions:
    """The probe's section in the kernel's units; sensor.app.probe_options makes it from the configuration,
    where the defaults are (sensor.config.settings.Config.probe_*)."""

    ringbuf_pages: int  # the ring buffer's size in pages; a power of two
    args_max: int  # argv bytes kept per exec; a power of two
    ring_reader: str  # "mmap", "libbpf" or "auto" (= libbpf; sensor/probe/ringbuf.py says why)
    cred_events: bool = False  # probe set*id and setsid calls where the kernel has syscall tracepoints
    net_events: bool = False  # probe TCP connects and accepts where the kernel has the tracepoints
    env_vars: tuple[str, ...] = ()  # environment variables kept per exec (process.env_vars); () reads none
    fork_events: bool = False  # send every fork at once (fork documents) instead of only the forks needed
    module_events: bool = False  # probe module loads where the kernel has module:module_load


# Records handled between two looks ahead in the ring (about a millisecond of handling): the look at the
# records written since the last one costs a few loads when there are none.
PEEK_EVERY = 16


class Probe:
    """The loaded BPF program, held as file descriptors. `poll` delivers each record to the callback given at
    construction."""

    def __init__(self, on_record: Callable[[Record], None], options: ProbeOptions,
                 look_ahead: Callable[[tuple[int, int, int, int, int, int]], None] | None = None) -> None:
        self._on_record = on_record
        # shown each exec record waiting in the ring before any is handled (peek_exec's tuple): what must be
        # done while the process may still run (the ssh identity's hold on the executed file) is not delayed by
        # the records ahead of it
        self._look_ahead = look_ahead
        self._peeker: RingPeeker | None = None
        self._since_peek = 0
        self.look_ahead_errors = 0
        self._options = options
        self._maps: dict[str, int] = {}
        self._links: dict[str, int] = {}
        self._reader: RingBufferReader | None = None
        self._libbpf_reader: LibbpfRingReader | None = None
        self._positions: RingPositions | None = None
        self._env_filter = env_filter(options.env_vars)
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
        reader = opts.ring_reader
        if reader == "mmap" and not ringbuf.supported():
            raise ProbeError(f"probe.ring_reader mmap needs an x86 CPU, not {platform.machine()}: use libbpf or auto")
        self._maps, self._links = receive_program({
            "source_dir": str(bpf_source_dir()),
            "ringbuf_pages": opts.ringbuf_pages,
            "args_max": opts.args_max,
            "cred_events": opts.cred_events,
            "net_events": opts.net_events,
            "fork_events": opts.fork_events,
            "module_events": opts.module_events,
            "env_max": ENV_MAX_BYTES if opts.env_vars else 0,
        })
        events = self._maps["events"]
        try:
            if reader == "mmap":
                log.warning("probe.ring_reader mmap: this reader has been seen to lose records under CPU "
                            "contention (sensor/probe/ringbuf.py); auto and libbpf do not")
                self._reader = RingBufferReader(events)
            else:
                self._libbpf_reader = LibbpfRingReader(events, self._handle)
            self._positions = RingPositions(events)
            if self._look_ahead is not None and ringbuf.supported():
                self._peeker = RingPeeker(events)
        except OSError as exc:
            self.close()
            raise ProbeError(f"cannot open the BPF ring buffer: {exc}") from exc

    @property
    def reader_name(self) -> str:
        return "mmap" if self._reader is not None else "libbpf"

    @property
    def attach_points(self) -> list[str]:
        return sorted(self._links)

    def _handle(self, raw: bytes) -> None:
        if self._peeker is not None:
            # a batch takes a while to handle: what arrived meanwhile is looked at every few records
            self._since_peek += 1
            if self._since_peek >= PEEK_EVERY:
                self._since_peek = 0
                self._peek()
        try:
            record = decode(raw, self._env_filter)
        except Exception as error:  # DecodeError, or a decoder bug a hostile record found: lost, never fatal
            self.decode_errors += 1
            if self.decode_errors == 1:
                log.error("a ring-buffer record of %d bytes could not be decoded and is counted as lost: %s%s",
                          len(raw), "" if isinstance(error, DecodeError) else f"{type(error).__name__}: ", error)
            return
        self.records += 1
        if self._env_filter is not None and isinstance(record, ExecRecord) and record.env_truncated:
            record = env_from_proc(record, self._env_filter)
        try:
            self._on_record(record)
        except Exception as error:  # one record the pipeline cannot take must not stop the sensor
            self.handler_errors += 1
            if self.handler_errors == 1:
                log.error("a %s record could not be processed and is counted as lost: %s: %s",
                          type(record).__name__, type(error).__name__, error)

    def poll(self, timeout_ms: int) -> None:
        """Waits up to timeout_ms for a wake-up, then delivers everything in the ring buffer.

        The probe wakes the consumer only every few records (bpf/sensor.c WAKEUP_EVERY), so the records written
        since the last wake-up are consumed whether or not a wake-up came."""
        if self._reader is not None:
            self._reader.wait(timeout_ms)
            self._peek()
            self._reader.consume(self._handle)
        elif self._libbpf_reader is not None:
            if self._peeker is None:
                self._libbpf_reader.wait_and_consume(timeout_ms)
            else:
                self._libbpf_reader.wait(timeout_ms)
                self._peek()
                self._libbpf_reader.consume()

    def _peek(self) -> None:
        if self._peeker is None or self._look_ahead is None:
            return
        look = self._look_ahead

        def exec_only(buffer: object, offset: int, size: int) -> None:
            found = peek_exec(buffer, offset, size)
            if found is not None:
                look(found)

        try:
            self._peeker.peek(exec_only, RECORD_EXEC)
        except Exception as error:   # the look ahead is an optimisation: never a reason to stop reading
            self.look_ahead_errors += 1
            if self.look_ahead_errors == 1:
                log.error("looking ahead in the ring buffer failed (counted; records are still handled): %s: %s",
                          type(error).__name__, error)

    def detach(self) -> None:
        """Stops the probes from writing records; the ring and what it holds stay readable."""
        _close_all(list(self._links.values()))
        self._links = {}

    def drain(self) -> None:
        """Detaches, then delivers what is left in the ring buffer: with nothing more written, the drain ends
        even while a storm goes on (reading until the ring is empty would not)."""
        self.detach()
        if self._reader is not None:
            self._reader.consume(self._handle)
        elif self._libbpf_reader is not None:
            while self._libbpf_reader.consume():
                pass

    def backlog_bytes(self) -> int | None:
        """Bytes of records waiting in the ring buffer, for liveness and /metrics; None before load."""
        positions = self._positions
        return positions.backlog() if positions is not None else None

    def loss(self) -> LossRecord:
        """Kernel-side counters since load."""
        totals = [0] * LOSS_COUNTERS
        counters = self._maps.get("loss_counters")
        if counters is not None:
            for index in range(LOSS_COUNTERS):
                try:
                    totals[index] = sum(percpu_u64_values(counters, index))
                except LibbpfError as error:
                    log.warning("the probe's loss counters cannot be read: %s", error)
                    break
        return LossRecord(
            ktime_ns=time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            ringbuf_full=totals[LOSS_RINGBUF_FULL],
            argv_truncated=totals[LOSS_ARGS_TRUNCATED],
            argv_read_failed=totals[LOSS_ARGS_READ_FAILED],
            path_truncated=totals[LOSS_PATH_TRUNCATED],
        )

    def close(self) -> None:
        """Detaches: the links go first, so no record is written into a ring nobody maps any more."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._libbpf_reader is not None:
            self._libbpf_reader.close()
            self._libbpf_reader = None
        if self._positions is not None:
            self._positions.close()
            self._positions = None
        if self._peeker is not None:
            self._peeker.close()
            self._peeker = None
        _close_all([*self._links.values(), *self._maps.values()])
        self._links = {}
        self._maps = {}


def receive_program(spec: dict[str, object]) -> tuple[dict[str, int], dict[str, int]]:
    """Runs sensor/probe/bcc_loader.py and returns the descriptors it sends: (maps, links) by name.

    Raises ProbeError with the child's own line when it cannot compile, load or attach."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    # The child imports this package from where this process did, whatever its working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PACKAGE_ROOT), env.get("PYTHONPATH"))))
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "sensor.probe.bcc_loader", str(theirs.fileno()), json.dumps(spec)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
        )
    except OSError as exc:
        ours.close()
        theirs.close()
        raise ProbeError(f"cannot start the BPF loader process {sys.executable}: {exc.strerror}") from exc
    theirs.close()  # the child's copy is its only one: its exit ends our receive
    try:
        ours.settimeout(LOAD_TIMEOUT_S)
        try:
            message, fds, _flags, _address = socket.recv_fds(ours, 1 << 16, MAX_DESCRIPTORS)
        except TimeoutError as exc:
            child.kill()
            raise ProbeError(f"the BPF loader process did not finish within {LOAD_TIMEOUT_S:g}s") from exc
    finally:
        ours.close()
        try:
            status = child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            status = child.wait()
    if not message:
        raise ProbeError(f"the BPF loader process exited with status {status} without sending the program "
                         "(its error is on stderr above)")
    try:
        reply = json.loads(message)
        for level, line in reply.get("logs", []):
            log.log(level, "%s", line)
        if "error" in reply:
            raise ProbeError(reply["error"])
        maps = {name: fds[index] for name, index in reply["maps"].items()}
        links = {name: fds[index] for name, index in reply["links"].items()}
    except ProbeError:
        _close_all(fds)
        raise
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        _close_all(fds)
        raise ProbeError(f"the BPF loader process sent a reply that cannot be read: {exc}") from exc
    return maps, links


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
