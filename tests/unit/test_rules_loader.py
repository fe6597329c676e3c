"""Loading Elastic's rule files: every one loads or is refused with its reason; loaded rules match as Elastic's."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.rules.loader import LoadedRule, Refusal, RulesPathError, load_rule_file, load_rules
from tests.unit.rules_docs import container_ssh_exec, host_ssh_exec

SHARED_RULES = Path(__file__).resolve().parents[2].parent / "shared" / "rules"
SSH_RULE = SHARED_RULES / "lateral_movement_ssh_process_launched_inside_container.toml"

needs_rules = pytest.mark.skipif(not SHARED_RULES.is_dir(), reason=f"{SHARED_RULES} not present")


@needs_rules
def test_every_shared_rule_loads_or_is_refused_with_a_reason() -> None:
    loaded, refused = load_rules(SHARED_RULES)
    files = sorted(SHARED_RULES.rglob("*.toml"))
    assert sorted([r.path for r in loaded] + [r.path for r in refused]) == files
    for refusal in refused:
        assert refusal.reason and refusal.name != "?"
        assert str(refusal.path) in refusal.line() and refusal.name in refusal.line()
    by_file = {r.path.name: r for r in refused}
    kuery = by_file["execution_unusual_interactive_process_inside_container.toml"]
    assert "new_terms" in kuery.reason and "kuery" in kuery.reason
    assert kuery.name == "Interactive Shell Launched via Unusual Parent Process in a Container"
    names = {r.path.name for r in loaded}
    assert SSH_RULE.name in names
    assert "persistence_suspicious_ssh_execution_xzbackdoor.toml" in names   # the sequence rule
    assert len(loaded) >= 9


@needs_rules
def test_elastic_ssh_rule_loaded_unchanged_matches_container_ssh_not_host_ssh() -> None:
    rule = load_rule_file(SSH_RULE)
    assert isinstance(rule, LoadedRule)
    assert rule.query.strip().startswith('process where host.os.type == "linux"')
    predicate = rule.compiled.predicate
    assert predicate is not None
    assert predicate(container_ssh_exec())
    assert predicate(container_ssh_exec(name="sshd", executable="/usr/sbin/sshd"))
    assert not predicate(host_ssh_exec())
    assert not predicate(container_ssh_exec(name="slogin", executable="/tmp/slogin"))  # name-based: misses it
    end = container_ssh_exec()
    end["event"].update(type=["end"], action="end")
    assert not predicate(end)


@needs_rules
def test_rule_metadata_comes_from_the_toml() -> None:
    rule = load_rule_file(SSH_RULE)
    assert isinstance(rule, LoadedRule)
    meta = rule.metadata
    assert meta.rule_id == "5c50ffa6-07f4-4cce-a1b7-c16928a2ed52"
    assert meta.severity == "medium" and meta.risk_score == 47
    assert meta.references[0].startswith("https://microsoft.github.io/")
    tactics = [t["tactic"]["id"] for t in meta.threat]
    assert tactics == ["TA0008", "TA0003"]
    assert meta.threat[0]["technique"][0]["subtechnique"][0]["id"] == "T1021.004"


def _write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(body)
    return path


RULE_TEMPLATE = '''[rule]
author = ["Test"]
description = "d"
name = "{name}"
risk_score = 21
rule_id = "{rule_id}"
severity = "low"
type = "{type}"
language = "{language}"
query = """
{query}
"""
'''


def test_bad_rules_are_refused_and_the_others_still_load(tmp_path: Path) -> None:
    _write(tmp_path, "good.toml", RULE_TEMPLATE.format(name="good", rule_id="1", type="eql", language="eql",
                                                       query='process where process.name == "ssh"'))
    _write(tmp_path, "broken.toml", "[rule\nname = ")
    _write(tmp_path, "func.toml", RULE_TEMPLATE.format(name="unknown function", rule_id="2", type="eql",
                                                       language="eql", query="process where frob(process.name)"))
    _write(tmp_path, "pipe.toml", RULE_TEMPLATE.format(name="with a pipe", rule_id="3", type="eql",
                                                       language="eql", query="process where true | tail 2"))
    _write(tmp_path, "query.toml", RULE_TEMPLATE.format(name="kql", rule_id="4", type="query",
                                                        language="kuery", query="process.name:ssh"))
    _write(tmp_path, "norule.toml", "[metadata]\nmaturity = 'production'\n")
    sub = tmp_path / "nested"
    sub.mkdir()
    _write(sub, "also_good.toml", RULE_TEMPLATE.format(name="nested", rule_id="5", type="eql", language="eql",
                                                       query="any where true"))
    loaded, refused = load_rules(tmp_path)
    assert [r.name for r in loaded] == ["good", "nested"]   # sorted by path: good.toml < nested/...
    reasons = {r.path.name: r for r in refused}
    assert set(reasons) == {"broken.toml", "func.toml", "pipe.toml", "query.toml", "norule.toml"}
    assert "not valid TOML" in reasons["broken.toml"].reason
    assert reasons["func.toml"].name == "unknown function" and "frob" in reasons["func.toml"].reason
    assert "pipes" in reasons["pipe.toml"].reason
    assert "'query'" in reasons["query.toml"].reason and "'kuery'" in reasons["query.toml"].reason
    assert "no [rule] table" in reasons["norule.toml"].reason
    assert all("\n" not in r.line() for r in refused)


def test_single_file_and_missing_path(tmp_path: Path) -> None:
    path = _write(tmp_path, "one.toml", RULE_TEMPLATE.format(name="one", rule_id="1", type="eql",
                                                             language="eql", query="any where true"))
    loaded, refused = load_rules(path)
    assert [r.name for r in loaded] == ["one"] and refused == []
    with pytest.raises(RulesPathError):
        load_rules(tmp_path / "nowhere")
    assert isinstance(load_rule_file(tmp_path / "nowhere.toml"), Refusal)
