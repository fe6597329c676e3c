from __future__ import annotations

from dataclasses import dataclass

from sensor.ecs.builder import DocumentBuilder, exit_code_of, iso_time
from sensor.model.host import HostFacts
from sensor.model.processes import Process, ProcessTable, decode_arg, entity_id
from sensor.model.records import ExecRecord, Namespaces
from sensor.model.sessions import Leaders
from tests.ecs_fields import ecs_problems

HOST = HostFacts(hostname="node-1", host_id="abc123", architecture="x86_64", kernel="6.18.0", os_name="Debian",
                 os_version="12", os_family="debian", os_platform="debian", ips=("10.0.0.5", "fd00::5"),
                 macs=("02-42-AC-11-00-02",), boot_id="boot-1")


@dataclass(frozen=True)
class Container:
    id: str = "a" * 64
    runtime: str = "podman"
    name: str | None = "web"
    image_name: str | None = "docker.io/library/nginx"
    image_tag: str | None = "1.25"
    pod_uid: str | None = "0c5ec5a4-3a43-4f0c-9b8a-1bf2d3f9f0e1"
    pod_name: str | None = "web-0"
    pod_namespace: str | None = "prod"
    cgroup_path: str | None = "/kubepods/burstable/pod0c5e/aaaa"


def exec_record(**overrides) -> ExecRecord:
    values = dict(
        ktime_ns=2_000_000_000, pid=300, tid=300, old_tid=300, ppid=200, uid=1000, gid=1000, euid=0, egid=0,
        comm=b"sudo", filename=b"/usr/bin/sudo", argv=(b"sudo", b"id", b"\xff"), argc=3, args_truncated=False,
        cgroup_id=77, ns=Namespaces(1, 2, 3, 4, 5, 6, 7), sid=200, pgid=300, tty_major=136, tty_minor=1,
        start_boottime_ns=1_999_000_000, exe_ino=11, exe_dev=(254 << 20) | 1,
    )
    values.update(overrides)
    return ExecRecord(**values)


def build(container=None, status=None):
    table = ProcessTable("boot-1")
    parent = Process(pid=200, ppid=1, start_boottime_ns=1_000_000_000, entity_id=entity_id("boot-1", 200, 10**9),
                     executable="/bin/bash", name="bash", args=("bash",), args_count=1, sid=200, pgid=200)
    table.put(parent)
    proc = table.on_exec(exec_record(), "/home/u")
    builder = DocumentBuilder(HOST, boot_wall_offset_ns=1_700_000_000 * 10**9)
    return builder.process_event(
        kind="exec" if status is None else "exit", ktime_ns=2_000_000_000, sequence=1, proc=proc, parent=parent,
        leaders=Leaders(group=proc, session=parent, entry=parent, entry_type="terminal"), container=container,
        cgroup_path="/x", exit_status=status,
    )


def test_exec_document_fields() -> None:
    doc = build()
    assert doc["event"]["type"] == ["start"] and doc["event"]["action"] == "exec"
    assert doc["process"]["args"] == ["sudo", "id", "\\xff"]
    assert doc["process"]["user"] == {"id": "0", "name": "root"}
    assert doc["process"]["real_user"]["id"] == "1000"
    assert doc["process"]["tty"] == {"char_device": {"major": 136, "minor": 1}}
    assert doc["process"]["interactive"] is True
    assert doc["process"]["parent"]["entity_id"] == entity_id("boot-1", 200, 10**9)
    assert doc["process"]["group_leader"]["same_as_process"] is True
    assert doc["process"]["session_leader"]["same_as_process"] is False
    assert doc["process"]["entry_leader"]["entry_meta"] == {"type": "terminal"}
    assert doc["container_sensor"]["executable"] == {"inode": 11, "device": (254 << 8) | 1, "path_truncated": False}
    assert "container" not in doc
    assert doc["@timestamp"] == iso_time(1_700_000_002 * 10**9)
    assert ecs_problems(doc) == []


def test_user_group_and_namespace_blocks_are_made_once() -> None:
    first, second = build(), build(container=Container())
    # one block per (id, names looked up or not) and per namespace set, whichever document or builder uses it
    assert first["process"]["user"] is build()["process"]["user"]
    assert first["process"]["user"] is not first["process"]["group"]  # uid 0 and gid 0: a user and a group block
    assert second["process"]["user"] == {"id": "0"}  # no host name for an id inside a container
    namespaces = first["container_sensor"]["namespaces"]
    assert namespaces is second["container_sensor"]["namespaces"]
    assert namespaces == {"pid": 1, "mnt": 2, "net": 3, "uts": 4, "ipc": 5, "cgroup": 6, "user": 7}


def test_container_and_pod_fields_are_ecs() -> None:
    doc = build(Container())
    assert doc["container"] == {"id": "a" * 64, "runtime": "podman", "name": "web",
                                "image": {"name": "docker.io/library/nginx", "tag": ["1.25"]}}
    assert doc["orchestrator"]["resource"]["name"] == "web-0"
    assert doc["orchestrator"]["namespace"] == "prod"
    assert "name" not in doc["process"]["user"], "container uids are not named from the host's passwd"
    assert ecs_problems(doc) == []


def test_end_document() -> None:
    doc = build(status=(2 << 8))
    assert doc["event"]["type"] == ["end"] and doc["process"]["exit_code"] == 2
    assert ecs_problems(doc) == []


def test_exit_status_decoding() -> None:
    assert exit_code_of(0) == (0, None)
    assert exit_code_of(7 << 8) == (7, None)
    assert exit_code_of(9) == (137, 9)


def test_event_ids_are_deterministic_and_distinct() -> None:
    assert build()["event"]["id"] == build()["event"]["id"]
    assert build()["event"]["id"] != build(status=0)["event"]["id"]


def test_decode_arg_is_always_valid_utf8() -> None:
    text = decode_arg(b"ok\xc3\x28\xff")
    text.encode("utf-8")
    assert text == "ok\\xc3(\\xff"
