from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sensor import __version__
from sensor.ops.server import OpsServer, main, probe, render_metrics


def get(server: OpsServer, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://{server.address}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


class Pipeline:
    """Stands in for the pipeline's two callables; its state changes the way the real one's does."""

    def __init__(self) -> None:
        self.attached = False
        self.counters = {"events_seen_total": 0, "output_queue_depth": 0}

    def metrics(self) -> dict[str, float]:
        return dict(self.counters)

    def health(self) -> tuple[bool, str]:
        return (True, "probes attached, outputs healthy") if self.attached else (False, "probes not attached")


@pytest.fixture
def pipeline_server():
    pipeline = Pipeline()
    server = OpsServer("127.0.0.1:0", pipeline.metrics, pipeline.health)
    server.start()
    yield pipeline, server
    server.stop()


def test_healthz_follows_the_pipeline(pipeline_server):
    pipeline, server = pipeline_server
    assert server.port != 0
    assert get(server, "/healthz")[0::2] == (503, "unhealthy: probes not attached\n")
    pipeline.attached = True
    assert get(server, "/healthz")[0::2] == (200, "ok: probes attached, outputs healthy\n")
    # Liveness does not follow readiness: an Elasticsearch outage must not restart the sensor.
    pipeline.attached = False
    assert get(server, "/livez")[0] == 200


def _families(body: str) -> dict[str, Any]:
    """The exposition as Prometheus reads it: prometheus_client's own parser."""
    return {family.name: family for family in text_string_to_metric_families(body)}


def _value(families: dict[str, Any], name: str, **labels: str) -> float:
    base = name.removesuffix("_total")
    (sample,) = [s for s in families[base].samples if s.name == name and s.labels == labels]
    return sample.value


def test_metrics_exposition(pipeline_server):
    pipeline, server = pipeline_server
    pipeline.counters.update({"events_seen_total": 12345, "output_queue_depth": 7, "spool_bytes": 1.5})
    pipeline.counters['output_errors_total{output="elasticsearch"}'] = 3
    status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = _families(body)
    assert families["container_sensor_events_seen"].type == "counter"
    assert _value(families, "container_sensor_events_seen_total") == 12345
    assert families["container_sensor_output_queue_depth"].type == "gauge"
    assert _value(families, "container_sensor_output_queue_depth") == 7
    assert _value(families, "container_sensor_spool_bytes") == 1.5
    assert _value(families, "container_sensor_output_errors_total", output="elasticsearch") == 3
    assert _value(families, "container_sensor_healthy") == 0
    assert _value(families, "container_sensor_info", version=__version__) == 1
    # the standard metrics of the sensor's own process, as every exporter has them
    assert _value(families, "process_resident_memory_bytes") > 0
    assert families["process_cpu_seconds"].type == "counter"
    assert "python_info" in families


def test_metrics_reflect_new_values(pipeline_server):
    pipeline, server = pipeline_server
    pipeline.counters["events_seen_total"] = 1
    assert _value(_families(get(server, "/metrics")[2]), "container_sensor_events_seen_total") == 1
    pipeline.counters["events_seen_total"] = 2
    assert _value(_families(get(server, "/metrics")[2]), "container_sensor_events_seen_total") == 2


def test_latency_histograms_as_prometheus_histograms() -> None:
    from sensor.pipeline import LatencyHistogram

    exec_latency = LatencyHistogram()
    for delay_ms in (0.5, 3, 3, 40, 20_000):
        exec_latency.observe_ns(int(delay_ms * 1e6))
    body = render_metrics({}, True, {"exec_to_document_seconds": exec_latency.snapshot()})
    family = _families(body)["container_sensor_exec_to_document_seconds"]
    assert family.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert (buckets["0.001"], buckets["0.005"], buckets["0.05"], buckets["10.0"], buckets["+Inf"]) == (1, 3, 4, 4, 5)
    (count,) = [s.value for s in family.samples if s.name.endswith("_count")]
    assert count == 5


def test_render_skips_what_prometheus_cannot_take():
    values = {"bad name": 1, "ok_total": 2, "text_value": "x", "bad_labels{x=1}": 3}
    text = render_metrics({**values, "container_sensor_x": float("nan")}, healthy=True)
    assert "bad name" not in text and "text_value" not in text and "bad_labels" not in text
    assert "container_sensor_ok_total 2.0" in text
    assert "container_sensor_x NaN" in text  # an already prefixed name is not prefixed twice
    assert "container_sensor_healthy 1.0" in text


def test_failing_callable_answers_500_and_server_survives():
    def broken() -> dict[str, float]:
        raise RuntimeError("pipeline gone")

    server = OpsServer("127.0.0.1:0", broken, lambda: (True, "fine"))
    server.start()
    try:
        status, _, body = get(server, "/metrics")
        assert status == 500 and "pipeline gone" in body
        assert get(server, "/healthz")[0] == 200
        assert get(server, "/nope")[0] == 404
    finally:
        server.stop()


def test_stop_releases_the_port_and_ends_the_thread():
    server = OpsServer("127.0.0.1:0", dict, lambda: (True, "ok"))
    server.start()
    port = server.port
    server.stop()
    assert not any(thread.name == "ops-server" for thread in threading.enumerate())
    with socket.create_server(("127.0.0.1", port)):
        pass  # the address is free again
    server.stop()  # a second stop is harmless


def test_address_in_use_raises_on_start():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = OpsServer(f"127.0.0.1:{port}", dict, lambda: (True, "ok"))
        with pytest.raises(OSError):
            server.start()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback address")
    server = OpsServer("[::1]:0", dict, lambda: (True, "ok"))
    server.start()
    try:
        assert probe(server.address) == (True, "ok: ok\n")
    finally:
        server.stop()


def test_probe_client(pipeline_server, monkeypatch, capsys):
    pipeline, server = pipeline_server
    monkeypatch.setenv("CONTAINER_SENSOR_METRICS_ADDRESS", server.address)
    assert main([]) == 1
    assert capsys.readouterr().out == "unhealthy: probes not attached\n"
    pipeline.attached = True
    assert main(["/healthz"]) == 0
    port = server.port
    server.stop()
    ok, message = probe(f"127.0.0.1:{port}")
    assert not ok and message.startswith(f"no answer from 127.0.0.1:{port}")
