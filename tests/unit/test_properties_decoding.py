"""Hostile bytes in ring-buffer records: decoding never escapes the reader loop, never reads past the record, and
either yields a record whose fields are the bytes the kernel wrote or counts the record as damaged.

The records are built with the layouts of sensor/probe/layout.py (kept equal to bpf/sensor.h by
test_probe_layout.py), with field contents a process controls (argv, working directory, executable path) or
that a damaged record would carry (lengths that lie, truncation, huge counts)."""

from __future__ import annotations

import json
import mmap
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.ecs.encoding import DocumentEncoder
from sensor.model.records import CgroupRecord, ExecRecord, ExitRecord, ForkRecord
from sensor.probe import layout as probe_layout
from sensor.probe.layout import (
    CGROUP_FIXED,
    EXEC_ARGS_READ_FAILED,
    EXEC_ARGS_TRUNCATED,
    EXEC_CWD_TRUNCATED,
    EXEC_FIXED,
    EXIT,
    FORK,
    HEADER,
    RECORD_CGROUP_MKDIR,
    RECORD_CGROUP_RMDIR,
    RECORD_EXEC,
    RECORD_EXIT,
    RECORD_FORK,
    DecodeError,
    decode,
)
from sensor.probe.loader import Probe, ProbeOptions
from sensor.probe.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, RingBufferReader
from tests.unit.test_pipeline import make_pipeline

# Records are handed to `_handle` directly: nothing is loaded, so the options' values do not matter.
UNLOADED = ProbeOptions(ringbuf_pages=1, args_max=512, ring_reader="auto")

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
S32 = st.integers(-(2**31), 2**31 - 1)
# what a process can put in a name: any byte but NUL and (for path components) '/'
COMPONENT = st.binary(min_size=1, max_size=255).map(lambda b: b.replace(b"\0", b"x").replace(b"/", b"y"))
ARG = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"\xff\xfe", b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\x1b[31m", b"\x1b]0;x\x07", b"\xed\xa0\x80",
                     b"\xc0\xaf", b"\x9b2J", b"\n", b"\r\n", b"\t", b"\x7f", b"a" * 4096]),
).map(lambda b: b.replace(b"\0", b""))  # argv strings cannot hold NUL: the kernel's layout separates them with it


def exec_fixed(*, argc: int, filename_len: int, args_len: int, cwd_len: int, flags: int = 0,
               comm: bytes = b"x", ids: tuple[int, ...] = (0,) * 12, size: int = 0, env_len: int = 0) -> bytes:
    return EXEC_FIXED.pack(
        RECORD_EXEC, size, 1_000, *ids, 7, 8, 9, 10, flags, 11, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7,
        argc, filename_len, args_len & 0xFFFF, args_len >> 16, cwd_len, env_len, 0, comm,
    )


@st.composite
def consistent_exec(draw: st.DrawFn) -> tuple[bytes, list[bytes], bytes, list[bytes], int, int]:
    """An exec record as bpf/sensor.c lays it out, with hostile contents: (raw, cwd components leaf first,
    filename, argv, argc, flags)."""
    components = draw(st.lists(COMPONENT, max_size=6))
    cwd = b"".join(c + b"\0" for c in components)
    if components and draw(st.booleans()):
        cwd = cwd[:-1]  # the last component not NUL-terminated
    filename = draw(st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"")))
    argv = draw(st.lists(ARG, max_size=40))
    args = b"".join(a + b"\0" for a in argv)
    cut = draw(st.booleans()) and len(args) > 1
    if cut:  # argv cut by the capture limit: the last string has no NUL
        args = args[: draw(st.integers(1, len(args) - 1))]
    argc = draw(st.one_of(st.just(len(argv)), U32))
    flags = draw(st.integers(0, 15))
    comm = draw(st.binary(max_size=16))
    ids = tuple(draw(st.lists(U32, min_size=12, max_size=12)))
    raw = exec_fixed(argc=argc, filename_len=len(filename), args_len=len(args), cwd_len=len(cwd), flags=flags,
                     comm=comm, ids=ids) + cwd + filename + args
    # argv as the decoder must give it back: whole, or (cut) the bytes read, split at their NULs
    expected = argv if not cut else args.removesuffix(b"\0").split(b"\0")
    return raw, components, filename, expected, argc, flags


