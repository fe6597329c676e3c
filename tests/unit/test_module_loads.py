"""load_module documents: the record decoded from the probe's layout (the kernel here has no modules, so the
probe itself cannot be exercised on it: bcc_loader leaves it out and says so), and the document as Elastic
Defend writes it, which Elastic's module rules read."""

from __future__ import annotations

from sensor.ecs.builder import DocumentBuilder, taint_letters
from sensor.model.processes import ProcessTable
from sensor.model.records import ModuleRecord, from_wire, to_wire
from sensor.model.sessions import find_leaders
from sensor.outputs.memory import MemoryOutput
from sensor.pipeline import Pipeline
from sensor.probe import layout as probe_layout
from sensor.probe.layout import decode
from tests.unit.test_ecs import HOST
from tests.unit.test_pipeline import CONTAINER_NS, exec_rec

OOT_UNSIGNED = (1 << 12) | (1 << 13)  # TAINT_OOT_MODULE, TAINT_UNSIGNED_MODULE


def _raw(name: bytes, taints: int) -> bytes:
    return probe_layout.MODULE_FIXED.pack(probe_layout.RECORD_MODULE, probe_layout.MODULE_FIXED.size + 64, 7, 42,
                                          taints, 555) + name.ljust(probe_layout.MODULE_NAME_MAX, b"\0")


def test_a_module_record_decodes_and_survives_a_recording() -> None:
    record = decode(_raw(b"rootkit", OOT_UNSIGNED))
    assert record == ModuleRecord(7, 42, 555, b"rootkit", OOT_UNSIGNED)
    assert from_wire(to_wire(record)) == record
    assert decode(_raw(b"x" * 64, 0)).name == b"x" * 64  # a full buffer without its NUL: the whole of it


def test_taint_letters_are_the_kernels() -> None:
    assert taint_letters(OOT_UNSIGNED) == "OE" and taint_letters(1) == "P" and taint_letters(0) == ""


def test_a_module_load_is_a_process_document_of_its_loader() -> None:
    out = MemoryOutput()
    pipeline = Pipeline(table=ProcessTable("boot-1"), builder=DocumentBuilder(HOST, boot_wall_offset_ns=0),
                        outputs=[out], leaders=find_leaders)
    pipeline.handle(exec_rec(500, 1, (b"/usr/sbin/insmod", b"/tmp/rootkit.ko"), CONTAINER_NS, 1, 10_000))
    pipeline.handle(ModuleRecord(20_000, 500, 9_000, b"rootkit", OOT_UNSIGNED))
    pipeline.handle(ModuleRecord(30_000, 777, 1, b"clean", 0))  # a loader already gone
    exec_doc, tainted, clean = out.docs
    assert tainted["event"]["category"] == ["process"] and tainted["event"]["type"] == ["start"]
    assert tainted["event"]["action"] == "load_module"
    assert tainted["process"]["Ext"]["load_module"] == {"name": "rootkit", "taint_flags": "OE"}
    assert tainted["process"]["entity_id"] == exec_doc["process"]["entity_id"]
    assert tainted["process"]["name"] == "insmod" and tainted["process"]["args"] == ["/usr/sbin/insmod",
                                                                                  "/tmp/rootkit.ko"]
    assert "Ext" not in exec_doc["process"]  # the exec document's shared block is left as it was
    assert clean["process"]["pid"] == 777 and clean["process"]["Ext"]["load_module"] == {"name": "clean"}
    assert pipeline.stats.module_loads == 2
