"""Is an executed file ssh, sshd or autossh, whatever it is called, and how do we know?

Ways of recognising, in the order tried:
- "name": the executed path's last component (or the process name) is ssh, sshd or autossh;
- "symlink": the path's last component is a symbolic link (inside the container's root) to such a binary;
- "hardlink": the executed file has other names (link count > 1) and is such a binary;
- "content": a file under another name whose bytes say it is OpenSSH's client/server or autossh (ELF markers);
- "inode": the file could not be looked at any more, but its (device, inode) is a binary already known as one.

The verdict for a file is cached by (device, inode) so an exec storm costs one lookup per distinct binary;
content reads are bounded (ELF only, the first `max_read_bytes` of the file: padding a copy with zeros moves
no marker, and a huge binary costs no more than a small one). A cached verdict is re-checked against the
file's ctime while the process still lives, so a recycled inode number cannot hide a new binary.

The files looked at belong to whoever runs in the container, who may change them while we read: they are
never mapped (truncating a mapped file kills the reader with SIGBUS) but read with bounded `pread`s; opened
non-blocking (a FIFO planted at the path must not block the open) and read only when `fstat` says they are the
regular file executed; and paths inside a container are resolved by the kernel within the container's root
(`openat2` with RESOLVE_IN_ROOT), so a link swapped in between our checks cannot lead to the host's files.
Each look has a time budget; callers run it off the event loop (see `sensor.rules.offthread`).
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sensor.containers.rootfs import OPEN_FLAGS, InRootOpener, follow_link_in_root, resolve_in_root
from sensor.rules.container_files import DEFAULT_READ_RATE, ReadBudget, scan_file

# program -> (implementation, role): OpenSSH's client and server (from 9.8 each connection runs in sshd-session,
# from 10.0 authentication in sshd-auth), autossh, and Dropbear's server, client and multi-call binary (whose
# role is the name it was run under)
SSH_PROGRAM_KINDS = {
    "ssh": ("openssh", "client"), "sshd": ("openssh", "server"), "sshd-session": ("openssh", "server"),
    "sshd-auth": ("openssh", "server"), "autossh": ("autossh", "client"), "dropbear": ("dropbear", "server"),
    "dbclient": ("dropbear", "client"), "dropbearmulti": ("dropbear", ""),
}
SSH_PROGRAMS = tuple(SSH_PROGRAM_KINDS)
# dropbearmulti's applets: the name it runs under says the role
_MULTI_ROLES = {"dropbear": "server", "dbclient": "client", "ssh": "client", "scp": "client"}
HOST_SSH_PATHS = (
    "/usr/bin/ssh", "/bin/ssh", "/usr/local/bin/ssh", "/usr/bin/slogin",
    "/usr/sbin/sshd", "/sbin/sshd", "/usr/local/sbin/sshd",
    "/usr/lib/openssh/sshd-session", "/usr/libexec/sshd-session", "/usr/lib/openssh/sshd-auth",
    "/usr/libexec/sshd-auth",
    "/usr/lib/autossh/autossh", "/usr/bin/autossh", "/usr/local/bin/autossh",
    "/usr/sbin/dropbear", "/usr/bin/dbclient", "/usr/bin/dropbearmulti", "/usr/sbin/dropbearmulti",
)


def program_kind(program: str, invoked_as: str | None = None) -> tuple[str, str]:
    """(implementation, role) of a recognised program; a multi-call binary's role from the name it ran under."""
    implementation, role = SSH_PROGRAM_KINDS.get(program, ("", ""))
    if not role and invoked_as:
        role = _MULTI_ROLES.get(invoked_as, "")
    return implementation, role or "unknown"
DEFAULT_MAX_READ_BYTES = 16 * 1024 * 1024
# A file that could not be reached (every process that could show it has exited) is tried again at most this
# often, so a storm of short-lived execs of one unreachable binary costs a dict lookup per event.
UNREADABLE_RETRY_S = 0.1
# A look at one file reads for at most this long; a file that cannot be read in time stays unknown (and is
# tried again later) instead of being settled as "not ssh".
DEFAULT_MAX_CHECK_S = 2.0
# ssh binaries learned from containers (their roots' usual paths, execs by name): one or two per container image
# layer, so this many outlive a long churn of containers; the oldest learned is forgotten first.
DEFAULT_KNOWN_SIZE = 4096
UNKNOWN_UNREACHABLE = "unreachable"      # no live process shows the file any more, and it is not known
UNKNOWN_REPLACED = "replaced"            # the path now leads to another file (or to no regular file)
UNKNOWN_TIME_BUDGET = "time_budget"      # reading the file took longer than the budget of one look