@settings(max_examples=300, deadline=None)
@given(consistent_exec())
def test_exec_fields_are_the_bytes_the_kernel_wrote(case: tuple) -> None:
    raw, components, filename, argv, argc, flags = case
    rec = decode(raw)
    assert isinstance(rec, ExecRecord)
    assert rec.filename == filename
    assert list(rec.argv) == argv
    assert rec.argc == max(argc, len(argv)) and rec.argc >= len(rec.argv)
    expected_truncated = bool(flags & (EXEC_ARGS_TRUNCATED | EXEC_ARGS_READ_FAILED)) or len(argv) < argc
    assert rec.args_truncated == expected_truncated
    cwd = b"/" + b"/".join(reversed(components))
    assert rec.cwd == (b"..." + cwd if flags & EXEC_CWD_TRUNCATED else cwd)
    assert b"\0" not in rec.comm and len(rec.comm) <= 16


@st.composite
def lying_exec(draw: st.DrawFn) -> bytes:
    """Fixed part with any lengths and counts, followed by any bytes, possibly cut anywhere."""
    fixed = exec_fixed(argc=draw(U32), filename_len=draw(U16), args_len=draw(st.integers(0, 0xFFFFFFFF)),
                       cwd_len=draw(U16), flags=draw(U32), comm=draw(st.binary(max_size=16)), size=draw(U32))
    raw = fixed + draw(st.binary(max_size=2048))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@st.composite
def any_record(draw: st.DrawFn) -> bytes:
    """A header naming any type (the known ones most often) and then anything, of any length."""
    kind = draw(st.one_of(st.sampled_from([RECORD_EXEC, RECORD_FORK, RECORD_EXIT, RECORD_CGROUP_MKDIR,
                                           RECORD_CGROUP_RMDIR]), U32))
    raw = HEADER.pack(kind, draw(U32), draw(U64)) + draw(st.binary(max_size=600))
    return raw[: draw(st.integers(0, len(raw)))]


def _check_sane(rec: object, raw: bytes) -> None:
    """A decoded record holds only bytes that were in the record, and counts that fit their C types."""
    if isinstance(rec, ExecRecord):
        assert rec.filename in raw and len(rec.comm) <= 16
        assert sum(len(a) for a in rec.argv) <= len(raw)
        assert all(b"\0" not in a for a in rec.argv)
        assert rec.cwd.startswith((b"/", b".../"))
        assert 0 <= rec.argc <= 0xFFFFFFFF and rec.argc >= len(rec.argv)
    elif isinstance(rec, CgroupRecord):
        assert rec.path in raw and len(rec.path) <= probe_layout.CGROUP_PATH_MAX
    else:
        assert isinstance(rec, ForkRecord | ExitRecord)


@settings(max_examples=400, deadline=None)
@given(st.one_of(lying_exec(), any_record()))
def test_any_bytes_decode_to_a_sane_record_or_a_decode_error(raw: bytes) -> None:
    try:
        rec = decode(raw)
    except DecodeError:
        return
    _check_sane(rec, raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(lying_exec(), any_record(), consistent_exec().map(lambda c: c[0])), max_size=20))
def test_the_reader_loop_counts_every_record_and_never_raises(raws: list[bytes]) -> None:
    """Probe._handle is what both ring readers call per record: nothing a record holds may escape it."""
    delivered: list = []
    probe = Probe(delivered.append, UNLOADED)
    for raw in raws:
        probe._handle(raw)
    assert probe.records + probe.decode_errors == len(raws)
    assert len(delivered) == probe.records


