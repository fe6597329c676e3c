"""One loop that reads like the pipeline: record -> process table -> container -> ECS document -> rules -> outputs.

Takes plain records (from the probe or a recording) and knows nothing of where they came from.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sensor.containers.cgroupmap import V2_HIERARCHY
from sensor.ecs.builder import ContainerLike, DocumentBuilder
from sensor.model.processes import Process, ProcessTable, entity_id
from sensor.model.records import (
    CgroupRecord,
    CredRecord,
    ExecRecord,
    ExitRecord,
    ForkRecord,
    LossRecord,
    ModuleRecord,
    Namespaces,
    NetRecord,
    ProcessSnapshotRecord,
    Record,
)
from sensor.model.sessions import Leaders, stored_leaders
from sensor.outputs.base import Output
from sensor.rules.alerts import alert_message

log = logging.getLogger(__name__)


class Resolver(Protocol):
    def on_cgroup(self, rec: CgroupRecord) -> None: ...

    def resolve(self, cgroup_id: int, ns: Namespaces, ancestry: Sequence[tuple[int, str]] = (),
                pid: int = 0) -> Any: ...

    def cgroup_path(self, cgroup_id: int) -> str | None: ...

    def pid_namespace_ended(self, pid_ns: int) -> None: ...

    def stats(self) -> dict[str, int]: ...


class Accounts(Protocol):
    def names(self, container_id: str, pid: int) -> Any: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


class Detector(Protocol):
    def inspect(self, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]: ...

    def tick(self, now_s: float) -> list[dict[str, Any]]: ...

    def stats(self) -> dict[str, int]: ...


class LazyAncestry(Sequence[tuple[int, str]]):
    """(pid, name) of a process's ancestors, nearest first, walked only if the resolver asks."""

    def __init__(self, table: ProcessTable, proc: Process) -> None:
        self._table = table
        self._proc = proc
        self._items: list[tuple[int, str]] | None = None

    def _load(self) -> list[tuple[int, str]]:
        if self._items is None:
            self._items = [(p.pid, p.name) for p in self._table.ancestors(self._proc, limit=16)]
        return self._items

    def __getitem__(self, index):  # type: ignore[override]
        return self._load()[index]

    def __len__(self) -> int:
        return len(self._load())

    def __iter__(self):  # type: ignore[override]
        return iter(self._load())


LeaderFinder = Callable[[Process, ProcessTable, Any], Leaders]

# The runtimes' own processes that run in a container's cgroup while it is set up (runc init, crun's, conmon's
# children): never read a container's files through them
RUNTIME_HELPERS = ("runc", "crun", "runsc", "containerd-shim", "conmon")


class LossWarnings:
    """One WARNING line per second at most about records the kernel dropped (ring buffer full), each saying how
    many since the previous line. The probe reports its running total about once a second; a storm that drops
    records in every report still gets one line a second, and nothing dropped goes unsaid: what a line could
    not report yet is in the next, or in the one `flush` writes at shutdown. Seconds are the loss record's own
    (kernel boot time), so a replay says what the live run said."""

    INTERVAL_NS = 1_000_000_000

    def __init__(self) -> None:
        self.reported = 0  # dropped records already written in a line
        self.lines = 0
        self._total = 0
        self._last_line_ns: int | None = None

    def observe(self, total: int, ktime_ns: int) -> None:
        self._total = max(self._total, total)  # a running total: never goes back
        last = self._last_line_ns
        if last is None or ktime_ns - last >= self.INTERVAL_NS:
            self._write(ktime_ns)

    def flush(self) -> None:
        self._write(self._last_line_ns or 0)

    def _write(self, ktime_ns: int) -> None:
        fresh = self._total - self.reported
        if fresh <= 0:
            return
        log.warning("the kernel dropped %d records since the last report (ring buffer full; %d in all): the "
                    "sensor reads more slowly than the node execs", fresh, self._total)
        self.reported = self._total
        self.lines += 1
        self._last_line_ns = ktime_ns


