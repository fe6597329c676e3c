"""Records the kernel dropped are said in the log (one line a second at most) and counted in /metrics."""

from __future__ import annotations

import logging

import pytest

from sensor.app import build_pipeline
from sensor.config.settings import Config
from sensor.model.records import LossRecord
from sensor.ops.metrics import pipeline_metrics
from sensor.outputs.memory import MemoryOutput

SECOND_NS = 1_000_000_000


def loss(at_ns: int, dropped_in_all: int) -> LossRecord:
    return LossRecord(ktime_ns=at_ns, ringbuf_full=dropped_in_all, argv_truncated=0, argv_read_failed=0)


def loss_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "the kernel dropped" in r.getMessage()]


@pytest.fixture
def pipeline():
    return build_pipeline(Config(), [MemoryOutput()], live=False)


def test_a_loss_gives_one_warning_and_the_metric(pipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    pipeline.handle(loss(10 * SECOND_NS, 0))
    assert loss_lines(caplog) == []
    pipeline.handle(loss(11 * SECOND_NS, 7))
    lines = loss_lines(caplog)
    assert len(lines) == 1
    assert "dropped 7 records since the last report" in lines[0]
    assert pipeline_metrics(pipeline)["events_lost_total"] == 7
    pipeline.handle(loss(12 * SECOND_NS, 7))  # nothing new: no line
    assert len(loss_lines(caplog)) == 1


def test_repeated_losses_within_a_second_give_one_line(pipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    start = 50 * SECOND_NS
    for step in range(10):  # ten reports 0.1 s apart, each with more dropped
        pipeline.handle(loss(start + step * SECOND_NS // 10, 5 * (step + 1)))
    lines = loss_lines(caplog)
    assert len(lines) == 1
    assert "dropped 5 records" in lines[0]
    assert pipeline_metrics(pipeline)["events_lost_total"] == 50
    # the next second's line carries what the first could not say yet
    pipeline.handle(loss(start + SECOND_NS, 52))
    lines = loss_lines(caplog)
    assert len(lines) == 2
    assert "dropped 47 records since the last report" in lines[1]
    assert "52 in all" in lines[1]


def test_what_the_last_second_dropped_is_said_at_shutdown(pipeline, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    pipeline.handle(loss(SECOND_NS, 3))
    pipeline.handle(loss(SECOND_NS + 1000, 9))
    assert len(loss_lines(caplog)) == 1
    pipeline.finish()
    lines = loss_lines(caplog)
    assert len(lines) == 2
    assert "dropped 6 records" in lines[1]
