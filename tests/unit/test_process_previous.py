"""process.previous: what a process ran before it exec'd again (Elastic Defend's re-exec context)."""

from __future__ import annotations

from sensor.ecs.builder import DocumentBuilder
from sensor.model.processes import PREVIOUS_KEPT, ProcessTable
from sensor.model.records import ForkRecord
from sensor.model.sessions import find_leaders
from sensor.outputs.memory import MemoryOutput
from sensor.pipeline import Pipeline
from tests.unit.test_ecs import HOST
from tests.unit.test_pipeline import CONTAINER_NS, exec_rec


def _exec(pid: int, ppid: int, argv: tuple[bytes, ...], t: int, start: int):
    rec = exec_rec(pid, ppid, argv, CONTAINER_NS, 1, t)
    rec.start_boottime_ns = start
    return rec


def test_a_re_exec_carries_the_image_before_it_and_a_first_exec_none() -> None:
    out = MemoryOutput()
    pipeline = Pipeline(table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0),
                        outputs=[out], leaders=find_leaders)
    pipeline.handle(_exec(500, 1, (b"/opt/zoom/zoom", b"--url"), 10_000, 9_000))
    pipeline.handle(_exec(500, 1, (b"/bin/sh", b"-c", b"id"), 11_000, 9_000))  # the same process again
    pipeline.handle(ForkRecord(12_000, 500, 501, 12_000))
    pipeline.handle(_exec(501, 500, (b"/usr/bin/id",), 13_000, 12_000))  # a forked child's first exec
    first, again, child = out.docs
    assert "previous" not in first["process"] and "previous" not in child["process"]
    assert again["process"]["previous"] == [{"executable": "/opt/zoom/zoom", "args": ["/opt/zoom/zoom", "--url"],
                                             "args_count": 2}]
    assert again["process"]["entity_id"] == first["process"]["entity_id"]


def test_a_loop_of_re_execs_keeps_a_bounded_history() -> None:
    table = ProcessTable("boot-1")
    for i in range(PREVIOUS_KEPT + 5):
        proc = table.on_exec(_exec(500, 1, (f"/bin/step{i}".encode(),), 10_000 + i, 9_000))
    assert proc.previous is not None and len(proc.previous) == PREVIOUS_KEPT
    assert proc.previous[0].executable == f"/bin/step{PREVIOUS_KEPT + 3}"  # the latest first
