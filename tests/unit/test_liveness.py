"""Stall detection (the pipeline's heartbeat), systemd notifications and the bounded SIGTERM drain."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from sensor.config.settings import load_config
from sensor.ops.liveness import SystemdNotifier, notify, watchdog_interval
from sensor.ops.metrics import pipeline_metrics
from sensor.outputs.stdout import StdoutOutput
from sensor.pipeline import Heartbeat
from sensor.run import DrainCut, RunSummary, StopFlag, left_behind


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def started(timeout: float = 30.0, backlog: int | None = 4096) -> tuple[Heartbeat, Clock, Counter]:
    clock, records = Clock(), Counter()
    heartbeat = Heartbeat(timeout, clock=clock)
    heartbeat.start(progress=records, backlog=lambda: backlog)
    return heartbeat, clock, records


def test_before_the_loop_runs_the_sensor_is_live_and_starting():
    heartbeat = Heartbeat(30.0, clock=Clock())
    assert heartbeat.check() == (True, "starting")
    assert heartbeat.age() is None


def test_an_idle_loop_that_keeps_polling_stays_live_however_long():
    heartbeat, clock, _records = started()
    for _ in range(10_000):  # 200 s of 20 ms polls without a single record
        clock.now += 0.02
        heartbeat.beat(clock.now)
    alive, reason = heartbeat.check()
    assert alive and "advancing" in reason


def test_a_loop_stuck_inside_a_batch_fails_after_the_stall_timeout():
    heartbeat, clock, _records = started(timeout=30.0, backlog=8192)
    clock.now += 29.9
    assert heartbeat.check()[0]
    clock.now += 0.2
    alive, reason = heartbeat.check()
    assert not alive
    assert reason == ("pipeline stalled: no progress for 30s (stall timeout 30s), the event loop is stuck inside a "
                      "batch, 8192 bytes of records waiting in the ring buffer")
    assert "\n" not in reason
    # It comes back once the loop moves again.
    heartbeat.beat(clock.now)
    assert heartbeat.check()[0]


def test_records_handled_inside_one_long_poll_count_as_progress():
    """A storm's backlog may keep the loop inside one poll for long: records handled are progress."""
    heartbeat, clock, records = started(timeout=5.0)
    for _ in range(20):
        clock.now += 1.0
        records.value += 500
        assert heartbeat.check()[0]
    assert heartbeat.age() == pytest.approx(0.0)
    clock.now += 5.0  # the counter stops: stuck on one record
    assert not heartbeat.check()[0]


def test_stall_timeout_zero_never_fails_and_stopping_is_live():
    heartbeat, clock, _records = started(timeout=0.0)
    clock.now += 3600
    assert heartbeat.check()[0]
    heartbeat, clock, _records = started(timeout=1.0)
    clock.now += 10
    heartbeat.stopping = True  # the drain is bounded by its own deadline
    assert heartbeat.check() == (True, "stopping: draining the pipeline")


def test_backlog_unknown_or_vanishing_is_left_out_of_the_reason():
    heartbeat, clock, _records = started(timeout=1.0, backlog=None)
    clock.now += 2
    assert "ring buffer" not in heartbeat.check()[1]

    def closed() -> int:
        raise ValueError("mmap closed or invalid")

    heartbeat.start(backlog=closed)
    clock.now += 2
    assert heartbeat.backlog() is None and not heartbeat.check()[0]


def test_metrics_expose_the_age_of_the_last_progress():
    heartbeat, clock, _records = started(timeout=30.0, backlog=128)

    class Pipeline:
        def __init__(self) -> None:
            from sensor.pipeline import PipelineStats

            self.stats = PipelineStats()
            self.table: list[int] = []
            self.outputs: list[object] = []
            self.heartbeat = heartbeat

    clock.now += 12.5
    values = pipeline_metrics(Pipeline())
    assert values["pipeline_last_progress_seconds"] == 12.5
    assert values["ringbuf_backlog_bytes"] == 128


