"""The pipeline's counters under /metrics names, from a real pipeline fed synthetic exec records."""

from __future__ import annotations

from sensor.app import build_pipeline
from sensor.config.settings import Config
from sensor.containers.namespaces import host_namespaces
from sensor.model.records import LossRecord
from sensor.ops.metrics import pipeline_metrics
from sensor.ops.server import render_metrics
from sensor.outputs.memory import MemoryOutput
from tests.shipping_recording import exec_record


def test_names_and_values_follow_the_pipeline():
    output = MemoryOutput()
    pipeline = build_pipeline(Config(), [output], live=False)
    assert pipeline_metrics(None) == {}
    ns = host_namespaces()
    for number in range(5):
        pipeline.handle(exec_record(number, ns))
    pipeline.handle(LossRecord(ktime_ns=1, ringbuf_full=3, argv_truncated=1, argv_read_failed=0))
    values = pipeline_metrics(pipeline)
    assert values["events_seen_total"] == 6
    assert values["execs_total"] == 5
    assert values["events_emitted_total"] == len(output.docs) == 5
    assert values["events_lost_total"] == 3
    assert values["argv_truncated_total"] == 1
    assert values["alerts_total"] == 0
    assert values['output_written_total{output="memory"}'] == 5
    assert values['output_healthy{output="memory"}'] == 1
    assert values["process_table_size"] == len(pipeline.table) >= 5
    assert values["rule_errors_total"] == 0
    # Every name renders as valid exposition, counters as counters.
    text = render_metrics(values, healthy=True)
    assert "# TYPE container_sensor_events_seen_total counter" in text
    assert "# TYPE container_sensor_process_table_size gauge" in text
    assert 'container_sensor_output_written_total{output="memory"} 5.0' in text
