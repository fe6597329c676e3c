"""The sensor's own log lines on stderr, as JSON (one object per line, ECS-style keys) or plain text.

Events and alerts never go through logging: they go to the outputs. Logs are for operators: start-up, what
was attached, problems, and periodic counters.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

import ecs_logging

from sensor import __version__

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)


def _timestamp(created: float) -> str:
    seconds = int(created)
    micros = int((created - seconds) * 1e6)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES}


# top-level names ecs-logging writes, and the ECS field sets a log line may carry
_ECS_ROOTS = frozenset({"@timestamp", "message", "log", "ecs", "error", "process", "service", "event", "labels",
                        "tags", "host", "agent", "url", "user", "container", "orchestrator", "trace", "span",
                        "transaction", "container_sensor"})


class JsonFormatter(ecs_logging.StdlibFormatter):
    """One ECS document per line, written by Elastic's ecs-logging (what Filebeat and Elastic Agent take as they
    are): `@timestamp`, `log.level`, `log.logger`, `message`, `error.*` for exceptions, `process.*`, `service.*`,
    and the `extra=` fields. Where in the source a line was logged is left out (`log.origin`): noise for an
    operator, and a file path per line."""

    def __init__(self) -> None:
        super().__init__(exclude_fields=("log.origin", "log.original"),
                         extra={"service": {"name": "container-sensor", "version": __version__,
                                            "type": "container-sensor"}})

    def format_to_ecs(self, record: logging.LogRecord) -> dict[str, Any]:
        doc = super().format_to_ecs(record)
        # a line's own fields (`extra=`) are no ECS fields: under the sensor's key, as in its documents
        own = {key: doc.pop(key) for key in [k for k in doc if k.split(".", 1)[0] not in _ECS_ROOTS]}
        if own:
            doc.setdefault("container_sensor", {}).update(own)
        return doc


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = _extra_fields(record)
        if extras:
            line += " " + " ".join(f"{key}={json.dumps(value, default=str)}" for key, value in extras.items())
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str, level: str, stream: IO[str] | None = None) -> logging.Handler:
    """Sends all log records at `level` or above to stderr (or `stream`) in `fmt` ("json" or "text").

    Calling it again replaces the handler it installed before, so `run` can switch format once its
    configuration is loaded. Returns the handler.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {fmt!r}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("container-sensor")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "container-sensor":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level.lower()])
    # Library chatter (the Elasticsearch client logs every request at INFO) stays out unless debugging.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("elastic_transport", "elasticsearch", "urllib3"):
        logging.getLogger(name).setLevel(quiet)
    # The node pool repeats every connection failure the Elasticsearch output already reports once.
    node_pool_level = logging.DEBUG if quiet == logging.DEBUG else logging.ERROR
    logging.getLogger("elastic_transport.node_pool").setLevel(node_pool_level)
    return handler