def test_short_fixed_size_records_are_counted_not_raised() -> None:
    """Found by the tests above: a fork, exit or cgroup record shorter than its layout raised struct.error,
    which nothing caught: it ended the reader loop, and the sensor with it."""
    probe = Probe(lambda record: None, UNLOADED)
    for kind, layout in ((RECORD_FORK, FORK), (RECORD_EXIT, EXIT), (RECORD_CGROUP_MKDIR, CGROUP_FIXED)):
        for length in (HEADER.size, layout.size - 1):
            raw = (HEADER.pack(kind, length, 1) + b"\0" * layout.size)[:length]
            try:
                decode(raw)
            except DecodeError:
                pass
            else:
                raise AssertionError(f"type {kind} of {length} bytes decoded")
            probe._handle(raw)
    assert (probe.records, probe.decode_errors) == (0, 6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(consistent_exec(), min_size=1, max_size=8))
def test_hostile_exec_records_become_valid_json_lines(cases: list) -> None:
    """Decoded hostile execs through the whole pipeline: every document encodes to one valid UTF-8 JSON line."""
    pipeline, out, resolver = make_pipeline(fold_window=60.0)
    encoder = DocumentEncoder()
    try:
        for raw, *_rest in cases:
            pipeline.handle(decode(raw))
        pipeline.finish()
    finally:
        resolver.close()
    assert pipeline.stats.output_errors == 0
    for doc in out.docs:
        line = encoder.line(doc)
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
        text = line.decode("utf-8")
        assert "\u2028" not in text and "\u2029" not in text
        assert json.loads(text) == json.loads(json.dumps(doc))


# -- the mmap ring reader, over a ring laid out in ordinary memory -------------------------------------------

PAGE = mmap.PAGESIZE


def _ring(data_size: int) -> RingBufferReader:
    """A reader over a bytearray laid out as the kernel maps a ring: consumer page, producer page, then the data
    pages twice in a row (so the test writes each byte at both places)."""
    reader = RingBufferReader.__new__(RingBufferReader)
    reader._consumer = bytearray(PAGE)
    reader._ring = bytearray(PAGE + 2 * data_size)
    reader._data = PAGE
    reader._mask = data_size - 1
    return reader


def _put(reader: RingBufferReader, position: int, blob: bytes) -> None:
    ring, size = reader._ring, reader._mask + 1
    for i, byte in enumerate(blob):
        at = (position + i) & (size - 1)
        ring[PAGE + at] = byte
        ring[PAGE + size + at] = byte


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 4096).map(lambda n: n * 8), st.lists(st.tuples(st.binary(max_size=300), st.booleans()),
                                                            max_size=12))
def test_ring_reader_delivers_committed_records_whole_across_the_wrap(start: int, records: list) -> None:
    """Records that wrap around the ring's end read as one slice, discarded ones are skipped, and the consumer
    position lands at the producer's."""
    data_size = 4096
    reader = _ring(data_size)
    position = start
    struct.pack_into("<Q", reader._consumer, 0, position)
    expected = []
    for blob, discard in records:
        room = (len(blob) + HEADER_SIZE + 7) & ~7
        if position + room - start > data_size:
            break
        _put(reader, position, struct.pack("<I", len(blob) | (DISCARD_BIT if discard else 0)) + b"\0" * 4 + blob)
        if not discard:
            expected.append(blob)
        position += room
    struct.pack_into("<Q", reader._ring, 0, position)
    got: list[bytes] = []
    assert reader.consume(got.append) == len(expected)
    assert got == expected
    assert struct.unpack_from("<Q", reader._consumer, 0)[0] == position


def test_ring_reader_stops_at_a_busy_record_and_resumes() -> None:
    reader = _ring(4096)
    _put(reader, 0, struct.pack("<I", 3) + b"\0" * 4 + b"abc")
    _put(reader, 16, struct.pack("<I", 2 | BUSY_BIT) + b"\0" * 4 + b"de")
    struct.pack_into("<Q", reader._ring, 0, 32)
    got: list[bytes] = []
    assert reader.consume(got.append) == 1 and got == [b"abc"]
    _put(reader, 16, struct.pack("<I", 2))
    assert reader.consume(got.append) == 1 and got == [b"abc", b"de"]
