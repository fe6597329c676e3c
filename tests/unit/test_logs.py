from __future__ import annotations

import io
import json
import logging

import pytest

from sensor.ops.logs import setup_logging
from tests.ecs_fields import ecs_problems


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_with_extra_fields_and_errors():
    stream = io.StringIO()
    setup_logging("json", "info", stream)
    log = logging.getLogger("sensor.probe.loader")
    log.debug("not shown at info")
    log.info("attached %d tracepoints", 5, extra={"ringbuf_bytes": 8388608})
    try:
        raise OSError("EPERM")
    except OSError:
        log.exception("attach failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "attached 5 tracepoints"
    assert first["log.level"] == "info" and first["log"]["logger"] == "sensor.probe.loader"
    assert first["container_sensor"]["ringbuf_bytes"] == 8388608  # a line's own fields, under the sensor's key
    assert first["@timestamp"].endswith("Z")
    assert first["service"]["name"] == "container-sensor" and "ecs.version" in first
    assert second["error"]["type"] == "OSError" and second["error"]["message"] == "EPERM"
    assert second["message"] == "attach failed" and second["error"]["stack_trace"]
    # every field is ECS (or under the sensor's own key): Filebeat and Elastic Agent take the lines as they are
    for line in (first, second):
        assert ecs_problems(line) == [], line


def test_text_lines():
    stream = io.StringIO()
    setup_logging("text", "debug", stream)
    logging.getLogger("sensor.cli").debug("config loaded", extra={"source": "/etc/x.yaml"})
    line = stream.getvalue().rstrip("\n")
    assert line.endswith('DEBUG   sensor.cli: config loaded source="/etc/x.yaml"')


def test_second_setup_replaces_the_first_handler():
    first, second = io.StringIO(), io.StringIO()
    setup_logging("text", "info", first)
    setup_logging("json", "warning", second)
    logging.getLogger("x").warning("once")
    logging.getLogger("x").info("filtered")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["once"]


def test_bad_format_or_level():
    with pytest.raises(ValueError, match="log format"):
        setup_logging("xml", "info")
    with pytest.raises(ValueError, match="log level"):
        setup_logging("json", "loud")
