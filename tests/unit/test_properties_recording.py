"""The recording format (sensor/model/records.py) with arbitrary records, cut short and damaged: every record comes back
bit for bit; a damaged file gives back what is intact before the damage, then one ValueError that says where."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor import run
from sensor.config.settings import load_config
from sensor.model.records import (
    RECORD_TYPES,
    Namespaces,
    RecordingReader,
    RecordingWriter,
    read_recording,
    to_wire,
)
from sensor.outputs.memory import MemoryOutput
from tests.unit.test_pipeline import HOST_NS, exec_rec

REPO = Path(__file__).resolve().parents[2]
# msgpack holds integers from -2**63 to 2**64 - 1
WIRE_INT = st.integers(-(2**63), 2**64 - 1)
NAMESPACES = st.builds(Namespaces, *[st.integers(0, 2**32 - 1)] * len(fields(Namespaces)))


def _field_strategy(annotation: str) -> st.SearchStrategy:
    return {
        "int": WIRE_INT,
        "bytes": st.binary(max_size=80),
        "bool": st.booleans(),
        "str": st.sampled_from(["mkdir", "rmdir"]),
        "tuple[bytes, ...]": st.lists(st.binary(max_size=40), max_size=12).map(tuple),
        "Namespaces": NAMESPACES,
    }[annotation]


def _record_strategy(cls: type) -> st.SearchStrategy:
    return st.builds(cls, **{f.name: _field_strategy(f.type) for f in fields(cls)})


RECORDS = st.one_of(*(_record_strategy(cls) for cls in RECORD_TYPES.values()))
META = {"boot_id": "0b7c3f2e-boot", "boot_wall_offset_ns": 1_700_000_000_000_000_000}


def _recording(records: list) -> tuple[bytes, list[int]]:
    """The file's bytes and the offset where each record ends."""
    buffer = io.BytesIO()
    writer = RecordingWriter(buffer, META)
    ends = [buffer.tell()]
    for record in records:
        writer.write(record)
        ends.append(buffer.tell())
    return buffer.getvalue(), ends


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORDS, max_size=20))
def test_any_records_round_trip_bit_for_bit(records: list) -> None:
    data, _ends = _recording(records)
    reader = RecordingReader(io.BytesIO(data))
    assert reader.meta == META
    assert list(reader) == records


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=12), st.data())
def test_a_recording_cut_anywhere_gives_back_the_whole_records_then_says_so(records: list, data: st.DataObject) -> None:
    raw, ends = _recording(records)
    cut = data.draw(st.integers(ends[0], len(raw)))
    got: list = []
    try:
        for record in RecordingReader(io.BytesIO(raw[:cut])):
            got.append(record)
    except ValueError as error:
        assert cut not in ends, "a cut between records is a shorter recording, not damage"
        assert "cut short" in str(error) and f"after {len(got)} records" in str(error)
    else:
        assert cut in ends
    whole = sum(1 for end in ends[1:] if end <= cut)
    assert got == records[:whole]


def _damaged(raw: bytes, data: st.DataObject) -> bytes:
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        damaged[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del damaged[data.draw(st.integers(0, len(damaged))):]
    return bytes(damaged)


def _wire_shape_ok(record: object) -> bool:
    """What the reader hands on has the field types the pipeline expects."""
    expected = {"int": int, "bytes": bytes, "bool": bool, "str": str, "tuple[bytes, ...]": tuple,
                "Namespaces": Namespaces}
    return all(type(getattr(record, f.name)) is expected[f.type] for f in fields(record))


@settings(max_examples=300, deadline=None)
@given(st.lists(RECORDS, min_size=1, max_size=10), st.data())
def test_a_damaged_recording_yields_well_typed_records_or_one_value_error(records: list, data: st.DataObject) -> None:
    raw, _ends = _recording(records)
    damaged = _damaged(raw, data)
    try:
        for record in read_recording(io.BytesIO(damaged)):
            assert _wire_shape_ok(record), record
    except ValueError:
        pass


def test_a_record_of_the_wrong_shape_is_refused_not_handed_on() -> None:
    """Found by the test above: one flipped byte turned an exec record's argv into an int, and the pipeline then
    raised AttributeError deep inside (a traceback from `container-sensor replay`)."""
    good = to_wire(exec_rec(10, 1, (b"/bin/sh",), HOST_NS, 1, 1000))
    argv_at = 1 + [f.name for f in fields(RECORD_TYPES["exec"])].index("argv")
    for bad_value in (7, [1, 2], b"x"):
        item = list(good)
        item[argv_at] = bad_value
        buffer = io.BytesIO()
        RecordingWriter(buffer, META)
        buffer.write(msgpack.packb(item, use_bin_type=True))
        with pytest.raises(ValueError, match="argv"):
            list(read_recording(io.BytesIO(buffer.getvalue())))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RECORDS, min_size=1, max_size=10), st.data())
def test_replay_of_any_records_never_raises_past_the_reader(records: list, data: st.DataObject) -> None:
    """Well-typed but arbitrary values (negative times, huge pids, any bytes): the replay loop counts a record
    the pipeline cannot take as lost, as the live loop does, and goes on."""
    raw, _ends = _recording(records)
    damaged = data.draw(st.booleans())
    if damaged:
        raw = _damaged(raw, data)
    memory = MemoryOutput()
    config = load_config(None, {}, {})
    with mock.patch.object(run, "build_outputs", return_value=[memory]):
        try:
            reader = RecordingReader(io.BytesIO(raw))
        except ValueError:
            return
        try:
            summary = run.run_replay(config, reader, reader.meta)
        except ValueError:
            return  # the reader's one line about the damage; what was intact went out first
    if not damaged:
        assert summary.seen == len(records), "every record was read and handled, none ended the loop"


def test_replay_of_a_cut_recording_writes_what_is_intact_and_one_line(tmp_path: Path) -> None:
    """The command itself, on a real file: a recorder killed mid-write leaves its last record cut short."""
    records = [exec_rec(500, 1, (b"/bin/sh",), HOST_NS, 1, 10_000)]
    records += [exec_rec(600 + i, 500, (b"/bin/echo", b"\xff\xe2\x80\xa8", str(i).encode()), HOST_NS, 1, 20_000 + i)
                for i in range(50)]
    raw, ends = _recording(records)
    path = tmp_path / "cut.rec"
    path.write_bytes(raw[: ends[-1] - 5])
    done = subprocess.run([sys.executable, "-m", "sensor", "replay", "--metrics-address", "off", str(path)],
                          capture_output=True, cwd=REPO, timeout=120)
    assert done.returncode == 1
    errors = done.stderr.decode().strip().splitlines()
    assert len(errors) == 1 and "cut short after 50 records" in errors[0] and "Traceback" not in done.stderr.decode()
    lines = done.stdout.splitlines()
    assert len(lines) == 50
    docs = [json.loads(line.decode("utf-8")) for line in lines]
    assert docs[-1]["process"]["args"] == ["/bin/echo", "\\xff\u2028", "48"]
    assert b"\\u2028" in lines[-1] and b"\xe2\x80\xa8" not in lines[-1]