def test_stall_and_drain_timeouts_are_options():
    config = load_config(None, {"CONTAINER_SENSOR_STALL_TIMEOUT": "45s"}, {"drain_timeout": "15s"})
    assert (config.stall_timeout, config.drain_timeout) == (45.0, 15.0)
    default = load_config(None, {}, {})
    assert (default.stall_timeout, default.drain_timeout) == (30.0, 20.0)


# ---- sd_notify, with a real datagram socket standing in for systemd


class FakeSystemd:
    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path).replace("@", "\0", 1))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def collect(self, seconds: float) -> list[str]:
        """Messages that arrive within `seconds`."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        self.messages += got
        return got

    def close(self) -> None:
        self.sock.close()


def test_notify_reaches_a_path_socket_and_an_abstract_one(tmp_path):
    systemd = FakeSystemd(tmp_path / "notify")
    try:
        assert notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert systemd.collect(0.2) == ["READY=1"]
    finally:
        systemd.close()
    name = f"@container-sensor-test-{os.getpid()}"
    systemd = FakeSystemd(name)
    try:
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": name})
        assert systemd.collect(0.2) == ["WATCHDOG=1"]
    finally:
        systemd.close()
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})  # no listener: False, no error


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only():
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_ready_then_pings_that_stop_while_the_pipeline_is_stalled(tmp_path):
    path = tmp_path / "notify"
    systemd = FakeSystemd(path)
    heartbeat, clock, _records = started(timeout=30.0)
    notifier = SystemdNotifier(heartbeat.check, {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000"})
    try:
        notifier.ready()
        first = systemd.collect(0.4)
        assert first[0].startswith("READY=1\n") and f"MAINPID={os.getpid()}" in first[0]
        assert first[1:].count("WATCHDOG=1") >= 3  # every 50 ms

        clock.now += 31  # the loop stops advancing
        systemd.collect(0.15)  # one ping may have been on its way
        stalled = systemd.collect(0.5)
        assert "WATCHDOG=1" not in stalled
        assert notifier.withheld >= 5
        assert any(m.startswith("STATUS=pipeline stalled") for m in systemd.messages)

        heartbeat.beat(clock.now)  # advancing again: the pings resume
        assert "WATCHDOG=1" in systemd.collect(0.3)
        notifier.stopping()  # the pings go on through the drain, which its own deadline bounds
        assert any(m.startswith("STOPPING=1\n") for m in systemd.collect(0.2))
    finally:
        notifier.close()
        systemd.close()
    assert not any(t.name == "systemd-watchdog" for t in threading.enumerate())


def test_without_systemd_the_notifier_does_nothing():
    notifier = SystemdNotifier(lambda: (True, "ok"), {})
    notifier.ready()
    notifier.stopping()
    notifier.close()
    assert not notifier.enabled and notifier.pings == 0


# ---- the bounded drain


@pytest.fixture
def stop_flag():
    flag = StopFlag(drain_timeout=0.5)
    flag.install()
    yield flag
    flag.uninstall()


def signal_later(signum: int, after: float) -> threading.Timer:
    timer = threading.Timer(after, os.kill, args=(os.getpid(), signum))
    timer.start()
    return timer


def test_the_deadline_ends_a_loop_blocked_in_a_write(stop_flag):
    """The first SIGTERM only asks to stop; a loop blocked in a write to a pipe nobody reads is ended by the
    drain deadline, from the signal handler, wherever it is blocked."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, True)
    stop_flag.arm()
    signal_later(signal.SIGTERM, 0.1)
    started_at = time.monotonic()
    with pytest.raises(DrainCut) as cut:
        while True:
            os.write(write_end, b"x" * 65536)  # fills the pipe, then blocks
    elapsed = time.monotonic() - started_at
    os.close(read_end)
    os.close(write_end)
    assert stop_flag.stopped and stop_flag.signal_name == "SIGTERM"
    assert cut.value.reason == "the 0.5s drain deadline" and cut.value.exit_code == 0
    assert 0.5 <= elapsed < 1.5


