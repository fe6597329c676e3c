"""The golden replay: the committed recording of a mixed workload (host execs with hostile argv, nested shells
and sessions, a tty session, signal exits, a podman container with ssh, a folded repeat and a renamed ssh copy)
replays to the committed documents, byte for byte, except the fields tests/golden_replay.py neutralises.

Replay needs neither root nor BPF. When a deliberate behaviour change makes these fail, re-make the fixture with
scripts/make_golden.py (tests/fixtures/golden/README.md) and review the diff of expected.ndjson.
"""

from __future__ import annotations

import json

import pytest

from tests.golden_replay import (
    EXPECTED_COMPACT,
    EXPECTED_NDJSON,
    EXPECTED_RULE_ALERTS,
    EXPECTED_SUMMARY,
    PLACEHOLDER,
    RECORDING,
    SHARED_RULES,
    describe_difference,
    is_loaded_rule_alert,
    normalise_compact_line,
    normalise_ndjson_line,
    read_expected,
    replay,
)


@pytest.fixture(scope="module")
def ndjson_replay():
    return replay(RECORDING, "ndjson")


def test_replay_reproduces_the_golden_documents_byte_for_byte(ndjson_replay) -> None:
    expected = read_expected(EXPECTED_NDJSON)
    difference = describe_difference(expected, ndjson_replay.lines)
    assert difference is None, difference


def test_replay_reproduces_the_golden_summary_line(ndjson_replay) -> None:
    assert ndjson_replay.summary == EXPECTED_SUMMARY.read_text(encoding="utf-8").strip(), ndjson_replay.stderr


def test_compact_replay_reproduces_the_golden_lines() -> None:
    expected = read_expected(EXPECTED_COMPACT)
    difference = describe_difference(expected, replay(RECORDING, "compact").lines, what="compact")
    assert difference is None, difference


def test_the_golden_holds_the_workload_it_claims(ndjson_replay) -> None:
    """A fixture re-made from a workload that lost a part must not pass unnoticed."""
    docs = [json.loads(line) for line in ndjson_replay.lines]
    alerts = [d for d in docs if d["event"]["kind"] == "alert"]
    events = [d for d in docs if d["event"]["kind"] == "event"]
    in_container = [d for d in events if d.get("container", {}).get("runtime") == "podman"]
    assert in_container, "no podman container process"
    assert any(d["process"].get("name") == "ssh" and not d.get("container") for d in events), "no host ssh"
    assert alerts and all(a.get("container", {}).get("id") for a in alerts), "ssh alerts only from the container"
    assert {a["process"]["name"] for a in alerts} == {"ssh"}, "offline only the name-based alert can be raised"
    assert any(a["container_sensor"]["alert"]["fold"].get("folded") for a in alerts), "no folded repeat"
    assert any(d["container_sensor"].get("identity", {}).get("status") == "unknown" for d in in_container)
    assert any(d["container_sensor"].get("exit_signal") for d in events), "no exit by signal"
    assert any(d["process"].get("tty") for d in events), "no process on a terminal"
    assert any(d["process"].get("entry_leader", {}).get("entry_meta", {}).get("type") == "container"
               for d in in_container)
    assert any("\\xff" in arg for d in events for arg in d["process"].get("args", [])), "no invalid UTF-8 argv"


# The normalisation itself: it changes the named fields and no other byte.

_EVENT = ('{"@timestamp":"2026-12-02T10:00:00.000001Z","event":{"kind":"event","created":"2026-12-02T11:11:11.1Z",'
          '"id":"abc","sequence":1},"host":{"hostname":"h","name":"h","architecture":"x86_64","os":{"type":"linux",'
          '"kernel":"6.18","name":"Debian","family":"debian","platform":"debian","version":"12"},"id":"m",'
          '"ip":["10.0.0.1"],"mac":["AA-BB"]},"agent":{"type":"container-sensor","version":"1","name":"h","id":"m"},'
          '"process":{"args":["a\\"created\\":\\"x","\\u001b"]},"container_sensor":{"identity":{"status":"unknown",'
          '"reason":"replaced"}}}')