@dataclass(slots=True)
class PipelineStats:
    records: int = 0
    execs: int = 0
    exits: int = 0
    forks: int = 0
    already_running: int = 0  # processes found at start-up, each with a document
    fork_documents: int = 0  # fork documents (events.fork)
    module_loads: int = 0  # load_module documents
    uid_changes: int = 0  # uid_change documents
    gid_changes: int = 0
    session_id_changes: int = 0
    connections_attempted: int = 0  # network documents, by event.action
    connections_accepted: int = 0
    connections_unattributed: int = 0  # network documents without their process (unknown to the probe or table)
    cgroup_events: int = 0
    documents: int = 0
    documents_filtered: int = 0  # left out by the filter.* options (--where, --alerts-only, allow/deny lists)
    alerts: int = 0
    alerts_held: int = 0  # alerts that waited for their container's runtime state
    alerts_without_metadata: int = 0  # of those, sent at the deadline without it
    output_errors: int = 0
    kernel_lost: int = 0
    argv_truncated: int = 0
    argv_read_failed: int = 0
    path_truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in ((n, getattr(self, n)) for n in self.__slots__) if isinstance(v, int)}


class LatencyHistogram:
    """Observed delays in seconds, by bucket (Prometheus' default bounds, cut to what a sensor's delays span):
    one bisect and two additions per observation, no lock (one writer, the event loop; /metrics reads a copy)."""

    BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)
        self.total = 0.0

    def observe_ns(self, delay_ns: int) -> None:
        seconds = max(0, delay_ns) / 1e9
        self.counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> tuple[tuple[float, ...], list[int], float]:
        return self.BOUNDS, list(self.counts), self.total


_CHANGE_COUNTERS = {"uid_change": "uid_changes", "gid_change": "gid_changes",
                    "session_id_change": "session_id_changes"}


