"""Elastic's session model: the parent, group, session and entry leaders of a process, and the entry type.

The entry leader is the process through which a session entered the system, typed by how it entered.
Computed from the process table as Elastic's own implementations do (elastic/quark `entry_leader_compute`,
Auditbeat's sessionmd processor): a process inherits its parent's entry leader unless it is itself an entry
leader. Decision table, first matching row wins, for process P with parent PP ("session leader": pid == sid;
names are executable basenames; tty kinds as Elastic classifies them: major 136-143 pts, major 4 minor 0-63
console, major 4 minor 64-255 terminal):

  | P is ...                                              | entry leader        | entry_meta.type |
  |-------------------------------------------------------|---------------------|-----------------|
  | pid 1                                                 | P                   | init            |
  | a kernel thread (pid 2, or its parent is pid 2)       | P if session leader, else pid 2 | kthread |
  | a session leader on a terminal (tty major 4, 64-255)  | P                   | terminal        |
  | a session leader on a console (major 4, 0-63) named `login` | P             | console         |
  | not a session leader                                  | PP's                | PP's            |
  | a session leader named runc*, containerd-shim*, calico-node*, check-status*, pause*, conmon* | PP's | PP's |
  | a session leader on a pts, PP named ssm-session-worker | P                  | ssm             |
  | a session leader not named sshd, PP named sshd        | P                   | sshd            |
  | a session leader, PP named containerd-shim*, runc*, conmon* | P             | container       |
  | any other session leader                              | PP's                | PP's            |
  | PP unknown (not in the table)                         | nearest session leader | unknown      |

Where that model is blind, one row goes beyond it. It only sees containers whose runtime leaves a
containerd-shim, runc or conmon parent: a session that begins inside a crun, LXC (lxc-start, lxc-attach),
systemd-nspawn or nsenter container inherits the host's entry leader and is never typed container. So:

  | P runs in a container (the resolver said so from its cgroup or namespaces) and the entry leader above
  | lies outside that container, is unknown or is of type unknown: the entry leader is the outermost
  | ancestor-or-self of P inside the container that is a session leader (the container's init, nspawn's
  | payload, a setsid'd shell), or when none is (lxc-attach and nsenter do not setsid), the outermost
  | ancestor-or-self inside it; type container.

"Inside the container" is: the same pid namespace as P when the container has its own, else the same cgroup.
An entry leader inside the container keeps its type: an sshd session inside a container stays `sshd`, as the
Elastic rules for ssh into containers expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sensor.model.processes import Process, ProcessTable

INIT = "init"
KTHREAD = "kthread"
SSHD = "sshd"
SSM = "ssm"
CONTAINER = "container"
TERMINAL = "terminal"
CONSOLE = "console"
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Leaders:
    """A process's group, session and entry leaders (ECS process.group_leader, session_leader, entry_leader): part
    of the model, stored on the process entry, and read by the ECS builder."""

    group: Process | None = None
    session: Process | None = None
    entry: Process | None = None
    entry_type: str | None = None
    entry_parent: Process | None = None

CONTAINER_RUNTIME_PARENTS = ("containerd-shim", "runc", "conmon")
# internal steps of entry mechanisms: as session leaders they do not start an entry of their own
FILTERED_EXECUTABLES = ("runc", "containerd-shim", "calico-node", "check-status", "pause", "conmon")

PTS_MAJORS = range(136, 144)
TTY_MAJOR = 4
CONSOLE_MAX_MINOR = 63
TTY_MAX_MINOR = 255

MAX_DEPTH = 64


def tty_kind(major: int, minor: int) -> str | None:
    """"pts", "console", "terminal" or None, as Elastic classifies a controlling tty."""
    if major in PTS_MAJORS:
        return "pts"
    if major == TTY_MAJOR:
        if minor <= CONSOLE_MAX_MINOR:
            return "console"
        if minor <= TTY_MAX_MINOR:
            return "terminal"
    return None


def _basename(proc: Process) -> str:
    if proc.executable and not proc.path_truncated:  # a cut path's last component is not the file's name
        return proc.executable.rsplit("/", 1)[-1]
    return proc.name


def _is_session_leader(proc: Process) -> bool:
    return proc.sid != 0 and proc.pid == proc.sid


def _own_entry(proc: Process, parent: Process | None, table: ProcessTable) -> tuple[Process | None, str] | None:
    """(leader, type) when PROC decides its own entry; None when it inherits its parent's."""
    if proc.pid == 1:
        return proc, INIT
    if proc.pid == 2 or proc.ppid == 2 or proc.kthread:
        return (proc if _is_session_leader(proc) else table.get(2)), KTHREAD
    if not _is_session_leader(proc):
        return None
    tty = tty_kind(proc.tty_major, proc.tty_minor)
    name = _basename(proc)
    if tty == "terminal":
        return proc, TERMINAL
    if tty == "console" and name == "login":
        return proc, CONSOLE
    if name.startswith(FILTERED_EXECUTABLES) or parent is None:
        return None
    parent_name = _basename(parent)
    if tty == "pts" and parent_name == "ssm-session-worker":
        return proc, SSM
    if parent_name == "sshd" and name != "sshd":
        return proc, SSHD
    if parent_name.startswith(CONTAINER_RUNTIME_PARENTS):
        return proc, CONTAINER
    return None