def test_a_long_computation_is_cut_too(stop_flag):
    stop_flag.arm()
    signal_later(signal.SIGINT, 0.05)
    started_at = time.monotonic()
    with pytest.raises(DrainCut):
        total = 0
        while True:  # stands for a runaway rule: pure Python work that never returns
            total += 1
    assert time.monotonic() - started_at < 1.5


def test_a_second_signal_exits_at_once(stop_flag):
    stop_flag.drain_timeout = 30.0
    stop_flag.arm()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop_flag.stopped
    started_at = time.monotonic()
    with pytest.raises(DrainCut) as cut:
        signal_later(signal.SIGTERM, 0.1)
        time.sleep(10)
    assert time.monotonic() - started_at < 1.0
    assert cut.value.reason == "a second SIGTERM" and cut.value.exit_code == 128 + signal.SIGTERM


def test_after_disarm_signals_and_the_alarm_are_harmless(stop_flag):
    stop_flag.arm()
    os.kill(os.getpid(), signal.SIGTERM)
    stop_flag.disarm()  # the drain finished in time
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.7)  # past the deadline: nothing raised
    assert stop_flag.remaining() == 0.0


def test_a_deadline_passed_during_start_up_cuts_at_arm(stop_flag):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.6)  # the alarm fired while not interruptible
    with pytest.raises(DrainCut):
        stop_flag.arm()


def test_uninstall_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    flag = StopFlag(1.0)
    flag.install()
    assert signal.getsignal(signal.SIGTERM) != before
    flag.uninstall()
    assert signal.getsignal(signal.SIGTERM) == before


class Output:
    def __init__(self, name: str, stats: dict[str, int]) -> None:
        self.name = name
        self._stats = stats

    def stats(self) -> dict[str, int]:
        return self._stats


def test_what_is_left_behind_is_counted_by_where_it_is():
    outputs = [
        Output("elasticsearch", {"queued": 40, "spool_unread": 1200, "delivered": 10, "dropped": 0}),
        Output("file", {"received": 100, "written": 70, "dropped": 5}),
        Output("stdout", {"written": 90, "dropped": 0, "pending": 25}),
    ]
    assert left_behind(outputs) == (1200, 40 + 25 + 25)


def test_stdout_counts_the_lines_of_a_write_that_never_returned():
    class Blocked:
        def write(self, data: bytes) -> int:
            raise DrainCut("the 1s drain deadline", 0)  # what the signal handler raises inside a blocked write

        def flush(self) -> None: ...

        def isatty(self) -> bool:
            return False

    output = StdoutOutput(Blocked())  # type: ignore[arg-type]
    for n in range(3):
        output._parts.append(b'{"n": %d}\n' % n)
    with pytest.raises(DrainCut):
        output.flush()
    assert output.stats()["pending"] == 3


def test_the_summary_says_what_the_drain_left_in_one_line():
    base = RunSummary(seen=10, emitted=9, lost=0, alerts=1, output_dropped=0)
    assert base.line().endswith("0 dropped by outputs")
    cut = RunSummary(seen=10, emitted=9, lost=0, alerts=1, output_dropped=0, spooled=5, undelivered=3,
                     drain_cut="the 20s drain deadline", ring_left=4096)
    assert cut.line().endswith("; drain cut by the 20s drain deadline: 8 documents not delivered (5 kept in the "
                               "spool for the next start, 3 lost), 4096 bytes of records unread in the ring buffer")
    assert "\n" not in cut.line()
    spooled = RunSummary(seen=1, emitted=1, lost=0, alerts=0, output_dropped=0, spooled=7)
    assert spooled.line().endswith("; 7 documents kept in the spool for the next start")
