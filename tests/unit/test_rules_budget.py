"""The per-event rule evaluation budget: past it the rules left are skipped for that event, counted, logged once."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sensor.rules.detector import Detector
from sensor.rules.eql_compile import CompiledQuery, compile_query
from sensor.rules.eql_parse import parse_query
from sensor.rules.loader import LoadedRule
from sensor.rules.metadata import RuleMetadata
from tests.unit.rules_docs import container_ssh_exec, host_ssh_exec

BUILTIN = "SSH Client or Server Started Inside a Container"


def rule(query: str, name: str) -> LoadedRule:
    meta = RuleMetadata(rule_id=name, name=name, description="", severity="low", risk_score=21)
    return LoadedRule(Path(f"{name}.toml"), meta, query, compile_query(parse_query(query)))


class SteppingClock:
    """A budget clock that moves `step` seconds each time it is read: each rule evaluated costs one step."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def five_rules() -> list[LoadedRule]:
    return [rule('process where process.pid > 0', f"r{i}") for i in range(5)]


def test_rules_past_the_budget_are_skipped_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppingClock(0.02)   # deadline = first reading + 50 ms: the third check is past it
    detector = Detector(five_rules(), builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05, budget_clock=clock)
    with caplog.at_level(logging.WARNING, logger="sensor.rules.detector"):
        alerts = detector.evaluate(host_ssh_exec())
        clock.now = 0.0
        detector.evaluate(host_ssh_exec())
    assert [a["rule"]["name"] for a in alerts] == ["r0", "r1"]
    stats = detector.stats()
    assert stats["rule_budget_exceeded"] == 2 and stats["rules_skipped_budget"] == 6
    lines = [r.getMessage() for r in caplog.records if "budget" in r.getMessage()]
    assert len(lines) == 1 and "50 ms" in lines[0] and "3 rules left" in lines[0] and "\n" not in lines[0]


def test_within_the_budget_nothing_is_skipped() -> None:
    detector = Detector(five_rules(), builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05,
                        budget_clock=SteppingClock(0.001))
    assert len(detector.evaluate(host_ssh_exec())) == 5
    assert detector.stats()["rule_budget_exceeded"] == 0 and detector.stats()["rules_skipped_budget"] == 0


def test_no_budget_evaluates_everything() -> None:
    detector = Detector(five_rules(), builtin_ssh=False, fold_window_s=0, rule_budget_s=None,
                        budget_clock=SteppingClock(10.0))
    assert len(detector.evaluate(host_ssh_exec())) == 5
    assert detector.stats()["rule_budget_exceeded"] == 0


def test_rules_skipped_by_process_name_cost_no_clock_reading() -> None:
    clock = SteppingClock(0.02)
    rules = [rule('process where process.name == "nothing-runs-this" and process.pid > 0', f"n{i}")
             for i in range(20)]
    detector = Detector([*rules, *five_rules()], builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05,
                        budget_clock=clock)
    assert [a["rule"]["name"] for a in detector.evaluate(host_ssh_exec())] == ["r0", "r1"]
    assert detector.stats()["rules_skipped_budget"] == 3


def test_sequences_count_against_the_budget_too() -> None:
    sequence = rule('sequence by process.entity_id [process where process.pid > 0] '
                    '[process where process.pid > 0]', "seq")
    detector = Detector([*five_rules(), sequence], builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05,
                        budget_clock=SteppingClock(0.02))
    detector.evaluate(host_ssh_exec())
    assert detector.stats()["rules_skipped_budget"] == 4   # r2, r3, r4 and the sequence
    assert detector.stats()["sequence_partials"] == 0


def test_the_builtin_ssh_rule_is_not_subject_to_the_budget() -> None:
    detector = Detector(five_rules(), fold_window_s=0, rule_budget_s=0.0, budget_clock=SteppingClock(1.0))
    alerts = detector.evaluate(container_ssh_exec())
    assert [a["rule"]["name"] for a in alerts] == [BUILTIN]
    assert detector.stats()["rules_skipped_budget"] == 5


def test_a_slow_rule_on_the_real_clock_stops_the_rest() -> None:
    """With the default clock: rules that each take 30 ms, a 50 ms budget; the event is done in about 60 ms."""
    def slow(doc: dict) -> bool:
        time.sleep(0.03)
        return True

    slow_rules = [replace(rule('process where process.pid > 0', f"s{i}"), compiled=CompiledQuery(predicate=slow))
                  for i in range(10)]
    detector = Detector(slow_rules, builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05)
    start = time.perf_counter()
    alerts = detector.evaluate(host_ssh_exec())
    took = time.perf_counter() - start
    stats = detector.stats()
    assert stats["rule_budget_exceeded"] == 1
    assert 1 <= len(alerts) <= 2 and stats["rules_skipped_budget"] == 10 - len(alerts)
    assert took < 0.25


def test_the_default_budget_is_50_ms_and_the_counters_are_in_stats() -> None:
    detector = Detector([], builtin_ssh=False)
    assert detector._budget_s == 0.05
    assert {"rule_budget_exceeded", "rules_skipped_budget"} <= set(detector.stats())