def test_normalisation_changes_only_the_named_fields() -> None:
    out = normalise_ndjson_line(_EVENT)
    doc = json.loads(out)
    assert doc["@timestamp"] == "2026-12-02T10:00:00.000001Z"  # an event's time comes from the recording
    assert doc["event"]["created"] == PLACEHOLDER
    assert doc["host"] == {"hostname": "h", "name": "h", "architecture": PLACEHOLDER,
                           "os": {"type": "linux", "kernel": PLACEHOLDER, "name": PLACEHOLDER,
                                  "family": PLACEHOLDER, "platform": PLACEHOLDER}}
    assert doc["agent"]["id"] == PLACEHOLDER and doc["agent"]["version"] == "1"
    assert doc["container_sensor"]["identity"] == {"status": "unknown", "reason": PLACEHOLDER}
    # a key-like text inside a string and an escape are left as they were, byte for byte
    assert '"args":["a\\"created\\":\\"x","\\u001b"]' in out
    assert normalise_ndjson_line(out) == out


def test_normalisation_replaces_the_time_of_alerts_only() -> None:
    alert = _EVENT.replace('"kind":"event"', '"kind":"alert"')
    assert json.loads(normalise_ndjson_line(alert))["@timestamp"] == PLACEHOLDER
    assert normalise_compact_line("10:00:00.000 ALERT SSH [podman:a] pid=1") == "<replay> ALERT SSH [podman:a] pid=1"
    assert normalise_compact_line("10:00:00.000 exec  [host] pid=1") == "10:00:00.000 exec  [host] pid=1"


def test_a_change_anywhere_else_is_reported_with_its_line_and_field() -> None:
    expected = [normalise_ndjson_line(_EVENT)]
    renamed = [expected[0].replace('"sequence":1', '"seq":1')]
    assert "event.sequence: missing" in describe_difference(expected, renamed)
    reordered = [expected[0].replace('"id":"abc","sequence":1', '"sequence":1,"id":"abc"')]
    assert "event: member order" in describe_difference(expected, reordered)
    spaced = [expected[0].replace('"id":"abc"', '"id": "abc"')]
    assert "same content, different bytes" in describe_difference(expected, spaced)
    escaped = [expected[0].replace("\\u001b", "\\u001B")]
    assert "line 1 differs" in describe_difference(expected, escaped)
    assert "2 document lines instead of 1" in describe_difference(expected, expected * 2)


@pytest.mark.skipif(not SHARED_RULES.is_dir(), reason=f"{SHARED_RULES} is not here")
def test_replay_with_the_elastic_rules_adds_their_alerts_and_changes_nothing_else() -> None:
    lines = replay(RECORDING, "ndjson", SHARED_RULES).lines
    others = [line for line in lines if not is_loaded_rule_alert(line)]
    difference = describe_difference(read_expected(EXPECTED_NDJSON), others)
    assert difference is None, f"with the rules loaded: {difference}"
    alerts = [line for line in lines if is_loaded_rule_alert(line)]
    difference = describe_difference(read_expected(EXPECTED_RULE_ALERTS), alerts, what="rule alert")
    assert difference is None, difference
    # each goes out right after its event (or after other alerts on it); a fold summary goes out at the end
    for index, line in enumerate(lines):
        details = json.loads(line)["container_sensor"].get("alert", {})
        if is_loaded_rule_alert(line) and not details["fold"].get("folded"):
            source = details["original_event"]["id"]
            before = index - 1
            while is_loaded_rule_alert(lines[before]) or json.loads(lines[before])["event"]["kind"] == "alert":
                before -= 1
            assert json.loads(lines[before])["event"]["id"] == source, f"line {index + 1} is not after its event"
