"""Where each document goes in Elasticsearch: its data stream (or index), and the document made to match it.

An event goes to the data stream its data_stream.* fields name (DEFAULT_EVENTS_STREAM when they are missing or
name no valid stream), an alert to DEFAULT_ALERTS_STREAM, unless the settings name a stream for each. Data streams
map data_stream.* and event.dataset as constant_keyword, so a document whose values differ from its stream's
would be refused: they are made to match. The sensor manages no index templates: Elasticsearch's built-in
`logs-*-*` template makes these data streams on first write.
"""

from __future__ import annotations

import re
from typing import Any

from sensor.ecs.encoding import DocumentEncoder

DEFAULT_EVENTS_STREAM = "logs-endpoint.events.process-default"
DEFAULT_ALERTS_STREAM = "logs-container_sensor.alerts-default"
_DATA_STREAM_RE = re.compile(r"^(logs|metrics|traces|synthetics|profiling)-([a-z0-9_.]+)-([a-z0-9_.]+)$")
_INDEX_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")

Target = tuple[str, tuple[str, str, str] | None]  # index name, and its (type, dataset, namespace) for a data stream
Item = list[Any]  # [index, id or None, source JSON bytes]: one bulk `create`, as queued and spooled


def data_stream_parts(name: str) -> tuple[str, str, str] | None:
    match = _DATA_STREAM_RE.match(name)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def valid_index_name(name: str) -> bool:
    return bool(_INDEX_RE.match(name)) and len(name.encode()) <= 255 and name not in (".", "..")


def _target(name: str) -> Target:
    return name, data_stream_parts(name)


class StreamRouter:
    """Names each document's target and turns it into a bulk item. Used from two threads (the event loop while
    spooling, and the sender): the cache of named streams only ever gains entries that mean the same."""

    def __init__(self, events_stream: str | None, alerts_stream: str | None) -> None:
        self._configured = {
            False: _target(events_stream) if events_stream else None,
            True: _target(alerts_stream) if alerts_stream else None,
        }
        self._defaults = {False: _target(DEFAULT_EVENTS_STREAM), True: _target(DEFAULT_ALERTS_STREAM)}
        self._named_streams: dict[tuple[str, ...], Target | None] = {}

    def item(self, doc: dict[str, Any], encoder: DocumentEncoder) -> Item:
        """The bulk item of a document: its target, its deterministic id (event.id) and its JSON source."""
        event = doc.get("event")
        is_alert = isinstance(event, dict) and event.get("kind") == "alert"
        index, parts = self.route(doc, is_alert)
        if parts is not None:
            doc = conform(doc, parts)
        doc_id = event.get("id") if isinstance(event, dict) else None
        return [index, doc_id if isinstance(doc_id, str) and doc_id else None, encoder.json(doc)]

    def route(self, doc: dict[str, Any], is_alert: bool) -> Target:
        configured = self._configured[is_alert]
        if configured is not None:
            return configured
        if is_alert:
            # Alerts have a stream of their own whatever the rule wrote, so they never mix with events.
            return self._defaults[True]
        stream = doc.get("data_stream")
        if not isinstance(stream, dict):
            return self._defaults[is_alert]
        key = (stream.get("type"), stream.get("dataset"), stream.get("namespace"))
        if not all(isinstance(part, str) for part in key):
            return self._defaults[is_alert]
        if key in self._named_streams:
            named = self._named_streams[key]
        else:
            name = "-".join(key)
            parts = data_stream_parts(name)
            named = (name, parts) if parts is not None and len(name) <= 100 else None
            if len(self._named_streams) < 1024:  # a handful in practice; bounded all the same
                self._named_streams[key] = named
        return named if named is not None else self._defaults[is_alert]


def conform(doc: dict[str, Any], parts: tuple[str, str, str]) -> dict[str, Any]:
    """The document with data_stream.* and event.dataset naming its stream (a copy only when they differ).

    Data streams map these as constant_keyword: a different value would be refused.
    """
    kind, dataset, namespace = parts
    stream = doc.get("data_stream")
    event = doc.get("event")
    if (
        isinstance(stream, dict)
        and stream.get("type") == kind
        and stream.get("dataset") == dataset
        and stream.get("namespace") == namespace
        and (not isinstance(event, dict) or event.get("dataset") in (None, dataset))
    ):
        return doc
    fixed = dict(doc)
    fixed["data_stream"] = {"type": kind, "dataset": dataset, "namespace": namespace}
    if isinstance(event, dict) and event.get("dataset") not in (None, dataset):
        fixed["event"] = {**event, "dataset": dataset}
    return fixed
