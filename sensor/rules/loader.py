"""Loading Elastic detection-rule TOML files: each either compiles for evaluation on the node or is refused
with one line saying why, and a refusal never stops the other rules from loading."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sensor.rules.eql_compile import CompiledQuery, Unsupported, compile_query
from sensor.rules.eql_parse import QueryError, parse_query
from sensor.rules.metadata import RuleMetadata


@dataclass(frozen=True)
class LoadedRule:
    path: Path
    metadata: RuleMetadata
    query: str
    compiled: CompiledQuery

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def rule_id(self) -> str:
        return self.metadata.rule_id


@dataclass(frozen=True)
class Refusal:
    path: Path
    name: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: rule {self.name!r} refused: {self.reason}"


class RulesPathError(OSError):
    """The rules path is neither a TOML file nor a folder holding some."""


def rule_files(path: Path) -> list[Path]:
    """The rule files of PATH: itself, or every *.toml below it but in hidden directories and hidden files. A
    Kubernetes ConfigMap mounted as a folder holds each file twice, as `NAME` (a link) and in the hidden
    `..data/` (and `..<timestamp>/`) it points through: read once, not two or three times."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.toml")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    raise RulesPathError(f"{path}: no such rule file or folder")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value if isinstance(v, (str, int, float)))
    return ()


def _metadata(rule: dict[str, Any]) -> RuleMetadata:
    author = _strings(rule.get("author"))
    version = rule.get("version")
    risk = rule.get("risk_score")
    return RuleMetadata(
        rule_id=str(rule["rule_id"]),
        name=str(rule["name"]),
        description=" ".join(str(rule.get("description", "")).split()),
        severity=str(rule.get("severity", "")),
        risk_score=float(risk) if isinstance(risk, (int, float)) and not isinstance(risk, bool) else 0.0,
        references=_strings(rule.get("references")),
        version=str(version) if version is not None else None,
        ruleset="Elastic detection rules" if "Elastic" in author else None,
        uuid=str(rule["rule_id"]),
        author=author,
        license=str(rule["license"]) if rule.get("license") else None,
        threat=tuple(t for t in rule.get("threat", []) if isinstance(t, dict)),
    )


def load_rule_file(path: Path) -> LoadedRule | Refusal:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return Refusal(path, "?", f"cannot read: {exc.strerror if isinstance(exc, OSError) else exc}")
    except tomllib.TOMLDecodeError as exc:
        return Refusal(path, "?", f"not valid TOML: {exc}")
    rule = document.get("rule")
    if not isinstance(rule, dict):
        return Refusal(path, "?", "no [rule] table")
    name = str(rule.get("name", "?"))
    missing = [key for key in ("rule_id", "name", "query") if not rule.get(key)]
    if missing:
        return Refusal(path, name, "missing " + ", ".join(missing))
    rule_type, language = rule.get("type"), rule.get("language")
    if rule_type != "eql" or language != "eql":
        return Refusal(path, name, f"rule type {rule_type!r} with language {language!r} cannot be evaluated "
                                   "on the node (only type 'eql' with language 'eql')")
    try:
        compiled = compile_query(parse_query(str(rule["query"])))
    except QueryError as exc:
        return Refusal(path, name, f"EQL does not parse: {exc}")
    except Unsupported as exc:
        return Refusal(path, name, f"EQL construct not supported: {exc}")
    try:
        metadata = _metadata(rule)
    except (KeyError, TypeError, ValueError) as exc:
        return Refusal(path, name, f"bad rule metadata: {exc}")
    return LoadedRule(path, metadata, str(rule["query"]), compiled)


def load_rules(path: Path) -> tuple[list[LoadedRule], list[Refusal]]:
    """Every rule under `path` (a file or a folder, recursively): loaded ones and refused ones with reasons.
    Raises RulesPathError when the path holds no rule file at all."""
    loaded: list[LoadedRule] = []
    refused: list[Refusal] = []
    for file in rule_files(Path(path)):
        outcome = load_rule_file(file)
        (loaded if isinstance(outcome, LoadedRule) else refused).append(outcome)
    return loaded, refused
