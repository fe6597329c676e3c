"""Entry leaders and types over process trees shaped like those seen here (pids, parents, sessions, ttys)."""

from __future__ import annotations

from sensor.containers.info import BY_CGROUP, BY_NAMESPACES, ContainerInfo
from sensor.model.processes import Process, ProcessTable
from sensor.model.records import ExecRecord, ExitRecord, ForkRecord, Namespaces
from sensor.model.sessions import (
    CONSOLE,
    CONTAINER,
    INIT,
    KTHREAD,
    SSHD,
    SSM,
    TERMINAL,
    UNKNOWN,
    SessionModel,
    _inside,
    elastic_entry_leader,
    find_leaders,
    stored_leaders,
    tty_kind,
)

HOST = Namespaces(pid=4026531836, mnt=4026531841, net=4026531840, uts=4026531838, ipc=4026531839)
CTR = Namespaces(pid=4026532180, mnt=4026532177, net=4026532181, uts=4026532178, ipc=4026532179)
HOST_CG, CTR_CG = 1, 234
PODMAN = ContainerInfo(id="f" * 64, runtime="podman", cgroup_id=CTR_CG, decided_by=BY_CGROUP,
                       namespaces_differing=("ipc", "mnt", "net", "pid", "uts"))
NSPAWN = ContainerInfo(id=f"pidns-{CTR.pid}", runtime="systemd-nspawn", cgroup_id=HOST_CG, decided_by=BY_NAMESPACES,
                       namespaces_differing=("ipc", "mnt", "pid", "uts"))


def proc(pid, ppid, exe, *, sid, pgid=None, tty=(0, 0), ns=HOST, cg=HOST_CG, kthread=False) -> Process:
    return Process(pid=pid, ppid=ppid, start_boottime_ns=pid * 1000, entity_id=f"e{pid}", executable=exe,
                   name=exe.rsplit("/", 1)[-1], sid=sid, pgid=pgid or sid, tty_major=tty[0], tty_minor=tty[1],
                   cgroup_id=cg, ns=ns, kthread=kthread)


def table(*procs: Process) -> ProcessTable:
    t = ProcessTable("boot")
    for p in procs:
        t.put(p)
    return t


INIT_P = proc(1, 0, "/sbin/init", sid=1)
AGENT_SHELL = proc(4973, 1, "/usr/bin/bash", sid=4973)  # this machine's agent shell under pid 1


def entry(t: ProcessTable, pid: int, container=None):
    leaders = find_leaders(t.get(pid), t, container)
    # The pipeline's memoizing model must agree, with every ancestor computed first as at their execs.
    model = SessionModel()
    chain = [t.get(pid), *t.ancestors(t.get(pid))]
    for ancestor in reversed(chain[1:]):
        model(ancestor, t, None)
    memoized = model(t.get(pid), t, container)
    assert memoized == leaders
    assert model(t.get(pid), t, container) is memoized, "an end event reuses the exec's leaders"
    # As in the pipeline, ancestors inside the container are computed with it: children then inherit their
    # parent's entry without a walk, and must get what the walk gives.
    model = SessionModel()
    target = t.get(pid)
    for ancestor in reversed(chain[1:]):
        model(ancestor, t, container if container is not None and _inside(ancestor, target, container) else None)
    assert model(target, t, container) == leaders
    return (leaders.entry.pid if leaders.entry else None), leaders.entry_type


def test_tty_kinds():
    assert tty_kind(136, 0) == "pts" and tty_kind(143, 9) == "pts"
    assert tty_kind(4, 1) == "console" and tty_kind(4, 64) == "terminal" and tty_kind(4, 300) is None
    assert tty_kind(0, 0) is None


def test_init_and_services_inherit_init():
    t = table(INIT_P, AGENT_SHELL, proc(5000, 4973, "/usr/bin/sleep", sid=4973))
    assert entry(t, 1) == (1, INIT)
    assert entry(t, 5000) == (1, INIT)
    leaders = find_leaders(t.get(5000), t, None)
    assert leaders.session.pid == 4973 and leaders.group.pid == 4973 and leaders.entry_parent is None


def test_kernel_threads():
    t = table(INIT_P, proc(2, 0, "", sid=0, kthread=True), proc(77, 2, "", sid=0, kthread=True))
    assert entry(t, 77) == (2, KTHREAD)


