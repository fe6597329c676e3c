"""The ops server's answers before and after the pipeline is handed over."""

from __future__ import annotations

from types import SimpleNamespace

from sensor.ops.health import PipelineHealth


class _Output:
    def __init__(self, name: str, healthy: bool) -> None:
        self.name, self._healthy = name, healthy

    def healthy(self) -> bool:
        return self._healthy


def _pipeline(*outputs: _Output, advancing: bool = False) -> SimpleNamespace:
    check = (lambda: (True, "advancing")) if advancing else (lambda: (False, "stalled 9s"))
    return SimpleNamespace(outputs=list(outputs), heartbeat=SimpleNamespace(check=check))


def test_before_attach_not_healthy_but_live_and_no_metrics() -> None:
    health = PipelineHealth()
    assert health.health() == (False, "probe not attached yet")
    assert health.live() == (True, "starting")
    assert health.metrics() == {}


def test_after_attach_readiness_follows_the_pipeline_and_names_unhealthy_outputs() -> None:
    health = PipelineHealth()
    health.attach(_pipeline(_Output("stdout", True), _Output("elasticsearch", False)))
    assert health.health() == (False, "stalled 9s")
    assert health.live() == (False, "stalled 9s")
    # an Elasticsearch outage is said, but the node stays ready: the outage is the cluster's, the spool keeps events
    health.attach(_pipeline(_Output("stdout", True), _Output("elasticsearch", False), advancing=True))
    ready, why = health.health()
    assert ready and "outputs unhealthy: elasticsearch" in why
    health.attach(_pipeline(_Output("stdout", True), advancing=True))
    assert health.health() == (True, "probes attached, pipeline advancing, outputs healthy")
