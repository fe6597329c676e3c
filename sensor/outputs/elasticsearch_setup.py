"""`container-sensor setup elasticsearch` and `container-sensor test output`: what Beats' `setup` and `test output`
do, for the sensor's streams. Both speak the REST compatibility version of the server's major (8.x and 9.x).

setup: installs the `@custom` component templates (sensor.outputs.elasticsearch_templates) for every stream the
sensor writes, merged into what the user has there, and the alerts stream's index template. A second run
changes nothing. Needs `manage_index_templates`, a privilege the sensor's own key must not have.

test output: connects, says the version, and asks `_has_privileges` whether the credentials may do what the sensor
does (`monitor`, and `create_doc` + `auto_configure` on each stream); writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sensor.outputs.elasticsearch_bulk import make_client
from sensor.outputs.elasticsearch_naming import data_stream_parts
from sensor.outputs.elasticsearch_settings import ElasticsearchSettings, redact_url
from sensor.outputs.elasticsearch_templates import (
    ALERTS_TEMPLATE,
    DATASETS,
    WRITE_PRIVILEGES,
    alerts_index_template,
    custom_component_template,
    custom_template_name,
)


class SetupError(Exception):
    """Elasticsearch could not be reached, or refused; the message says which and why."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.lines.append(line)
        self.ok = False


def stream_patterns(settings: ElasticsearchSettings) -> tuple[str, ...]:
    """The index patterns the sensor writes: a configured stream as it is, else every namespace of each default
    dataset."""
    if settings.events_stream:
        events: tuple[str, ...] = (settings.events_stream,)
    else:
        events = tuple(f"logs-{dataset}-*" for dataset in DATASETS[:2])
    alerts = settings.alerts_stream or f"logs-{DATASETS[2]}-*"
    return (*events, alerts)


def datasets_written(settings: ElasticsearchSettings) -> tuple[str, ...]:
    """The datasets whose @custom component template applies to what the sensor writes."""
    out = []
    for configured, defaults in ((settings.events_stream, DATASETS[:2]), (settings.alerts_stream, DATASETS[2:])):
        parts = data_stream_parts(configured) if configured else None
        if configured and parts is None:
            continue  # a plain index: no data stream template composes it
        out += [parts[1]] if parts else list(defaults)
    return tuple(dict.fromkeys(out))


class _Session:
    def __init__(self, settings: ElasticsearchSettings, client_factory: Callable[[ElasticsearchSettings], Any]):
        self.settings = settings
        self.client = client_factory(settings)
        self.version = "?"
        self._major = 8

    def request(self, method: str, path: str, body: Any = None, ok_statuses: tuple[int, ...] = ()) -> Any:
        from elasticsearch import ApiError, TransportError

        headers = {"accept": f"application/vnd.elasticsearch+json; compatible-with={self._major}"}
        if body is not None:
            headers["content-type"] = f"application/vnd.elasticsearch+json; compatible-with={self._major}"
        try:
            return self.client.perform_request(method, path, headers=headers, body=body).body
        except ApiError as error:
            if error.meta.status in ok_statuses:
                return None
            reason = error.body.get("error", {}) if isinstance(error.body, dict) else {}
            reason = reason.get("reason") if isinstance(reason, dict) else reason or error.message
            raise SetupError(f"{method} {path}: {error.meta.status} {reason}") from None
        except TransportError as error:
            raise SetupError(f"{redact_url(self.settings.url)}: {type(error).__name__}: {error.message}") from None

    def connect(self) -> str:
        info = self.request("GET", "/")
        number = str((info or {}).get("version", {}).get("number", "0"))
        major = int(number.split(".")[0]) if number.split(".")[0].isdigit() else 0
        if major < 8:
            raise SetupError(f"Elasticsearch {number} is not supported (8.x or later is needed)")
        from elasticsearch import __versionstr__

        self._major = min(major, int(__versionstr__.split(".")[0]))
        self.version = number
        return number

    def close(self) -> None:
        self.client.close()


