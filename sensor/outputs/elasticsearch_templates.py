"""What `container-sensor setup elasticsearch` installs, as data: the mappings of the fields Elastic Defend's index
templates leave unmapped, and an index template for the alerts stream.

Defend's templates (`logs-endpoint.events.*`) are `dynamic: false`: a field they do not list is stored in
`_source` but cannot be searched, aggregated or used by a rule. Ours are `container_sensor.*`,
`container.runtime` and `orchestrator.*`. Fleet's index templates compose in `<type>-<dataset>@custom`, a
component template left to the user, so that is where the mappings go, one per stream the sensor writes; a
template the user already has there is merged into (their fields kept, ours added) and marked in `_meta`, so a
second run changes nothing. Where Defend is not installed, Elasticsearch's built-in `logs` template (which also
composes in `logs@custom`) takes the same streams, and the same @custom templates apply.

The alerts stream gets an index template of its own (priority 150, above the built-in `logs-*-*` at 100) so that
it is a data stream with ECS mappings on any cluster; it composes in Elasticsearch's `logs@*` and `ecs@mappings`
component templates where the cluster has them.
"""

from __future__ import annotations

import copy
from typing import Any

from sensor.outputs.elasticsearch_naming import DEFAULT_ALERTS_STREAM, DEFAULT_EVENTS_STREAM

MANAGED_BY = "container-sensor"
# the datasets documents go to by default: process events, network events (logs-endpoint.events.network-*,
# where Elastic's network rules look), alerts
DATASETS = ("endpoint.events.process", "endpoint.events.network", "container_sensor.alerts")
ALERTS_TEMPLATE = "logs-container_sensor.alerts"
ALERTS_PATTERN = "logs-container_sensor.alerts-*"
assert DEFAULT_EVENTS_STREAM.startswith(f"logs-{DATASETS[0]}-") and DEFAULT_ALERTS_STREAM.startswith(
    f"logs-{DATASETS[2]}-")

_K = {"type": "keyword", "ignore_above": 1024}
_LONG = {"type": "long"}
_UNSIGNED = {"type": "unsigned_long"}
_BOOL = {"type": "boolean"}
_DATE = {"type": "date"}


def _obj(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"properties": properties}


# Every field the sensor writes beyond what Defend maps, with its type (docs/fields.md describes each).
SENSOR_FIELDS: dict[str, Any] = {
    "container_sensor": {
        # fields added later than this list are still searchable: strings as keywords, numbers as longs
        "dynamic": True,
        "properties": {
            "args_truncated": _BOOL,
            "env_vars_truncated": _BOOL,
            "exit_signal": _LONG,
            "container_evidence": _K,
            "cgroup": _obj(id=_UNSIGNED, path=_K),
            "namespaces": _obj(**{name: _LONG for name in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")}),
            "executable": _obj(ctime_ns=_UNSIGNED, device=_LONG, inode=_UNSIGNED, path_truncated=_BOOL,
                               passed=_K, size=_LONG, head_hash=_K),
            "identity": _obj(status=_K, reason=_K),
            "alert": _obj(
                severity=_K, recognized_by=_K, evidence=_K, program=_K, implementation=_K, role=_K, reason=_K,
                rule_file=_K, container_evidence=_K, container_metadata=_K, original_time=_DATE, ssh_port=_LONG,
                original_event=_obj(id=_K, action=_K, sequence=_LONG),
                fold=_obj(count=_LONG, folded=_LONG, window_s={"type": "float"}, first_alert_id=_K,
                          first_time=_DATE, last_time=_DATE),
                threat_mapping={"type": "object", "enabled": False},  # kept as the rule wrote it, not searched
            ),
        },
    },
    "container": _obj(runtime=_K),
    "orchestrator": _obj(
        api_version=_K, namespace=_K, organization=_K, type=_K,
        cluster=_obj(id=_K, name=_K, url=_K, version=_K),
        resource=_obj(annotation=_K, id=_K, ip={"type": "ip"}, label=_K, name=_K, type=_K,
                      parent=_obj(type=_K)),
    ),
}

DYNAMIC_TEMPLATES: list[dict[str, Any]] = [
    {"container_sensor_strings": {"path_match": "container_sensor.*", "match_mapping_type": "string",
                                  "mapping": _K}},
    {"container_sensor_numbers": {"path_match": "container_sensor.*", "match_mapping_type": "long",
                                  "mapping": _LONG}},
]


def custom_template_name(dataset: str) -> str:
    return f"logs-{dataset}@custom"


def merge_properties(theirs: dict[str, Any], ours: dict[str, Any], path: str = "") -> list[str]:
    """Adds OURS into THEIRS in place, never replacing what is there; returns the fields where both name
    different types (left as they are: the user's mapping wins)."""
    conflicts: list[str] = []
    for name, mapping in ours.items():
        dotted = f"{path}{name}"
        if name not in theirs:
            theirs[name] = copy.deepcopy(mapping)
            continue
        existing = theirs[name]
        if "properties" in mapping and "properties" in existing:
            conflicts += merge_properties(existing["properties"], mapping["properties"], dotted + ".")
        elif existing.get("type", "object") != mapping.get("type", "object"):
            conflicts.append(f"{dotted}: {existing.get('type', 'object')} there, {mapping.get('type', 'object')} "
                             "here")
    return conflicts


def custom_component_template(existing: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The body to PUT as a `@custom` component template: EXISTING (the body GET returned, or None) with our
    mappings merged in; and the conflicts left as the user had them."""
    body = copy.deepcopy(existing) if existing else {}
    body.pop("name", None)
    template = body.setdefault("template", {})
    mappings = template.setdefault("mappings", {})
    properties = mappings.setdefault("properties", {})
    conflicts = merge_properties(properties, SENSOR_FIELDS)
    dynamic = mappings.setdefault("dynamic_templates", [])
    present = {next(iter(entry)) for entry in dynamic if isinstance(entry, dict) and entry}
    dynamic += [copy.deepcopy(entry) for entry in DYNAMIC_TEMPLATES if next(iter(entry)) not in present]
    meta = body.setdefault("_meta", {})
    meta["managed_by"] = meta.get("managed_by") or MANAGED_BY
    meta["container_sensor_fields"] = True
    return body, conflicts


def alerts_index_template() -> dict[str, Any]:
    return {
        "index_patterns": [ALERTS_PATTERN],
        "data_stream": {},
        "priority": 150,
        "composed_of": ["logs@mappings", "logs@settings", "ecs@mappings", "logs@custom",
                        custom_template_name(DATASETS[2])],
        # clusters older than 8.13 lack ecs@mappings, older than 8.9 the logs@* ones
        "ignore_missing_component_templates": ["logs@mappings", "logs@settings", "ecs@mappings", "logs@custom"],
        "_meta": {"managed_by": MANAGED_BY, "description": "alerts of container-sensor"},
    }


# What the sensor's API key needs, per stream pattern: create documents, and create the data stream on first
# write. Nothing else (no read, no index management).
WRITE_PRIVILEGES = ("create_doc", "auto_configure")


def api_key_role(streams: tuple[str, ...]) -> dict[str, Any]:
    """The role descriptor of a least-privilege API key for streams STREAMS (docs/elasticsearch.md)."""
    return {"container-sensor-writer": {"cluster": ["monitor"],
                                        "indices": [{"names": list(streams), "privileges": list(WRITE_PRIVILEGES)}]}}