def test_terminal_and_console_logins():
    t = table(INIT_P, proc(300, 1, "/sbin/agetty", sid=300, tty=(4, 64)),
              proc(301, 1, "/bin/login", sid=301, tty=(4, 1)), proc(302, 301, "/bin/bash", sid=301, tty=(4, 1)))
    assert entry(t, 300) == (300, TERMINAL)
    assert entry(t, 302) == (301, CONSOLE)


def test_sshd_session_on_host():
    t = table(INIT_P, proc(700, 1, "/usr/sbin/sshd", sid=700), proc(710, 700, "/usr/sbin/sshd", sid=710),
              proc(720, 710, "/usr/bin/bash", sid=720, tty=(136, 0)), proc(730, 720, "/usr/bin/id", sid=720,
                                                                             pgid=730, tty=(136, 0)))
    assert entry(t, 730) == (720, SSHD)
    leaders = find_leaders(t.get(730), t, None)
    assert leaders.entry_parent.pid == 710 and leaders.group.pid == 730


def test_ssm_session():
    t = table(INIT_P, proc(800, 1, "/usr/bin/ssm-session-worker", sid=800),
              proc(810, 800, "/usr/bin/sh", sid=810, tty=(136, 3)))
    assert entry(t, 810) == (810, SSM)


def podman_tree(*extra: Process) -> ProcessTable:
    # podman run -d: conmon (sid own, parent 1) -> container init, a session leader (seen here: 12159 -> 12169)
    return table(INIT_P, AGENT_SHELL, proc(12159, 1, "/usr/bin/conmon", sid=12159),
                 proc(12169, 12159, "/usr/bin/sleep", sid=12169, ns=CTR, cg=CTR_CG), *extra)


def test_podman_run_init_is_container_entry_leader():
    t = podman_tree()
    assert entry(t, 12169, PODMAN) == (12169, CONTAINER)
    # Elastic's own model agrees here: conmon is a known runtime parent
    assert elastic_entry_leader(t.get(12169), t) == (t.get(12169), CONTAINER)
    assert find_leaders(t.get(12169), t, PODMAN).entry_parent.pid == 12159


def test_podman_exec_tty_and_nested_shells():
    # podman exec -t: conmon -> sh, a session leader on a pts (seen here: 23203 -> 23214, pts/0)
    t = podman_tree(proc(23203, 1, "/usr/bin/conmon", sid=23203),
                    proc(23214, 23203, "/bin/sh", sid=23214, tty=(136, 0), ns=CTR, cg=CTR_CG),
                    proc(23300, 23214, "/bin/sh", sid=23214, pgid=23300, tty=(136, 0), ns=CTR, cg=CTR_CG),
                    proc(23301, 23300, "/usr/bin/ssh", sid=23214, pgid=23300, tty=(136, 0), ns=CTR, cg=CTR_CG))
    assert entry(t, 23301, PODMAN) == (23214, CONTAINER)


def test_siblings_under_a_parent_never_computed_inherit_what_the_first_child_found():
    """A storm's children share a fork-only parent whose own leaders are never computed: the second child onward
    takes the entry its sibling inherited, and must get exactly what the walk gives, in and out of a container."""
    t = podman_tree(proc(23203, 1, "/usr/bin/conmon", sid=23203),
                    proc(23214, 23203, "/bin/sh", sid=23214, ns=CTR, cg=CTR_CG),
                    proc(23300, 23214, "/bin/sh", sid=23214, pgid=23300, ns=CTR, cg=CTR_CG),
                    *(proc(pid, 23300, "/bin/true", sid=23214, pgid=23300, ns=CTR, cg=CTR_CG)
                      for pid in (23301, 23302, 23303)),
                    proc(5000, 4973, "/usr/bin/python3", sid=4973),
                    *(proc(pid, 5000, "/bin/true", sid=4973) for pid in (5001, 5002)),
                    proc(5003, 5000, "/bin/true", sid=5003))
    model = SessionModel()
    for pid, container in ((23301, PODMAN), (23302, PODMAN), (23303, PODMAN), (5001, None), (5002, None),
                           (5003, None)):
        assert model(t.get(pid), t, container) == find_leaders(t.get(pid), t, container), pid
    # Elastic's leaders were stored on every entry on the way, the fork-only parent's included; the container
    # correction on each sibling, which its end document reads again
    assert all(t.get(pid).leaders is not None for pid in (23214, 23300, 23301, 5000, 5001))
    assert model(t.get(5001), t, None) is t.get(5001).leaders
    assert t.get(23302).placed[0] is PODMAN and model(t.get(23302), t, PODMAN) is t.get(23302).placed[1]
    assert model(t.get(23302), t, PODMAN).entry.pid == 23214


