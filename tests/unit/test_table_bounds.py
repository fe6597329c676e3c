"""Every table keyed by pid, cgroup, container or inode is pruned or held to its bound: a long churn of containers
and processes leaves them where they started (docs/operations.md, "Tables and their bounds")."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sensor.containers import ContainerResolver, StateRoots
from sensor.containers.cgroupmap import CgroupMap
from sensor.containers.worker import RetryWorker
from sensor.model.processes import ProcessTable
from sensor.model.records import CgroupRecord, ExitRecord, ForkRecord, Namespaces
from sensor.rules.identity import ExecutableIdentity
from tests.shipping_recording import exec_record

HOST_NS = Namespaces(pid=4026531836, mnt=4026531841, net=4026531840, uts=4026531838, ipc=4026531839,
                     cgroup=4026531835, user=4026531837)
CHURN = 300


def container_id(number: int) -> str:
    return f"{number:064x}"


class PodmanHost:
    """A cgroup tree and podman state in real directories: containers come and go as podman makes them."""

    def __init__(self, root: Path) -> None:
        self.cgroups = root / "cgroup"
        (self.cgroups / "libpod_parent").mkdir(parents=True)
        self.storage = root / "host/var/lib/containers/storage/overlay-containers"
        self.storage.mkdir(parents=True)
        self.state = StateRoots.under(root / "host")
        self.entries: list[dict] = []

    def _write_index(self) -> None:
        (self.storage / "containers.json").write_text(json.dumps(self.entries))

    def start(self, number: int) -> tuple[int, str]:
        cid = container_id(number)
        (self.storage / cid / "userdata").mkdir(parents=True)
        (self.storage / cid / "userdata/config.json").write_text('{"annotations": {}}')
        self.entries.append({"id": cid, "names": [f"c{number}"],
                             "metadata": json.dumps({"image-name": "localhost/img:1", "name": f"c{number}"})})
        self._write_index()
        path = f"/libpod_parent/libpod-{cid}"
        (self.cgroups / path.lstrip("/")).mkdir()
        return os.stat(self.cgroups / path.lstrip("/")).st_ino, path

    def stop(self, number: int) -> None:
        cid = container_id(number)
        self.entries = [e for e in self.entries if e["id"] != cid]
        self._write_index()
        shutil.rmtree(self.storage / cid)
        (self.cgroups / f"libpod_parent/libpod-{cid}").rmdir()


def test_container_churn_leaves_the_resolver_tables_where_they_started(tmp_path: Path) -> None:
    host = PodmanHost(tmp_path)
    proc = tmp_path / "proc"
    proc.mkdir()
    # first looks unbudgeted: 300 containers in a tight loop would spend more than the 5% of a second the budget
    # allows on a loaded machine, and the budget is not what this test is about
    resolver = ContainerResolver(host_ns=HOST_NS, cgroup_root=host.cgroups, proc_root=proc,
                                 state_roots=host.state, grace_seconds=0.0, cache_size=64, start_worker=False,
                                 retry_delays=(), first_look_share=1.0)
    resolver.seed()
    before = resolver.stats()
    named = 0
    for number in range(CHURN):
        cgroup_id, path = host.start(number)
        resolver.on_cgroup(CgroupRecord(number, "mkdir", 0, cgroup_id, 2, path.encode()))
        ns = replace(HOST_NS, pid=10_000 + number, mnt=20_000 + number, uts=30_000 + number)
        info = resolver.resolve(cgroup_id, ns)
        named += info.name == f"c{number}"
        resolver.run_pending()
        assert resolver.resolve(cgroup_id, ns).name == f"c{number}"
        host.stop(number)
        resolver.on_cgroup(CgroupRecord(number, "rmdir", 0, cgroup_id, 2, path.encode()))
        stats = resolver.stats()
        # bounded all along, not only at the end
        assert stats["metadata_entries"] <= 64 and stats["resolved_cached_entries"] <= 64
        assert stats["containers_known_by_pid_ns"] <= 64 and stats["containers_first_looked"] <= 64
    assert named == CHURN  # each container's first exec carried its name (cheap state, read at once)
    after = resolver.stats()
    # removed containers leave nothing behind in the tables the cgroup rmdir prunes
    assert after["cgroups_known"] == before["cgroups_known"]
    assert after["metadata_entries"] == 0
    assert after["containers_first_looked"] == 0
    assert after["containers_gone_pending"] == 0
    assert after["metadata_queued"] == 0
    assert after["metadata_pruned"] == CHURN
    assert after["resolved_cached_entries"] == 0  # the decisions for the removed containers' cgroups
    # the caches that are not pruned by rmdir stay at their bound
    assert after["containers_known_by_pid_ns"] == 64
    resolver.close()


def test_cgroup_map_forgets_the_oldest_beyond_its_bound() -> None:
    cgroups = CgroupMap(grace_seconds=0.0, max_entries=100)
    for cgroup_id in range(1, 1001):  # rmdir records lost: nothing removes these
        cgroups.add(0, cgroup_id, f"/c{cgroup_id}")
    assert len(cgroups) == 100 and cgroups.evicted == 900
    assert cgroups.path(0, 1000) == "/c1000" and cgroups.path(0, 1) is None
    for cgroup_id in range(901, 1001):
        cgroups.remove(0, cgroup_id, f"/c{cgroup_id}")
    assert len(cgroups) == 0 and cgroups.pending_removal == 0


def test_the_lookup_queue_refuses_beyond_its_bound_and_counts() -> None:
    worker = RetryWorker((60.0,), start=False, max_jobs=10)
    accepted = [worker.submit(("meta", n), lambda: False) for n in range(50)]
    assert sum(accepted) == 10 and worker.refused == 40 and worker.queued == 10
    worker.run_pending()  # each fails once and waits 60 s for its retry: still queued, still bounded
    assert worker.queued == 10
    worker.close()


def test_the_lookup_worker_gives_way_to_a_hurried_job() -> None:
    ran = threading.Event()

    def job() -> bool:
        if not ran.is_set():
            ran.set()
            return False  # not ready at its first try: the next is due in a minute
        return True

    worker = RetryWorker((60.0,))
    try:
        assert worker.submit("key", job)
        assert ran.wait(2)
        time.sleep(0.05)
        assert worker.queued == 1
        assert worker.hurry("key", 2.0)  # run at once, not a minute later
        assert worker.queued == 0
        assert worker.hurry("other", 0.0)  # nothing queued under that key: nothing to wait for
    finally:
        worker.close()


def test_identity_learns_at_most_its_bound_of_container_binaries() -> None:
    identity = ExecutableIdentity(host_paths=(), known_size=50)
    for inode in range(1, 1001):  # a thousand container images, each with its own sshd
        identity.check("/usr/sbin/sshd", "sshd", 0xFD00, inode, ())
    assert identity.known_count == 50
    # the latest are known under any name (a hard link's); the oldest were forgotten
    assert identity.check("/usr/bin/x", "x", 0xFD00, 1000, ()).recognition.program == "sshd"
    assert identity._program_known((0xFD00, 1)) is None


def test_process_churn_leaves_the_process_table_where_it_started() -> None:
    table = ProcessTable("boot", linger_ns=1_000_000_000, max_exited=1000)
    ns = HOST_NS
    start = len(table)
    now = 10_000_000_000
    for number in range(5000):
        rec = exec_record(number, ns, start_ns=now)
        now = rec.ktime_ns
        table.on_fork(ForkRecord(now - 2, 1, rec.pid, rec.start_boottime_ns))
        table.on_exec(rec)
        table.on_exit(ExitRecord(now + 1, rec.pid, 0, rec.start_boottime_ns))
        if number % 100 == 0:
            table.expire(now)
        assert len(table) <= start + 1000 + 1
    table.expire(now + 2_000_000_000)
    assert len(table) == start


def test_a_container_gone_before_its_exec_is_handled_keeps_its_name(tmp_path: Path, monkeypatch) -> None:
    from sensor.containers import metadata as metadata_module

    monkeypatch.setattr(metadata_module, "REMEMBERED", 10)
    host = PodmanHost(tmp_path)
    proc = tmp_path / "proc"
    proc.mkdir()
    resolver = ContainerResolver(host_ns=HOST_NS, cgroup_root=host.cgroups, proc_root=proc,
                                 state_roots=host.state, start_worker=False, retry_delays=())
    resolver.seed()
    watch = resolver._reader.watch  # what the worker thread runs every 0.1 s
    for number in range(30):
        cgroup_id, path = host.start(number)
        assert watch() == 1
        # the records arrive late (a backlog): the container has run, and podman removed its state already
        resolver.on_cgroup(CgroupRecord(number, "mkdir", 0, cgroup_id, 2, path.encode()))
        host.stop(number)
        info = resolver.resolve(cgroup_id, replace(HOST_NS, pid=10_000 + number, mnt=20_000 + number))
        assert (info.name, info.image_name) == (f"c{number}", "localhost/img")
        assert watch() == 0
        assert resolver.stats()["metadata_remembered"] <= 10
    resolver.close()


def test_the_watch_reads_are_counted_apart_from_look_ups(tmp_path: Path) -> None:
    host = PodmanHost(tmp_path)
    proc = tmp_path / "proc"
    proc.mkdir()
    resolver = ContainerResolver(host_ns=HOST_NS, cgroup_root=host.cgroups, proc_root=proc,
                                 state_roots=host.state, start_worker=False, retry_delays=())
    host.start(1)
    host.start(2)
    assert resolver._reader.watch() == 2
    stats = resolver.stats()
    assert stats["metadata_file_reads"] == 0 and stats["metadata_watch_reads"] >= 2
    resolver.close()


def test_the_document_builder_forgets_what_it_kept_for_gone_processes_and_cgroups() -> None:
    """The builder's blocks (parents, leaders, containers, placements) go with the process or cgroup they were
    built for: a container churn grew the sensor by about 90 KB per container while they waited for their bound."""
    from sensor.ecs.builder import DocumentBuilder
    from sensor.ecs.inventory import sample_documents  # noqa: F401 - the made-up processes below mirror it
    from sensor.model.host import HostFacts
    from sensor.model.processes import Process
    from sensor.model.sessions import Leaders

    @dataclass(frozen=True)
    class Container:
        id: str
        cgroup_path: str
        runtime: str = "podman"
        name: str | None = "c"
        image_name: str | None = None
        image_tag: str | None = None
        pod_uid: str | None = None
        pod_name: str | None = None
        pod_namespace: str | None = None

    host = HostFacts("h", "id", "x86_64", "6.1", "Debian", "12", "debian", "debian", (), (), "0" * 32)
    builder = DocumentBuilder(host, boot_wall_offset_ns=0)
    kept = (builder._summaries, builder._leaders, builder._entries, builder._bodies, builder._containers,  # private
            builder._placements)  # private: the caches this test is about
    for number in range(200):
        init = Process(pid=1000 + number, ppid=1, start_boottime_ns=number, entity_id=f"i{number}", name="sh",
                       uid=0, gid=0, euid=0, egid=0)
        child = Process(pid=5000 + number, ppid=init.pid, start_boottime_ns=number, entity_id=f"c{number}",
                        name="ls", uid=0, gid=0, euid=0, egid=0, cgroup_id=number)
        leaders = Leaders(group=init, session=init, entry=init, entry_type="container")
        path = f"/machine.slice/libpod-{number}.scope"
        container = Container(id=f"{number:064x}", cgroup_path=path)
        for kind, status in (("exec", None), ("exit", 0)):
            builder.process_event(kind=kind, ktime_ns=number, sequence=number, proc=child, parent=init,
                                  leaders=leaders, container=container, cgroup_path=path, exit_status=status)
        assert all(cache for cache in kept if cache is not builder._bodies)  # private; bodies go at the exit
        builder.process_event(kind="exec", ktime_ns=number, sequence=number, proc=child, parent=init,
                              leaders=leaders, container=container, cgroup_path=path)
        assert all(kept), [len(cache) for cache in kept]  # an exec whose end never came
        builder.forget_process(child)
        builder.forget_process(init)
        builder.forget_cgroup(number, path)
        assert [len(cache) for cache in kept] == [0] * len(kept)
