"""Names inside containers from the container's own passwd and group files: read within the container's root,
bounded, hostile files giving no names, changes picked up, and the names in the documents."""

from __future__ import annotations

import os
from pathlib import Path

from sensor.containers import accounts as accounts_mod
from sensor.containers.accounts import AccountNames, ContainerAccounts, parse_ids
from sensor.containers.info import ContainerInfo
from sensor.ecs.builder import DocumentBuilder
from sensor.model.processes import ProcessTable
from sensor.model.sessions import find_leaders
from sensor.outputs.memory import MemoryOutput
from sensor.pipeline import Pipeline
from tests.unit.test_ecs import HOST
from tests.unit.test_pipeline import CONTAINER_NS, exec_rec


def _root(tmp_path: Path, pid: int = 7) -> tuple[str, Path]:
    """A fake /proc whose PID's root is a directory of our own."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "root").symlink_to(rootfs)
    return str(proc), rootfs


def test_passwd_lines_become_names_by_id_and_junk_is_skipped() -> None:
    text = (b"root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\nduplicate:x:1000:1:::\n"
            b"# comment\n\nbad:x:notanumber:0\n" + b"x" * 100 + b":x:5:5\nesc\x1b[31m:x:6:6\n\xff\xfe:x:7:7\n")
    assert parse_ids(text) == {0: "root", 1000: "node"}


def test_names_come_from_the_containers_own_files(tmp_path: Path) -> None:
    proc, rootfs = _root(tmp_path)
    (rootfs / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:4242:4242::/:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:4242:\n")
    accounts = ContainerAccounts(proc, start=False)
    assert accounts.names("c1", 7) is None  # not read yet: asked for, never waited on
    accounts.refresh("c1", 7)
    names = accounts.names("c1", 7)
    assert names is not None and names.user(4242) == "app" and names.group(4242) == "app"
    accounts.refresh("c1", 7)
    assert accounts.names("c1", 7) is names  # unchanged files: the same object, so built blocks stay valid
    (rootfs / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\nrenamed:x:4242:4242::/:/bin/sh\n")
    accounts.refresh("c1", 7)
    assert accounts.names("c1", 7).user(4242) == "renamed"


def test_hostile_files_give_no_names_and_never_the_hosts(tmp_path: Path, monkeypatch) -> None:
    proc, rootfs = _root(tmp_path)
    accounts = ContainerAccounts(proc, start=False)
    # a link to the host's files resolves inside the container's root, where there is no such file
    (rootfs / "etc/passwd").symlink_to("/etc/passwd")
    os.mkfifo(rootfs / "etc/group")  # opened non-blocking, not a regular file: skipped without waiting
    accounts.refresh("c1", 7)
    assert accounts.names("c1", 7) is None
    (rootfs / "etc/passwd").unlink()
    monkeypatch.setattr(accounts_mod, "FILE_MAX_BYTES", 64)
    (rootfs / "etc/passwd").write_text("root:x:0:0::/:/bin/sh\n" * 10)  # larger than the bound
    accounts.refresh("c2", 7)
    assert accounts.names("c2", 7) is None
    accounts.refresh("c3", 99)  # the process is gone
    assert accounts.names("c3", 99) is None and accounts.stats()["account_reads_failed"] >= 2


class _Accounts:
    def __init__(self, names: AccountNames) -> None:
        self._names = names

    def names(self, container_id: str, pid: int) -> AccountNames:
        return self._names

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


class _Resolver:
    """Every process in one container."""

    def __init__(self) -> None:
        self.container = ContainerInfo(id="c" * 64, runtime="podman", name="web")

    def on_cgroup(self, rec) -> None:
        pass

    def resolve(self, cgroup_id, ns, ancestry=(), pid=0):
        return self.container

    def cgroup_path(self, cgroup_id):
        return None

    def stats(self):
        return {}


def test_a_container_process_carries_the_containers_names() -> None:
    out = MemoryOutput()
    pipeline = Pipeline(table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0),
                        outputs=[out], leaders=find_leaders, resolver=_Resolver(),
                        accounts=_Accounts(AccountNames({0: "root", 4242: "app"}, {0: "wheel"})))
    rec = exec_rec(500, 1, (b"/bin/sh",), CONTAINER_NS, 1, 10_000)
    rec.uid = rec.euid = 4242
    pipeline.handle(rec)
    doc = out.docs[0]
    assert doc["user"] == {"id": "4242", "name": "app", "Ext": {"real": {"id": "4242", "name": "app"}}}
    assert doc["group"] == {"id": "0", "name": "wheel", "Ext": {"real": {"id": "0", "name": "wheel"}}}
    assert doc["process"]["user"] == {"id": "4242", "name": "app"}


def test_a_process_still_in_the_hosts_root_is_not_read(tmp_path: Path) -> None:
    """runc init is in the container's cgroup before it switches root: the host's passwd is not the container's."""
    proc, rootfs = _root(tmp_path)
    (rootfs / "etc/passwd").write_text("hostuser:x:4242:4242::/:/bin/sh\n")
    (Path(proc) / "1").mkdir()
    (Path(proc) / "1" / "root").symlink_to(rootfs)  # pid 7's root is pid 1's
    accounts = ContainerAccounts(proc, start=False, refresh_s=30.0)
    accounts.refresh("c1", 7)
    assert accounts.names("c1", 7) is None and accounts.stats()["account_reads"] == 0


def test_a_read_that_hangs_costs_the_event_loop_one_short_wait(tmp_path: Path, monkeypatch) -> None:
    """A container can serve its /etc/passwd from a FUSE mount that never answers: its documents go out with ids,
    and only the first of them waits (WAIT_S) for the read."""
    import threading
    import time

    proc, rootfs = _root(tmp_path)
    release = threading.Event()

    def hang(*_args):
        release.wait(10)
        return None

    monkeypatch.setattr(accounts_mod, "_read", hang)
    accounts = ContainerAccounts(proc)
    try:
        began = time.monotonic()
        for _ in range(200):
            assert accounts.names("c1", 7) is None
        assert time.monotonic() - began < 0.5  # 200 waits would be a second
    finally:
        release.set()
        accounts.close()
