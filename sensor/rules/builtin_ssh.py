"""The built-in rule: ssh, sshd or autossh executed inside a container, recognised by identity, not only by
name.

Container evidence is `container.id` or an entry leader of type `container`; an sshd session inside a
container (entry leader type `sshd`) still counts when the container id is there. Host ssh never alerts.

An exec named ssh is decided at once. Any other exec in a container needs a look at the executed file, which
belongs to the container: that look runs on a worker thread (`sensor.rules.offthread`) the event loop waits for
only briefly, and only for a share of its time. When it is not back in time, the exec's document says its identity
is unknown and why, and should the look finish later and find ssh, the alert is raised then (`late`).
"""

from __future__ import annotations

import collections
import os
import resource
import threading
import time
from dataclasses import dataclass, field

from sensor.containers.rootfs import OPEN_FLAGS
from sensor.containers.rootpins import RootPins
from sensor.model.processes import kernel_dev_to_st_dev
from sensor.rules.alerts import container_evidence
from sensor.rules.identity import ExecutableIdentity, Outcome, Recognition, device_forms
from sensor.rules.metadata import RuleMetadata
from sensor.rules.offthread import BoundedWorker, Job

# When none of an exec's processes shows the container's root, the next try waits this long.
SCAN_RETRY_S = 1.0
NOT_SSH_KEPT = 16384
# Execs whose look was given up on, kept for a late alert; a look not back after PENDING_KEPT_S is forgotten.
PENDING_KEPT = 2048
PENDING_KEPT_S = 600.0
PENDING_PER_LOOK = 4
# Executed files held by the look ahead in the ring (before their records are handled): at most this many, each
# for at most EARLY_KEPT_S (an exec whose document never asks for its file, one named ssh, gives its back then)
EARLY_KEPT = 1024
EARLY_KEPT_S = 5.0
UNKNOWN_TIMEOUT = "timeout"      # the look did not finish within the event loop's wait
UNKNOWN_DEFERRED = "deferred"    # the loop had spent its share of time waiting for looks: the look is queued
UNKNOWN_BUSY = "workers_busy"    # the queue of looks is full: this one was not queued
UNKNOWN_ERROR = "error"

# MITRE ATT&CK T1021.004 SSH under TA0008 Lateral Movement: the mapping Elastic's ssh rules give, shared by the
# built-in rules
SSH_LATERAL_MOVEMENT = {
    "framework": "MITRE ATT&CK",
    "tactic": {"id": "TA0008", "name": "Lateral Movement", "reference": "https://attack.mitre.org/tactics/TA0008/"},
    "technique": [{"id": "T1021", "name": "Remote Services", "reference": "https://attack.mitre.org/techniques/T1021/",
                   "subtechnique": [{"id": "T1021.004", "name": "SSH",
                                     "reference": "https://attack.mitre.org/techniques/T1021/004/"}]}],
}

BUILTIN_SSH_RULE = RuleMetadata(
    rule_id="0c6f3e52-6a0e-4c1b-9f4e-0b5c9a7d2e41",
    name="SSH Client or Server Started Inside a Container",
    description=("An ssh client, sshd server or autossh started inside a container, recognised by the "
                 "executed file's identity (name, symbolic link, hard link or content), not only by its name. "
                 "Containers rarely need ssh; an attacker uses it to move laterally or to keep a way back in."),
    severity="medium",
    risk_score=47,
    references=(
        "https://microsoft.github.io/Threat-Matrix-for-Kubernetes/techniques/SSH%20server%20running%20inside%20container/",
        "https://www.blackhillsinfosec.com/sshazam-hide-your-c2-inside-of-ssh/",
    ),
    version="1",
    ruleset="container-sensor built-in",
    license="Apache-2.0",
    threat=(
        SSH_LATERAL_MOVEMENT,
        {"framework": "MITRE ATT&CK",
         "tactic": {"id": "TA0003", "name": "Persistence",
                    "reference": "https://attack.mitre.org/tactics/TA0003/"},
         "technique": [{"id": "T1133", "name": "External Remote Services",
                        "reference": "https://attack.mitre.org/techniques/T1133/"}]},
    ),
)


