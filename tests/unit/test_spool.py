"""The on-disk spool: order, acknowledgement across reopen, crash leftovers, limits and their counters."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sensor.outputs.spool import FRAME_HEADER, SEGMENT_MAGIC, Spool

HEADER = FRAME_HEADER.size


def payload(n: int, size: int = 100) -> bytes:
    return f"{n:08d}".encode().ljust(size, b".")


def drain(spool: Spool, batch: int = 7, ack: bool = True) -> list[int]:
    seen = []
    while True:
        items, position = spool.read(batch, 1 << 20)
        if not items:
            spool.check_accounting()
            return seen
        seen.extend(int(item[:8]) for item in items)
        if ack:
            assert position is not None
            spool.ack(position)


def test_fifo_across_segments_and_cleanup(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    for n in range(100):
        assert spool.append([payload(n)]) == 1
    assert len(list(tmp_path.glob("*.seg"))) > 5
    assert drain(spool) == list(range(100))
    spool.close()
    # Every sealed, acknowledged segment is gone; only the ack file (and perhaps an empty tail) stays.
    assert spool.unread() == 0
    assert len(list(tmp_path.glob("*.seg"))) <= 1


def test_reopen_resumes_after_ack_and_resends_unacked(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    spool.append([payload(n) for n in range(50)])
    items, position = spool.read(10, 1 << 20)
    spool.ack(position)
    spool.read(10, 1 << 20)  # read, never acknowledged: comes back after a restart
    spool.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    assert drain(reopened) == list(range(10, 50))


def test_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    # A separate process appends then dies by SIGKILL without closing anything.
    script = (
        "import os, signal, sys\n"
        "from sensor.outputs.spool import Spool\n"
        "spool = Spool(sys.argv[1], max_bytes=1 << 22, segment_bytes=4096)\n"
        "for n in range(300):\n"
        "    spool.append([f'{n:08d}'.encode().ljust(64, b'.')])\n"
        "items, position = spool.read(40, 1 << 20)\n"
        "spool.ack(position)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=False)
    assert result.returncode == -9
    assert drain(Spool(tmp_path, max_bytes=1 << 22)) == list(range(40, 300))


def test_torn_last_frame_is_cut_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for n in range(6):
        spool.append([payload(n)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    intact = len(SEGMENT_MAGIC) + 5 * (HEADER + 100)
    os.truncate(segment, intact + HEADER + 40)  # the last frame's header made it to disk, half its payload did
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.dropped_corrupt == 1
    assert reopened.damaged_unknown == 0
    assert segment.stat().st_size == intact
    assert drain(reopened) == list(range(5))


def test_torn_header_is_cut_and_counted_as_unknown(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(5)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    with open(segment, "ab") as handle:
        handle.write(b"\xc1SF\x02\x05\x00")  # a crash six bytes into the next header: its count is not known
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert (reopened.dropped_corrupt, reopened.damaged_unknown) == (0, 1)
    assert segment.stat().st_size == len(SEGMENT_MAGIC) + 5 * (HEADER + 100)
    assert drain(reopened) == list(range(5))


def frame_offset(index: int, size: int = 100) -> int:
    return len(SEGMENT_MAGIC) + index * (HEADER + size)


def damage(segment: Path, *offsets: int) -> None:
    data = bytearray(segment.read_bytes())
    for offset in offsets:
        data[offset] ^= 0xFF
    segment.write_bytes(bytes(data))


@pytest.mark.parametrize(("where", "what"), [
    (lambda i: frame_offset(i) + HEADER + 50, "payload"),
    (lambda i: frame_offset(i) + 6, "header sequence"),
    (lambda i: frame_offset(i) + 9, "header length"),
    (lambda i: frame_offset(i), "marker"),
])
def test_damaged_frame_in_the_middle_loses_only_that_frame(tmp_path: Path, where: Callable[[int], int],
                                                          what: str) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(10)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    damage(segment, where(3))
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert drain(reopened) == [0, 1, 2, 4, 5, 6, 7, 8, 9], what
    assert (reopened.dropped_corrupt, reopened.damaged_unknown) == (1, 0), what


def test_several_damaged_stretches_are_counted_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(20)])
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    # Frames 2-4 overwritten as one stretch (a bad sector), frame 9's payload flipped, frames 12 and 13 zeroed.
    data[frame_offset(2) + 7 : frame_offset(5) - 3] = b"\x00" * (frame_offset(5) - 3 - frame_offset(2) - 7)
    data[frame_offset(9) + HEADER + 1] ^= 0x01
    data[frame_offset(12) : frame_offset(14)] = b"\x00" * (frame_offset(14) - frame_offset(12))
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    expected = [n for n in range(20) if n not in (2, 3, 4, 9, 12, 13)]
    assert reopened.dropped_corrupt == 6
    assert reopened.unread() == len(expected)
    assert drain(reopened, batch=3) == expected
    assert reopened.stats()["spool_dropped_corrupt"] == 6


def test_damage_after_the_ack_counts_only_undelivered_frames(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(10)])
    items, position = spool.read(4, 1 << 20)
    spool.ack(position)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    damage(segment, frame_offset(1) + HEADER + 3, frame_offset(6) + HEADER + 3)  # one delivered, one not
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert drain(reopened) == [4, 5, 7, 8, 9]
    assert reopened.dropped_corrupt == 1


def test_damage_while_running_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 20)
    for n in range(12):
        spool.append([payload(n)])
    assert [int(item[:8]) for item in spool.read(2, 1 << 20)[0]] == [0, 1]
    (segment,) = tmp_path.glob("*.seg")
    with open(segment, "r+b") as handle:  # the disk changes under the running spool
        handle.seek(frame_offset(5) + 2)
        handle.write(b"\xff" * (2 * (HEADER + 100)))  # frames 5, 6 and the head of 7
    for n in range(12, 15):
        spool.append([payload(n)])  # the writer goes on after the damage
    assert drain(spool, batch=4, ack=False) == [2, 3, 4, 8, 9, 10, 11, 12, 13, 14]
    assert spool.dropped_corrupt == 3
    assert spool.unread() == 0


def test_old_format_segments_are_still_read(tmp_path: Path) -> None:
    import struct
    import zlib

    frames = b"".join(struct.pack("<II", 100, zlib.crc32(payload(n))) + payload(n) for n in range(4))
    segment = tmp_path / f"{(1 << 40):020d}.seg"
    segment.write_bytes(b"CSSPOOL1" + frames)
    os.chmod(segment, 0o600)
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(4, 6)])
    assert drain(spool) == list(range(6))


def test_drop_newest_counts_every_refused_payload(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, policy="drop_newest", segment_bytes=1024)
    kept = sum(spool.append([payload(n)]) for n in range(100))
    assert spool.dropped_newest == 100 - kept
    assert spool.bytes <= 4096
    assert drain(spool) == list(range(kept))


def test_drop_oldest_keeps_the_newest_and_counts_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, policy="drop_oldest", segment_bytes=1024)
    for n in range(100):
        spool.append([payload(n)])
    assert spool.bytes <= 4096
    seen = drain(spool)
    assert seen == list(range(100 - len(seen), 100))
    assert spool.dropped_oldest == 100 - len(seen)


def test_drop_oldest_does_not_count_what_is_in_flight(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, policy="drop_oldest", segment_bytes=1024)
    for n in range(8):
        spool.append([payload(n)])
    in_flight, position = spool.read(3, 1 << 20)
    for n in range(8, 100):
        spool.append([payload(n)])
    spool.ack(position)  # the in-flight batch was delivered even though its segment is gone
    rest = drain(spool)
    delivered = len(in_flight) + len(rest)
    assert delivered + spool.dropped_oldest == 100
    assert rest == sorted(rest)


def test_a_batch_not_acknowledged_is_read_again_after_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    spool.append([payload(n) for n in range(10, 30)])
    items, position = spool.read(5, 1 << 20)
    assert position is not None
    spool.ack(position)
    failed, _ = spool.read(5, 1 << 20)  # its delivery fails: never acknowledged, never put back anywhere
    assert [int(item[:8]) for item in failed] == list(range(15, 20))
    spool.append([payload(n) for n in range(30, 35)])
    spool.close()  # what a kill -9 leaves
    assert drain(Spool(tmp_path, max_bytes=1 << 20)) == list(range(15, 35))


def test_acks_only_move_forward_and_a_partial_segment_resends_at_worst(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1 << 16)
    spool.append([payload(n) for n in range(10, 20)])
    first, early = spool.read(4, 1 << 20)
    _, later = spool.read(4, 1 << 20)
    assert early is not None and later is not None and later.passes(early) and not early.passes(later)
    spool.ack(early)
    spool.close()  # crash-like: the second batch was out, not acknowledged
    assert drain(Spool(tmp_path, max_bytes=1 << 20)) == list(range(14, 20))


def test_read_until_stops_at_the_position_given(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    spool.append([payload(n) for n in range(12)])  # two segments and a bit
    end = spool.end
    spool.append([payload(n) for n in range(100, 105)])
    assert end is not None
    seen: list[int] = []
    while True:
        items, position = spool.read(5, 1 << 20, until=end)
        if not items:
            break
        assert position is not None and not position.passes(end)
        seen.extend(int(item[:8]) for item in items)
        spool.ack(position)
    assert seen == list(range(12))
    assert drain(spool) == list(range(100, 105))


def test_a_failed_batch_whose_segment_was_dropped_is_counted_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=4096, policy="drop_oldest", segment_bytes=1024)
    for n in range(8):
        spool.append([payload(n)])
    in_flight, position = spool.read(3, 1 << 20)
    assert position is not None
    for n in range(8, 100):
        spool.append([payload(n)])
    assert not spool.holds(position)  # its segment made room: the reader's copy is the last one
    spool.drop_in_flight(len(in_flight))  # and its delivery failed
    rest = drain(spool)
    assert len(rest) + spool.dropped_oldest == 100
    assert rest == list(range(100 - len(rest), 100))


def test_disk_full_is_counted_not_raised(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        spool = Spool(mount, max_bytes=1 << 30, segment_bytes=1 << 30, fsync=False)
        kept = sum(spool.append([payload(n, 1000)]) for n in range(200))
        assert 0 < kept < 200
        assert spool.dropped_disk_full == 200 - kept
        assert drain(spool) == list(range(kept))
        spool.close()
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_concurrent_writer_and_reader_account_for_every_payload(tmp_path: Path, policy: str) -> None:
    spool = Spool(tmp_path, max_bytes=64 * 1024, policy=policy, segment_bytes=8 * 1024)
    total = 20_000
    delivered: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while True:
            items, position = spool.read(50, 1 << 20)
            if not items:
                if done.is_set() and not spool.unread():
                    return
                time.sleep(0.0005)
                continue
            delivered.extend(int(item[:8]) for item in items)
            assert position is not None
            time.sleep(0.001)  # a bulk request's round trip: slower than the writer, so the limit is hit
            spool.ack(position)

    thread = threading.Thread(target=reader)
    thread.start()
    for n in range(total):
        spool.append([payload(n, 40)])
    done.set()
    thread.join(30)
    assert not thread.is_alive()
    assert len(delivered) + spool.dropped == total
    assert delivered == sorted(delivered) and len(set(delivered)) == len(delivered)
    spool.check_accounting()
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("*.seg"))
    assert on_disk == spool.bytes
    assert spool.dropped > 0


# ---- files another user could have planted, and modes whatever the umask

NOBODY = 65534


def written_segment(directory: Path, numbers: range, name: str | None = None) -> Path:
    """A valid segment with these payloads, as another spool would have written it."""
    source = Spool(directory.parent / f"source-{numbers.start}", max_bytes=1 << 20)
    source.append([payload(n) for n in numbers])
    source.close()
    (segment,) = source.directory.glob("*.seg")
    target = directory / (name or segment.name)
    os.rename(segment, target)
    return target


@pytest.mark.parametrize("how", ["other owner", "group writable", "world writable", "symlink", "fifo"])
def test_untrusted_segment_is_quarantined_not_read(tmp_path: Path, how: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0 and how == "other owner":
        pytest.skip("chown needs root")
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = written_segment(spool_dir, range(0, 3))
    planted = spool_dir / f"{(1 << 40) + 5:020d}.seg"
    if how == "symlink":
        target = written_segment(tmp_path, range(100, 103))
        planted.symlink_to(target)
    elif how == "fifo":
        os.mkfifo(planted, 0o600)
    else:
        written_segment(spool_dir, range(100, 103), planted.name)
        if how == "other owner":
            os.chown(planted, NOBODY, NOBODY)
        else:
            os.chmod(planted, 0o620 if how == "group writable" else 0o602)
    spool = Spool(spool_dir, max_bytes=1 << 20)
    assert drain(spool) == [0, 1, 2]
    assert spool.quarantined == 1 and spool.stats()["spool_quarantined"] == 1
    assert not os.path.lexists(planted)
    assert [path.name for path in (spool_dir / "quarantine").iterdir()] == [planted.name]
    assert stat_mode(spool_dir / "quarantine") == 0o700
    assert sum("quarantine" in record.getMessage() for record in caplog.records) == 1
    assert good.name not in os.listdir(spool_dir / "quarantine")
    if how == "symlink":
        assert target.exists()  # the link was moved, what it pointed to left alone


def test_untrusted_ack_is_quarantined_and_everything_sent_again(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(6)])
    items, position = spool.read(3, 1 << 20)
    spool.ack(position)
    spool.close()
    os.chown(tmp_path / "ack", NOBODY, NOBODY)  # another user's ack could hide undelivered events
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.quarantined == 1
    assert drain(reopened) == list(range(6))  # at-least-once: the ids make the repeats harmless


def test_directory_named_like_a_segment_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spool.append([payload(n) for n in range(3)])
    spool.close()
    (tmp_path / f"{(1 << 40) + 7:020d}.seg").mkdir()
    (tmp_path / "x.tmp").mkdir()
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert drain(reopened) == [0, 1, 2]
    assert any("is a directory" in record.getMessage() for record in caplog.records)
    reopened.append([payload(3)])  # new ids go past it
    assert drain(reopened) == [3]


def test_segment_replaced_while_running_is_not_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1000)
    for n in range(20):
        spool.append([payload(n)])
    first = sorted(tmp_path.glob("*.seg"))[1]
    other = tmp_path / "other"
    other.mkdir()
    planted = written_segment(other, range(500, 508), "planted")
    os.replace(planted, first)  # same name, another file
    seen = drain(spool)
    assert not any(n >= 500 for n in seen)
    assert len(seen) + spool.dropped_corrupt == 20
    assert spool.quarantined == 1


def stat_mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        directory = tmp_path / "state" / "spool"
        spool = Spool(directory, max_bytes=1 << 20, segment_bytes=1000)
        for n in range(20):
            spool.append([payload(n)])
        items, position = spool.read(3, 1 << 20)
        spool.append([payload(99)])
        spool.ack(position)
        spool.close()
    finally:
        os.umask(old)
    assert stat_mode(tmp_path / "state") == 0o700
    assert stat_mode(directory) == 0o700
    files = list(directory.iterdir())
    assert any(path.name == "ack" for path in files) and any(path.name.endswith(".seg") for path in files)
    assert {path.name: stat_mode(path) for path in files} == {path.name: 0o600 for path in files}


def test_existing_loose_spool_directory_is_kept_with_a_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    os.chmod(tmp_path, 0o777)
    Spool(tmp_path, max_bytes=1 << 20).close()
    assert stat_mode(tmp_path) == 0o777  # the user's directory is not changed behind their back
    assert sum("writable by group or others" in record.getMessage() for record in caplog.records) == 1
