"""The frame format of spool segments: encoding, and reading back after damage.

A segment starts with SEGMENT_MAGIC, then one frame per payload: `<4-byte marker><u32 sequence><u32 length>
<u32 crc32 of the payload><u32 crc32 of the 16 bytes before>` + payload. The marker and the header's own CRC let
a reader find the next intact frame after damage; the sequence number (0, 1, ... within a segment) tells exactly
how many frames the damage took. Segments of the first format (LEGACY_MAGIC, `<u32 length><u32 crc32>` frames)
are still read; damage there loses the rest of the segment, as it always did.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

SEGMENT_MAGIC = b"CSSPOOL2"
LEGACY_MAGIC = b"CSSPOOL1"  # same length: offsets after the magic mean the same in both formats
# 0xc1 is the one byte msgpack never uses as a type, so the marker rarely occurs inside a payload; where it does,
# the header's own CRC tells it from a real frame start.
FRAME_MARKER = b"\xc1SF\x02"
FRAME_HEADER = struct.Struct("<4sIIII")  # marker, sequence, length, crc32 of the payload, crc32 of these 16 bytes
_HEADER_CHECKED = FRAME_HEADER.size - 4
_HEAD = struct.Struct("<4sIII")  # the part of the header its own CRC covers
_CRC = struct.Struct("<I")
LEGACY_FRAME_HEADER = struct.Struct("<II")  # length, crc32
MAX_FRAME_BYTES = 64 * 1024 * 1024


def encode_frames(payloads: Iterable[bytes], first_seq: int = 0) -> tuple[bytes, int]:
    """Frames for payloads, numbered from first_seq: (bytes, count)."""
    parts = []
    count = 0
    pack_head, pack_crc, crc32 = _HEAD.pack, _CRC.pack, zlib.crc32
    for payload in payloads:
        head = pack_head(FRAME_MARKER, (first_seq + count) & 0xFFFFFFFF, len(payload), crc32(payload))
        parts += (head, pack_crc(crc32(head)), payload)
        count += 1
    return b"".join(parts), count


def _intact_header(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """(sequence, length, payload crc) of the frame header at offset, None unless one is there intact."""
    if offset + FRAME_HEADER.size > len(data):
        return None
    marker, seq, length, crc, header_crc = FRAME_HEADER.unpack_from(data, offset)
    if marker != FRAME_MARKER or length > MAX_FRAME_BYTES:
        return None
    if zlib.crc32(data[offset : offset + _HEADER_CHECKED]) != header_crc:
        return None
    return seq, length, crc


def _next_header(data: bytes, offset: int) -> int | None:
    """The offset of the first intact frame header at or after offset."""
    while True:
        found = data.find(FRAME_MARKER, offset)
        if found < 0 or found + FRAME_HEADER.size > len(data):
            return None
        if _intact_header(data, found) is not None:
            return found
        offset = found + 1


def scan_frames(data: bytes, start: int, legacy: bool = False,
                max_items: int | None = None) -> tuple[list[bytes], int, bool]:
    """Complete, intact frames of `data` from `start`, at most max_items: (payloads, end offset, True if a bad
    frame stopped it). A frame cut short by the end of `data` stops it without being bad."""
    payloads: list[bytes] = []
    offset = start
    end = len(data)
    header_size = LEGACY_FRAME_HEADER.size if legacy else FRAME_HEADER.size
    while offset + header_size <= end and (max_items is None or len(payloads) < max_items):
        if legacy:
            length, crc = LEGACY_FRAME_HEADER.unpack_from(data, offset)
            if length > MAX_FRAME_BYTES:
                return payloads, offset, True
        else:
            header = _intact_header(data, offset)
            if header is None:
                return payloads, offset, True
            _, length, crc = header
        body_end = offset + header_size + length
        if body_end > end:
            break
        payload = data[offset + header_size : body_end]
        if zlib.crc32(payload) != crc:
            return payloads, offset, True
        payloads.append(payload)
        offset = body_end
    return payloads, offset, False


@dataclass(slots=True)
class Survey:
    """What a walk over a whole segment (current format) found after damage."""

    frames: int = 0  # intact frames at or after the start
    end: int = 0  # end of the last of them (the start when there is none)
    last_seq: int = -1  # sequence number of the last of them
    skips: dict[int, int] = field(default_factory=dict)  # damaged stretch start -> next intact frame
    lost: int = 0  # frames the damage took, known from the sequence numbers (or from an intact header)
    unknown: int = 0  # damaged stretches at the end whose frame count no header tells
    stretches: int = 0  # damaged stretches at or after the start


def survey_frames(data: bytes, start: int, first: int = len(SEGMENT_MAGIC)) -> Survey:
    """Walks the frames of `data` from `first`, resynchronising after damage on the next intact header.

    Frames before `start` (delivered already) only tell which sequence number comes next. Between two intact
    frames the damage took exactly the frames whose numbers are missing; after the last intact frame, the
    damaged frames whose headers are still intact are counted, and bytes that no header explains are a stretch
    of unknown count."""
    result = Survey(end=start)
    size = len(data)
    header_size = FRAME_HEADER.size
    offset = first
    expected = 0  # sequence number of the next frame
    contiguous = first  # where the next frame would start if nothing were damaged
    tail_seq: int | None = None  # highest number in a damaged frame with an intact header since the last good one
    tail_end = first  # where that frame (as its header says) ends
    while offset < size:
        header = _intact_header(data, offset)
        if header is not None:
            seq, length, crc = header
            body_end = offset + header_size + length
            if body_end <= size and seq >= expected and zlib.crc32(data[offset + header_size : body_end]) == crc:
                if offset >= start:
                    gap_start = max(contiguous, start)
                    if offset > gap_start:
                        result.skips[gap_start] = offset
                        result.stretches += 1
                    result.lost += seq - expected
                    result.frames += 1
                    result.end = body_end
                    result.last_seq = seq
                expected = seq + 1
                contiguous = offset = body_end
                tail_seq = None
                continue
            if seq >= expected and (tail_seq is None or seq > tail_seq):
                tail_seq = seq
                tail_end = min(body_end, size)
        found = _next_header(data, offset + 1)
        if found is None:
            break
        offset = found
    tail_start = max(contiguous, start)
    if tail_start < size:
        result.stretches += 1
        if tail_seq is not None:
            result.lost += tail_seq - expected + 1
            if tail_end < size:
                result.unknown += 1  # bytes after the last header found: perhaps more frames
        else:
            result.unknown += 1
    return result


def limit_batch(payloads: list[bytes], max_items: int, max_bytes: int,
                header_size: int = FRAME_HEADER.size) -> tuple[list[bytes], int]:
    """The first payloads within max_items and max_bytes (at least one): (them, bytes of their frames)."""
    kept = []
    total = 0
    used = 0
    for payload in payloads:
        if kept and (len(kept) >= max_items or total + len(payload) > max_bytes):
            break
        kept.append(payload)
        total += len(payload)
        used += header_size + len(payload)
    return kept, used