def test_sshd_inside_container_keeps_sshd_type():
    t = podman_tree(proc(12200, 12169, "/usr/sbin/sshd", sid=12200, ns=CTR, cg=CTR_CG),
                    proc(12210, 12200, "/bin/sh", sid=12210, tty=(136, 4), ns=CTR, cg=CTR_CG))
    assert entry(t, 12210, PODMAN) == (12210, SSHD)


def test_nspawn_payload_is_container_where_elastic_says_otherwise():
    # seen here: bash (sid 4973) -> systemd-nspawn (18904, sid 4973) -> sh (18906, own session, new namespaces)
    t = table(INIT_P, AGENT_SHELL, proc(18904, 4973, "/usr/bin/systemd-nspawn", sid=4973),
              proc(18906, 18904, "/bin/sh", sid=18906, ns=CTR), proc(18950, 18906, "/bin/sleep", sid=18906, ns=CTR))
    assert elastic_entry_leader(t.get(18950), t) == (INIT_P, INIT)
    assert entry(t, 18950, NSPAWN) == (18906, CONTAINER)


def test_lxc_attach_without_setsid():
    # seen here: lxc-attach (18783, re-executed from a memfd, host namespaces) -> sleep (18786, sid 4973)
    lxc = ContainerInfo(id="cs-probe-lxc", runtime="lxc", cgroup_id=CTR_CG,
                        namespaces_differing=("cgroup", "ipc", "mnt", "net", "pid", "uts"))
    t = table(INIT_P, AGENT_SHELL, proc(18783, 4973, "memfd:lxc-attach", sid=4973),
              proc(18786, 18783, "/bin/sh", sid=4973, ns=CTR, cg=CTR_CG),
              proc(18790, 18786, "/bin/sleep", sid=4973, ns=CTR, cg=CTR_CG))
    assert entry(t, 18790, lxc) == (18786, CONTAINER)


def test_container_sharing_host_pid_namespace_uses_cgroup():
    shared = ContainerInfo(id="a" * 64, runtime="docker", cgroup_id=CTR_CG, namespaces_differing=("mnt",))
    t = table(INIT_P, AGENT_SHELL, proc(900, 4973, "/usr/bin/crun", sid=4973),
              proc(901, 900, "/bin/sh", sid=4973, cg=CTR_CG), proc(902, 901, "/bin/ls", sid=4973, cg=CTR_CG))
    assert entry(t, 902, shared) == (901, CONTAINER)


def test_filtered_session_leader_and_runtime_parents():
    # containerd-shim -> runc (setsid'd) -> container init: runc is filtered, the init is the entry leader
    t = table(INIT_P, proc(600, 1, "/usr/bin/containerd-shim-runc-v2", sid=600),
              proc(610, 600, "/usr/sbin/runc", sid=610), proc(620, 610, "/bin/sh", sid=620, ns=CTR, cg=CTR_CG),
              proc(630, 610, "/pause", sid=630, ns=CTR, cg=CTR_CG))
    assert entry(t, 610) == (1, INIT)
    assert entry(t, 620) == (620, CONTAINER)
    # a sandbox's pause process is filtered by Elastic's model; the container evidence still types it
    assert entry(t, 630) == (1, INIT)
    assert entry(t, 630, PODMAN) == (630, CONTAINER)


def test_unknown_parent_falls_back_to_session_leader():
    t = table(proc(5100, 5099, "/bin/bash", sid=5100), proc(5101, 5100, "/bin/cat", sid=5100))
    assert entry(t, 5101) == (5100, UNKNOWN)
    lone = table(proc(5200, 5199, "/bin/cat", sid=5000))
    assert entry(lone, 5200) == (None, None)
    # when the resolver says container, the process itself is the least the entry leader can be
    assert entry(lone, 5200, PODMAN) == (5200, CONTAINER)


def test_unknown_inside_container_becomes_container():
    t = table(proc(5300, 5299, "/bin/sh", sid=5300, ns=CTR, cg=CTR_CG),
              proc(5301, 5300, "/bin/cat", sid=5300, ns=CTR, cg=CTR_CG))
    assert entry(t, 5301, PODMAN) == (5300, CONTAINER)


