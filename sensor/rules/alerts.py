"""Turning an event document into an ECS alert document for one rule."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sensor.rules.metadata import RuleMetadata

ALERT_DATASET = "container_sensor.alerts"  # the data stream the Elasticsearch output writes alerts to


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def alert_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def container_evidence(doc: dict) -> list[str]:
    """Which fields of the event place the process in a container (empty for the host)."""
    evidence = []
    container = doc.get("container")
    if isinstance(container, dict) and container.get("id"):
        evidence.append("container.id")
    leader = (doc.get("process") or {}).get("entry_leader") or {}
    if isinstance(leader, dict) and (leader.get("entry_meta") or {}).get("type") == "container":
        evidence.append("process.entry_leader.entry_meta.type")
    return evidence


def _append(block: dict[str, list], entry: Any) -> None:
    if not isinstance(entry, dict):
        return
    for key in ("id", "name", "reference"):
        value = entry.get(key)
        if isinstance(value, str) and value not in block.setdefault(key, []):
            block[key].append(value)


def ecs_threat(mapping: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A rule file's [[rule.threat]] list as ECS `threat`: framework plus id/name/reference arrays."""
    frameworks: list[str] = []
    tactic: dict[str, list] = {}
    technique: dict[str, list] = {}
    subtechnique: dict[str, list] = {}
    for entry in mapping:
        framework = entry.get("framework")
        if isinstance(framework, str) and framework not in frameworks:
            frameworks.append(framework)
        _append(tactic, entry.get("tactic"))
        for tech in entry.get("technique") or []:
            _append(technique, tech)
            for sub in (tech.get("subtechnique") or []) if isinstance(tech, dict) else []:
                _append(subtechnique, sub)
    threat: dict[str, Any] = {}
    if frameworks:
        threat["framework"] = ", ".join(frameworks)
    if tactic:
        threat["tactic"] = tactic
    if technique:
        threat["technique"] = dict(technique)
        if subtechnique:
            threat["technique"]["subtechnique"] = subtechnique
    return threat


def alert_message(rule_name: str, container: Any) -> str:
    """ECS `message` of an alert: the rule's name and where it fired. Elastic's *External Alerts* rule, which
    promotes alerts from other sources into Kibana's Alerts page, names each by this field
    (`rule_name_override: message`); without it they would be listed unnamed."""
    if isinstance(container, dict) and container.get("id"):
        where = container.get("name") or str(container["id"])[:12]
        image = (container.get("image") or {}).get("name") if isinstance(container.get("image"), dict) else None
        return f"{rule_name} in container {where}" + (f" ({image})" if image else "")
    return rule_name


def build_alert(doc: dict, rule: RuleMetadata, details: dict[str, Any], *,
                created: str | None = None) -> dict:
    """A copy of the event with `event.kind: alert`, the rule, its threat mapping and
    `container_sensor.alert`.

    The event's own process, parent, leaders, container, host and `container_sensor.{cgroup,namespaces}` are
    kept as they were, so the alert carries the evidence that placed the process in a container."""
    alert = copy.deepcopy(doc)
    source_event = doc.get("event") if isinstance(doc.get("event"), dict) else {}
    now = created or utc_now_iso()
    event = dict(alert.get("event") or {})
    identity = alert_id(rule.rule_id, str(source_event.get("id")), str(details.get("sequence_ids", "")))
    event.update({"kind": "alert", "created": now, "dataset": ALERT_DATASET, "id": identity})
    score = rule.severity_score
    if score is not None:
        event["severity"] = score
    event["risk_score"] = rule.risk_score
    alert["event"] = event
    alert["@timestamp"] = now
    stream = alert.get("data_stream")
    if isinstance(stream, dict):
        alert["data_stream"] = {**stream, "dataset": ALERT_DATASET}
    alert["rule"] = rule.rule_fields()
    alert["message"] = alert_message(rule.name, alert.get("container"))
    if rule.threat:
        alert["threat"] = ecs_threat(rule.threat)
    sensor = alert.setdefault("container_sensor", {})
    facts: dict[str, Any] = {
        "severity": rule.severity,
        "original_event": {k: source_event[k] for k in ("id", "sequence", "action") if k in source_event},
        "original_time": doc.get("@timestamp"),
        "container_evidence": container_evidence(doc),
        **{k: v for k, v in details.items() if k != "sequence_ids"},
    }
    sensor["alert"] = {k: v for k, v in facts.items() if v not in (None, "", {})}
    if rule.threat:
        # ECS `threat.*` holds parallel arrays; the tactic -> technique -> subtechnique pairing as the rule
        # file writes it is kept here
        sensor["alert"]["threat_mapping"] = copy.deepcopy(list(rule.threat))
    return alert