def stored_leaders(proc: Process, table: ProcessTable) -> Leaders:
    """Group, session and entry leaders of PROC exactly as Elastic's model gives them (no container evidence),
    stored on the entry when it entered the table, as quark and Auditbeat's session processor store them at fork
    and exec: a document reads them, nothing walks the ancestry.

    An entry without them yet (seeded from /proc, where a child can be listed before its parent, or put in the
    table directly) gets them here, its unstored ancestors first, oldest first, as quark orders its /proc scan."""
    stored = proc.leaders
    if stored is not None:
        return stored
    pending = [proc]
    seen = {proc.pid}
    current = proc
    while len(pending) <= MAX_DEPTH:
        parent = table.get(current.ppid)
        if parent is None or parent.leaders is not None or parent.pid in seen:
            break
        pending.append(parent)
        seen.add(parent.pid)
        current = parent
    for current in reversed(pending):
        current.leaders = _compute(current, table)
    return proc.leaders  # type: ignore[return-value]


def _compute(proc: Process, table: ProcessTable) -> Leaders:
    """PROC's leaders from its parent's stored ones: the parent decided, or inherited, its entry already."""
    parent = table.get(proc.ppid)
    if parent is proc:
        parent = None
    inherited = parent.leaders if parent is not None else None
    decided = _own_entry(proc, parent, table)
    if decided is not None:
        leader, kind = decided
    elif inherited is not None and inherited.entry_type not in (None, UNKNOWN):
        leader, kind = inherited.entry, inherited.entry_type
    elif _is_session_leader(proc):
        # no ancestor decided (the top of the known ancestry has no parent in the table): the nearest session
        # leader, counting from the process itself
        leader, kind = proc, UNKNOWN
    elif inherited is not None:
        leader, kind = inherited.entry, inherited.entry_type
    else:
        leader, kind = None, None
    if inherited is not None and leader is inherited.entry:
        entry_parent = inherited.entry_parent
    else:
        entry_parent = table.get(leader.ppid) if leader is not None and leader.ppid else None
    return Leaders(
        group=_self_or_table(proc, proc.pgid, table),
        session=_self_or_table(proc, proc.sid, table),
        entry=leader,
        entry_type=kind,
        entry_parent=entry_parent,
    )


def elastic_entry_leader(proc: Process, table: ProcessTable) -> tuple[Process | None, str | None]:
    """The entry leader and type exactly as Elastic's model computes them (no container evidence)."""
    leaders = stored_leaders(proc, table)
    return leaders.entry, leaders.entry_type


def _inside(candidate: Process, proc: Process, container: Any) -> bool:
    if "pid" in getattr(container, "namespaces_differing", ()):
        return candidate.ns.pid == proc.ns.pid
    return candidate.cgroup_id == proc.cgroup_id


def container_entry_leader(proc: Process, chain: Sequence[Process], container: Any) -> Process:
    """The outermost session leader inside the container on PROC's ancestry (or the outermost ancestor inside)."""
    inside = []
    for current in chain:
        if not _inside(current, proc, container):
            break
        inside.append(current)
    for current in reversed(inside):
        if _is_session_leader(current):
            return current
    return inside[-1]


