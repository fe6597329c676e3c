"""The process table: pid -> what we know of the process, seeded from /proc, kept current by probe records.

Entries are replaced, not edited, on exec and fork, so a document built from an entry keeps the values it saw.
Process is not a frozen dataclass only because frozen construction costs half as much again, once per exec:
nothing assigns to a Process's fields after it is made, and the builder's caches rely on that. The two session
slots at the end are the exception, and no cache reads them: `leaders` is written once, by sensor.model.sessions, when
the process enters the table (or at first read for one seeded from /proc, whose parent may come after it), and
`placed` holds the leaders last corrected for a container.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import posixpath
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from sensor.model.records import CredRecord, ExecRecord, ExitRecord, ForkRecord, Namespaces, ProcessSnapshotRecord

if TYPE_CHECKING:
    from sensor.model.sessions import Leaders  # sessions imports this module

# /proc/PID/stat reports start time in clock ticks; entity ids use the same granularity so that a process
# seeded from /proc and the same process seen later by the probe get the same id.
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
NS_NAMES = ("pid", "mnt", "net", "uts", "ipc", "cgroup", "user")


def decode_arg(raw: bytes) -> str:
    """argv bytes as text that is always valid UTF-8; undecodable bytes become \\xNN escapes."""
    return raw.decode("utf-8", "backslashreplace")


_ENTITY = struct.Struct("<9sIQ")


@lru_cache(maxsize=16)
def boot_prefix(boot_id: str) -> bytes:
    """9 bytes standing for the boot (boot ids are random per boot), at the head of entity and event ids."""
    return hashlib.sha256(boot_id.encode()).digest()[:9]


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def urlsafe_text(packed: bytes) -> str:
    """base64.urlsafe_b64encode(packed).decode(), without its two Python calls: made twice per exec."""
    return binascii.b2a_base64(packed, newline=False).translate(_URLSAFE).decode()


def entity_id(boot_id: str, pid: int, start_boottime_ns: int) -> str:
    """Unique across boots and pid reuse (no pid is reused within one clock tick), stable for the life of the
    process, and the same whether the process was first seen in /proc or by the probe. Packed, not hashed:
    it is made for every exec."""
    return urlsafe_text(_ENTITY.pack(boot_prefix(boot_id), pid & 0xFFFFFFFF, start_boottime_ns // TICK_NS))


@dataclass(frozen=True, slots=True)
class PreviousImage:
    executable: str
    args: tuple[str, ...]
    args_count: int


PREVIOUS_KEPT = 4  # images kept per process: a loop of re-execs must not grow an entry (and its documents) forever


@dataclass(slots=True)
class Process:
    pid: int
    ppid: int
    start_boottime_ns: int
    entity_id: str
    executable: str = ""
    name: str = ""
    args: tuple[str, ...] = ()
    args_count: int = 0
    args_truncated: bool = False
    uid: int = -1
    gid: int = -1
    euid: int = -1
    egid: int = -1
    sid: int = 0
    pgid: int = 0
    tty_major: int = 0
    tty_minor: int = 0
    cgroup_id: int = 0
    ns: Namespaces = field(default_factory=Namespaces)
    exe_ino: int = 0
    exe_dev: int = 0  # userspace st_dev encoding
    exe_ctime_ns: int = 0
    cwd: str = ""
    exec_seen: bool = False  # an exec of this process was observed (not only fork or /proc)
    kthread: bool = False
    path_truncated: bool = False  # `executable` is a cut prefix of a longer path; `name` then comes from comm
    # Elastic's session model as it stood when the process entered the table (sensor.model.sessions.stored_leaders).
    # Out of comparison and repr: it refers to the process itself when the process leads its group or session.
    leaders: Leaders | None = field(default=None, compare=False, repr=False)
    # (container, leaders corrected for it): the resolver may place a process only after it entered the table, so
    # the correction is made at the first document that has that container, and kept for the next one (its end)
    placed: tuple[Any, Leaders] | None = field(default=None, compare=False, repr=False)
    # capability sets (bit N: capability N) after the exec, or read from /proc at start-up; -1 where unknown
    cap_effective: int = -1
    cap_permitted: int = -1
    # what the process ran before it exec'd again (ECS process.previous: Elastic Defend's re-exec context), the
    # latest first; None for a first exec (a forked child's copy of its parent is not an image it ran)
    previous: tuple[PreviousImage, ...] | None = None
    env_vars: tuple[str, ...] = ()  # the configured variables of its environment at exec, "NAME=value"
    env_truncated: bool = False  # its environment was longer than the probe reads: a variable may be missing
    # the path as passed to execve, where it differs from `executable` (the file actually executed, as the kernel
    # walked it from the new image's file: /usr/bin/dash for /bin/sh, the applet's busybox)
    passed: str = ""
    # the executed file's size and the hash of its first 256 bytes as the kernel read them (0: unknown)
    exe_size: int = 0
    exe_head_hash: int = 0

    @property
    def command_line(self) -> str:
        return " ".join(self.args)

    @property
    def interactive(self) -> bool:
        return self.tty_major != 0


def snapshot_of(proc: Process, ktime_ns: int) -> ProcessSnapshotRecord:
    """A seeded process as a record, for recordings."""
    encode = lambda text: text.encode("utf-8", "surrogateescape")  # noqa: E731
    return ProcessSnapshotRecord(
        ktime_ns=ktime_ns, pid=proc.pid, ppid=proc.ppid, start_boottime_ns=proc.start_boottime_ns,
        executable=encode(proc.executable), argv=tuple(encode(a) for a in proc.args), uid=proc.uid, gid=proc.gid,
        euid=proc.euid, egid=proc.egid, sid=proc.sid, pgid=proc.pgid, tty_major=proc.tty_major,
        tty_minor=proc.tty_minor, cgroup_id=proc.cgroup_id, ns=proc.ns, exe_ino=proc.exe_ino, exe_dev=proc.exe_dev,
        cwd=encode(proc.cwd), kthread=proc.kthread, cap_effective=proc.cap_effective,
        cap_permitted=proc.cap_permitted,
    )


# TASK_COMM_LEN: the kernel keeps 15 bytes of a name and a NUL
COMM_KEPT = 15


def name_from_comm(comm: bytes) -> str:
    """The program name when the executed path was cut: at exec the kernel sets comm to the last component of
    the whole path (kbasename(bprm->filename), or the file's own name for fexecve), and nothing in user space can
    change it before the probe reads it. A comm shorter than 15 bytes is that component exactly; one of 15 may
    itself be cut, and a cut name is what this avoids, so it gives "" (no process.name)."""
    if not comm or len(comm) >= COMM_KEPT:
        return ""
    return decode_arg(comm)


def kernel_dev_to_st_dev(kdev: int) -> int:
    """The kernel's internal dev_t (major << 20 | minor) as stat(2) reports it."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


class ProcessTable:
    """Live processes and recently exited ones (kept for `linger_ns` so late references still resolve).

    Bounds: one entry per pid (kernel.pid_max), and of those at most `max_exited` exited ones, the oldest
    forgotten first: an exec storm's exits would otherwise keep 30 s of them (tens of thousands, most of the
    sensor's memory), and raise its resident size to match whenever the storm ran faster. An entry whose exit
    record was lost (counted in events_lost_total) stays until its pid is reused."""

    def __init__(self, boot_id: str, *, linger_ns: int = 30_000_000_000, max_exited: int = 8192) -> None:
        self.boot_id = boot_id
        self._procs: dict[int, Process] = {}
        self._exited: deque[tuple[int, int, int]] = deque()  # (exit ktime, pid, start) in exit order
        self._linger_ns = linger_ns
        self._max_exited = max_exited
        # told of each process as it is forgotten, so that what was kept about it elsewhere (the document
        # builder's blocks) goes with it
        self.on_forget: Callable[[Process], None] | None = None

    def __len__(self) -> int:
        return len(self._procs)

    def get(self, pid: int) -> Process | None:
        return self._procs.get(pid)

    def put(self, proc: Process) -> None:
        self._replace(proc)

    def _replace(self, proc: Process) -> None:
        """PROC becomes the entry of its pid. The entry it replaces (an exec's image before, a fork's stale pid,
        the ids before a set*id call) is forgotten, as it would be at expiry: nothing builds a document from it
        again, and what was kept about it elsewhere goes (seen kept by the thousand under container churn)."""
        old = self._procs.get(proc.pid)
        self._procs[proc.pid] = proc
        if old is not None and old is not proc and self.on_forget is not None:
            self.on_forget(old)

    def ancestors(self, proc: Process, limit: int = 64) -> list[Process]:
        """Parent first; stops at pid 0/1 loops, unknown parents, or `limit`."""
        out: list[Process] = []
        seen = {proc.pid}
        current = proc
        while len(out) < limit:
            parent = self._procs.get(current.ppid)
            if parent is None or parent.pid in seen:
                break
            out.append(parent)
            seen.add(parent.pid)
            current = parent
        return out

    def on_fork(self, rec: ForkRecord) -> Process:
        parent = self._procs.get(rec.parent_pid)
        eid = entity_id(self.boot_id, rec.pid, rec.start_boottime_ns)
        if parent is None:
            child = Process(pid=rec.pid, ppid=rec.parent_pid, start_boottime_ns=rec.start_boottime_ns,
                            entity_id=eid, uid=rec.uid, gid=rec.gid, cgroup_id=rec.cgroup_id)
        else:
            child = replace(parent, pid=rec.pid, ppid=rec.parent_pid, start_boottime_ns=rec.start_boottime_ns,
                            entity_id=eid, exec_seen=False, cgroup_id=rec.cgroup_id, leaders=None, placed=None,
                            previous=None, env_vars=(), env_truncated=False)
        self._replace(child)
        return child

    def on_exec(self, rec: ExecRecord, cwd: str = "") -> Process:
        argv = rec.argv
        # One decode of the arguments joined, split again at the NULs: no argument holds a NUL, and a NUL is never
        # part of a UTF-8 sequence, so each argument decodes as it would alone (a generator and a call per
        # argument were a tenth of this method)
        args = tuple(b"\0".join(argv).decode("utf-8", "backslashreplace").split("\0")) if argv else ()
        executable = rec.filename.decode("utf-8", "backslashreplace")
        truncated = rec.path_truncated
        if rec.exe_path:
            # Elastic Defend's process.executable: the file itself, walked in the kernel from the new image's file
            passed = executable
            if passed and not passed.startswith("/") and cwd.startswith("/"):
                passed = posixpath.normpath(posixpath.join(cwd, passed))
            executable = rec.exe_path.decode("utf-8", "backslashreplace")
            # a cut path as passed is no path at all: left out rather than kept as a wrong one
            passed = "" if truncated or passed == executable else passed
            truncated = False
        else:
            # a recording from before the walk, or a path the walk could not finish
            passed = ""
            if executable.startswith(("/proc/", "/dev/fd/")):
                real = self._real_executable(rec.pid, executable, rec.exe_ino)
                if real != executable:
                    executable, truncated = real, False  # the file's own whole path, not the cut one
            elif executable and not executable.startswith("/") and cwd.startswith("/"):
                # execve("./tool") or execve("bin/tool"): ECS wants the absolute path, resolved as the kernel did
                executable = posixpath.normpath(posixpath.join(cwd, executable))
        # A cut path's last component is whatever byte the cut fell on ("/x/y/ssh" of "/x/y/sshd-not/true"): the
        # name must not come from it.
        name = name_from_comm(rec.comm) if truncated else executable.rsplit("/", 1)[-1]
        # positional, in field order (pid .. kthread): a third cheaper than keywords, once per exec
        proc = Process(
            rec.pid, rec.ppid, rec.start_boottime_ns, entity_id(self.boot_id, rec.pid, rec.start_boottime_ns),
            executable, name, args, rec.argc, rec.args_truncated,
            rec.uid, rec.gid, rec.euid, rec.egid, rec.sid, rec.pgid, rec.tty_major, rec.tty_minor,
            rec.cgroup_id, rec.ns, rec.exe_ino, kernel_dev_to_st_dev(rec.exe_dev), rec.exe_ctime_ns, cwd, True,
            False, truncated, None, None, rec.cap_effective, rec.cap_permitted,
        )
        if passed:
            proc.passed = passed
        if rec.exe_head_hash:
            proc.exe_size = rec.exe_size
            proc.exe_head_hash = rec.exe_head_hash
        if rec.env_vars:
            proc.env_vars = tuple(v.decode("utf-8", "backslashreplace") for v in rec.env_vars)
        proc.env_truncated = rec.env_truncated
        before = self._procs.get(rec.pid)
        if before is not None and before.exec_seen and before.start_boottime_ns == rec.start_boottime_ns:
            image = PreviousImage(before.executable, before.args, before.args_count)
            proc.previous = (image, *(before.previous or ()))[:PREVIOUS_KEPT]
        self._replace(proc)
        return proc

    @staticmethod
    def _real_executable(pid: int, executable: str, exe_ino: int = 0) -> str:
        """runc init and other re-executions run /proc/self/exe or a /dev/fd path: name the file itself, as
        Elastic's rules expect (`/usr/bin/runc`). Rare enough to afford a readlink and a stat while the process
        lives. The stat comes after the readlink: if the process exec'd another file in between, the inode
        differs from the one the probe saw and the link is not taken for this exec's file."""
        try:
            target = os.readlink(f"/proc/{pid}/exe")
            if exe_ino and os.stat(f"/proc/{pid}/exe").st_ino != exe_ino:
                return executable
        except OSError:
            return executable
        if not target.startswith("/") or target.startswith("/memfd:"):
            return executable
        return target.removesuffix(" (deleted)")

    def on_cred(self, rec: CredRecord) -> Process | None:
        """The process with the credentials or session the record reports, when they changed: a new entry (a
        Process never changes once documents were built from it), which its later documents read. None when the
        process is unknown, or the call changed nothing (setuid to the uid it had)."""
        proc = self._procs.get(rec.pid)
        if proc is None or (rec.start_boottime_ns and proc.start_boottime_ns != rec.start_boottime_ns):
            return None
        if rec.change == "session_id_change":
            if proc.sid == rec.sid:
                return None
            changed = replace(proc, sid=rec.sid, pgid=rec.pid)
        elif rec.change == "gid_change":
            if (proc.gid, proc.egid) == (rec.gid, rec.egid):
                return None
            changed = replace(proc, gid=rec.gid, egid=rec.egid)
        else:
            if (proc.uid, proc.euid) == (rec.uid, rec.euid):
                return None
            changed = replace(proc, uid=rec.uid, euid=rec.euid)
        self._replace(changed)
        return changed

    def on_exit(self, rec: ExitRecord) -> Process | None:
        proc = self._procs.get(rec.pid)
        if proc is not None:
            self._exited.append((rec.ktime_ns, rec.pid, proc.start_boottime_ns))
            if len(self._exited) > self._max_exited:
                self._forget(*self._exited.popleft()[1:])
        return proc

    def expire(self, now_ktime_ns: int) -> int:
        """Forgets processes that exited more than `linger_ns` ago; returns how many."""
        removed = 0
        while self._exited and now_ktime_ns - self._exited[0][0] > self._linger_ns:
            _t, pid, start = self._exited.popleft()
            removed += self._forget(pid, start)
        return removed

    def _forget(self, pid: int, start: int) -> int:
        current = self._procs.get(pid)
        if current is not None and current.start_boottime_ns == start:
            del self._procs[pid]
            # a process that leads its own group or session refers to itself there: let it go without the cycle
            # collector (no event is built for a forgotten process, so its leaders are not read again)
            current.leaders = current.placed = None
            if self.on_forget is not None:
                self.on_forget(current)
            return 1
        return 0

    def seed_from_proc(self, cgroup_v2_root: Path | None) -> list[Process]:
        """Adds every process running now and returns them. Races with exiting processes are skipped."""
        seeded = []
        for ps in psutil.process_iter():
            try:
                proc = self._from_psutil(ps, cgroup_v2_root)
            except (psutil.Error, OSError, ValueError):
                continue
            self._procs.setdefault(proc.pid, proc)
            seeded.append(proc)
        return seeded

    def on_snapshot(self, rec: ProcessSnapshotRecord) -> Process:
        executable = decode_arg(rec.executable)
        proc = Process(
            pid=rec.pid, ppid=rec.ppid, start_boottime_ns=rec.start_boottime_ns,
            entity_id=entity_id(self.boot_id, rec.pid, rec.start_boottime_ns), executable=executable,
            name=executable.rsplit("/", 1)[-1], args=tuple(decode_arg(a) for a in rec.argv), args_count=len(rec.argv),
            uid=rec.uid, gid=rec.gid, euid=rec.euid, egid=rec.egid, sid=rec.sid, pgid=rec.pgid,
            tty_major=rec.tty_major, tty_minor=rec.tty_minor, cgroup_id=rec.cgroup_id, ns=rec.ns,
            exe_ino=rec.exe_ino, exe_dev=rec.exe_dev, cwd=decode_arg(rec.cwd), kthread=rec.kthread,
            cap_effective=rec.cap_effective, cap_permitted=rec.cap_permitted,
        )
        self._procs.setdefault(proc.pid, proc)
        return proc

    def _from_psutil(self, ps: psutil.Process, cgroup_v2_root: Path | None) -> Process:
        pid = ps.pid
        base = Path(f"/proc/{pid}")
        stat_fields = (base / "stat").read_text().rsplit(")", 1)[1].split()
        # fields after the comm: state ppid pgrp session tty_nr ... starttime is the 20th
        ppid, pgid, sid, tty_nr = (int(x) for x in stat_fields[1:5])
        flags = int(stat_fields[6])
        start_ns = int(stat_fields[19]) * TICK_NS
        with ps.oneshot():
            uids, gids = ps.uids(), ps.gids()
            cmdline = ps.cmdline()
            try:
                exe = ps.exe()
            except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
                exe = ""
            name = ps.name()
        ns = Namespaces(*(_ns_inode(base, n) for n in NS_NAMES))
        cgroup_id = _cgroup_id(base, cgroup_v2_root)
        try:
            st = os.stat(base / "exe")
            exe_ino, exe_dev = st.st_ino, st.st_dev
        except OSError:
            exe_ino = exe_dev = 0
        try:
            cwd = os.readlink(base / "cwd")
        except OSError:
            cwd = ""
        cap_effective, cap_permitted = _capabilities(base)
        return Process(
            pid=pid, ppid=ppid, start_boottime_ns=start_ns, entity_id=entity_id(self.boot_id, pid, start_ns),
            executable=exe, name=exe.rsplit("/", 1)[-1] if exe else name, args=tuple(cmdline),
            args_count=len(cmdline), uid=uids.real, gid=gids.real, euid=uids.effective, egid=gids.effective,
            sid=sid, pgid=pgid, tty_major=(tty_nr >> 8) & 0xFFF, tty_minor=(tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00),
            cgroup_id=cgroup_id, ns=ns, exe_ino=exe_ino, exe_dev=exe_dev, cwd=cwd,
            kthread=bool(flags & 0x00200000),  # PF_KTHREAD
            cap_effective=cap_effective, cap_permitted=cap_permitted,
        )


def _capabilities(base: Path) -> tuple[int, int]:
    """(effective, permitted) capability sets from /proc/PID/status; -1 each where unreadable."""
    found = {"CapEff": -1, "CapPrm": -1}
    try:
        for line in (base / "status").read_text().splitlines():
            key, _sep, value = line.partition(":")
            if key in found:
                found[key] = int(value.strip(), 16)
    except (OSError, ValueError):
        pass
    return found["CapEff"], found["CapPrm"]


def _ns_inode(base: Path, name: str) -> int:
    try:
        return os.stat(base / "ns" / name).st_ino
    except OSError:
        return 0


def _cgroup_id(base: Path, cgroup_v2_root: Path | None) -> int:
    if cgroup_v2_root is None:
        return 0
    try:
        for line in (base / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return os.stat(cgroup_v2_root / line[3:].lstrip("/")).st_ino
    except OSError:
        pass
    return 0
