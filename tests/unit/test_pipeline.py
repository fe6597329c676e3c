"""Records through the whole pipeline after the probe (the replay path): table, resolver, ECS, rules, outputs."""

from __future__ import annotations

from pathlib import Path

from sensor.containers.resolver import ContainerResolver
from sensor.ecs.builder import DocumentBuilder
from sensor.model.processes import ProcessTable
from sensor.model.records import CgroupRecord, ExecRecord, ExitRecord, ForkRecord, Namespaces
from sensor.model.sessions import find_leaders
from sensor.outputs.memory import MemoryOutput
from sensor.pipeline import Pipeline
from sensor.rules.detector import Detector
from tests.unit.test_ecs import HOST

HOST_NS = Namespaces(4026531836, 4026531832, 4026531833, 4026531838, 4026531839, 4026531835, 4026531837)
CONTAINER_NS = Namespaces(4026532300, 4026532301, 4026532302, 4026532303, 4026532304, 4026531835, 4026531837)
PODMAN_ID = "3f1c0b7e9d2a4c5b8e6f7a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f"
# podman's cgroupfs layout as seen on the development machine (libpod_parent/libpod-<id>)
PODMAN_CGROUP = f"/libpod_parent/libpod-{PODMAN_ID}"
NOWHERE = Path("/nonexistent/container-sensor-test")


def exec_rec(pid: int, ppid: int, argv: tuple[bytes, ...], ns: Namespaces, cgroup_id: int, t: int) -> ExecRecord:
    return ExecRecord(
        ktime_ns=t, pid=pid, tid=pid, old_tid=pid, ppid=ppid, uid=0, gid=0, euid=0, egid=0, comm=argv[0][-15:],
        filename=argv[0], argv=argv, argc=len(argv), args_truncated=False, cgroup_id=cgroup_id, ns=ns, sid=pid,
        pgid=pid, tty_major=0, tty_minor=0, start_boottime_ns=t - 1000, exe_ino=0, exe_dev=0, cwd=b"/",
    )


def make_pipeline(fold_window: float) -> tuple[Pipeline, MemoryOutput, ContainerResolver]:
    out = MemoryOutput()
    resolver = ContainerResolver(host_ns=HOST_NS, cgroup_root=NOWHERE, proc_root=NOWHERE, start_worker=False)
    pipeline = Pipeline(
        table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0), outputs=[out],
        resolver=resolver, detector=Detector([], builtin_ssh=True, fold_window_s=fold_window, proc_root=str(NOWHERE)),
        leaders=find_leaders,
    )
    return pipeline, out, resolver


def feed_container_ssh(pipeline: Pipeline, repeats: int) -> None:
    pipeline.handle(CgroupRecord(1, "mkdir", 0, 9001, 2, PODMAN_CGROUP.encode()))
    pipeline.handle(exec_rec(500, 400, (b"/bin/sh",), CONTAINER_NS, 9001, 10_000))
    for i in range(repeats):
        pid = 600 + i
        pipeline.handle(ForkRecord(20_000 + i, 500, pid, 20_000 + i))
        pipeline.handle(exec_rec(pid, 500, (b"/usr/bin/ssh", b"-V"), CONTAINER_NS, 9001, 30_000 + i))
        pipeline.handle(ExitRecord(40_000 + i, pid, 0, 30_000 + i - 1000))


