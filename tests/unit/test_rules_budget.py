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
    """A clock that moves `step` seconds each time it is read: each rule evaluated costs one step. Given as both
    the wall and the CPU clock, it is a thread that never waits."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def five_rules() -> list[LoadedRule]:
    return [rule('process where process.pid > 0', f"r{i}") for i in range(5)]


def budgeted(rules: list[LoadedRule], clock: SteppingClock) -> Detector:
    return Detector(rules, builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05, budget_clock=clock,
                    budget_cpu_clock=clock)


def test_rules_past_the_budget_are_skipped_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = SteppingClock(0.02)   # CPU start 0.02, deadline 0.04 + 50 ms: the third rule's check is past it
    detector = budgeted(five_rules(), clock)
    with caplog.at_level(logging.WARNING, logger="sensor.rules.detector"):
        alerts = detector.evaluate(host_ssh_exec())
        clock.now = 0.0
        detector.evaluate(host_ssh_exec())
    assert [a["rule"]["name"] for a in alerts] == ["r0", "r1"]
    stats = detector.stats()
    assert stats["rule_budget_exceeded"] == 2 and stats["rules_skipped_budget"] == 6
    lines = [r.getMessage() for r in caplog.records if "budget" in r.getMessage()]
    assert len(lines) == 1 and "50 ms of CPU time" in lines[0] and "3 rules left" in lines[0]
    assert "\n" not in lines[0]


def test_within_the_budget_nothing_is_skipped() -> None:
    detector = budgeted(five_rules(), SteppingClock(0.001))
    assert len(detector.evaluate(host_ssh_exec())) == 5
    assert detector.stats()["rule_budget_exceeded"] == 0 and detector.stats()["rules_skipped_budget"] == 0


def test_no_budget_evaluates_everything() -> None:
    clock = SteppingClock(10.0)
    detector = Detector(five_rules(), builtin_ssh=False, fold_window_s=0, rule_budget_s=None, budget_clock=clock,
                        budget_cpu_clock=clock)
    assert len(detector.evaluate(host_ssh_exec())) == 5
    assert detector.stats()["rule_budget_exceeded"] == 0


def test_rules_skipped_by_process_name_cost_no_clock_reading() -> None:
    clock = SteppingClock(0.02)
    rules = [rule('process where process.name == "nothing-runs-this" and process.pid > 0', f"n{i}")
             for i in range(20)]
    detector = budgeted([*rules, *five_rules()], clock)
    assert [a["rule"]["name"] for a in detector.evaluate(host_ssh_exec())] == ["r0", "r1"]
    assert detector.stats()["rules_skipped_budget"] == 3


def test_sequences_count_against_the_budget_too() -> None:
    sequence = rule('sequence by process.entity_id [process where process.pid > 0] '
                    '[process where process.pid > 0]', "seq")
    detector = budgeted([*five_rules(), sequence], SteppingClock(0.02))
    detector.evaluate(host_ssh_exec())
    assert detector.stats()["rules_skipped_budget"] == 4   # r2, r3, r4 and the sequence
    assert detector.stats()["sequence_partials"] == 0


def test_the_builtin_ssh_rule_is_not_subject_to_the_budget() -> None:
    clock = SteppingClock(1.0)
    detector = Detector(five_rules(), fold_window_s=0, rule_budget_s=0.0, budget_clock=clock, budget_cpu_clock=clock)
    alerts = detector.evaluate(container_ssh_exec())
    assert [a["rule"]["name"] for a in alerts] == [BUILTIN]
    assert detector.stats()["rules_skipped_budget"] == 5


def test_waiting_is_not_spending_the_budget() -> None:
    """The wall clock says the budget is gone; the CPU clock says the thread hardly ran: nothing is skipped."""
    detector = Detector(five_rules(), builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05,
                        budget_clock=SteppingClock(1.0), budget_cpu_clock=SteppingClock(0.0001))
    assert len(detector.evaluate(host_ssh_exec())) == 5
    assert detector.stats()["rule_budget_exceeded"] == 0


def as_rules(predicate, count: int) -> list[LoadedRule]:
    return [replace(rule('process where process.pid > 0', f"s{i}"), compiled=CompiledQuery(predicate=predicate))
            for i in range(count)]


def test_rules_that_burn_cpu_stop_the_rest_on_the_real_clocks() -> None:
    """Rules that each take 30 ms of CPU, a 50 ms budget: two run, whatever else the machine is doing."""
    def burn(doc: dict) -> bool:
        end = time.thread_time() + 0.03
        while time.thread_time() < end:
            pass
        return True

    detector = Detector(as_rules(burn, 10), builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05)
    start = time.thread_time()
    alerts = detector.evaluate(host_ssh_exec())
    assert time.thread_time() - start < 0.2
    stats = detector.stats()
    assert len(alerts) == 2 and stats["rule_budget_exceeded"] == 1 and stats["rules_skipped_budget"] == 8


def test_rules_that_wait_are_not_cut_on_the_real_clocks() -> None:
    """A descheduled thread (host load, the GIL held elsewhere) spends wall time, not its budget: 5 x 30 ms of
    sleeping is 150 ms of wall time and no rule is skipped."""
    def wait(doc: dict) -> bool:
        time.sleep(0.03)
        return True

    detector = Detector(as_rules(wait, 5), builtin_ssh=False, fold_window_s=0, rule_budget_s=0.05)
    assert len(detector.evaluate(host_ssh_exec())) == 5
    assert detector.stats()["rule_budget_exceeded"] == 0


def test_the_default_budget_is_50_ms_and_the_counters_are_in_stats() -> None:
    detector = Detector([], builtin_ssh=False)
    assert detector._budget_s == 0.05
    assert {"rule_budget_exceeded", "rules_skipped_budget"} <= set(detector.stats())
