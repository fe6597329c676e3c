"""Rules reloaded on SIGHUP and when their files change (a ConfigMap's `..data` link swapped), between two
events; a set that fails to load leaves the rules in force; per-rule alert counters in /metrics."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from sensor.ops.metrics import pipeline_metrics
from sensor.ops.server import render_metrics
from sensor.rules.detector import Detector
from sensor.rules.loader import load_rules
from sensor.rules.reload import RulesReloader, rules_signature
from tests.rule_files import rule_toml
from tests.unit.rules_docs import container_ssh_exec

SEQUENCE = 'sequence by host.id [process where process.name == "sh"] [process where process.name == "ssh"]'


def write_rule(folder: Path, name: str, query: str, rule_id: str = "00000000-0000-4000-8000-00000000000a") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(rule_toml(name, query, rule_id, severity="high"))


def configmap(root: Path, version: str, rules: dict[str, str]) -> None:
    """A directory laid out as the kubelet mounts a ConfigMap: files are links through ..data to a version."""
    target = root / f"..{version}"
    for name, query in rules.items():
        write_rule(target, name, query)
    link = root / "..data_tmp"
    link.symlink_to(target.name)
    os.replace(link, root / "..data")
    for name in rules:
        entry = root / f"{name}.toml"
        if not entry.is_symlink():
            entry.symlink_to(f"..data/{name}.toml")


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_a_configmap_update_is_seen_and_applied_between_events(tmp_path: Path) -> None:
    root = tmp_path / "rules"
    root.mkdir()
    configmap(root, "v1", {"ssh": 'process where process.name == "nothing-matches"'})
    loaded, _ = load_rules(root)
    detector = Detector(loaded, builtin_ssh=False, fold_window_s=0)
    reloader = RulesReloader([root], detector.replace_rules, poll_s=0.05)
    try:
        assert detector.evaluate(container_ssh_exec()) == []
        before = rules_signature([root])
        configmap(root, "v2", {"ssh": 'process where process.name == "ssh"'})
        assert rules_signature([root]) != before
        wait_for(lambda: reloader._pending is not None)
        assert detector.evaluate(container_ssh_exec()) == []  # not applied until the loop takes it
        reloader.apply_pending()
        alerts = detector.evaluate(container_ssh_exec())
        assert [a["rule"]["name"] for a in alerts] == ["ssh"]
        assert detector.stats()["rule_reloads"] == 1
    finally:
        reloader.close()


def test_sighup_reloads_at_once_and_a_broken_set_keeps_the_rules_in_force(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    write_rule(folder, "ssh", 'process where process.name == "ssh"')
    loaded, _ = load_rules(folder)
    detector = Detector(loaded, builtin_ssh=False, fold_window_s=0)
    reloader = RulesReloader([folder], detector.replace_rules, poll_s=3600, on_refused=detector.reload_refused)
    try:
        for file in folder.iterdir():
            file.unlink()
        reloader.request()
        wait_for(lambda: reloader.counts["rule_reloads_refused"] == 1)
        reloader.apply_pending()
        assert [a["rule"]["name"] for a in detector.evaluate(container_ssh_exec())] == ["ssh"]
        assert detector.stats()["rule_reloads_refused"] == 1
        write_rule(folder, "other", 'process where process.name == "ssh"',
                   rule_id="00000000-0000-4000-8000-00000000000b")
        reloader.request()  # SIGHUP: at once, even though the poll is an hour away
        wait_for(lambda: reloader._pending is not None)
        reloader.apply_pending()
        assert [a["rule"]["name"] for a in detector.evaluate(container_ssh_exec())] == ["other"]
    finally:
        reloader.close()


def test_an_unchanged_sequence_rule_keeps_its_sequences_under_way(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    write_rule(folder, "seq", SEQUENCE)
    loaded, _ = load_rules(folder)
    detector = Detector(loaded, builtin_ssh=False, fold_window_s=0)
    shell = container_ssh_exec()
    shell["process"]["name"] = "sh"
    detector.evaluate(shell)
    detector.replace_rules(load_rules(folder)[0])  # the same rule, loaded again
    assert [a["rule"]["name"] for a in detector.evaluate(container_ssh_exec())] == ["seq"]


def test_alerts_per_rule_in_metrics_with_labels_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    write_rule(folder, 'quote \\" and backslash \\\\', 'process where process.name == "ssh"')
    detector = Detector(load_rules(folder)[0], builtin_ssh=True, fold_window_s=0)
    detector.evaluate(container_ssh_exec())
    pipeline = SimpleNamespace(stats=SimpleNamespace(as_dict=dict), table=[], outputs=[], detector=detector)
    text = render_metrics(pipeline_metrics(pipeline), True)
    assert 'container_sensor_rule_alerts_total{rule="quote \\" and backslash \\\\"} 1' in text
    assert 'container_sensor_rule_alerts_total{rule="SSH Client or Server Started Inside a Container"} 1' in text
    assert "# TYPE container_sensor_rule_alerts_total counter" in text