# Where the bytes read came from (Recognition.evidence): the very file executed, held since the exec was processed
# or opened through the process; the path inside a live process's root; the path inside a root held since the
# container's first exec (the container may be gone); the (device, inode) of a binary known before.
EVIDENCE_EXECUTED = "executed_file"
EVIDENCE_ROOT = "container_root"
EVIDENCE_PINNED_ROOT = "pinned_root"
EVIDENCE_KNOWN = "known_inode"
EVIDENCE_FINGERPRINT = "head_fingerprint"   # no bytes read: the size and head the kernel read at exec
HEAD_BYTES = 256   # bpf/sensor.h HEAD_BYTES (BINPRM_BUF_SIZE)
_FNV_OFFSET, _FNV_PRIME, _U64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def head_hash(head: bytes) -> int:
    """FNV-1a over the first HEAD_BYTES of a file (zero-filled past its end, as the kernel's buffer is), a
    little-endian 64-bit word at a time: what the probe computes at exec (bpf/sensor.c head_hash)."""
    head = head[:HEAD_BYTES].ljust(HEAD_BYTES, b"\0")
    value = _FNV_OFFSET
    for (word,) in struct.iter_unpack("<Q", head):
        value = ((value ^ word) * _FNV_PRIME) & _U64
    return value


def head_fingerprint(fd: int) -> tuple[int, int]:
    """(size, head_hash) of an open file."""
    return os.fstat(fd).st_size, head_hash(os.pread(fd, HEAD_BYTES, 0))


@dataclass(frozen=True)
class Recognition:
    program: str          # one of SSH_PROGRAMS
    way: str              # "name", "symlink", "hardlink", "content", "inode" or "fingerprint"
    target: str | None = None   # where a symlink led, inside the container's root
    # EVIDENCE_*: what the verdict was read from ("" for a name); told in the alert, not part of what was found
    evidence: str = field(default="", compare=False)


@dataclass
class _Verdict:
    program: str          # "" when the file is none of them
    source: str           # "inventory", "content" or "unreadable"
    ctime_ns: int | None
    retry_at: float = 0.0  # for "unreadable": when to try to reach the file again
    reason: str = ""      # for "unreadable": why (UNKNOWN_*)
    evidence: str = ""    # EVIDENCE_*


@dataclass(frozen=True)
class Outcome:
    """What one identity check found: a recognition, or nothing; `unknown` says why nothing could be decided
    ("" when the file was read and is none of the programs)."""
    recognition: Recognition | None
    unknown: str = ""


# openat2(2) resolution flags (linux/openat2.h)
def device_forms(st_dev: int) -> tuple[int, int]:
    """The userspace st_dev and the kernel's internal dev_t (major << 20 | minor) of the same device."""
    return st_dev, (os.major(st_dev) << 20) | os.minor(st_dev)