def _is_exec_start(doc: dict) -> bool:
    event = doc.get("event")
    if not isinstance(event, dict):
        return False
    if event.get("action") != "exec":
        return False
    kinds = event.get("type")
    return kinds == "start" or (isinstance(kinds, list) and "start" in kinds)


def _container_key(doc: dict, sensor: dict) -> object:
    container = doc.get("container")
    if isinstance(container, dict) and container.get("id"):
        return container["id"]
    return ("mnt", (sensor.get("namespaces") or {}).get("mnt"))


def open_files_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def _fingerprint(executable: dict) -> tuple[int, int] | None:
    """(size, head hash) of the executed file as the kernel read it at exec, from the document."""
    size, head = executable.get("size"), executable.get("head_hash")
    if not isinstance(size, int) or not isinstance(head, str):
        return None
    try:
        return size, int(head, 16)
    except ValueError:
        return None


def _live_pids(process: dict) -> list[int]:
    """The exec'd process first, then relatives that are likely still alive and share its mount namespace."""
    pids: list[int] = []
    for holder in (process, process.get("parent"), process.get("group_leader"), process.get("session_leader"),
                   process.get("entry_leader")):
        if isinstance(holder, dict):
            pid = holder.get("pid")
            if isinstance(pid, int) and pid > 0 and pid not in pids:
                pids.append(pid)
    return pids


@dataclass
class SshMatch:
    """The rule's answer for one exec in a container: ssh recognised, or not decided (`unknown` says why)."""
    recognition: Recognition | None
    evidence: list[str]
    unknown: str = ""


@dataclass
class _Pending:
    job: Job
    doc: dict
    evidence: list[str]
    since: float = field(default_factory=time.monotonic)


