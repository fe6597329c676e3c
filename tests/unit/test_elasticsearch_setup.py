"""`setup elasticsearch` and `test output` against the local Elasticsearch stand-in (templates and privileges
APIs as Elasticsearch answers them), through the command line as a user runs them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from sensor.cli import main
from sensor.outputs.elasticsearch_settings import ElasticsearchSettings
from sensor.outputs.elasticsearch_setup import check_output, setup_elasticsearch, stream_patterns
from sensor.outputs.elasticsearch_templates import SENSOR_FIELDS, custom_component_template
from tests.es_server import EsServer

STREAMS = ("logs-endpoint.events.process-*", "logs-endpoint.events.network-*", "logs-container_sensor.alerts-*")


@pytest.fixture
def server() -> Iterator[EsServer]:
    with EsServer(version="8.17.0") as running:
        yield running


def cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def test_setup_installs_the_custom_templates_and_the_alerts_template_once(server: EsServer) -> None:
    first = cli("setup", "elasticsearch", "--url", server.url)
    assert first.exit_code == 0, first.output
    assert set(server.component_templates) == {"logs-endpoint.events.process@custom",
                                               "logs-endpoint.events.network@custom",
                                               "logs-container_sensor.alerts@custom"}
    process = server.component_templates["logs-endpoint.events.process@custom"]["template"]["mappings"]
    assert process["properties"]["container"]["properties"]["runtime"]["type"] == "keyword"
    assert process["properties"]["orchestrator"]["properties"]["resource"]["properties"]["ip"]["type"] == "ip"
    sensor = process["properties"]["container_sensor"]["properties"]
    assert sensor["cgroup"]["properties"]["id"]["type"] == "unsigned_long"
    assert sensor["alert"]["properties"]["original_time"]["type"] == "date"
    alerts = server.index_templates["logs-container_sensor.alerts"]
    assert alerts["index_patterns"] == ["logs-container_sensor.alerts-*"] and alerts["data_stream"] == {}
    assert alerts["priority"] > 100  # above Elasticsearch's built-in logs-*-*
    puts = server.counters["component_template_puts"]
    again = cli("setup", "elasticsearch", "--url", server.url)
    assert again.exit_code == 0 and "up to date" in again.output
    assert server.counters["component_template_puts"] == puts  # a second run changes nothing


def test_setup_merges_into_the_users_own_custom_template(server: EsServer) -> None:
    server.component_templates["logs-endpoint.events.process@custom"] = {
        "template": {"settings": {"index": {"number_of_replicas": 2}},
                     "mappings": {"properties": {"labels": {"properties": {"team": {"type": "keyword"}}},
                                                 "container": {"properties": {"runtime": {"type": "text"}}}}}}}
    result = cli("setup", "elasticsearch", "--url", server.url)
    assert result.exit_code == 0, result.output
    merged = server.component_templates["logs-endpoint.events.process@custom"]["template"]
    assert merged["settings"] == {"index": {"number_of_replicas": 2}}
    assert merged["mappings"]["properties"]["labels"]["properties"]["team"] == {"type": "keyword"}
    assert merged["mappings"]["properties"]["container"]["properties"]["runtime"] == {"type": "text"}  # theirs
    assert "container_sensor" in merged["mappings"]["properties"]
    assert "kept your mapping of container.runtime: text there, keyword here" in result.output


def test_setup_needs_its_privileges_and_says_why_not(server: EsServer) -> None:
    server.api_key = "c2Vuc29yOmtleQ=="
    result = cli("setup", "elasticsearch", "--url", server.url)
    assert result.exit_code == 1
    assert "401" in result.output and "Traceback" not in result.output
    assert server.component_templates == {}


def test_setup_without_a_url_is_a_configuration_error() -> None:
    result = cli("setup", "elasticsearch")
    assert result.exit_code == 2 and "no Elasticsearch URL" in result.output


def test_dry_run_prints_the_bodies_and_connects_to_nothing() -> None:
    result = cli("setup", "elasticsearch", "--dry-run")
    assert result.exit_code == 0
    plan = json.loads(result.output)
    assert "_index_template/logs-container_sensor.alerts" in plan
    assert plan["_component_template/logs-endpoint.events.network@custom"]["_meta"]["managed_by"] == "container-sensor"


def test_test_output_passes_with_the_least_privileges_and_writes_nothing(server: EsServer) -> None:
    server.privileges = ({"monitor"}, {s: {"create_doc", "auto_configure"} for s in STREAMS})
    result = cli("test", "output", "--url", server.url)
    assert result.exit_code == 0, result.output
    assert "Elasticsearch 8.17.0" in result.output
    assert "create_doc on logs-container_sensor.alerts-*: granted" in result.output
    assert server.count() == 0 and server.counters["bulk_requests"] == 0


def test_test_output_names_each_missing_privilege(server: EsServer) -> None:
    server.privileges = (set(), {"logs-endpoint.events.process-*": {"create_doc"}})
    result = cli("test", "output", "--url", server.url)
    assert result.exit_code == 1
    assert "cluster privilege monitor: MISSING" in result.output
    assert "auto_configure on logs-endpoint.events.process-*: MISSING" in result.output
    assert "create_doc on logs-container_sensor.alerts-*: MISSING" in result.output


def test_test_output_on_a_cluster_without_security(server: EsServer) -> None:
    server.privileges = None
    result = cli("test", "output", "--url", server.url)
    assert result.exit_code == 0 and "security is off" in result.output


def test_test_output_when_nothing_answers() -> None:
    result = cli("test", "output", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 1 and "ConnectionError" in result.output and "Traceback" not in result.output


def test_configured_streams_are_the_ones_checked() -> None:
    settings = ElasticsearchSettings(url="http://es:9200", events_stream="logs-endpoint.events.process-prod",
                                     alerts_stream="sensor-alerts")
    assert stream_patterns(settings) == ("logs-endpoint.events.process-prod", "sensor-alerts")


def test_every_field_the_golden_documents_carry_is_mapped() -> None:
    """Each container_sensor/orchestrator/container.runtime leaf of a real replay has an explicit mapping."""
    from pathlib import Path

    golden = Path(__file__).resolve().parents[1] / "fixtures/golden"
    leaves: set[str] = set()

    def walk(value: object, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for inner in value:
                walk(inner, path)
        elif path.startswith(("container_sensor.", "orchestrator.", "container.runtime")):
            leaves.add(path)

    for name in ("expected.ndjson", "expected.rules.ndjson"):
        for line in (golden / name).read_text().splitlines():
            walk(json.loads(line), "")
    mapped = custom_component_template(None)[0]["template"]["mappings"]["properties"]

    def has(path: str) -> bool:
        node: dict = {"properties": mapped}
        for part in path.split("."):
            props = node.get("properties") or {}
            if part not in props:
                return node.get("enabled") is False  # an object kept unsearched on purpose
            node = props[part]
        return True

    assert leaves and [leaf for leaf in sorted(leaves) if not has(leaf)] == []
    assert set(SENSOR_FIELDS) == {"container_sensor", "container", "orchestrator"}


def test_the_documented_api_key_role_is_the_least_test_output_asks_for() -> None:
    import re
    from pathlib import Path

    from sensor.outputs.elasticsearch_templates import api_key_role

    doc = (Path(__file__).resolve().parents[2] / "docs/elasticsearch.md").read_text()
    body = re.search(r"POST /_security/api_key\n(\{.*?\n\})", doc, re.S).group(1)
    documented = json.loads(body)["role_descriptors"]
    assert documented == api_key_role(stream_patterns(ElasticsearchSettings(url="http://es:9200")))


def test_reports_are_plain_functions_too(server: EsServer) -> None:
    settings = ElasticsearchSettings(url=server.url)
    assert setup_elasticsearch(settings).ok and check_output(settings).ok