class Heartbeat:
    """Whether the event loop is advancing, for /livez and the systemd watchdog.

    The loop stores a monotonic time in `last` once per poll (20 ms when idle), never per record, so an idle
    machine keeps beating. Inside a poll the loop may spend long on a storm's backlog while making progress:
    `check` also counts as progress any change of `progress()` (the probe's record counter, which it keeps
    anyway). The pipeline is stalled when neither moved for `stall_timeout` seconds: the loop is stuck inside
    a batch (a blocked write, a runaway rule) while records wait in the ring buffer (`backlog()`, in bytes,
    None when the reader cannot tell). `check` runs on other threads and only reads what the loop writes."""

    def __init__(self, stall_timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.last: float | None = None  # None until the loop starts
        self.stopping = False
        self._progress: Callable[[], int] = lambda: 0
        self._backlog: Callable[[], int | None] = lambda: None
        self._seen = 0
        self._seen_at = 0.0
        self._lock = threading.Lock()  # between checkers (the ops server and the watchdog), never the loop

    def start(self, progress: Callable[[], int] | None = None, backlog: Callable[[], int | None] | None = None) -> None:
        """The loop is about to run; `progress` counts records handled, `backlog` gives bytes waiting."""
        if progress is not None:
            self._progress = progress
        if backlog is not None:
            self._backlog = backlog
        now = self.clock()
        self._seen, self._seen_at = self._progress(), now
        self.last = now

    def beat(self, now: float) -> None:
        self.last = now

    def age(self) -> float | None:
        """Seconds since the pipeline last advanced, None before the loop started."""
        last = self.last
        if last is None:
            return None
        with self._lock:
            now = self.clock()
            seen = self._progress()
            if seen != self._seen:
                self._seen, self._seen_at = seen, now
            return max(0.0, now - max(last, self._seen_at))

    def backlog(self) -> int | None:
        try:
            return self._backlog()
        except (OSError, ValueError):  # the ring is being closed at shutdown
            return None

    def check(self) -> tuple[bool, str]:
        """(live, one-line reason)."""
        if self.stopping:
            return True, "stopping: draining the pipeline"
        age = self.age()
        if age is None:
            return True, "starting"
        if self.stall_timeout <= 0 or age < self.stall_timeout:
            return True, f"pipeline advancing (last progress {age:.1f}s ago)"
        waiting = self.backlog()
        held = f", {waiting} bytes of records waiting in the ring buffer" if waiting else ""
        return False, (f"pipeline stalled: no progress for {age:.0f}s (stall timeout {self.stall_timeout:g}s), "
                       f"the event loop is stuck inside a batch{held}")


class Pipeline:
    def __init__(
        self,
        *,
        table: ProcessTable,
        builder: DocumentBuilder,
        outputs: list[Output],
        resolver: Resolver | None = None,
        detector: Detector | None = None,
        leaders: LeaderFinder,
        emit_exit: bool = True,
        emit_already_running: bool = True,
        emit_fork: bool = False,
        accounts: Accounts | None = None,
        alert_metadata_wait_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        measure_latency: bool = False,
    ) -> None:
        self.table = table
        # which documents reach the outputs (the filter.* options); detection has seen each one already
        self._keep = keep
        # live only: from the kernel's timestamp of an exec to its document, and to its alert, handed to the outputs
        self._measure_latency = measure_latency
        self.exec_latency = LatencyHistogram()
        self.alert_latency = LatencyHistogram()
        self.builder = builder
        self.outputs = outputs
        self.resolver = resolver
        self.detector = detector
        self._leaders = leaders
        self._emit_exit = emit_exit
        self._emit_already_running = emit_already_running
        self._emit_fork = emit_fork
        self.accounts = accounts
        self.stats = PipelineStats()
        self.loss_warnings = LossWarnings()
        self._sequence = 0
        self.heartbeat = Heartbeat(0.0)  # never stalled until the live loop sets the configured stall_timeout
        # Alerts of a container whose runtime state was not read yet wait for it, at most this long (0: never);
        # its documents do not: (deadline, process, alerts), oldest first
        self._alert_metadata_wait_s = alert_metadata_wait_s
        # (deadline, process, alerts, kernel time of the event that raised them)
        self._held_alerts: deque[tuple[float, Process, list[dict[str, Any]], int]] = deque()
        self._clock = clock
        table.on_forget = builder.forget_process

    def handle(self, record: Record) -> None:
        self.stats.records += 1
        if isinstance(record, ExecRecord):
            self._on_exec(record)
        elif isinstance(record, ForkRecord):
            self.stats.forks += 1
            # A forked child's leaders are stored at its first document (or its first child's), from its parent as
            # it is then, as they always were here: stored at the fork, an end document would name the parent's
            # image from before an exec it made after forking (quark and Auditbeat keep that one).
            child = self.table.on_fork(record)
            if self._emit_fork:
                self.stats.fork_documents += 1
                self._emit_process_event("fork", record.ktime_ns, child, None)
        elif isinstance(record, ExitRecord):
            self._on_exit(record)
        elif isinstance(record, CredRecord):
            changed = self.table.on_cred(record)
            if changed is not None:
                counter = _CHANGE_COUNTERS[record.change]
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
                self._emit_process_event(record.change, record.ktime_ns, changed, None)
        elif isinstance(record, NetRecord):
            self._on_net(record)
        elif isinstance(record, ModuleRecord):
            self._on_module(record)
        elif isinstance(record, CgroupRecord):
            self.stats.cgroup_events += 1
            if self.resolver is not None:
                self.resolver.on_cgroup(record)
            if record.op == "rmdir" and record.root == V2_HIERARCHY:  # the builder keeps v2 cgroups only
                self.builder.forget_cgroup(record.cgroup_id, record.path.decode("utf-8", "surrogateescape"))
        elif isinstance(record, ProcessSnapshotRecord):
            self.announce_running([self.table.on_snapshot(record)], record.ktime_ns)
        elif isinstance(record, LossRecord):
            self.stats.kernel_lost = record.ringbuf_full
            self.loss_warnings.observe(record.ringbuf_full, record.ktime_ns)
            self.stats.argv_truncated = record.argv_truncated
            self.stats.argv_read_failed = record.argv_read_failed
            self.stats.path_truncated = record.path_truncated

    def announce_running(self, procs: Sequence[Process], ktime_ns: int) -> None:
        """One already_running document per process found running at start-up (Elastic Defend's start-up
        inventory); kernel threads, which run no program, are left out. A replay makes them from the recording's
        snapshots, at the same moments."""
        if not self._emit_already_running:
            return
        for proc in procs:
            if not proc.kthread:
                self.stats.already_running += 1
                self._emit_process_event("already_running", ktime_ns, proc, None)

    def _container(self, proc: Process) -> tuple[ContainerLike | None, str | None]:
        if self.resolver is None:
            return None, None
        container = self.resolver.resolve(proc.cgroup_id, proc.ns, LazyAncestry(self.table, proc), proc.pid)
        return container, self.resolver.cgroup_path(proc.cgroup_id)

    def _names(self, container: ContainerLike | None, proc: Process) -> Any:
        """The container's own user and group names (None: a host process, or not read yet). Not through the
        runtime's own processes in the container's cgroup (runc init): their root and mounts are still being
        set up, and what they show is not yet the container's passwd."""
        if container is None or self.accounts is None:
            return None
        # by the file itself: runc init runs /proc/self/exe, which may not be readable as a link any more
        if proc.executable.rsplit("/", 1)[-1] in RUNTIME_HELPERS:
            return None
        return self.accounts.names(container.id, proc.pid)

    def _on_exec(self, rec: ExecRecord) -> None:
        self.stats.execs += 1
        proc = self.table.on_exec(rec, rec.cwd.decode("utf-8", "backslashreplace"))
        stored_leaders(proc, self.table)  # what the exec document (and the end document) reads
        self._emit_process_event("exec", rec.ktime_ns, proc, None)

    def _on_exit(self, rec: ExitRecord) -> None:
        self.stats.exits += 1
        proc = self.table.on_exit(rec)
        if proc is not None and self._emit_exit:
            self._emit_process_event("exit", rec.ktime_ns, proc, rec.exit_code)
        if rec.ns_pid == 1 and self.resolver is not None:
            # after its own end document, which still names the container it ran in
            self.resolver.pid_namespace_ended(rec.pid_ns)

    def _on_net(self, rec: NetRecord) -> None:
        if rec.action == "connection_attempted":
            self.stats.connections_attempted += 1
        else:
            self.stats.connections_accepted += 1
        proc = self.table.get(rec.pid) if rec.pid else None
        if proc is not None and rec.start_boottime_ns and proc.start_boottime_ns != rec.start_boottime_ns:
            proc = None  # the pid names another process now
        self._sequence += 1
        if proc is None:
            self.stats.connections_unattributed += 1
            if self.stats.connections_unattributed == 1:
                log.warning("a %s to %s:%d was written without its process (pid %d unknown; "
                            "connections_unattributed_total counts them)", rec.action, rec.remote_ip,
                            rec.remote_port, rec.pid)
            doc = self.builder.network_event(rec=rec, sequence=self._sequence, proc=None, parent=None,
                                             leaders=None, container=None, cgroup_path=None)
        else:
            container, cgroup_path = self._container(proc)
            doc = self.builder.network_event(rec=rec, sequence=self._sequence, proc=proc,
                                             parent=self.table.get(proc.ppid),
                                             leaders=self._leaders(proc, self.table, container),
                                             container=container, cgroup_path=cgroup_path,
                                             names=self._names(container, proc))
            self._emit_inspected(doc, proc, container, rec.ktime_ns)
            return
        self._emit_inspected(doc, ktime_ns=rec.ktime_ns)

    def _on_module(self, rec: ModuleRecord) -> None:
        self.stats.module_loads += 1
        proc = self.table.get(rec.pid)
        if proc is None or (rec.start_boottime_ns and proc.start_boottime_ns != rec.start_boottime_ns):
            # the loader is unknown (gone and forgotten): the document still says which module, by which pid
            proc = Process(pid=rec.pid, ppid=0, start_boottime_ns=rec.start_boottime_ns,
                           entity_id=entity_id(self.table.boot_id, rec.pid, rec.start_boottime_ns))
        self._emit_process_event("load_module", rec.ktime_ns, proc, None, module=rec)

    def _emit_process_event(self, kind: str, ktime_ns: int, proc: Process, exit_status: int | None,
                            module: ModuleRecord | None = None) -> None:
        container, cgroup_path = self._container(proc)
        self._sequence += 1
        doc = self.builder.process_event(
            kind=kind, ktime_ns=ktime_ns, sequence=self._sequence, proc=proc,
            parent=self.table.get(proc.ppid), leaders=self._leaders(proc, self.table, container),
            container=container, cgroup_path=cgroup_path, exit_status=exit_status,
            names=self._names(container, proc),
            module=(module.name.decode("utf-8", "backslashreplace"), module.taints) if module else None,
        )
        self._emit_inspected(doc, proc, container, ktime_ns)
        if kind == "exec" and self._measure_latency:
            self.exec_latency.observe_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ktime_ns)

    def _emit_inspected(self, doc: dict[str, Any], proc: Process | None = None,
                        container: ContainerLike | None = None, ktime_ns: int = 0) -> None:
        if self.detector is None:
            self.emit(doc)
            return
        # Rules see the document before it goes out, so what they could not decide about it (the executed
        # file's identity) is written into it; it still goes out ahead of its alerts.
        alerts, identity = self.detector.inspect(doc)
        if identity is not None:
            doc = self.builder.with_custom(doc, {"identity": identity})
        self.emit(doc)
        if not alerts:
            return
        if (self._alert_metadata_wait_s > 0 and proc is not None and container is not None
                and getattr(container, "metadata_complete", True) is False):
            # a container's first moments: its name, image and pod are likely a few tens of ms away
            self._held_alerts.append((self._clock() + self._alert_metadata_wait_s, proc, alerts, ktime_ns))
            self.stats.alerts_held += len(alerts)
            return
        for alert in alerts:
            self.stats.alerts += 1
            self.emit(alert)
        self._alert_out(ktime_ns, len(alerts))

    def _alert_out(self, ktime_ns: int, count: int) -> None:
        if self._measure_latency and ktime_ns:
            delay = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ktime_ns
            for _ in range(count):
                self.alert_latency.observe_ns(delay)

    def release_held_alerts(self, force: bool = False) -> None:
        """Alerts held for their container's runtime state: out once the state is read, or at their deadline
        with what is known (`container_sensor.alert.container_metadata` says which). Called every poll."""
        if not self._held_alerts:
            return
        now = self._clock()
        waiting: deque[tuple[float, Process, list[dict[str, Any]], int]] = deque()
        for deadline, proc, alerts, ktime_ns in self._held_alerts:
            container, _ = self._container(proc)
            complete = container is not None and getattr(container, "metadata_complete", True) is not False
            if not (complete or force or now >= deadline):
                waiting.append((deadline, proc, alerts, ktime_ns))
                continue
            if not complete:
                self.stats.alerts_without_metadata += len(alerts)
            for alert in alerts:
                if container is not None:
                    alert["container"] = self.builder.container_block(container)
                    rule_name = (alert.get("rule") or {}).get("name")
                    if isinstance(rule_name, str):
                        alert["message"] = alert_message(rule_name, alert["container"])
                    orchestrator = self.builder.orchestrator_block(container)
                    if orchestrator is not None:
                        alert["orchestrator"] = orchestrator
                details = alert.get("container_sensor", {}).get("alert")
                if isinstance(details, dict):
                    details["container_metadata"] = "complete" if complete else "incomplete"
                self.stats.alerts += 1
                self.emit(alert)
            self._alert_out(ktime_ns, len(alerts))
        self._held_alerts = waiting

    def emit(self, doc: dict[str, Any]) -> None:
        if self._keep is not None and not self._keep(doc):
            self.stats.documents_filtered += 1
            return
        self.stats.documents += 1
        for output in self.outputs:
            try:
                output.write(doc)
            except Exception:  # one broken output must not stop the others
                self.stats.output_errors += 1

    def tick(self, now_ktime_ns: int) -> None:
        """Periodic work: expire exited processes, release folded alerts, flush outputs."""
        self.table.expire(now_ktime_ns)
        if self.detector is not None:
            for alert in self.detector.tick(time.monotonic()):
                self.stats.alerts += 1
                self.emit(alert)
        self.flush()

    def finish(self) -> None:
        """At shutdown: release every open fold window, so no counted repeat is lost, then flush."""
        self.release_held_alerts(force=True)
        if self.detector is not None:
            for alert in self.detector.flush():
                self.stats.alerts += 1
                self.emit(alert)
        self.loss_warnings.flush()
        self.flush()

    def flush(self) -> None:
        for output in self.outputs:
            try:
                output.flush()
            except Exception:
                self.stats.output_errors += 1