def _exec(pid: int, ppid: int, exe: bytes, *, sid: int, pgid: int | None = None, t: int = 1_000_000) -> ExecRecord:
    return ExecRecord(
        ktime_ns=t, pid=pid, tid=pid, old_tid=pid, ppid=ppid, uid=0, gid=0, euid=0, egid=0, comm=exe[-15:],
        filename=exe, argv=(exe,), argc=1, args_truncated=False, cgroup_id=HOST_CG, ns=HOST, sid=sid,
        pgid=pgid or sid, tty_major=0, tty_minor=0, start_boottime_ns=pid * 1000, exe_ino=0, exe_dev=0, cwd=b"/",
    )


def _sshd_session() -> ProcessTable:
    """init -> sshd (100) -> bash (200, its own session: an sshd entry leader), as the probe reports them."""
    t = ProcessTable("boot")
    t.put(proc(1, 0, "/sbin/init", sid=1))
    t.put(proc(100, 1, "/usr/sbin/sshd", sid=100))
    stored_leaders(t.on_exec(_exec(200, 100, b"/bin/bash", sid=200)), t)
    return t


def test_leaders_are_stored_at_exec_and_read_by_every_document():
    t = _sshd_session()
    child = t.on_exec(_exec(300, 200, b"/bin/true", sid=200, pgid=300))
    stored = stored_leaders(child, t)
    assert child.leaders is stored and SessionModel()(child, t, None) is stored
    assert (stored.entry.pid, stored.entry_type, stored.entry_parent.pid) == (200, SSHD, 100)
    assert stored.group is child and stored.session is t.get(200)


def test_seeded_child_listed_before_its_parent_gets_its_parents_entry():
    # /proc lists pids in order: after a pid wrap a child (150) comes before its parent (900)
    t = ProcessTable("boot")
    t.put(proc(1, 0, "/sbin/init", sid=1))
    t.put(proc(150, 900, "/bin/sleep", sid=900))
    t.put(proc(900, 100, "/bin/bash", sid=900))
    t.put(proc(100, 1, "/usr/sbin/sshd", sid=100))
    assert elastic_entry_leader(t.get(150), t) == (t.get(900), SSHD)
    assert t.get(900).leaders is not None, "the unstored ancestors are stored on the way, oldest first"


def test_parent_exec_after_the_child_forked():
    """The child's exec takes its entry from its parent as it is then (quark and Auditbeat compute it at the exec
    from the parent's entry); a child that only forked reads it from its parent at its first document, as before."""
    t = _sshd_session()
    t.on_fork(ForkRecord(2_000_000, 200, 300, 300_000))
    t.on_fork(ForkRecord(2_000_001, 200, 301, 301_000))
    # the sshd entry leader becomes an sshd program: a session leader under sshd named sshd starts no entry
    stored_leaders(t.on_exec(_exec(200, 100, b"/usr/sbin/sshd", sid=200, t=3_000_000)), t)
    assert elastic_entry_leader(t.get(200), t) == (t.get(1), INIT)
    child = t.on_exec(_exec(300, 200, b"/bin/true", sid=200, pgid=300, t=4_000_000))
    assert elastic_entry_leader(child, t) == (t.get(1), INIT)
    forked = find_leaders(t.get(301), t)
    assert (forked.entry.pid, forked.entry_type, forked.session) == (1, INIT, t.get(200))


def test_a_leader_that_exits_and_is_forgotten_stays_the_leader_of_its_session():
    t = _sshd_session()
    child = t.on_exec(_exec(300, 200, b"/bin/sleep", sid=200, pgid=300, t=2_000_000))
    bash = t.get(200)
    stored_leaders(child, t)
    t.on_exit(ExitRecord(3_000_000, 200, 0, bash.start_boottime_ns))
    assert t.expire(3_000_000 + 31_000_000_000) == 1 and t.get(200) is None
    assert bash.leaders is None, "the forgotten entry lets go of its own leaders"
    # pid 200 reused by an unrelated process: the session's entry leader is still the bash that began it
    stored_leaders(t.on_exec(_exec(200, 1, b"/usr/bin/cron", sid=200, t=40_000_000_000)), t)
    leaders = find_leaders(child, t)
    assert leaders.entry is bash and leaders.entry_type == SSHD and leaders.session is bash
