"""Runs the wired stages: the live event loop (probe -> pipeline -> outputs, with ticks, liveness and a bounded
drain at SIGTERM) and the replay of a recording; both end in one summary line."""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensor.app import build_outputs, build_pipeline, cgroup_v2_root, probe_options
from sensor.config.statefiles import ReadyFile
from sensor.containers.cgroupmap import V2_HIERARCHY
from sensor.containers.namespaces import host_namespaces
from sensor.model.processes import snapshot_of
from sensor.model.records import CgroupRecord, Record, RecordingWriter, create_recording
from sensor.ops.liveness import SystemdNotifier
from sensor.outputs.base import Output
from sensor.outputs.stdout import StdoutOutput
from sensor.pipeline import Pipeline

if TYPE_CHECKING:
    from sensor.config.settings import Config

log = logging.getLogger("container_sensor")


TICK_SECONDS = 1.0


POLL_MS = 5  # the probe wakes us only every 256 records per CPU (bpf/sensor.c WAKEUP_EVERY): this bounds latency


@dataclass
class RunSummary:
    seen: int
    emitted: int
    lost: int
    alerts: int
    output_dropped: int
    paths_truncated: int = 0  # exec records whose executable path was cut (flagged in their documents)
    filtered: int = 0  # documents the filter.* options left out
    spooled: int = 0  # documents left in the Elasticsearch spool, sent at the next start
    undelivered: int = 0  # documents an output still held in memory at exit: lost
    drain_cut: str = ""  # what ended the SIGTERM drain early ("the 20s drain deadline", "a second SIGINT")
    ring_left: int | None = None  # bytes of records left unread in the ring buffer when the drain was cut
    exit_code: int = 0

    def line(self) -> str:
        line = (f"container-sensor: {self.seen} events seen, {self.emitted} documents emitted, "
                f"{self.lost} lost, {self.alerts} alerts, {self.output_dropped} dropped by outputs")
        line += f", {self.filtered} left out by filters" if self.filtered else ""
        return line + (f", {self.paths_truncated} executable paths cut" if self.paths_truncated else "") + self.left()

    def left(self) -> str:
        """What the shutdown left behind, on the same line."""
        if self.drain_cut:
            ring = f", {self.ring_left} bytes of records unread in the ring buffer" if self.ring_left else ""
            return (f"; drain cut by {self.drain_cut}: {self.spooled + self.undelivered} documents not delivered "
                    f"({self.spooled} kept in the spool for the next start, {self.undelivered} lost){ring}")
        text = f"; {self.spooled} documents kept in the spool for the next start" if self.spooled else ""
        return text + (f"; {self.undelivered} documents lost at exit" if self.undelivered else "")


class DrainCut(BaseException):
    """Raised by a signal handler on the main thread, wherever it is (a blocked write, a long rule, the drain):
    the drain deadline passed, or a second signal asked to exit at once. A BaseException, so the guards that
    keep one bad record from stopping the sensor (`except Exception`) let it through."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


class StopFlag:
    """SIGINT/SIGTERM handling. The first signal asks the loop to stop and starts the drain clock: SIGALRM at
    `drain_timeout` raises DrainCut, so a loop stuck inside a batch is ended too (a handler that only set a
    flag left a stalled sensor running after SIGTERM). A second signal raises DrainCut at once. Should the main
    thread be blocked where no signal handler can run, a timer thread exits BACKSTOP_S after the deadline."""

    BACKSTOP_S = 5.0

    def __init__(self, drain_timeout: float) -> None:
        self.stopped = False
        self.drain_timeout = drain_timeout
        self.signal_name = ""
        self.deadline: float | None = None
        # DrainCut is raised only between arm() (the loop starts) and disarm() (the drain is over): start-up and
        # the clean-up after the drain are short, and not written to be cut anywhere.
        self.interruptible = False
        self._previous: dict[int, Any] = {}
        self._backstop: threading.Timer | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handler)
        self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_deadline)

    def uninstall(self) -> None:
        self.disarm()
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def remaining(self) -> float:
        """Seconds left of the drain (all of it before a signal: the loop ended some other way)."""
        if self.deadline is None:
            return self.drain_timeout
        return max(0.0, self.deadline - time.monotonic())

    def arm(self) -> None:
        self.interruptible = True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DrainCut(f"the {self.drain_timeout:g}s drain deadline", 0)  # passed during start-up

    def disarm(self) -> None:
        self.interruptible = False
        if self._previous:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _handler(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if not self.stopped:
            self.stopped = True
            self.signal_name = name
            self.deadline = time.monotonic() + self.drain_timeout
            signal.setitimer(signal.ITIMER_REAL, self.drain_timeout)
            self._backstop = threading.Timer(self.drain_timeout + self.BACKSTOP_S, self._give_up)
            self._backstop.daemon = True
            self._backstop.start()
            return
        if self.interruptible:
            raise DrainCut(f"a second {name}", 128 + signum)

    def _on_deadline(self, _signum: int, _frame: Any) -> None:
        if self.interruptible:
            raise DrainCut(f"the {self.drain_timeout:g}s drain deadline", 0)

    def _give_up(self) -> None:
        os.write(2, (f"container-sensor: still not stopped {self.drain_timeout + self.BACKSTOP_S:g}s after "
                     f"{self.signal_name} (blocked where the drain deadline cannot interrupt it); exiting\n").encode())
        os._exit(1)


def settle_garbage_collector() -> None:
    """Start-up leaves a large, permanent object graph (BCC, LLVM bindings, the EQL grammar, the process
    table): frozen, full collections stop walking it, which otherwise stalled the event loop for hundreds of
    milliseconds in exec storms. The pipeline's own data is acyclic and freed by reference counting, so the
    young generation is collected less often too."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