class ExecutableIdentity:
    def __init__(self, proc_root: str = "/proc", *, max_read_bytes: int = DEFAULT_MAX_READ_BYTES,
                 cache_size: int = 65536, host_paths: Iterable[str] = HOST_SSH_PATHS,
                 max_check_s: float = DEFAULT_MAX_CHECK_S, read_rate: float = DEFAULT_READ_RATE,
                 known_size: int = DEFAULT_KNOWN_SIZE) -> None:
        self._proc = proc_root.rstrip("/")
        self._budget = ReadBudget(read_rate, burst=max(read_rate, max_read_bytes))
        self._max_read = max_read_bytes
        self._max_check_s = max_check_s
        self._opener = InRootOpener()
        self._cache_size = max(16, cache_size)
        # (device, inode) -> verdict. Written by hand, not cachetools: the look worker writes it while the pipeline
        # thread reads it without a lock (settled_not_ssh), which a dict's single operations allow (atomic under
        # the GIL) and a cachetools cache's do not; a verdict's validity is its own (the file's ctime, or a retry
        # time for an unreadable one), checked on every read; and it clears when full, see _verdict.
        self._verdicts: dict[tuple[int, int], _Verdict] = {}
        # (device, inode) -> program: the host's own ssh binaries (`_inventory`, fixed at start) and those learned
        # since (`_known`, at most `known_size`, oldest first out). Both threads add to `_known` (execs by name on
        # the event loop, container roots on the look worker): the writers share a lock, readers take none.
        self._inventory: dict[tuple[int, int], str] = {}
        self._known: dict[tuple[int, int], str] = {}
        self._known_size = max(1, known_size)
        self._known_lock = threading.Lock()
        # (size, head hash) -> program: the builds of ssh binaries seen (the host's, and those read or executed
        # by name in containers), at most `known_size`, oldest first out; written under the same lock
        self._fingerprints: dict[tuple[int, int], str] = {}
        self.counts = {"identity_cache_hits": 0, "identity_lookups": 0, "identity_content_reads": 0,
                       "identity_unreadable": 0, "identity_partial_scans": 0, "identity_stale": 0,
                       "identity_replaced": 0, "identity_time_budget": 0, "identity_fingerprint_matches": 0}
        self._inventory_paths = tuple(host_paths)
        for path in self._inventory_paths:
            self._learn_path(path)

    # inventory ----------------------------------------------------------------------------------------------
    def _learn_path(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        name = os.path.basename(os.path.realpath(path))
        program = name if name in SSH_PROGRAMS else ""
        if not program:
            try:
                fd = os.open(path, OPEN_FLAGS)
            except OSError:
                return
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    return
                program, _ = scan_file(fd, st.st_size, self._max_read, time.monotonic() + self._max_check_s)
            except OSError:
                return
            finally:
                os.close(fd)
        if program:
            for dev in device_forms(st.st_dev):
                self._inventory[(dev, st.st_ino)] = program
            try:
                with open(path, "rb") as file:
                    self.learn_fingerprint(head_fingerprint(file.fileno()), program)
            except OSError:
                pass

    def _program_known(self, key: tuple[int, int]) -> str | None:
        return self._inventory.get(key) or self._known.get(key)

    def _learn(self, key: tuple[int, int], program: str) -> None:
        if key in self._inventory or key in self._known:
            return
        with self._known_lock:
            known = self._known
            while len(known) >= self._known_size:
                del known[next(iter(known))]
            known.setdefault(key, program)

    def learn_fingerprint(self, fingerprint: tuple[int, int] | None, program: str) -> None:
        if not fingerprint or not fingerprint[1] or fingerprint in self._fingerprints:
            return
        with self._known_lock:
            while len(self._fingerprints) >= self._known_size:
                del self._fingerprints[next(iter(self._fingerprints))]
            self._fingerprints.setdefault(fingerprint, program)

    @property
    def known_count(self) -> int:
        """ssh binaries learned from containers (the host's own not counted)."""
        return len(self._known)

    def settled_not_ssh(self, device: int, inode: int, ctime_ns: int) -> bool:
        """The file (device, inode) as it was at ctime_ns was read and is none of the programs: an exec of it
        under a name that is not one of them is not ssh until something new is learned."""
        cached = self._verdicts.get((device, inode))
        return (cached is not None and cached.source != "unreadable" and not cached.program
                and cached.ctime_ns == ctime_ns and self._program_known((device, inode)) is None)

    def learn_root(self, pids: Sequence[int]) -> bool:
        """Record the ssh binaries at the usual paths of a container's root (seen through the first of `pids`
        whose /proc/<pid>/root is reachable), so a hard link to one is recognised even after every process
        that could show its path has gone. True when a root was reached."""
        for pid in pids:
            root = f"{self._proc}/{pid}/root"
            if not os.path.isdir(root + "/"):
                continue
            for path in self._inventory_paths:
                final = follow_link_in_root(root, path)
                name = os.path.basename(final) if final else None
                if name not in SSH_PROGRAMS:
                    continue
                try:
                    st = os.stat(resolve_in_root(root, final)[0])
                except OSError:
                    continue
                for dev in device_forms(st.st_dev):
                    self._learn((dev, st.st_ino), name)
                try:   # and its build, for a copy of it run once the container can no longer be looked into
                    fd = self._opener.open(root, final)
                except OSError:
                    continue
                try:
                    self.learn_fingerprint(head_fingerprint(fd), name)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            return True
        return False

    # classification -----------------------------------------------------------------------------------------
    def classify(self, executable: str | None, process_name: str | None, device: int | None,
                 inode: int | None, pids: Sequence[int], ctime_ns: int | None = None) -> Recognition | None:
        """Recognise ssh/sshd/autossh; `pids` are live processes sharing the exec's mount namespace, the
        exec'd process first (its /proc/<pid>/exe and /proc/<pid>/root are used to reach the file).
        `ctime_ns`: the file's change time as the kernel saw it at exec; with it, a cached verdict is checked
        without looking at the file again."""
        return self.check(executable, process_name, device, inode, pids, ctime_ns).recognition

    @staticmethod
    def by_name(executable: str | None, process_name: str | None) -> str | None:
        """The program an exec names itself as (no file is looked at)."""
        base = os.path.basename(executable) if executable else None
        for name in (base, process_name):
            if name in SSH_PROGRAMS:
                return name
        return None

    def check(self, executable: str | None, process_name: str | None, device: int | None,
              inode: int | None, pids: Sequence[int], ctime_ns: int | None = None,
              resolved: str | None = None, held: int | None = None, roots: Sequence[int] = (),
              fingerprint: tuple[int, int] | None = None) -> Outcome:
        """`classify`, saying why when the file could not be decided. `resolved` is the file the kernel found
        at `executable` when that was a link: named ssh there, the exec is ssh through a symbolic link.
        `held`: a descriptor of the executed file opened while the process still ran; `roots`: descriptors of
        the container's roots held since its first exec. Both stay the caller's to close. `fingerprint`: the
        (size, head hash) the kernel read at exec, the evidence left when the file cannot be read any more."""
        name = self.by_name(executable, process_name)
        if name is not None:
            if device is not None and inode is not None:
                self._learn((device, inode), name)
            self.learn_fingerprint(fingerprint, name)
            if (isinstance(resolved, str) and os.path.basename(resolved) == name
                    and os.path.basename(executable or "") != name):
                return Outcome(Recognition(name, "symlink", resolved))
            return Outcome(Recognition(name, "name"))
        if device is None or inode is None:
            return Outcome(None)
        key = (device, inode)
        verdict = self._verdict(key, executable, pids, ctime_ns, held, roots, fingerprint)
        if verdict.source == "unreadable":
            # the file is gone, replaced or changed: what the kernel read of it at exec still names its build
            known = self._fingerprints.get(fingerprint) if fingerprint else None
            if known:
                self.counts["identity_fingerprint_matches"] += 1
                return Outcome(Recognition(known, "fingerprint", evidence=EVIDENCE_FINGERPRINT))
            return Outcome(None, verdict.reason or UNKNOWN_UNREACHABLE)
        if not verdict.program:
            return Outcome(None)
        return Outcome(self._way(verdict, key, executable, pids, roots))

    def _verdict(self, key: tuple[int, int], executable: str | None, pids: Sequence[int],
                 ctime_ns: int | None = None, held: int | None = None, roots: Sequence[int] = (),
                 fingerprint: tuple[int, int] | None = None) -> _Verdict:
        cached = self._verdicts.get(key)
        if cached is not None:
            if cached.source == "unreadable":
                if time.monotonic() < cached.retry_at:
                    self.counts["identity_unreadable"] += 1
                    return cached
            elif ctime_ns and cached.ctime_ns is not None:
                if ctime_ns == cached.ctime_ns:
                    self.counts["identity_cache_hits"] += 1
                    return cached
                self.counts["identity_stale"] += 1
            elif cached.ctime_ns is None or not pids or self._still_same(pids[0], key, cached.ctime_ns):
                self.counts["identity_cache_hits"] += 1
                return cached
            else:
                self.counts["identity_stale"] += 1
            self._verdicts.pop(key, None)
        self.counts["identity_lookups"] += 1
        verdict = self._identify(key, executable, pids, ctime_ns, held, roots, fingerprint)
        if len(self._verdicts) >= self._cache_size:
            self._verdicts.clear()   # a scan for the oldest key on every insert would cost more than relearning
        self._verdicts[key] = verdict
        return verdict

    def _still_same(self, pid: int, key: tuple[int, int], ctime_ns: int) -> bool:
        try:
            st = os.stat(f"{self._proc}/{pid}/exe")
        except OSError:
            return True  # the process is gone: nothing newer to compare with
        if st.st_ino != key[1] or key[0] not in device_forms(st.st_dev):
            return True  # the pid was reused by another program; the cached verdict is for key, not for it
        return st.st_ctime_ns == ctime_ns

    def _open_candidates(self, executable: str | None, pids: Sequence[int], held: int | None,
                         roots: Sequence[int]) -> Iterable[tuple[int, str]]:
        """Open descriptors of what may be the executed file, with where each came from: the file held since the
        exec, the exec'd process's own image, the path inside each relative's root, then inside the roots held
        since the container's first exec. The caller closes them."""
        if held is not None:
            try:
                copy = os.dup(held)
            except OSError:
                copy = -1
            if copy >= 0:
                yield copy, EVIDENCE_EXECUTED
        if pids:
            try:
                fd = os.open(f"{self._proc}/{pids[0]}/exe", OPEN_FLAGS)
            except OSError:
                fd = -1
            if fd >= 0:
                yield fd, EVIDENCE_EXECUTED
        if executable and executable.startswith("/"):
            places = [*((f"{self._proc}/{pid}/root", EVIDENCE_ROOT) for pid in pids),
                      *((f"/proc/self/fd/{root}", EVIDENCE_PINNED_ROOT) for root in roots)]
            for root, evidence in places:
                try:
                    fd = self._opener.open(root, executable)
                except OSError:
                    continue
                yield fd, evidence

    def _identify(self, key: tuple[int, int], executable: str | None, pids: Sequence[int],
                  ctime_ns: int | None = None, held: int | None = None, roots: Sequence[int] = (),
                  fingerprint: tuple[int, int] | None = None) -> _Verdict:
        deadline = time.monotonic() + self._max_check_s
        replaced = False
        for fd, evidence in self._open_candidates(executable, pids, held, roots):
            try:
                st = os.fstat(fd)
                if st.st_ino != key[1] or key[0] not in device_forms(st.st_dev):
                    replaced = True
                    continue
                known = self._program_known(key)
                if known:
                    return _Verdict(known, "inventory", st.st_ctime_ns, evidence=EVIDENCE_KNOWN)
                if not stat.S_ISREG(st.st_mode):
                    replaced = True   # the inode executed was a regular file: this is not what ran
                    continue
                # Changed since the exec (written into after the process ended: a running image cannot be): what
                # it says now is not what ran. ssh it may still say, which is then believed; anything else leaves
                # the file undecided, never settled as not ssh.
                changed = bool(ctime_ns) and st.st_ctime_ns != ctime_ns
                # the file's build as it is now: read once, to compare with the exec's and to learn it
                current = (st.st_size, head_hash(os.pread(fd, HEAD_BYTES, 0)))
                if fingerprint and not changed:
                    # a change time ticks coarsely (a jiffy): written over within the tick of the copy, only the
                    # size and head the kernel read at exec tell the file is no longer what ran
                    changed = current != fingerprint
                if st.st_size < 4:
                    if changed:
                        replaced = True
                        continue
                    return _Verdict("", "content", st.st_ctime_ns, evidence=evidence)
                if st.st_size > self._max_read:
                    self.counts["identity_partial_scans"] += 1
                self.counts["identity_content_reads"] += 1
                program, finished = scan_file(fd, st.st_size, self._max_read, deadline, self._budget)
                if not finished:
                    self.counts["identity_time_budget"] += 1
                    return self._unreadable(UNKNOWN_TIME_BUDGET)
                if not program and (changed or (fingerprint and fingerprint in self._fingerprints)):
                    # no ssh in it now, but what ran was not this, or had the head of an ssh build
                    replaced = True
                    continue
                if program and not changed:
                    self.learn_fingerprint(current, program)
                return _Verdict(program, "content", st.st_ctime_ns, evidence=evidence)
            except OSError:
                continue
            finally:
                os.close(fd)
        known = self._program_known(key)
        if known:
            return _Verdict(known, "inventory", None, evidence=EVIDENCE_KNOWN)
        if replaced:
            self.counts["identity_replaced"] += 1
        self.counts["identity_unreadable"] += 1
        return self._unreadable(UNKNOWN_REPLACED if replaced else UNKNOWN_UNREACHABLE)

    @staticmethod
    def _unreadable(reason: str) -> _Verdict:
        return _Verdict("", "unreadable", None, time.monotonic() + UNREADABLE_RETRY_S, reason)

    @staticmethod
    def _is_file(path: str, key: tuple[int, int]) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return st.st_ino == key[1] and key[0] in device_forms(st.st_dev)

    def _way(self, verdict: _Verdict, key: tuple[int, int], executable: str | None,
             pids: Sequence[int], roots: Sequence[int] = ()) -> Recognition:
        evidence = verdict.evidence
        fallback = Recognition(verdict.program, "content" if verdict.source == "content" else "inode",
                               evidence=evidence)
        if not executable or not executable.startswith("/"):
            return fallback
        for root in [*(f"{self._proc}/{pid}/root" for pid in pids), *(f"/proc/self/fd/{fd}" for fd in roots)]:
            if not os.path.isdir(root + "/"):
                continue
            host_path, is_link = resolve_in_root(root, executable)
            if is_link:
                # only a link whose target is the very file executed: a parent outside the container
                # (a runtime's shim) shows the host's root, where the same path may be another file
                target = follow_link_in_root(root, executable)
                if target is not None and self._is_file(resolve_in_root(root, target)[0], key):
                    return Recognition(verdict.program, "symlink", target, evidence)
                continue
            try:
                st = os.lstat(host_path)
            except OSError:
                continue
            if st.st_ino == key[1]:
                if st.st_nlink > 1:
                    return Recognition(verdict.program, "hardlink", evidence=evidence)
                return fallback
        return fallback
