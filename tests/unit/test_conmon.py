"""A container with no cgroup of its own named by the conmon above it (rootless podman), the store read so that its
user cannot freeze or misdirect the reader, and what is tied to a pid namespace forgotten when it ends."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from sensor.containers import ContainerResolver, StateRoots
from sensor.containers.conmon import ConmonArgs, lookup, parse_conmon_argv, store_index_of
from sensor.containers.info import BY_NAMESPACES, ID_PID_NAMESPACE, ID_RUNTIME
from sensor.containers.userfiles import Refused, mount_of, read_small
from sensor.model.records import Namespaces

CID = "a2db7902d87f3c9fc24e8fd098331500adc8188b8e01abee4a0d4a2155b3d159"
OTHER = "f" * 64
HOST_NS = Namespaces(pid=4026531836, mnt=4026531841, net=4026531840, uts=4026531838, ipc=4026531839,
                     cgroup=4026531835, user=4026531837)
# rootless podman seen here: every namespace its own but cgroup; the cgroup stays the launching user's
ROOTLESS_NS = Namespaces(pid=4026532249, mnt=4026532246, net=4026532250, uts=4026532247, ipc=4026532248,
                         cgroup=4026531835, user=4026532244)


def conmon_argv(cid: str, bundle: str, name: str = "cs-rl-1") -> list[str]:
    # as podman 4.3 starts it (trimmed)
    return ["/usr/bin/conmon", "--api-version", "1", "-c", cid, "-u", cid, "-r", "/usr/bin/runc", "-b", bundle,
            "-p", f"/run/user/1001/containers/vfs-containers/{cid}/userdata/pidfile", "-n", name,
            "--exit-dir", "/run/user/1001/libpod/tmp/exits", "--exit-command-arg", "cleanup",
            "--exit-command-arg", cid]


def make_store(home: Path, cid: str = CID, name: str = "cs-rl-1") -> Path:
    containers = home / ".local/share/containers/storage/vfs-containers"
    (containers / cid / "userdata").mkdir(parents=True)
    (containers / "containers.json").write_text(json.dumps([{
        "id": cid, "names": [name],
        "metadata": json.dumps({"image-name": "localhost/cs-test:1", "name": name})}]))
    return containers / cid / "userdata"


def test_conmon_argv_parsed() -> None:
    args = parse_conmon_argv(conmon_argv(CID, "/b/vfs-containers/x/userdata"))
    assert args == ConmonArgs(CID, "cs-rl-1", "/b/vfs-containers/x/userdata")
    assert parse_conmon_argv(["/usr/bin/conmon", f"--cid={CID}", "--name=web"]) == ConmonArgs(CID, "web", None)
    # not conmon, or no 64-hex id: nothing
    assert parse_conmon_argv(["/bin/busybox", "-c", CID]) is None
    assert parse_conmon_argv(["/usr/bin/conmon", "-c", "../../etc"]) is None
    assert parse_conmon_argv([]) is None


def test_store_index_only_for_podmans_bundle_shape(tmp_path: Path) -> None:
    bundle = make_store(tmp_path / "home")
    assert store_index_of(ConmonArgs(CID, None, str(bundle))) == bundle.parent.parent / "containers.json"
    assert store_index_of(ConmonArgs(OTHER, None, str(bundle))) is None  # the bundle of another id
    assert store_index_of(ConmonArgs(CID, None, "/etc")) is None
    assert store_index_of(ConmonArgs(CID, None, None)) is None


def test_lookup_reads_name_and_image(tmp_path: Path) -> None:
    bundle = make_store(tmp_path / "home")
    meta, problem = lookup(ConmonArgs(CID, "from-conmon", str(bundle)))
    assert problem is None
    assert (meta.runtime, meta.name, meta.image) == ("podman", "cs-rl-1", "localhost/cs-test:1")


def test_a_fifo_in_place_of_the_store_is_refused_at_once(tmp_path: Path) -> None:
    """The store's user makes containers.json a FIFO nobody writes: the read neither blocks nor fails loudly."""
    bundle = make_store(tmp_path / "home")
    index = bundle.parent.parent / "containers.json"
    index.unlink()
    os.mkfifo(index)
    done: list = []
    reader = threading.Thread(target=lambda: done.append(lookup(ConmonArgs(CID, "from-conmon", str(bundle)))))
    reader.start()
    reader.join(5)
    assert done, "the read of a FIFO blocked"
    meta, problem = done[0]
    assert "not a regular file" in problem
    assert (meta.name, meta.image) == ("from-conmon", None)  # conmon's word for the name, no image


