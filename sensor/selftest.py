"""`container-sensor selftest`: proves detection end to end on the node it runs on.

It attaches the real probe and runs the real pipeline in this process with an output that keeps what it is
given, starts `ssh -V` in a short-lived container, and waits for the built-in rule's alert about that very
process. Two ways to make the container, the first that works here:

- podman: a container from a throw-away root filesystem holding only the node's ssh binary and its libraries
  (no image, no registry). Matched by container id.
- unshare: no runtime is reachable (as inside the DaemonSet's pod): ssh in new pid, mount, uts, ipc and net
  namespaces, and in a cgroup of its own where /sys/fs/cgroup is writable. Matched by parent pid.

It never writes to the configured outputs: an operator's Elasticsearch does not get test alerts.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sensor.outputs.memory import MemoryOutput

if TYPE_CHECKING:
    from sensor.config.settings import Config
from sensor.probe.capabilities import CAP_SYS_ADMIN, has_capability

log = logging.getLogger(__name__)

POLL_MS = 10
TICK_SECONDS = 1.0
# The rlimits podman asks for by default fail where root lacks CAP_SYS_RESOURCE; these fit every host.
PODMAN_ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
CGROUP_V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))

Doc = dict[str, Any]


class SelftestError(Exception):
    """The selftest could not even start (no ssh binary, no way to make a container)."""


@dataclass
class SelftestResult:
    passed: bool
    method: str = ""
    lines: list[str] = field(default_factory=list)
    attach_seconds: float | None = None
    alert_seconds: float | None = None  # from starting the container to the alert reaching the output
    detection_latency: float | None = None  # from the exec (event @timestamp) to the alert reaching the output


def _field(doc: Doc, dotted: str) -> Any:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def is_ssh_alert(doc: Doc) -> bool:
    return _field(doc, "event.kind") == "alert" and _field(doc, "process.name") == "ssh"


def find_ssh() -> Path:
    found = shutil.which("ssh") or ("/usr/bin/ssh" if os.access("/usr/bin/ssh", os.X_OK) else None)
    if found is None:
        raise SelftestError("no ssh binary on this node to start in a container: apt-get install openssh-client")
    return Path(found).resolve()


class Trigger(Protocol):
    method: str
    description: str

    def start(self) -> None: ...

    def matches(self, doc: Doc) -> bool: ...

    def finish(self) -> str: ...


def _shared_libraries(binary: Path) -> list[Path]:
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30)
    libraries = []
    for line in result.stdout.splitlines():
        for word in line.replace("=>", " ").split():
            if word.startswith("/"):
                libraries.append(Path(word))
    return libraries


def minimal_rootfs(root: Path, ssh: Path) -> None:
    """ssh, its libraries and the passwd entry ssh looks up before it reads its options."""
    for source in (ssh, *_shared_libraries(ssh)):
        target = root / "usr/bin/ssh" if source == ssh else root / source.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.resolve(), target)
    for directory in ("etc", "proc", "sys", "dev", "tmp", "root", "run"):
        (root / directory).mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")


class PodmanTrigger:
    method = "podman"

    def __init__(self, ssh: Path, workdir: Path) -> None:
        self.ssh = ssh
        self.workdir = workdir
        self.container_id = ""
        self.description = "ssh -V in a podman container"
        self._thread: threading.Thread | None = None
        self._outcome = ""

    @staticmethod
    def available() -> bool:
        return shutil.which("podman") is not None and os.geteuid() == 0

    def _run(self, runtime: str | None) -> subprocess.CompletedProcess:
        cidfile = self.workdir / f"cid-{runtime or 'default'}"
        command = ["podman"]
        if runtime:
            command += ["--runtime", runtime]
        command += ["run", "--rm", "--network", "none", *PODMAN_ULIMITS, "--cidfile", str(cidfile),
                    "--rootfs", str(self.workdir / "rootfs"), "/usr/bin/ssh", "-V"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if cidfile.exists():
            self.container_id = cidfile.read_text().strip()
        return result

    def _work(self) -> None:
        result = self._run(None)
        # crun refuses hybrid cgroup hierarchies; runc copes with them.
        if "OpenSSH" not in result.stderr and shutil.which("runc"):
            result = self._run("runc")
            self.description = "ssh -V in a podman container (runtime runc)"
        if "OpenSSH" not in result.stderr:
            self._outcome = f"podman failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"

    def start(self) -> None:
        minimal_rootfs(self.workdir / "rootfs", self.ssh)
        # podman blocks until the container ends: on a thread, so the probe keeps being drained meanwhile.
        self._thread = threading.Thread(target=self._work, name="selftest-podman", daemon=True)
        self._thread.start()

    def matches(self, doc: Doc) -> bool:
        return bool(self.container_id) and _field(doc, "container.id") == self.container_id

    def finish(self) -> str:
        if self._thread is not None:
            self._thread.join(timeout=120)
        return self._outcome


def writable_cgroup_root() -> Path | None:
    for root in CGROUP_V2_ROOTS:
        if (root / "cgroup.procs").exists() and (root / "cgroup.controllers").exists() and os.access(root, os.W_OK):
            return root
    return None


class UnshareTrigger:
    method = "unshare"

    def __init__(self, ssh: Path) -> None:
        self.ssh = ssh
        self.description = "ssh -V in new namespaces (unshare)"
        self.cgroup: Path | None = None
        self._proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("unshare") is not None and os.geteuid() == 0

    def start(self) -> None:
        root = writable_cgroup_root()
        command = ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--uts", "--ipc", "--net",
                   str(self.ssh), "-V"]
        if root is not None:
            cgroup = root / f"container-sensor-selftest-{os.getpid()}"
            try:
                cgroup.mkdir(exist_ok=True)
                self.cgroup = cgroup
            except OSError as error:
                log.info("no cgroup of its own for the selftest: %s", error)
        if self.cgroup is not None:
            self.description += f" in cgroup {self.cgroup}"
            # The shell joins the cgroup, then becomes unshare: the pid stays, so ssh's parent is known.
            script = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'
            command = ["sh", "-c", script, "sh", str(self.cgroup), *command]
        else:
            self.description += " (no cgroup of its own: /sys/fs/cgroup is read-only here)"
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def matches(self, doc: Doc) -> bool:
        return self._proc is not None and _field(doc, "process.parent.pid") == self._proc.pid

    def finish(self) -> str:
        outcome = ""
        if self._proc is not None:
            try:
                _, stderr = self._proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                _, stderr = self._proc.communicate()
            if "OpenSSH" not in (stderr or ""):
                outcome = f"unshare failed (exit {self._proc.returncode}): {(stderr or '').strip()[-300:]}"
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError as error:
                log.warning("could not remove %s: %s", self.cgroup, error)
        return outcome


def choose_trigger(method: str, ssh: Path, workdir: Path) -> Trigger:
    if method in ("auto", "podman") and PodmanTrigger.available():
        return PodmanTrigger(ssh, workdir)
    if method == "podman":
        raise SelftestError("podman is not available here (not installed, or not root)")
    if UnshareTrigger.available():
        if not has_capability(CAP_SYS_ADMIN):
            # New namespaces need CAP_SYS_ADMIN; a user namespace would not help: mapping root into one needs
            # CAP_SETFCAP (Linux 5.12+), which the least-privilege set drops too.
            raise SelftestError("starting ssh in new namespaces needs CAP_SYS_ADMIN, which this process lacks (the "
                                "least-privilege DaemonSet drops it): run 'sudo container-sensor selftest' on the "
                                "node, or start ssh in any container and look for the alert")
        return UnshareTrigger(ssh)
    raise SelftestError("neither podman nor unshare can be used here: run as root with util-linux installed")


def _timestamp(doc: Doc) -> float | None:
    stamp = _field(doc, "@timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_selftest(config: Config, *, method: str = "auto", timeout: float = 15.0) -> SelftestResult:
    """Attaches the probe, starts ssh in a container, and waits up to `timeout` seconds for the alert."""
    from sensor.app import build_pipeline, probe_options  # the live pipeline, only here
    from sensor.probe.loader import Probe, ProbeError  # bcc only where it runs
    from sensor.run import attach

    result = SelftestResult(passed=False)
    try:
        ssh = find_ssh()
    except SelftestError as error:
        result.lines.append(f"selftest: FAIL: {error}")
        return result
    capture = MemoryOutput()
    pipeline = build_pipeline(config, [capture], live=True)
    probe = Probe(pipeline.handle, probe_options(config.sections.probe))
    started = time.monotonic()
    try:
        attach(probe, pipeline)
    except ProbeError as error:
        result.lines.append(f"selftest: FAIL: the probe did not load: {error}")
        result.lines.append("selftest: run 'container-sensor check' for every prerequisite")
        return result
    try:
        result.attach_seconds = time.monotonic() - started
        result.lines.append(f"selftest: probe attached in {result.attach_seconds:.2f}s")
        with tempfile.TemporaryDirectory(prefix="container-sensor-selftest-") as workdir:
            try:
                trigger = choose_trigger(method, ssh, Path(workdir))
            except SelftestError as error:
                result.lines.append(f"selftest: FAIL: {error}")
                return result
            result.method = trigger.method
            triggered_wall = time.time()
            trigger.start()
            found = _drain_until(probe, pipeline, lambda: capture.find(
                lambda doc: is_ssh_alert(doc) and trigger.matches(doc)), time.monotonic() + timeout)
            failure = trigger.finish()
            result.lines.append(f"selftest: started {trigger.description}")
            _conclude(result, found, triggered_wall, failure, capture, trigger, timeout)
    finally:
        probe.close()
    return result


def _drain_until(probe: Any, pipeline: Any, found: Callable[[], tuple[float, Doc] | None],
                 deadline: float) -> tuple[float, Doc] | None:
    next_tick = time.monotonic() + TICK_SECONDS
    while time.monotonic() < deadline:
        probe.poll(POLL_MS)
        pipeline.flush()
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + TICK_SECONDS
            pipeline.tick(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        hit = found()
        if hit is not None:
            return hit
    return None


def _conclude(result: SelftestResult, found: tuple[float, Doc] | None, triggered_wall: float, failure: str,
              capture: MemoryOutput, trigger: Trigger, timeout: float) -> None:
    if found is not None:
        arrived, alert = found
        result.passed = True
        result.alert_seconds = arrived - triggered_wall
        # The exec event's @timestamp is the kernel's time of the exec; the alert's is when it was raised.
        entity = _field(alert, "process.entity_id")
        exec_event = capture.find(lambda doc: _field(doc, "event.action") == "exec"
                                  and _field(doc, "event.kind") != "alert"
                                  and _field(doc, "process.entity_id") == entity)
        exec_at = _timestamp(exec_event[1]) if exec_event is not None else None
        result.detection_latency = arrived - exec_at if exec_at is not None else None
        where = _field(alert, "container.id") or f"pid namespace {_field(alert, 'container_sensor.namespaces.pid')}"
        runtime = _field(alert, "container.runtime") or trigger.method
        rule = _field(alert, "rule.name") or "alert"
        latency = f", {result.detection_latency * 1000:.1f} ms after the exec" if exec_at is not None else ""
        result.lines.append(f"selftest: PASS: \"{rule}\" for ssh in {runtime} {str(where)[:12]} "
                            f"{result.alert_seconds:.2f}s after the container was started{latency}")
        if trigger.method == "unshare" and runtime != "unshare":
            result.lines.append(f"selftest: note: the alert names {runtime} {str(where)[:12]}, not the namespaces "
                                "the selftest made: container attribution is off")
        return
    if failure:
        result.lines.append(f"selftest: FAIL: {failure}")
        return
    exec_seen = capture.find(lambda doc: _field(doc, "process.name") == "ssh" and trigger.matches(doc))
    if exec_seen is None:
        result.lines.append(f"selftest: FAIL: no exec event for the container's ssh within {timeout:.0f}s: "
                            "the probe attached but saw nothing (see 'container-sensor check')")
    else:
        container = _field(exec_seen[1], "container.id")
        reason = "it was not taken for a container" if not container else "the ssh rule did not fire"
        result.lines.append(f"selftest: FAIL: the exec of ssh was seen, but no alert within {timeout:.0f}s: "
                            f"{reason}")