def test_container_exec_is_placed_and_alerted() -> None:
    pipeline, out, resolver = make_pipeline(fold_window=60.0)
    feed_container_ssh(pipeline, repeats=1)
    pipeline.finish()
    resolver.close()
    ssh = [d for d in out.docs if d["event"]["kind"] == "event" and d["process"]["name"] == "ssh"]
    assert [d["event"]["action"] for d in ssh] == ["exec", "end"]
    assert ssh[0]["container"]["id"] == PODMAN_ID and ssh[0]["container"]["runtime"] == "podman"
    assert ssh[0]["container_sensor"]["cgroup"]["path"] == PODMAN_CGROUP
    assert ssh[0]["process"]["parent"]["executable"] == "/bin/sh"
    alerts = [d for d in out.docs if d["event"]["kind"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["process"]["pid"] == 600


def test_folded_repeats_are_released_at_shutdown_not_lost() -> None:
    pipeline, out, resolver = make_pipeline(fold_window=3600.0)
    feed_container_ssh(pipeline, repeats=5)
    before = [d for d in out.docs if d["event"]["kind"] == "alert"]
    pipeline.finish()
    resolver.close()
    after = [d for d in out.docs if d["event"]["kind"] == "alert"]
    assert len(before) == 1, "the first alert goes out at once, the repeats are folded"
    assert len(after) == 2, "the fold summary comes out at shutdown"
    assert pipeline.stats.alerts == 2


def test_fold_window_zero_folds_nothing() -> None:
    pipeline, out, resolver = make_pipeline(fold_window=0.0)
    feed_container_ssh(pipeline, repeats=3)
    pipeline.finish()
    resolver.close()
    assert len([d for d in out.docs if d["event"]["kind"] == "alert"]) == 3


def test_elastic_rule_matches_the_documents_the_builder_makes() -> None:
    """The builder shares blocks (leaders, parent, host) between documents: rules must read them as dicts."""
    from sensor.rules.loader import load_rules
    from tests.integration.sensor_process import SHARED

    rules, refused = load_rules(SHARED / "rules" / "lateral_movement_ssh_process_launched_inside_container.toml")
    assert rules and not refused
    out = MemoryOutput()
    resolver = ContainerResolver(host_ns=HOST_NS, cgroup_root=NOWHERE, proc_root=NOWHERE, start_worker=False)
    pipeline = Pipeline(
        table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0), outputs=[out],
        resolver=resolver, detector=Detector(rules, builtin_ssh=False, proc_root=str(NOWHERE)),
        leaders=find_leaders,
    )
    pipeline.handle(exec_rec(400, 1, (b"/usr/bin/conmon",), HOST_NS, 1, 5_000))  # podman's monitor, the sh's parent
    feed_container_ssh(pipeline, repeats=1)
    pipeline.finish()
    resolver.close()
    ssh_exec = next(d for d in out.docs if d["event"]["kind"] == "event" and d["process"]["name"] == "ssh")
    assert ssh_exec["process"]["entry_leader"]["entry_meta"]["type"] == "container"
    alerts = [d for d in out.docs if d["event"]["kind"] == "alert"]
    assert [a["rule"]["name"] for a in alerts] == [rules[0].name]


class _LateMetadata:
    """A container whose runtime state is read only after `ready_after` lookups (its first moments)."""

    def __init__(self, ready_after: int) -> None:
        from sensor.containers.info import ContainerInfo
        self.partial = ContainerInfo(id=PODMAN_ID, runtime="containerd", metadata_complete=False)
        self.full = ContainerInfo(id=PODMAN_ID, runtime="containerd", name="web",
                                  image_name="docker.io/library/busybox",
                                  pod_name="web-6d9f7c", pod_namespace="shop", pod_uid="5f0c1e2d",
                                  metadata_complete=True)
        self.lookups = 0
        self.ready_after = ready_after

    def on_cgroup(self, rec) -> None:
        pass

    def resolve(self, cgroup_id, ns, ancestry=(), pid=0):
        self.lookups += 1
        return self.full if self.lookups > self.ready_after else self.partial

    def cgroup_path(self, cgroup_id):
        return PODMAN_CGROUP

    def stats(self):
        return {}


def _held_pipeline(resolver, now: list[float]) -> tuple[Pipeline, MemoryOutput]:
    out = MemoryOutput()
    pipeline = Pipeline(table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0),
                        outputs=[out], resolver=resolver, leaders=find_leaders,
                        detector=Detector([], builtin_ssh=True, proc_root=str(NOWHERE)),
                        alert_metadata_wait_s=0.25, clock=lambda: now[0])
    return pipeline, out


def test_an_alert_waits_for_its_containers_metadata_its_document_does_not() -> None:
    now = [100.0]
    resolver = _LateMetadata(ready_after=1)
    pipeline, out = _held_pipeline(resolver, now)
    pipeline.handle(exec_rec(600, 500, (b"/usr/bin/ssh", b"-V"), CONTAINER_NS, 9001, 30_000))
    assert [d["event"]["kind"] for d in out.docs] == ["event"]   # the exec's document at once, no name yet
    assert "name" not in out.docs[0]["container"]
    now[0] += 0.05
    pipeline.release_held_alerts()   # the state is read by now
    alert = out.docs[-1]
    assert alert["event"]["kind"] == "alert"
    assert alert["container"]["name"] == "web" and alert["orchestrator"]["namespace"] == "shop"
    assert alert["container_sensor"]["alert"]["container_metadata"] == "complete"
    assert alert["message"].endswith("in container web" + (f" ({alert['container']['image']['name']})"
                                                            if "image" in alert["container"] else ""))
    assert (pipeline.stats.alerts_held, pipeline.stats.alerts_without_metadata, pipeline.stats.alerts) == (1, 0, 1)


def test_an_alert_goes_out_at_the_deadline_without_metadata_and_says_so() -> None:
    now = [100.0]
    pipeline, out = _held_pipeline(_LateMetadata(ready_after=10**9), now)
    pipeline.handle(exec_rec(600, 500, (b"/usr/bin/ssh", b"-V"), CONTAINER_NS, 9001, 30_000))
    now[0] += 0.1
    pipeline.release_held_alerts()
    assert [d["event"]["kind"] for d in out.docs] == ["event"]
    now[0] += 0.2
    pipeline.release_held_alerts()
    alert = out.docs[-1]
    assert alert["event"]["kind"] == "alert" and alert["container"]["id"] == PODMAN_ID
    assert alert["container_sensor"]["alert"]["container_metadata"] == "incomplete"
    assert pipeline.stats.alerts_without_metadata == 1


def test_held_alerts_go_out_at_shutdown() -> None:
    now = [100.0]
    pipeline, out = _held_pipeline(_LateMetadata(ready_after=10**9), now)
    pipeline.handle(exec_rec(600, 500, (b"/usr/bin/ssh", b"-V"), CONTAINER_NS, 9001, 30_000))
    pipeline.finish()
    assert out.docs[-1]["event"]["kind"] == "alert"
