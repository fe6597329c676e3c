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
from typing import Any

from sensor.ecs import Leaders
from sensor.processes import Process, ProcessTable

INIT = "init"
KTHREAD = "kthread"
SSHD = "sshd"
SSM = "ssm"
CONTAINER = "container"
TERMINAL = "terminal"
CONSOLE = "console"
UNKNOWN = "unknown"

CONTAINER_RUNTIME_PARENTS = ("containerd-shim", "runc", "conmon")
# internal steps of entry mechanisms: as session leaders they do not start an entry of their own
FILTERED_EXECUTABLES = ("runc", "containerd-shim", "calico-node", "check-status", "pause", "conmon")

PTS_MAJORS = range(136, 144)
TTY_MAJOR = 4
CONSOLE_MAX_MINOR = 63
TTY_MAX_MINOR = 255

MAX_DEPTH = 64
MEMO_SIZE = 16384


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


EntryMemo = dict[int, tuple[Process, Process | None, str]]


def elastic_entry_leader(proc: Process, table: ProcessTable, chain: Sequence[Process] | None = None,
                         memo: EntryMemo | None = None) -> tuple[Process | None, str | None]:
    """The entry leader and type exactly as Elastic's model computes them (no container evidence).

    memo: decided entries by process object. A process that decides nothing inherits its parent's entry, so
    the walk stops at the first ancestor already decided, as Elastic computes it once per process at exec."""
    if chain is None:
        chain = [proc, *table.ancestors(proc, limit=MAX_DEPTH)]
    for index, current in enumerate(chain):
        if memo is not None and index:
            known = memo.get(id(current))
            if known is not None and known[0] is current:
                return _remember(memo, chain, index, known[1], known[2])
        try:
            parent = chain[index + 1]  # a LazyChain looks up no further than asked
        except IndexError:
            parent = table.get(current.ppid)
        decided = _own_entry(current, parent, table)
        if decided is not None:
            return _remember(memo, chain, index + 1, *decided)
        if parent is None:
            break
    for current in chain:
        if _is_session_leader(current):
            return current, UNKNOWN
    return None, None


def _remember(memo: EntryMemo | None, chain: Sequence[Process], count: int, leader: Process | None,
              kind: str) -> tuple[Process | None, str]:
    """Records the decision for the first COUNT processes of the chain: each either decided it or inherits it."""
    if memo is not None:
        for index in range(count):
            if len(memo) >= MEMO_SIZE:
                memo.clear()  # rebuilt from the table as processes exec; cheaper than evicting one by one
            memo[id(chain[index])] = (chain[index], leader, kind)
    return leader, kind


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


def entry_leader(proc: Process, table: ProcessTable, container: Any = None,
                 memo: EntryMemo | None = None) -> tuple[Process | None, str | None]:
    """Elastic's entry leader, corrected to `container` where the container evidence says so."""
    chain = LazyChain(proc, table)
    leader, kind = elastic_entry_leader(proc, table, chain, memo)
    if container is None:
        return leader, kind
    if (kind not in (None, UNKNOWN) and leader is not None and any(p.pid == leader.pid for p in chain)
            and _inside(leader, proc, container)):
        return leader, kind
    return container_entry_leader(proc, chain, container), CONTAINER


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
    """`find_leaders` with memory, for the pipeline: a process's leaders are computed once, at its exec, and
    its end event reuses them, as Elastic computes them once per process."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._entries: EntryMemo = {}
        self._leaders: dict[int, tuple[Process, Any, Leaders]] = {}
        # id(parent) -> (parent, container, leaders a child of it inherited)
        self._children_entry: dict[int, tuple[Process, Any, Leaders]] = {}
        self._size = size

    def __call__(self, proc: Process, table: ProcessTable, container: Any = None) -> Leaders:
        hit = self._leaders.get(id(proc))
        if hit is not None and hit[0] is proc and hit[1] is container:
            return hit[2]
        inherits = _decides_nothing(proc)
        leaders = self._inherited(proc, table, container) if inherits else None
        if leaders is None:
            leaders = find_leaders(proc, table, container, self._entries)
            parent = table.get(proc.ppid) if inherits else None
            if parent is not None and leaders.entry is not None and leaders.entry_type not in (None, UNKNOWN):
                # what this process inherited is what every other child of that parent in that container will
                if len(self._children_entry) >= self._size:
                    self._children_entry.clear()
                self._children_entry[id(parent)] = (parent, container, leaders)
        if len(self._leaders) >= self._size:
            self._leaders.clear()
        self._leaders[id(proc)] = (proc, container, leaders)
        return leaders

    def _inherited(self, proc: Process, table: ProcessTable, container: Any) -> Leaders | None:
        """The common case without a walk: a process that decides no entry of its own, in the same container
        as its parent, has the entry leader, type and entry parent that its parent has (when the parent's own
        leaders are known) or that a sibling inherited from it: exactly what find_leaders would compute."""
        parent = table.get(proc.ppid)
        if parent is None:
            return None
        hit = self._leaders.get(id(parent))
        if hit is None or hit[0] is not parent or hit[1] is not container:
            hit = self._children_entry.get(id(parent))
            if hit is None or hit[0] is not parent or hit[1] is not container:
                return None
        inherited = hit[2]
        if inherited.entry is None or inherited.entry_type in (None, UNKNOWN):
            return None
        return Leaders(
            group=_self_or_table(proc, proc.pgid, table),
            session=_self_or_table(proc, proc.sid, table),
            entry=inherited.entry,
            entry_type=inherited.entry_type,
            entry_parent=inherited.entry_parent,
        )


def _decides_nothing(proc: Process) -> bool:
    """Not a row of its own in the decision table: the process inherits its parent's entry."""
    return proc.sid != proc.pid and proc.pid > 2 and proc.ppid != 2 and not proc.kthread


def find_leaders(proc: Process, table: ProcessTable, container: Any = None, memo: EntryMemo | None = None) -> Leaders:
    """Group, session and entry leaders (with the entry type and the entry leader's parent) of PROC.

    container: the resolver's ContainerInfo for PROC, or None on the host.
    """
    leader, kind = entry_leader(proc, table, container, memo)
    return Leaders(
        group=_self_or_table(proc, proc.pgid, table),
        session=_self_or_table(proc, proc.sid, table),
        entry=leader,
        entry_type=kind,
        entry_parent=table.get(leader.ppid) if leader is not None and leader.ppid else None,
    )


def _self_or_table(proc: Process, pid: int, table: ProcessTable) -> Process | None:
    if not pid:
        return None
    if pid == proc.pid:
        return proc
    return table.get(pid)
