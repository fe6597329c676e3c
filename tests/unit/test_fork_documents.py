"""Fork documents (events.fork): one per fork record when asked for, none otherwise."""

from __future__ import annotations

from sensor.ecs.builder import DocumentBuilder
from sensor.model.processes import ProcessTable
from sensor.model.records import ForkRecord
from sensor.model.sessions import find_leaders
from sensor.ops.metrics import pipeline_metrics
from sensor.outputs.memory import MemoryOutput
from sensor.pipeline import Pipeline
from tests.unit.test_ecs import HOST
from tests.unit.test_pipeline import CONTAINER_NS, exec_rec


def _run(emit_fork: bool) -> tuple[Pipeline, list[dict]]:
    out = MemoryOutput()
    pipeline = Pipeline(table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0),
                        outputs=[out], leaders=find_leaders, emit_fork=emit_fork)
    pipeline.handle(exec_rec(500, 1, (b"/bin/bash", b"-c", b"x"), CONTAINER_NS, 1, 10_000))
    pipeline.handle(ForkRecord(12_000, 500, 501, 12_000))
    pipeline.handle(exec_rec(501, 500, (b"/usr/bin/id",), CONTAINER_NS, 1, 13_000))
    return pipeline, out.docs


def test_a_fork_is_a_document_of_the_child_before_its_exec() -> None:
    pipeline, docs = _run(emit_fork=True)
    assert [d["event"]["action"] for d in docs] == ["exec", "fork", "exec"]
    fork = docs[1]
    assert fork["event"]["type"] == ["start"] and fork["event"]["category"] == ["process"]
    assert fork["process"]["pid"] == 501 and fork["process"]["name"] == "bash"  # its parent's image, copied
    assert fork["process"]["parent"]["entity_id"] == docs[0]["process"]["entity_id"]
    assert fork["process"]["entity_id"] == docs[2]["process"]["entity_id"]
    assert pipeline_metrics(pipeline)["fork_documents_total"] == 1


def test_no_fork_documents_unless_asked() -> None:
    pipeline, docs = _run(emit_fork=False)
    assert [d["event"]["action"] for d in docs] == ["exec", "exec"]
    assert pipeline.stats.fork_documents == 0
