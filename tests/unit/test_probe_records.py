"""Records the probe hands over: a broken one or one the pipeline fails on is counted as lost, never fatal."""

from __future__ import annotations

from sensor.probe import layout as probe_layout
from sensor.probe.loader import Probe, ProbeOptions

# Records are handed to `_handle` directly: nothing is loaded, so the options' values do not matter.
UNLOADED = ProbeOptions(ringbuf_pages=1, args_max=512, ring_reader="auto")


def test_a_record_the_pipeline_fails_on_is_counted_and_the_next_one_still_delivered() -> None:
    seen = []

    def on_record(record) -> None:
        seen.append(record)
        if len(seen) == 1:
            raise KeyError("a bug in a later stage")

    probe = Probe(on_record, UNLOADED)
    exit_record = probe_layout.EXIT.pack(probe_layout.RECORD_EXIT, probe_layout.EXIT.size, 5, 100, 0, 555, 0, 0)
    probe._handle(exit_record)  # private: what both ring readers call per record
    probe._handle(exit_record)
    probe._handle(b"\x01\x00")  # private: shorter than any header
    assert (probe.records, probe.handler_errors, probe.decode_errors) == (2, 1, 1)
    assert len(seen) == 2
