"""`container-sensor rules check` and `rules test` over real rule files and saved documents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensor.cli import main
from tests.rule_files import rule_toml
from tests.unit.rules_docs import container_ssh_exec, host_ssh_exec

SHARED_RULES = Path(__file__).resolve().parents[2].parent / "shared" / "rules"
pytestmark = pytest.mark.skipif(not SHARED_RULES.is_dir(), reason="shared rules not present")


def test_check_lists_loaded_and_refused_rules() -> None:
    result = CliRunner().invoke(main, ["rules", "check", "--rules", str(SHARED_RULES)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    refused = [line for line in lines if line.startswith("refused")]
    assert len(refused) == 1 and "new_terms" in refused[0]
    assert sum(line.startswith("loaded") for line in lines) == 10
    assert lines[-1] == "10 loaded, 1 refused"
    strict = CliRunner().invoke(main, ["rules", "check", "--strict", "--rules", str(SHARED_RULES)])
    assert strict.exit_code == 1


def test_check_bad_path_is_one_line_and_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "check", "--rules", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no such rule file or folder" in result.output


def test_test_prints_one_line_per_hit_and_a_summary(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    alert_doc = container_ssh_exec()
    alert_doc["event"]["kind"] = "alert"
    events.write_text("\n".join(json.dumps(d) for d in (container_ssh_exec(), host_ssh_exec(), alert_doc)) + "\n")
    result = CliRunner().invoke(main, ["rules", "test", "--rules", str(SHARED_RULES), str(events)])
    assert result.exit_code == 0, result.output
    hits = [line for line in result.stdout.splitlines() if "rule=" in line]
    assert len(hits) == 3   # built-in + the two Elastic rules that name ssh inside a container
    assert all("pid=22510" in hit for hit in hits)
    assert any("recognized_by=name" in hit for hit in hits)
    assert "3 documents, 3 alerts" in result.stderr


def test_test_json_output_is_alert_documents(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(json.dumps(container_ssh_exec()) + "\n")
    result = CliRunner().invoke(main, ["rules", "test", "--json", "--no-builtin-rules",
                                       "--rules", str(SHARED_RULES), str(events)])
    assert result.exit_code == 0
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert {a["event"]["kind"] for a in alerts} == {"alert"} and len(alerts) == 2


def test_test_unreadable_input_exits_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["rules", "test", "--rules", str(SHARED_RULES), str(tmp_path / "no.ndjson")])
    assert result.exit_code == 1 and "cannot read" in result.stderr
    bad = tmp_path / "bad.ndjson"
    bad.write_text(json.dumps(container_ssh_exec()) + "\n{oops\n")
    result = CliRunner().invoke(main, ["rules", "test", "--rules", str(SHARED_RULES), str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2: not JSON" in result.stderr and "1 unreadable lines" in result.stderr
    assert "Traceback" not in result.output


RULE = rule_toml("Typo", 'process where event.type == "start" and process.nmae == "ssh"', severity="low")


def test_check_fails_on_what_would_silently_never_match(tmp_path: Path) -> None:
    """A misspelt field, a file that is not TOML, a folder without rules: each exits 1 and says why."""
    typo = tmp_path / "typo"
    typo.mkdir()
    (typo / "rule.toml").write_text(RULE)
    result = CliRunner().invoke(main, ["rules", "check", "--rules", str(typo)])
    assert result.exit_code == 1
    assert "unknown field process.nmae: the sensor never writes it" in result.output
    (typo / "rule.toml").write_text(RULE.replace("process.nmae", "process.name"))
    assert CliRunner().invoke(main, ["rules", "check", "--rules", str(typo)]).exit_code == 0
    (typo / "broken.toml").write_text("[rule\nname = ")
    result = CliRunner().invoke(main, ["rules", "check", "--rules", str(typo)])
    assert result.exit_code == 1 and "not valid TOML" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["rules", "check", "--rules", str(empty)])
    assert result.exit_code == 1 and "no rule file" in result.output