class GarbageCollection:
    """Keeps the collector off the event loop's path. Objects that outlive a poll (the process table, the
    builder's shared blocks: about ten per exec) are frozen once FREEZE_AT of them have piled up, before the
    young generation fills (at 50,000) with long-lived objects that a collection would walk for nothing: in exec
    storms those collections paused the loop for 10-40 ms each and never found garbage, since the pipeline's
    data is acyclic and freed by reference counting. Cyclic garbage that got frozen (from libraries, not the
    pipeline) is freed by a full collection every FULL_EVERY_S."""

    FREEZE_AT = 10_000
    FULL_EVERY_S = 600.0

    def __init__(self) -> None:
        self._next_full = time.monotonic() + self.FULL_EVERY_S
        self.full_collections = 0
        self.freezes = 0

    def after_poll(self, now: float) -> None:
        if now >= self._next_full:
            self._next_full = now + self.FULL_EVERY_S
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.full_collections += 1
        elif gc.get_count()[0] >= self.FREEZE_AT:
            gc.freeze()
            self.freezes += 1


def raise_open_files(wanted: int = 65536) -> None:
    """Raises the soft limit of open files toward the hard one (at most `wanted`): the ssh identity holds
    descriptors of files containers executed, and of their roots, a share of this limit (sensor.rules.builtin_ssh,
    sensor.containers.rootpins), so a systemd default of 1024 would leave them little room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning("open files limit left at %d (%s): the ssh identity holds fewer files", soft, error)


def boost_priority(levels: int, proc_root: Path = Path("/proc")) -> None:
    """Runs the sensor `levels` nice levels above normal, as auditd does by default (priority_boost = 4): in a
    saturated machine a normal-priority consumer waits behind the workload for tens of milliseconds at a time,
    which is all of its event latency. Needs CAP_SYS_NICE; without it the sensor stays at its priority.

    A nice value only weighs against tasks of the same scheduling group. A sensor that leads its own session
    outside any cgroup of its own (started with setsid) is alone in its autogroup, and the kernel weighs that
    group against the workload's: the boost is given to the group too. Under systemd or Kubernetes the
    service's cgroup weight (CPUWeight=, CPU requests) plays that part."""
    if levels <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) - levels)
    except OSError as error:
        log.warning("priority_boost %d not applied (%s): events may wait longer under load", levels,
                    error.strerror)
        return
    autogroup = proc_root / "self" / "autogroup"
    if os.getsid(0) != os.getpid() or not autogroup.exists():
        return
    try:
        autogroup.write_text(f"{-levels}\n")
    except OSError as error:
        log.warning("priority_boost %d not applied to the sensor's scheduling group (%s)", levels, error.strerror)


def attach(probe: Any, pipeline: Pipeline) -> list[Any]:
    """Loads the probe, then seeds the cgroup map and the process table; returns the seeded processes.

    Attached first, seeded second: an exec or a new cgroup that races the seeding is queued in the ring
    buffer, not missed. Raises ProbeError when the probe cannot load."""
    probe.load()
    if pipeline.resolver is not None:
        pipeline.resolver.seed()
    return pipeline.table.seed_from_proc(cgroup_v2_root())


def run_live(config: Config, *, record_to: Path | None = None, stop: StopFlag | None = None,
             on_ready: Callable[[Pipeline], None] | None = None) -> RunSummary:
    """Attaches the probe and runs until SIGINT/SIGTERM. Raises ProbeError when the probe cannot load.

    The drain after the signal (the ring buffer, then the outputs) is bounded by `drain_timeout`; a second signal
    ends it at once. Either way the summary says what was left behind and where."""
    stop = stop or StopFlag(config.sections.ops.drain_timeout)
    stop.install()
    try:
        return _run_live(config, stop, record_to, on_ready)
    finally:
        stop.uninstall()


