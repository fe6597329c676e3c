"""What /metrics, /healthz and /livez answer, read from the running pipeline.

The ops server starts before the probe loads (so /healthz can say "not attached yet"); the app hands the pipeline
over once it runs. Here, not in the command line, is where the pipeline's outputs and heartbeat are read.
"""

from __future__ import annotations

from typing import Any

from sensor.ops.metrics import pipeline_metrics


class PipelineHealth:
    """The ops server's view of one pipeline; answers "starting" until `attach` is called."""

    def __init__(self) -> None:
        # Written once by the pipeline's thread, read by the server's; one reference assignment needs no lock.
        self._pipeline: Any = None

    def attach(self, pipeline: Any) -> None:
        self._pipeline = pipeline

    def metrics(self) -> dict[str, float]:
        return pipeline_metrics(self._pipeline)

    def histograms(self) -> dict[str, Any]:
        pipeline = self._pipeline
        if pipeline is None or not hasattr(pipeline, "exec_latency"):
            return {}
        return {"exec_to_document_seconds": pipeline.exec_latency.snapshot(),
                "exec_to_alert_seconds": pipeline.alert_latency.snapshot()}

    def health(self) -> tuple[bool, str]:
        """Readiness: the probes are attached and the pipeline advances. An output's trouble is said in the answer
        but does not fail it: an Elasticsearch outage reaches every node at once, and marking them all NotReady
        would say nothing the output's own metrics do not, while the spool already keeps the events."""
        pipeline = self._pipeline
        if pipeline is None:
            return False, "probe not attached yet"
        flowing, why = pipeline.heartbeat.check()
        if not flowing:
            return False, why
        unhealthy = [o.name for o in pipeline.outputs if not o.healthy()]
        if unhealthy:
            return True, f"probes attached, pipeline advancing; outputs unhealthy: {', '.join(unhealthy)} " \
                         "(see container_sensor_output_healthy)"
        return True, "probes attached, pipeline advancing, outputs healthy"

    def live(self) -> tuple[bool, str]:
        pipeline = self._pipeline
        return (True, "starting") if pipeline is None else pipeline.heartbeat.check()
