"""The pipeline's counters under the names /metrics documents (docs/operations.md).

One function reads a finished pipeline's stats (its own, the process table's, each output's, the resolver's
and the detector's) and names them for Prometheus: `_total` for counters, labels for per-output values. The
ops server adds the `container_sensor_` prefix.
"""

from __future__ import annotations

from typing import Any

# PipelineStats field -> counter name.
PIPELINE_COUNTERS = {
    "records": "events_seen_total",
    "documents": "events_emitted_total",
    "documents_filtered": "events_filtered_total",
    "kernel_lost": "events_lost_total",
    "execs": "execs_total",
    "forks": "forks_total",
    "exits": "exits_total",
    "cgroup_events": "cgroup_events_total",
    "already_running": "already_running_total",
    "fork_documents": "fork_documents_total",
    "module_loads": "module_loads_total",
    "uid_changes": "uid_changes_total",
    "gid_changes": "gid_changes_total",
    "session_id_changes": "session_id_changes_total",
    "connections_attempted": "connections_attempted_total",
    "connections_accepted": "connections_accepted_total",
    "connections_unattributed": "connections_unattributed_total",
    "alerts": "alerts_total",
    "alerts_held": "alerts_held_total",
    "alerts_without_metadata": "alerts_without_metadata_total",
    "output_errors": "output_errors_total",
    "argv_truncated": "argv_truncated_total",
    "argv_read_failed": "argv_read_failed_total",
    "path_truncated": "path_truncated_total",
}


def label_value(text: str) -> str:
    """TEXT as a Prometheus label value: backslash, double quote and newline escaped, as the format asks."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _stats(stage: Any) -> dict[str, Any]:
    if stage is None:
        return {}
    try:
        return dict(stage.stats())
    except Exception:  # a stage that cannot report must not take /metrics down with it
        return {}


def pipeline_metrics(pipeline: Any) -> dict[str, float]:
    """{metric name: value} for OpsServer; empty before the pipeline exists."""
    if pipeline is None:
        return {}
    values: dict[str, float] = {}
    stats = pipeline.stats.as_dict()
    for field_name, metric in PIPELINE_COUNTERS.items():
        if field_name in stats:
            values[metric] = stats[field_name]
    values["process_table_size"] = len(pipeline.table)
    heartbeat = getattr(pipeline, "heartbeat", None)
    if heartbeat is not None:
        age = heartbeat.age()
        if age is not None:  # the loop is running (not a replay, not before the probe attached)
            values["pipeline_last_progress_seconds"] = round(age, 3)
            backlog = heartbeat.backlog()
            if backlog is not None:
                values["ringbuf_backlog_bytes"] = backlog

    for output in pipeline.outputs:
        out = _stats(output)
        label = f'{{output="{output.name}"}}'
        values[f"output_written_total{label}"] = out.get("delivered", out.get("written", 0))
        values[f"output_dropped_total{label}"] = out.get("dropped", 0)
        if "queued" in out:
            values[f"output_queue_depth{label}"] = out["queued"]
        if "spool_bytes" in out:
            values[f"spool_bytes{label}"] = out["spool_bytes"]
        for key in ("spool_dropped_corrupt", "spool_damaged_unknown", "spool_quarantined"):
            if key in out:
                values[f"{key}_total{label}"] = out[key]
        if output.name == "elasticsearch" or "bulk_failures" in out:
            # Failed bulk requests, and documents Elasticsearch rejected (kept in the dead-letter file).
            values["elasticsearch_errors_total"] = out.get("bulk_failures", 0) + out.get("dead_lettered", 0)
        values[f"output_healthy{label}"] = 1 if output.healthy() else 0

    by_rule = getattr(getattr(pipeline, "detector", None), "alerts_by_rule", None)
    if isinstance(by_rule, dict):
        for rule_name, count in list(by_rule.items()):
            values[f'rule_alerts_total{{rule="{label_value(str(rule_name))}"}}'] = count
    detector = _stats(getattr(pipeline, "detector", None))
    if detector:
        values["rule_errors_total"] = detector.get("rule_errors", 0) + detector.get("detector_errors", 0)
        values["rules_loaded"] = detector.get("rules_loaded", 0)
    resolver = _stats(getattr(pipeline, "resolver", None))
    if resolver:
        values["container_cache_size"] = resolver.get("resolved_cached_entries", 0)
        values["cgroups_known"] = resolver.get("cgroups_known", 0)
    accounts = _stats(getattr(pipeline, "accounts", None))
    # Everything else the stages count, under their own names, for debugging.
    for part, detail in (("resolver", resolver), ("detector", detector), ("containers", accounts)):
        for key, value in detail.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                values[f"{part}_{key}"] = value
    return values