def _run_live(config: Config, stop: StopFlag, record_to: Path | None,
              on_ready: Callable[[Pipeline], None] | None) -> RunSummary:
    from sensor.probe.loader import Probe  # bcc only where the probe runs

    sections = config.sections
    ready = ReadyFile(sections.ops.ready_file) if sections.ops.ready_file else None
    if ready is not None:
        ready.check()  # a bad path fails now, with one line, not after the probes have attached
    outputs = build_outputs(sections.outputs)
    raise_open_files()
    pipeline = build_pipeline(config, outputs, live=True)
    recorder = None
    record_stream = None
    if record_to is not None:
        record_stream = create_recording(record_to)  # closed in finally below
        recorder = RecordingWriter(record_stream, {
            "boot_id": pipeline.table.boot_id,
            "boot_wall_offset_ns": pipeline.builder.boot_wall_offset_ns,
            "hostname": pipeline.builder.hostname,
            "host_ns": list(astuple(host_namespaces())),
        })

    def on_record(record: Record) -> None:
        if recorder is not None:
            recorder.write(record)
        pipeline.handle(record)

    detector = pipeline.detector
    reloader = start_reloader(sections.detection.rules_paths, detector)
    hangups = install_sighup(reloader)
    probe = Probe(on_record, probe_options(sections.probe),
                  look_ahead=detector.look_ahead if detector is not None else None)
    heartbeat = pipeline.heartbeat
    heartbeat.stall_timeout = sections.ops.stall_timeout
    notifier = SystemdNotifier(heartbeat.check)
    cut: DrainCut | None = None
    ring_left: int | None = None
    outputs_closed = False
    started = time.monotonic()
    seeded = attach(probe, pipeline)
    boost_priority(sections.ops.priority_boost)
    if recorder is not None:
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if pipeline.resolver is not None:
            for cgroup_id, path in pipeline.resolver.known_cgroups():
                recorder.write(CgroupRecord(now, "mkdir", V2_HIERARCHY, cgroup_id, path.count("/"), path.encode()))
        for proc in seeded:
            recorder.write(snapshot_of(proc, now))
    pipeline.announce_running(seeded, time.clock_gettime_ns(time.CLOCK_BOOTTIME) if recorder is None else now)
    log.info("probe attached in %.2fs to %s (ring buffer read by %s), %d running processes seeded",
             time.monotonic() - started, ", ".join(probe.attach_points), probe.reader_name, len(seeded))
    settle_garbage_collector()
    if ready is not None:
        ready.create(f"{os.getpid()}\n")  # 0600, O_EXCL and O_NOFOLLOW: never through a planted link
    if on_ready is not None:
        on_ready(pipeline)
    try:
        stop.arm()
        notifier.ready()
        # Progress inside a long poll (a storm's backlog) shows in the probe's record counter, kept anyway.
        heartbeat.start(progress=lambda: probe.records + probe.decode_errors, backlog=probe.backlog_bytes)
        next_tick = time.monotonic() + TICK_SECONDS
        collector = GarbageCollection()
        while not stop.stopped:
            probe.poll(POLL_MS)
            if reloader is not None:
                reloader.apply_pending()
            if hangups.pending:
                hangups.report()
            pipeline.release_held_alerts()
            pipeline.flush()
            now = time.monotonic()
            heartbeat.beat(now)
            collector.after_poll(now)
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                pipeline.handle(probe.loss())
                pipeline.tick(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        heartbeat.stopping = True
        notifier.stopping()
        probe.drain()
        pipeline.handle(probe.loss())
        pipeline.finish()
        close_outputs(outputs, stop)
        outputs_closed = True
        stop.disarm()
    except DrainCut as error:
        stop.disarm()
        cut = error
        ring_left = _ring_backlog(probe)
    finally:
        stop.disarm()
        notifier.close()
        if cut is not None:
            # Whatever blocked the loop (a reader that stopped reading stdout) would block these too: the
            # outputs are left as they are, what they hold is counted below, and stdout goes to /dev/null so
            # the interpreter's exit does not wait on it.
            _detach_stdout(outputs)
        elif not outputs_closed:
            pipeline.flush()
            for output in outputs:
                output.close()
        probe.close()
        hangups.uninstall()
        if reloader is not None:
            reloader.close()
        if pipeline.resolver is not None:
            pipeline.resolver.close()
        if pipeline.accounts is not None:
            pipeline.accounts.close()
        if record_stream is not None:
            record_stream.close()
        if ready is not None:
            ready.remove()  # only the file made above, not one put in its place
    summary = summarize(pipeline, outputs, probe.records, undecodable=probe.decode_errors + probe.handler_errors)
    spooled, undelivered = left_behind(outputs)
    summary = replace(summary, spooled=spooled, undelivered=undelivered)
    if cut is not None:
        summary = replace(summary, drain_cut=cut.reason, ring_left=ring_left, exit_code=cut.exit_code)
    return summary


def start_reloader(paths: tuple[Path, ...], detector: Any) -> Any:
    """Reloads the rule files on SIGHUP and when they change; None without rule files or detection."""
    if not paths or detector is None:
        return None
    from sensor.rules.reload import RulesReloader

    return RulesReloader(paths, detector.replace_rules, on_refused=detector.reload_refused)


class Hangups:
    """SIGHUP asks for a rules reload; its default action (ending the process) is never what a sensor wants."""

    def __init__(self, reloader: Any) -> None:
        self.reloader = reloader
        self.pending = False
        self._previous: Any = None

    def install(self) -> Hangups:
        self._previous = signal.signal(signal.SIGHUP, self._handler)
        return self

    def _handler(self, _signum: int, _frame: Any) -> None:
        self.pending = True
        if self.reloader is not None:
            self.reloader.request()

    def report(self) -> None:
        """On the loop (logging is not for signal handlers)."""
        self.pending = False
        if self.reloader is None:
            log.info("SIGHUP: no rule files configured (rules.paths), nothing to reload")
        else:
            log.info("SIGHUP: reloading the rules")

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


def install_sighup(reloader: Any) -> Hangups:
    return Hangups(reloader).install()


def close_outputs(outputs: list[Output], stop: StopFlag) -> None:
    """Closes each output within what is left of the drain, less a margin for it to spool what it could not
    send before the deadline cuts it off."""
    for output in outputs:
        remaining = stop.remaining()
        output.close(timeout=max(0.0, remaining - min(2.0, remaining / 4)))


def left_behind(outputs: list[Output]) -> tuple[int, int]:
    """(documents in a spool for the next start, documents an output still held in memory: lost at exit)."""
    spooled = lost = 0
    for output in outputs:
        try:
            stats = output.stats()
        except Exception:  # the summary line must come out whatever an output does
            continue
        spooled += stats.get("spool_unread", 0)
        if "queued" in stats:  # Elasticsearch: its memory queue
            lost += stats["queued"]
        elif "received" in stats:  # file: taken but neither written nor counted as dropped
            lost += max(0, stats["received"] - stats.get("written", 0) - stats.get("dropped", 0))
        else:  # stdout: buffered or in a write that never returned
            lost += stats.get("pending", 0)
    return spooled, lost


def _ring_backlog(probe: Any) -> int | None:
    try:
        return probe.backlog_bytes()
    except (AttributeError, OSError, ValueError):
        return None


def _detach_stdout(outputs: list[Output]) -> None:
    if not any(isinstance(output, StdoutOutput) for output in outputs):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass


def run_replay(config: Config, records: Iterable[Record], meta: dict[str, Any] | None = None) -> RunSummary:
    """Feeds recorded records through every stage after the probe."""
    outputs = build_outputs(config.sections.outputs)
    pipeline = build_pipeline(config, outputs, live=False, meta=meta)
    seen = failed = 0
    try:
        for record in records:
            seen += 1
            try:
                pipeline.handle(record)
            except Exception as error:  # as live (Probe._handle): a record the pipeline fails on is lost, counted
                failed += 1
                if failed == 1:
                    log.error("a %s record could not be processed and is counted as lost: %s: %s",
                              type(record).__name__, type(error).__name__, error)
            if seen % 4096 == 0:
                pipeline.flush()
        pipeline.finish()
    finally:
        pipeline.flush()
        if pipeline.resolver is not None:
            pipeline.resolver.close()
        if pipeline.accounts is not None:
            pipeline.accounts.close()
        for output in outputs:
            output.close()
    return summarize(pipeline, outputs, seen, undecodable=failed)


def summarize(pipeline: Pipeline, outputs: list[Output], seen: int, undecodable: int = 0) -> RunSummary:
    """undecodable: ring-buffer records that did not fit their layout or that the pipeline failed on, lost like
    those the kernel dropped."""
    dropped = sum(o.stats().get("dropped", 0) for o in outputs)
    stats = pipeline.stats
    return RunSummary(seen=seen, emitted=stats.documents, lost=stats.kernel_lost + undecodable, alerts=stats.alerts,
                      output_dropped=dropped, paths_truncated=stats.path_truncated,
                      filtered=stats.documents_filtered)