def setup_elasticsearch(settings: ElasticsearchSettings,
                        client_factory: Callable[[ElasticsearchSettings], Any] = make_client) -> Report:
    report = Report()
    session = _Session(settings, client_factory)
    try:
        report.say(f"connected to {redact_url(settings.url)}: Elasticsearch {session.connect()}")
        for dataset in datasets_written(settings):
            name = custom_template_name(dataset)
            found = session.request("GET", f"/_component_template/{name}", ok_statuses=(404,))
            existing = None
            if isinstance(found, dict) and found.get("component_templates"):
                existing = found["component_templates"][0].get("component_template")
            body, conflicts = custom_component_template(existing)
            for conflict in conflicts:
                report.say(f"{name}: kept your mapping of {conflict}")
            if existing == body:
                report.say(f"{name}: up to date")
                continue
            session.request("PUT", f"/_component_template/{name}", body)
            report.say(f"{name}: {'updated (your mappings kept)' if existing else 'installed'}")
        if settings.alerts_stream is None or settings.alerts_stream.startswith(f"logs-{DATASETS[2]}-"):
            body = alerts_index_template()
            found = session.request("GET", f"/_index_template/{ALERTS_TEMPLATE}", ok_statuses=(404,))
            existing = None
            if isinstance(found, dict) and found.get("index_templates"):
                existing = found["index_templates"][0].get("index_template")
            if existing == body:
                report.say(f"index template {ALERTS_TEMPLATE}: up to date")
            elif existing and (existing.get("_meta") or {}).get("managed_by") != body["_meta"]["managed_by"]:
                report.say(f"index template {ALERTS_TEMPLATE}: yours, left as it is")
            else:
                session.request("PUT", f"/_index_template/{ALERTS_TEMPLATE}", body)
                report.say(f"index template {ALERTS_TEMPLATE}: {'updated' if existing else 'installed'}")
        report.say("new backing indices of these streams take the mappings; roll a stream over "
                   "(POST /<stream>/_rollover) for its current one to")
    except SetupError as error:
        report.fail(str(error))
    finally:
        session.close()
    return report


def check_output(settings: ElasticsearchSettings,
                client_factory: Callable[[ElasticsearchSettings], Any] = make_client) -> Report:
    report = Report()
    session = _Session(settings, client_factory)
    patterns = stream_patterns(settings)
    try:
        report.say(f"connection to {redact_url(settings.url)}: ok, Elasticsearch {session.connect()}")
        asked = {"cluster": ["monitor"],
                 "index": [{"names": list(patterns), "privileges": list(WRITE_PRIVILEGES)}]}
        try:
            answer = session.request("POST", "/_security/user/_has_privileges", asked)
        except SetupError as error:
            text = str(error).lower()
            if "security" in text and ("enabl" in text or "disabled" in text):
                report.say("privileges: security is off on this cluster, every request is allowed")
                return report
            raise
        answer = answer if isinstance(answer, dict) else {}
        for privilege, granted in sorted((answer.get("cluster") or {}).items()):
            (report.say if granted else report.fail)(f"cluster privilege {privilege}: "
                                                     f"{'granted' if granted else 'MISSING'}")
        for pattern in patterns:
            granted = (answer.get("index") or {}).get(pattern) or {}
            for privilege in WRITE_PRIVILEGES:
                ok = bool(granted.get(privilege))
                (report.say if ok else report.fail)(f"{privilege} on {pattern}: {'granted' if ok else 'MISSING'}")
        if not report.ok:
            report.say("the sensor's role needs: cluster [monitor]; indices "
                       f"{list(patterns)} [{', '.join(WRITE_PRIVILEGES)}] (docs/elasticsearch.md)")
    except SetupError as error:
        report.fail(str(error))
    finally:
        session.close()
    return report