class BuiltinSshRule:
    def __init__(self, identity: ExecutableIdentity, max_containers: int = 10000,
                 worker: BoundedWorker | None = None, pins: RootPins | None = None,
                 proc_root: str = "/proc", host_mnt_ns: int | None = None) -> None:
        self.identity = identity
        self.pins = pins
        self._proc = proc_root.rstrip("/")
        self._host_mnt_ns = host_mnt_ns
        # (pid, inode) -> (descriptor of the executed file, when taken): held by the look ahead, claimed by match
        self._early: dict[tuple[int, int], tuple[int, float]] = {}
        # an eighth of the open files limit at most: a container that floods execs must not leave the sensor
        # without descriptors for its outputs and its own reads
        self._early_kept = min(EARLY_KEPT, max(16, open_files_limit() // 8))
        self._early_expiry = 0.0
        self._early_lock = threading.Lock()
        # Opening /proc/<pid>/exe or /root reaches the container's file system, which a FUSE daemon in the
        # container may answer never: those opens run on a thread of their own, never on the event loop (a stuck
        # one only means files are not held early: the look opens them itself, on its own workers)
        self._holder = BoundedWorker("ssh identity holds", wait_s=0.0, max_queued=EARLY_KEPT, max_threads=2)
        self.metadata = BUILTIN_SSH_RULE
        self.worker = worker if worker is not None else BoundedWorker("ssh identity")
        # Both written by hand, not cachetools: the look worker writes them while the pipeline thread reads them
        # without a lock, which a dict's or a set's single operations allow (atomic under the GIL) and a cachetools
        # cache's do not.
        # container -> 0.0 once its ssh binaries are recorded, else when to try again (a per-entry expiry, kept
        # only for the failed ones); oldest first
        self._scanned: dict[object, float] = {}
        self._max_containers = max_containers
        # (container, device, inode, ctime, executable, name) of execs found not to be ssh; emptied whenever
        # something is learned that could make one of them ssh, so a set, not a map
        self._not_ssh: set[tuple] = set()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._waiting: dict[int, int] = {}      # id(job) -> pending execs waiting for it
        self._in_flight: dict[tuple[int, int], Job] = {}    # (device, inode) -> its look, while not done
        self.counts = {"identity_unknown": 0, "identity_late_matches": 0, "identity_pending_dropped": 0,
                       "identity_coalesced": 0, "identity_files_held": 0, "identity_files_not_held": 0,
                       "identity_files_held_ahead": 0, "identity_files_ahead_unclaimed": 0,
                       "identity_files_ahead_refused": 0}
        self.unknown_by_reason: dict[str, int] = {}
        self.last_error: Exception | None = None

    def look_ahead(self, pid: int, start_ns: int, inode: int, device: int, ctime_ns: int, mnt_ns: int) -> None:
        """An exec record still waiting in the ring (the event loop, before the records ahead of it are handled):
        outside the host's mount namespace, its root is pinned and its executed file held while the process may
        still run, for the look its document may ask for. Nothing for a file already known not to be ssh."""
        if self._host_mnt_ns is None or mnt_ns == self._host_mnt_ns or (pid, inode) in self._early:
            return
        now = time.monotonic()
        if now >= self._early_expiry:
            self._expire_early(now)
        # the verdicts are kept by the device number as documents carry it (st_dev), the record has the kernel's
        if ctime_ns and self.identity.settled_not_ssh(kernel_dev_to_st_dev(device), inode, ctime_ns):
            return
        if len(self._early) >= self._early_kept or self._holder.call(self._hold_ahead, pid, device, inode,
                                                                       mnt_ns).refused:
            self.counts["identity_files_ahead_refused"] += 1

    def _hold_ahead(self, pid: int, device: int, inode: int, mnt_ns: int | None) -> None:
        """On the holder thread: the container's root pinned, the executed file held."""
        if self.pins is not None and mnt_ns is not None:
            self.pins.see(pid, mnt_ns)
        fd = self._hold(pid, device, inode)
        if fd is None:
            return
        with self._early_lock:
            if (pid, inode) in self._early:
                os.close(fd)
                return
            self._early[(pid, inode)] = (fd, time.monotonic())
        self.counts["identity_files_held_ahead"] += 1

    def _expire_early(self, now: float) -> None:
        self._early_expiry = now + 1.0
        with self._early_lock:
            for key, (fd, since) in list(self._early.items()):
                if now - since >= EARLY_KEPT_S:
                    del self._early[key]
                    os.close(fd)
                    self.counts["identity_files_ahead_unclaimed"] += 1

    def _claim_early(self, pid: object, inode: object) -> int | None:
        if not self._early or not isinstance(pid, int) or not isinstance(inode, int):
            return None
        with self._early_lock:
            entry = self._early.pop((pid, inode), None)
        return entry[0] if entry is not None else None

    def match(self, doc: dict) -> SshMatch | None:
        """ssh recognised (how, and which fields place it in a container), identity unknown, or None: not ssh,
        or not an exec in a container."""
        if not _is_exec_start(doc):
            return None
        early = None
        if self._early:
            # what the look ahead held for this exec: claimed whatever happens next, closed when not needed
            process = doc.get("process") or {}
            executable = (doc.get("container_sensor") or {}).get("executable") or {}
            early = self._claim_early(process.get("pid"), executable.get("inode"))
        taken = [False]
        try:
            return self._match(doc, early, taken)
        finally:
            if early is not None and not taken[0]:
                os.close(early)

    def _match(self, doc: dict, early: int | None, taken: list[bool]) -> SshMatch | None:
        process = doc.get("process")
        if not isinstance(process, dict):
            return None
        sensor = doc.get("container_sensor") or {}
        executable = sensor.get("executable") or {}
        device, inode, ctime_ns = executable.get("device"), executable.get("inode"), executable.get("ctime_ns")
        if executable.get("path_truncated") is True:
            # A cut path is no file's path: its last component is where the cut fell, not a name, and opening it
            # in the container would reach another file. Only process.name (from the kernel's comm, never from
            # the cut path) and the file itself (device, inode, /proc/<pid>/exe) are looked at.
            process = {key: value for key, value in process.items() if key != "executable"}
        passed = executable.get("passed")
        if isinstance(passed, str) and passed:
            # process.executable is the file a link led to: the identity looks at the path as passed (a name of
            # its own, a link to be followed in the container's root), and a link to ssh is ssh by its target's name
            process = {**process, "executable": passed, "resolved": process.get("executable")}
        container = _container_key(doc, sensor)
        # A container's storm of execs of a few files that are not ssh: decided once per file and container
        seen_key = (container, device, inode, ctime_ns, process.get("executable"), process.get("name"))
        if seen_key in self._not_ssh:
            return None
        evidence = container_evidence(doc)
        if not evidence:
            return None
        mnt_ns = (sensor.get("namespaces") or {}).get("mnt")
        device = device if isinstance(device, int) else None
        inode = inode if isinstance(inode, int) else None
        ctime_ns = ctime_ns if isinstance(ctime_ns, int) else None
        fingerprint = _fingerprint(executable)
        if self.identity.by_name(process.get("executable"), process.get("name")) is not None:
            # ssh by name needs no look at any file: decided here, whatever state the looks are in (the
            # container's inventory is taken at its next exec of another name)
            return self._found(self.identity.check(process.get("executable"), process.get("name"),
                                                   device, inode, (), resolved=process.get("resolved"),
                                                   fingerprint=fingerprint), evidence)
        if (self._scanned.get(container) == 0.0 and device is not None and inode is not None
                and ctime_ns is not None and self.identity.settled_not_ssh(device, inode, ctime_ns)):
            self._settle(seen_key)
            return None
        inode_key = (device, inode) if device is not None and inode is not None else None
        running = self._in_flight.get(inode_key) if inode_key is not None else None
        if running is not None and not running.done.is_set():
            # The same file is being looked at already (a container touching one binary before each exec):
            # one look answers for all of them.
            self.counts["identity_coalesced"] += 1
            # a few of its execs wait for its answer (alerts on the rest would fold into theirs): a flood of one
            # file must not push out the pending execs of other files
            if self._waiting.get(id(running), 0) < PENDING_PER_LOOK:
                self._keep_pending(_Pending(running, doc, evidence))
            return self._unknown(UNKNOWN_DEFERRED, evidence)
        # The executed file itself, held since the look ahead (or opened by the look, while the process may still
        # run): the look reads it even if the process, the container, or the path's file is gone by then
        held = early
        taken[0] = True   # the job closes it, or the refusal below
        job = self.worker.call(self._look, container, process.get("executable"), process.get("name"),
                               device, inode, _live_pids(process), ctime_ns, held,
                               mnt_ns if isinstance(mnt_ns, int) else None, fingerprint)
        if job.refused:
            if held is not None:
                os.close(held)
            return self._unknown(UNKNOWN_BUSY, evidence)
        if not job.done.is_set():
            if inode_key is not None:
                if len(self._in_flight) >= PENDING_KEPT:
                    self._in_flight = {k: j for k, j in self._in_flight.items() if not j.done.is_set()}
                self._in_flight[inode_key] = job
            self._keep_pending(_Pending(job, doc, evidence))
            return self._unknown(UNKNOWN_TIMEOUT if job.waited else UNKNOWN_DEFERRED, evidence)
        if job.error is not None:
            self.last_error = job.error
            return self._unknown(UNKNOWN_ERROR, evidence)
        outcome: Outcome = job.result
        if outcome.recognition is None and not outcome.unknown:
            if (self._scanned.get(container) == 0.0 and device is not None and inode is not None
                    and ctime_ns is not None and self.identity.settled_not_ssh(device, inode, ctime_ns)):
                self._settle(seen_key)
            return None
        return self._found(outcome, evidence)

    def _hold(self, pid: object, device: int | None, inode: int | None) -> int | None:
        """A descriptor of the process's executed file, when it still runs that file (the pid not reused, no
        exec since: same device and inode as the record)."""
        if not isinstance(pid, int) or device is None or inode is None:
            return None
        try:
            fd = os.open(f"{self._proc}/{pid}/exe", OPEN_FLAGS)
        except OSError:
            self.counts["identity_files_not_held"] += 1
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is None or st.st_ino != inode or device not in device_forms(st.st_dev):
            os.close(fd)
            self.counts["identity_files_not_held"] += 1
            return None
        self.counts["identity_files_held"] += 1
        return fd

    def _look(self, container: object, executable: str | None, name: str | None, device: int | None,
              inode: int | None, pids: list[int], ctime_ns: int | None, held: int | None = None,
              mnt_ns: int | None = None, fingerprint: tuple[int, int] | None = None) -> Outcome:
        """On the worker: the container's ssh inventory (once), then the executed file."""
        roots = self.pins.dup_roots(mnt_ns) if self.pins is not None and mnt_ns is not None else []
        if held is None and pids and inode is not None:
            held = self._claim_early(pids[0], inode)   # the holder may have been slower than the document
        try:
            if self._scan_once(container, pids):
                self._not_ssh.clear()  # new ssh binaries may be known now
            return self.identity.check(executable, name, device, inode, pids, ctime_ns, held=held, roots=roots,
                                       fingerprint=fingerprint)
        finally:
            for fd in (*roots, *((held,) if held is not None else ())):
                os.close(fd)

    def _found(self, outcome: Outcome, evidence: list[str]) -> SshMatch | None:
        if outcome.recognition is not None:
            self._not_ssh.clear()  # recognising one may have taught the identity a new inode
            return SshMatch(outcome.recognition, evidence)
        if outcome.unknown:
            return self._unknown(outcome.unknown, evidence)
        return None

    def _unknown(self, reason: str, evidence: list[str]) -> SshMatch:
        self.counts["identity_unknown"] += 1
        self.unknown_by_reason[reason] = self.unknown_by_reason.get(reason, 0) + 1
        return SshMatch(None, evidence, reason)

    def _keep_pending(self, pending: _Pending) -> None:
        if len(self._pending) >= PENDING_KEPT:
            dropped = self._pending.popleft()
            self._waiting[id(dropped.job)] = self._waiting.get(id(dropped.job), 1) - 1
            self.counts["identity_pending_dropped"] += 1
        self._pending.append(pending)
        self._waiting[id(pending.job)] = self._waiting.get(id(pending.job), 0) + 1

    def _settle(self, seen_key: tuple) -> None:
        if len(self._not_ssh) >= NOT_SSH_KEPT:
            self._not_ssh.clear()
        self._not_ssh.add(seen_key)

    def wait_pending(self, wait_s: float) -> None:
        """Wait, at most `wait_s` in all, for the looks execs are waiting on (at shutdown)."""
        deadline = time.monotonic() + wait_s
        for pending in list(self._pending):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            pending.job.done.wait(remaining)

    def late(self) -> list[tuple[dict, SshMatch]]:
        """Execs whose look finished after their document went out and found ssh: (the exec's document, the
        match). Looks that failed or found nothing are forgotten; looks pending too long are given up."""
        if not self._pending:
            return []
        now = time.monotonic()
        found: list[tuple[dict, SshMatch]] = []
        kept: collections.deque[_Pending] = collections.deque()
        for pending in self._pending:
            job = pending.job
            if not job.done.is_set():
                if now - pending.since < PENDING_KEPT_S:
                    kept.append(pending)
                else:
                    self.counts["identity_pending_dropped"] += 1
                continue
            outcome = job.result if job.error is None else None
            if isinstance(outcome, Outcome) and outcome.recognition is not None:
                self.counts["identity_late_matches"] += 1
                found.append((pending.doc, SshMatch(outcome.recognition, pending.evidence)))
        self._pending = kept
        self._waiting = {}
        for pending in kept:
            self._waiting[id(pending.job)] = self._waiting.get(id(pending.job), 0) + 1
        if self._in_flight:
            self._in_flight = {k: j for k, j in self._in_flight.items() if not j.done.is_set()}
        return found

    def _scan_once(self, key: object, pids: list[int]) -> bool:
        """On a container's first exec, record the ssh binaries at its usual paths (a few stats, once). True
        when it looked."""
        retry_at = self._scanned.get(key)
        if retry_at is not None and (retry_at == 0.0 or time.monotonic() < retry_at):
            return False
        done = self.identity.learn_root(pids)
        if key not in self._scanned and len(self._scanned) >= self._max_containers:
            del self._scanned[next(iter(self._scanned))]
        self._scanned[key] = 0.0 if done else time.monotonic() + SCAN_RETRY_S
        return True
