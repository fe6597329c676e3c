"""Alerts as Kibana's Alerts page takes them. Elastic's prebuilt rule *External Alerts*
(eb079c62-4481-4d6e-9643-3ca499df7aaa) promotes every document of `logs-*` that its KQL query matches:

    event.kind:alert and not event.module:(endgame or endpoint or cloud_defend)

and names each promoted alert by its `message` (`rule_name_override`), takes its severity from `event.severity`
(21 low, 47 medium, 73 high, 99 critical) and its risk score from `event.risk_score`. The alerts checked are the
golden replay's: what the sensor made of a real recording."""

from __future__ import annotations

import json
from pathlib import Path

from sensor.rules.alerts import alert_message
from sensor.rules.eql_compile import compile_query
from sensor.rules.eql_parse import parse_query

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures/golden"
# the KQL above in EQL, evaluated with Elasticsearch's semantics (a field holding an array matches when any
# element does); `any where` is KQL's absence of an event category
EXTERNAL_ALERTS = 'any where event.kind == "alert" and not event.module in ("endgame", "endpoint", "cloud_defend")'
SEVERITY_MAPPING = {21: "low", 47: "medium", 73: "high", 99: "critical"}


def golden_documents() -> list[dict]:
    docs = []
    for name in ("expected.ndjson", "expected.rules.ndjson"):
        docs += [json.loads(line) for line in (GOLDEN / name).read_text().splitlines() if line.strip()]
    return docs


def test_the_external_alerts_rule_promotes_every_alert_and_nothing_else() -> None:
    external = compile_query(parse_query(EXTERNAL_ALERTS)).predicate
    docs = golden_documents()
    alerts = [d for d in docs if d["event"]["kind"] == "alert"]
    assert len(alerts) >= 3 and len({a["rule"]["id"] for a in alerts}) >= 2  # the built-in rule and Elastic's
    assert all(external(a) for a in alerts)
    assert not any(external(d) for d in docs if d["event"]["kind"] != "alert")
    # Elastic Defend's own alerts are left to Defend's rule: the same query refuses them
    defend = {**alerts[0], "event": {**alerts[0]["event"], "module": "endpoint"}}
    assert not external(defend)


def test_each_alert_carries_what_the_rule_overrides_with() -> None:
    for alert in (d for d in golden_documents() if d["event"]["kind"] == "alert"):
        message = alert.get("message")
        assert isinstance(message, str) and message.startswith(alert["rule"]["name"])
        assert "in container " in message  # every golden alert is a container's
        assert SEVERITY_MAPPING[alert["event"]["severity"]] == alert["container_sensor"]["alert"]["severity"]
        assert isinstance(alert["event"]["risk_score"], int | float)
        assert alert["event"]["module"] == "container_sensor"
        assert alert["data_stream"]["dataset"] == alert["event"]["dataset"]


def test_message_names_the_container_by_name_and_image_when_known() -> None:
    container = {"id": "a" * 64, "name": "web-1", "image": {"name": "docker.io/library/nginx", "tag": ["1.27"]}}
    assert alert_message("SSH Started", container) == "SSH Started in container web-1 (docker.io/library/nginx)"
    assert alert_message("SSH Started", {"id": "b" * 64}) == "SSH Started in container bbbbbbbbbbbb"
    assert alert_message("SSH Started", None) == "SSH Started"
