"""The ops server's answers before and after the pipeline is handed over."""

from __future__ import annotations

from types import SimpleNamespace

from sensor.ops.health import PipelineHealth


class _Output:
    def __init__(self, name: str, healthy: bool) -> None:
        self.name, self._healthy = name, healthy

    def healthy(self) -> bool:
        return self._healthy


def _pipeline(*outputs: _Output) -> SimpleNamespace:
    return SimpleNamespace(outputs=list(outputs), heartbeat=SimpleNamespace(check=lambda: (False, "stalled 9s")))


def test_before_attach_not_healthy_but_live_and_no_metrics() -> None:
    health = PipelineHealth()
    assert health.health() == (False, "probe not attached yet")
    assert health.live() == (True, "starting")
    assert health.metrics() == {}


def test_after_attach_names_unhealthy_outputs_and_follows_the_heartbeat() -> None:
    health = PipelineHealth()
    health.attach(_pipeline(_Output("stdout", True), _Output("elasticsearch", False)))
    assert health.health() == (False, "outputs unhealthy: elasticsearch")
    assert health.live() == (False, "stalled 9s")
    health.attach(_pipeline(_Output("stdout", True)))
    assert health.health() == (True, "probes attached, outputs healthy")