def test_links_devices_and_large_files_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root-only")
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(Refused, match="link"):
        read_small(link, 1024)
    (tmp_path / "dir-link").symlink_to(tmp_path)  # a link higher up the path
    with pytest.raises(Refused, match="link"):
        read_small(tmp_path / "dir-link" / "secret", 1024)
    with pytest.raises(Refused, match="not a regular file"):
        read_small(Path("/dev/zero"), 1024)
    with pytest.raises(Refused, match="more than"):
        read_small(secret, 4)
    with pytest.raises(FileNotFoundError):
        read_small(tmp_path / "absent", 1024)
    assert read_small(secret, 1024) == b"root-only"


def test_mount_of_takes_the_deepest_and_the_last_listed(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw shared:1 - ext4 /dev/vda1 rw\n"
        "30 22 0:30 / /home rw shared:2 - ext4 /dev/vdb rw\n"
        "31 30 0:31 / /home/cs\\040user/fuse rw - fuse.sshfs x rw\n"
        "32 30 0:32 / /home rw - tmpfs tmpfs rw\n"
    )
    assert mount_of("/home/cs user/fuse/store/containers.json", info) == ("/home/cs user/fuse", "fuse.sshfs")
    assert mount_of("/home/other/x", info) == ("/home", "tmpfs")
    assert mount_of("/etc/passwd", info) == ("/", "ext4")
    assert mount_of("/homes/x", info) == ("/", "ext4")


# -- the resolver --------------------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path):
    """A fake /proc with a host conmon (its pid namespace file is the host's) and a process in the container named
    conmon (its own), a cgroup tree where everything sits in the root cgroup, and the user's store."""
    proc = tmp_path / "proc"
    bundle = make_store(tmp_path / "home")
    for pid, argv, ns_name in ((700, conmon_argv(CID, str(bundle)), "host"),
                               (901, conmon_argv(OTHER, str(bundle), name="forged"), "container")):
        (proc / str(pid) / "ns").mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (proc / str(pid) / "ns" / "pid").write_text(ns_name)
    host_ns = replace(HOST_NS, pid=os.stat(proc / "700/ns/pid").st_ino)
    tree = tmp_path / "cgroup"
    tree.mkdir()
    resolver = ContainerResolver(host_ns=host_ns, cgroup_root=tree, proc_root=proc,
                                 state_roots=StateRoots.under(tmp_path / "nothing"), start_worker=False,
                                 retry_delays=())
    resolver.seed()
    return resolver, os.stat(tree).st_ino


def test_rootless_container_named_by_the_hosts_conmon_not_the_containers_own(world) -> None:
    resolver, root_cgroup = world
    # nearest first: the container's own "conmon" (forging another id and name), then the real one
    ancestry = [(901, "conmon"), (700, "conmon"), (1, "systemd")]
    first = resolver.resolve(root_cgroup, ROOTLESS_NS, ancestry)
    # no worker thread here: not read yet, so the namespace's own id, marked incomplete (alerts wait for it)
    assert first.id == f"pidns-{ROOTLESS_NS.pid}" and first.id_source == ID_PID_NAMESPACE
    assert not first.metadata_complete
    assert resolver.run_pending() == 1
    info = resolver.resolve(root_cgroup, ROOTLESS_NS, ancestry)
    assert (info.id, info.runtime, info.name, info.image_name, info.image_tag) == (
        CID, "podman", "cs-rl-1", "localhost/cs-test", "1")
    assert info.decided_by == BY_NAMESPACES and info.id_source == ID_RUNTIME and info.metadata_complete
    assert resolver.stats()["conmon_found"] == 1


def test_only_the_containers_own_conmon_names_nothing(world) -> None:
    resolver, root_cgroup = world
    resolver.resolve(root_cgroup, ROOTLESS_NS, [(901, "conmon")])
    resolver.run_pending()
    info = resolver.resolve(root_cgroup, ROOTLESS_NS, [(901, "conmon")])
    assert info.id == f"pidns-{ROOTLESS_NS.pid}" and info.metadata_complete
    assert resolver.stats()["conmon_refused"] == 1


def test_a_pid_namespace_that_ended_is_decided_afresh(world) -> None:
    """Its inode number may be given to the next container: the conmon identity and the decision go with it."""
    resolver, root_cgroup = world
    resolver.resolve(root_cgroup, ROOTLESS_NS, [(700, "conmon")])
    resolver.run_pending()
    assert resolver.resolve(root_cgroup, ROOTLESS_NS, [(700, "conmon")]).id == CID
    resolver.pid_namespace_ended(ROOTLESS_NS.pid)
    assert resolver.stats()["pid_namespaces_forgotten"] == 1
    # the same numbers, a new container started by nspawn: not the podman container that ended
    again = resolver.resolve(root_cgroup, ROOTLESS_NS, [(50, "systemd-nspawn")])
    assert again.id == f"pidns-{ROOTLESS_NS.pid}" and again.runtime == "systemd-nspawn"
    # an end of a namespace nothing was tied to changes nothing
    resolver.pid_namespace_ended(12345)
    assert resolver.stats()["pid_namespaces_forgotten"] == 1