def find_leaders(proc: Process, table: ProcessTable, container: Any = None) -> Leaders:
    """Group, session and entry leaders (with the entry type and the entry leader's parent) of PROC: Elastic's,
    stored on the entry, corrected to `container` where the container evidence says so.

    container: the resolver's ContainerInfo for PROC, or None on the host.
    """
    leaders = stored_leaders(proc, table)
    if container is None:
        return leaders
    return _placed(proc, table, container, leaders)


def _placed(proc: Process, table: ProcessTable, container: Any, leaders: Leaders) -> Leaders:
    chain = LazyChain(proc, table)
    leader, kind = leaders.entry, leaders.entry_type
    if (kind not in (None, UNKNOWN) and leader is not None and any(p.pid == leader.pid for p in chain)
            and _inside(leader, proc, container)):
        return leaders
    leader = container_entry_leader(proc, chain, container)
    return Leaders(
        group=leaders.group,
        session=leaders.session,
        entry=leader,
        entry_type=CONTAINER,
        entry_parent=table.get(leader.ppid) if leader.ppid else None,
    )


class LazyChain(Sequence[Process]):
    """PROC then its ancestors, looked up in the table only as far as they are read."""

    def __init__(self, proc: Process, table: ProcessTable) -> None:
        self._items = [proc]
        self._pids = {proc.pid}
        self._table = table
        self._done = False

    def _grow(self, upto: int) -> None:
        items = self._items
        while not self._done and len(items) <= upto:
            parent = self._table.get(items[-1].ppid)
            if parent is None or len(items) > MAX_DEPTH or parent.pid in self._pids:
                self._done = True
            else:
                items.append(parent)
                self._pids.add(parent.pid)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice) or index < 0:
            self._grow(1 << 30)
        else:
            self._grow(index)
        return self._items[index]

    def __len__(self) -> int:
        self._grow(1 << 30)
        return len(self._items)

    def __iter__(self):  # type: ignore[override]
        index = 0
        while True:
            self._grow(index)
            if index >= len(self._items):
                return
            yield self._items[index]
            index += 1


class SessionModel:
    """`find_leaders` for the pipeline. Elastic's leaders are stored on the entry; what depends on the resolver's
    answer (the container correction) is made at the first document with that container and stored on the entry
    too, so the end document reuses the exec's leaders (and the document builder its process block)."""

    def __call__(self, proc: Process, table: ProcessTable, container: Any = None) -> Leaders:
        leaders = stored_leaders(proc, table)
        if container is None:
            return leaders
        placed = proc.placed
        if placed is not None and placed[0] is container:
            return placed[1]
        corrected = self._inherited(proc, table, container, leaders)
        if corrected is None:
            corrected = _placed(proc, table, container, leaders)
        proc.placed = (container, corrected)
        return corrected

    @staticmethod
    def _inherited(proc: Process, table: ProcessTable, container: Any, leaders: Leaders) -> Leaders | None:
        """Without a walk: a process that decides no entry of its own, in the same container as its parent, has
        the corrected entry leader, type and entry parent its parent has: exactly what `_placed` computes."""
        if not _decides_nothing(proc):
            return None
        parent = table.get(proc.ppid)
        placed = parent.placed if parent is not None else None
        if placed is None or placed[0] is not container:
            return None
        inherited = placed[1]
        if inherited.entry is None or inherited.entry_type in (None, UNKNOWN):
            return None
        if (inherited.entry is leaders.entry and inherited.entry_type == leaders.entry_type
                and inherited.entry_parent is leaders.entry_parent):
            return leaders
        return Leaders(group=leaders.group, session=leaders.session, entry=inherited.entry,
                       entry_type=inherited.entry_type, entry_parent=inherited.entry_parent)


def _decides_nothing(proc: Process) -> bool:
    """Not a row of its own in the decision table: the process inherits its parent's entry."""
    return proc.sid != proc.pid and proc.pid > 2 and proc.ppid != 2 and not proc.kthread


def _self_or_table(proc: Process, pid: int, table: ProcessTable) -> Process | None:
    if not pid:
        return None
    if pid == proc.pid:
        return proc
    return table.get(pid)
