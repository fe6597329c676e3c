"""ContainerResolver over a fake cgroup tree and fake runtime state (real directories, so real inode ids)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from sensor.containers import ContainerResolver, StateRoots, host_namespaces
from sensor.containers.cgroupmap import CgroupMap, CgroupMount, find_v2_mount
from sensor.containers.info import BY_CGROUP, BY_NAMESPACE_OF_KNOWN, BY_NAMESPACES, ID_NAME, ID_PID_NAMESPACE
from sensor.model.records import CgroupRecord, Namespaces

PODMAN_ID = "fddcb0d306ca760e90ae85613be32b63bd36a162373da32b38ab4752fcbee111"
HOST_NS = Namespaces(pid=4026531836, mnt=4026531841, net=4026531840, uts=4026531838, ipc=4026531839,
                     cgroup=4026531835, user=4026531837)
# a podman container's namespaces as seen here: own pid/mnt/net/uts/ipc, host cgroup and user namespaces
POD_NS = Namespaces(pid=4026532180, mnt=4026532177, net=4026532181, uts=4026532178, ipc=4026532179,
                    cgroup=4026531835, user=4026531837)
# systemd-nspawn --register=no --keep-unit, seen here: own pid/mnt/uts/ipc/cgroup, host network
NSPAWN_NS = Namespaces(pid=4026532328, mnt=4026532325, net=4026531840, uts=4026532326, ipc=4026532327,
                       cgroup=4026532324, user=4026531837)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    for rel in (f"libpod_parent/libpod-{PODMAN_ID}", "libpod_parent/conmon", "system.slice/ssh.service",
                "lxc.payload.web/.lxc", "lxc.monitor.web"):
        (root / rel).mkdir(parents=True)
    return root


@pytest.fixture
def state(tmp_path: Path) -> StateRoots:
    storage = tmp_path / "host/var/lib/containers/storage/overlay-containers"
    (storage / PODMAN_ID / "userdata").mkdir(parents=True)
    (storage / "containers.json").write_text(json.dumps([{
        "id": PODMAN_ID, "names": ["cs-probe1"],
        "metadata": json.dumps({"image-name": "localhost/container-sensor-test:1", "name": "cs-probe1"})}]))
    (storage / PODMAN_ID / "userdata/config.json").write_text(json.dumps(
        {"annotations": {"io.container.manager": "libpod"}}))
    (tmp_path / "host/var/lib/lxc/web").mkdir(parents=True)
    (tmp_path / "host/var/lib/lxc/web/config").write_text("lxc.uts.name = web\n")
    return StateRoots.under(tmp_path / "host")


def make(tree: Path, state: StateRoots, tmp_path: Path, **kw) -> ContainerResolver:
    proc = tmp_path / "proc"
    proc.mkdir(exist_ok=True)
    resolver = ContainerResolver(host_ns=HOST_NS, cgroup_root=tree, proc_root=proc, state_roots=state,
                                 start_worker=False, retry_delays=(), **kw)
    resolver.seed()
    return resolver


def ino(tree: Path, rel: str) -> int:
    return os.stat(tree / rel).st_ino


def test_podman_container_then_metadata(tree, state, tmp_path):
    # state files too large to read in the event loop: the first exec goes out without them, later ones carry them
    r = make(tree, state, tmp_path, first_look_max_file_bytes=16)
    cid = ino(tree, f"libpod_parent/libpod-{PODMAN_ID}")
    first = r.resolve(cid, POD_NS)
    # the event is not held for the runtime's state: identity now, names later
    assert first.id == PODMAN_ID and first.runtime == "podman" and first.name is None
    assert not first.metadata_complete
    assert first.decided_by == BY_CGROUP
    assert first.namespaces_differing == ("ipc", "mnt", "net", "pid", "uts")
    assert r.stats()["first_looks_waited"] == 1
    assert r.run_pending() == 1
    second = r.resolve(cid, POD_NS)
    assert (second.name, second.image_name, second.image_tag) == ("cs-probe1", "localhost/container-sensor-test", "1")
    assert second.metadata_complete
    reads = r.stats()["metadata_file_reads"]
    for _ in range(100):
        assert r.resolve(cid, POD_NS) is second
    stats = r.stats()
    assert stats["metadata_file_reads"] == reads and stats["proc_reads"] == 0
    assert stats["first_looks"] == 1  # only the first exec of the container looked


def test_first_exec_of_a_container_carries_its_metadata_when_cheap(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    first = r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS)
    assert (first.name, first.image_name, first.image_tag) == ("cs-probe1", "localhost/container-sensor-test", "1")
    assert first.metadata_complete
    stats = r.stats()
    assert (stats["first_looks_read"], stats["first_looks_found"], stats["first_looks_waited"]) == (1, 1, 0)


def test_first_looks_beyond_their_share_of_the_second_are_not_made(tree, state, tmp_path):
    r = make(tree, state, tmp_path, first_look_share=0.0)
    first = r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS)
    assert first.name is None and not first.metadata_complete
    stats = r.stats()
    assert (stats["first_looks"], stats["first_looks_over_budget"], stats["metadata_file_reads"]) == (0, 1, 0)
    r.run_pending()  # the worker still looks
    assert r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS).name == "cs-probe1"


def test_first_exec_waits_for_a_costly_look_at_most_the_bound(tree, state, tmp_path):
    import threading
    import time

    from sensor.containers import metadata as metadata_module

    disk_answers = threading.Event()
    lookup = metadata_module.MetadataReader.lookup

    def slow_lookup(self, *args, **kwargs):
        disk_answers.wait(10)  # a disk that does not answer until the test lets it
        return lookup(self, *args, **kwargs)

    proc = tmp_path / "proc"
    proc.mkdir()
    r = ContainerResolver(host_ns=HOST_NS, cgroup_root=tree, proc_root=proc, state_roots=state,
                          first_look_max_file_bytes=16, first_look_wait_s=0.02)
    try:
        r.seed()
        r._reader.lookup = slow_lookup.__get__(r._reader)  # the worker's reader only
        began = time.monotonic()
        first = r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS)
        held = time.monotonic() - began
        assert first.name is None and held < 5  # waiting for the look itself would have taken 10 s
        assert r.stats()["first_looks_waited"] == 1
        disk_answers.set()
        deadline = time.monotonic() + 10
        while r.stats()["metadata_found"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS).name == "cs-probe1"
    finally:
        disk_answers.set()
        r.close()


def test_a_costly_look_the_worker_answers_in_time_is_in_the_first_document(tree, state, tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    r = ContainerResolver(host_ns=HOST_NS, cgroup_root=tree, proc_root=proc, state_roots=state,
                          first_look_max_file_bytes=16, first_look_wait_s=2.0, first_look_share=2.0)
    try:
        r.seed()
        first = r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS)
        assert first.name == "cs-probe1" and first.metadata_complete
        assert r.stats()["first_looks_waited"] == 1
    finally:
        r.close()


def test_host_cgroups_and_conmon_are_host(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    assert r.resolve(ino(tree, "system.slice/ssh.service"), HOST_NS) is None
    assert r.resolve(ino(tree, "libpod_parent/conmon"), HOST_NS) is None
    assert r.resolve(ino(tree, "lxc.monitor.web"), HOST_NS) is None
    # `unshare --mount sh`: only the mount namespace differs
    assert r.resolve(ino(tree, "system.slice/ssh.service"), replace(HOST_NS, mnt=1)) is None
    # a service with PrivateNetwork= and PrivateTmp=: net and mnt, but the host's pid namespace
    assert r.resolve(ino(tree, "system.slice/ssh.service"), replace(HOST_NS, mnt=1, net=2, uts=3)) is None


def test_lxc_attach_subcgroup_resolves_to_container(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    info = r.resolve(ino(tree, "lxc.payload.web/.lxc"), replace(POD_NS, pid=77, mnt=78))
    assert (info.id, info.runtime, info.id_source, info.container_cgroup) == ("web", "lxc", ID_NAME,
                                                                             "/lxc.payload.web")
    r.run_pending()
    assert r.resolve(ino(tree, "lxc.payload.web/.lxc"), replace(POD_NS, pid=77, mnt=78)).metadata_complete


def test_namespace_only_container_named_by_launcher(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    root_id = ino(tree, ".")
    info = r.resolve(root_id, NSPAWN_NS, [(900, "systemd-nspawn"), (800, "bash")])
    assert info.decided_by == BY_NAMESPACES and info.runtime == "systemd-nspawn"
    assert info.id == f"pidns-{NSPAWN_NS.pid}" and info.id_source == ID_PID_NAMESPACE
    assert info.namespaces_differing == ("cgroup", "ipc", "mnt", "pid", "uts")
    # decided once: the ancestry is not consulted again
    assert r.resolve(root_id, NSPAWN_NS, [(1, "other")]) is info


def test_nsenter_into_known_container(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    r.resolve(ino(tree, f"libpod_parent/libpod-{PODMAN_ID}"), POD_NS)
    info = r.resolve(ino(tree, "system.slice/ssh.service"), POD_NS, [(5, "nsenter")])
    assert info.id == PODMAN_ID and info.decided_by == BY_NAMESPACE_OF_KNOWN
    assert info.cgroup_path == "/system.slice/ssh.service"


def test_cgroup_records_and_grace_period(tree, state, tmp_path):
    r = make(tree, state, tmp_path, grace_seconds=0.0)
    new_id = 987654321
    path = b"/libpod_parent/libpod-" + b"a" * 64
    assert r.resolve(new_id, POD_NS) is not None  # namespaces alone already say container
    assert r.stats()["unknown_cgroup_ids"] == 1
    r.on_cgroup(CgroupRecord(ktime_ns=1, op="mkdir", root=0, cgroup_id=new_id, level=2, path=path))
    assert r.cgroup_path(new_id) == path.decode()
    assert r.resolve(new_id, POD_NS).id == "a" * 64
    r.on_cgroup(CgroupRecord(ktime_ns=2, op="rmdir", root=0, cgroup_id=new_id, level=2, path=path))
    assert r.cgroup_path(new_id) is None  # grace 0: gone at once


def test_v1_ids_do_not_shadow_v2(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    ssh_id = ino(tree, "system.slice/ssh.service")
    # the memory hierarchy (id 4 here) makes a container cgroup whose v1 id equals the v2 id of ssh.service
    r.on_cgroup(CgroupRecord(ktime_ns=1, op="mkdir", root=4, cgroup_id=ssh_id, level=2,
                             path=f"/libpod_parent/libpod-{PODMAN_ID}".encode()))
    assert r.cgroup_path(ssh_id) == "/system.slice/ssh.service"
    assert r.resolve(ssh_id, HOST_NS) is None


def test_bad_cgroup_record_counted(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    r.on_cgroup(CgroupRecord(ktime_ns=1, op="rename", root=0, cgroup_id=5, level=1, path=b"/x"))
    assert r.stats()["cgroup_records_bad"] == 1


def test_metadata_gives_up_and_stops_asking(tree, state, tmp_path):
    other = "b" * 64
    (tree / "libpod_parent" / f"libpod-{other}").mkdir()
    r = make(tree, state, tmp_path)
    cid = ino(tree, f"libpod_parent/libpod-{other}")
    assert not r.resolve(cid, POD_NS).metadata_complete
    r.run_pending()  # no retries configured: one attempt, then given up
    info = r.resolve(cid, POD_NS)
    assert info.metadata_complete and info.name is None and info.runtime == "podman"
    assert r.stats()["metadata_missing"] == 1


def test_cgroup_map_grace_with_clock():
    now = [100.0]
    cmap = CgroupMap(grace_seconds=5, clock=lambda: now[0])
    cmap.add(0, 7, "/a")
    cmap.remove(0, 7, "/a")
    assert cmap.path(0, 7) == "/a"
    cmap.add(0, 8, "/b")
    now[0] = 106
    cmap.expire()
    assert cmap.path(0, 7) is None and cmap.path(0, 8) == "/b"
    # an id reused before the grace ends keeps the newer path
    cmap.remove(0, 8, "/b")
    cmap.add(0, 8, "/c")
    now[0] = 200
    cmap.expire()
    assert cmap.path(0, 8) == "/c"


def test_find_v2_mount_reads_mountinfo(tmp_path):
    # this machine's /proc/self/mountinfo line for the unified hierarchy, and a cgroup-namespaced view
    (tmp_path / "self").mkdir()
    (tmp_path / "self/mountinfo").write_text(
        "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n"
        "44 25 0:39 / /sys/fs/cgroup/unified rw,relatime shared:23 - cgroup2 cgroup2 rw\n")
    assert find_v2_mount(tmp_path) == CgroupMount(Path("/sys/fs/cgroup/unified"), "/")
    (tmp_path / "self/mountinfo").write_text(
        "901 900 0:39 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
    assert find_v2_mount(tmp_path) == CgroupMount(Path("/sys/fs/cgroup"), "/kubepods/pod1")


def test_v1_only_host_reads_proc_once_per_namespace_pair(tmp_path, state):
    # no cgroup2 in mountinfo: bpf_get_current_cgroup_id() then says nothing, /proc/PID/cgroup is read once
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self/mountinfo").write_text(
        "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n")
    (proc / "4242").mkdir()
    # docker on a cgroup v1 host (cgroupfs driver): every hierarchy shows /docker/<id>
    docker_id = "3f4e8b2f6b4c0f5e9d1a7c2b8e6f4a0d9c3b5e7f1a2d4c6e8b0a9f7d5c3e1b2a"
    (proc / "4242/cgroup").write_text(f"12:memory:/docker/{docker_id}\n1:name=systemd:/docker/{docker_id}\n")
    r = ContainerResolver(host_ns=HOST_NS, proc_root=proc, state_roots=state, start_worker=False)
    r.seed()
    for _ in range(3):
        info = r.resolve(1, POD_NS, (), 4242)
        assert info.id == docker_id and info.runtime == "docker"
    assert r.stats()["proc_reads"] == 1
    r.close()


def test_launcher_runtime_nearest_known_ancestor_wins():
    from sensor.containers import launcher_runtime

    # comm names as the kernel truncates them (15 characters), nearest ancestor first
    assert launcher_runtime([(10, "sh"), (9, "systemd-nspawn"), (8, "sudo")]) == "systemd-nspawn"
    assert launcher_runtime([(10, "memfd:lxc-attac"), (9, "lxc-start")]) == "lxc"
    assert launcher_runtime([(10, "containerd-shim"), (9, "runc")]) == "containerd"
    assert launcher_runtime([(10, "nsenter")]) == "nsenter"
    assert launcher_runtime([(10, "bash"), (1, "init")]) is None
    assert launcher_runtime([]) is None


def test_hybrid_host_runtime_with_v1_cgroups_only(tree, state, tmp_path):
    # an older runtime on a hybrid host: the container's cgroups exist only in the v1 hierarchies, so its
    # processes sit in the v2 root; the v1 path is read once for the new namespace pair
    r = make(tree, state, tmp_path)
    docker_id = "3f4e8b2f6b4c0f5e9d1a7c2b8e6f4a0d9c3b5e7f1a2d4c6e8b0a9f7d5c3e1b2a"
    (tmp_path / "proc/555").mkdir()
    (tmp_path / "proc/555/cgroup").write_text(f"4:memory:/docker/{docker_id}\n0::/\n")
    root_id = ino(tree, ".")
    for _ in range(3):
        assert r.resolve(root_id, POD_NS, (), 555).id == docker_id
    # the host itself is never looked up in /proc
    assert r.resolve(root_id, HOST_NS, (), 1) is None
    assert r.stats()["proc_reads"] == 1


def test_cgroup_mkdir_prefetches_metadata(tree, state, tmp_path):
    r = make(tree, state, tmp_path)
    path = f"/libpod_parent/libpod-{PODMAN_ID}"
    r.on_cgroup(CgroupRecord(ktime_ns=1, op="mkdir", root=0, cgroup_id=424242, level=2, path=path.encode()))
    assert r.stats()["metadata_requested"] == 1
    r.run_pending()
    # the container's first exec finds its name already
    assert r.resolve(424242, POD_NS).name == "cs-probe1"
    # v1 hierarchies' mkdirs of the same container do not queue it again
    r.on_cgroup(CgroupRecord(ktime_ns=2, op="mkdir", root=4, cgroup_id=99, level=2, path=path.encode()))
    assert r.stats()["metadata_requested"] == 1


def test_host_namespaces_are_pid_1s_and_the_sensors_own_where_pid_1_cannot_be_read(tmp_path: Path) -> None:
    """The one reader of the host's namespaces (the live pipeline, its recordings and the tests all use it):
    a hardened init hides some of /proc/1/ns; those come from /proc/self/ns, and 0 where neither is readable."""
    for pid, kinds in (("1", ("pid", "mnt")), ("self", ("pid", "mnt", "net", "uts", "ipc", "cgroup"))):
        (tmp_path / pid / "ns").mkdir(parents=True)
        for kind in kinds:
            (tmp_path / pid / "ns" / kind).write_text(pid + kind)
    inode = {(pid, kind): os.stat(tmp_path / pid / "ns" / kind).st_ino
             for pid in ("1", "self") for kind in os.listdir(tmp_path / pid / "ns")}
    assert host_namespaces(tmp_path) == Namespaces(
        pid=inode["1", "pid"], mnt=inode["1", "mnt"], net=inode["self", "net"], uts=inode["self", "uts"],
        ipc=inode["self", "ipc"], cgroup=inode["self", "cgroup"], user=0)


def test_decisions_are_bounded_and_the_oldest_is_forgotten_first(tree, state, tmp_path):
    r = make(tree, state, tmp_path, cache_size=3)
    host_cgroup = ino(tree, "system.slice/ssh.service")
    # namespace-only containers: one decision per namespace set, the ancestry read only when deciding
    first, second, third, fourth = (replace(NSPAWN_NS, pid=100 + n) for n in range(4))
    decided = {ns: r.resolve(host_cgroup, ns, [(9, "systemd-nspawn")]) for ns in (first, second, third)}
    assert r.stats()["resolved_cached_entries"] == 3
    assert r.resolve(host_cgroup, first, [(9, "bwrap")]) is decided[first]  # a hit does not make it younger
    r.resolve(host_cgroup, fourth, [(9, "systemd-nspawn")])
    assert r.stats()["resolved_cached_entries"] == 3
    assert r.resolve(host_cgroup, second, [(9, "other")]) is decided[second]
    again = r.resolve(host_cgroup, first, [(9, "bwrap")])  # forgotten: decided anew, from this ancestry
    assert again is not decided[first] and again.runtime == "bubblewrap"
