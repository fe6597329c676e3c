"""Which of Elastic's detection rules can fire on the sensor's documents, and why the others cannot.

Each EQL query is parsed as Elasticsearch reads it and evaluated abstractly against the field inventory
(sensor.ecs.inventory): a test of a field the sensor never writes can never be true, except the negative ones
(`!=`, `not`), which Elasticsearch answers true on a missing field; an `event.category`, `event.type` or
`event.action` test is true only for values the sensor writes. Each node yields whether it can be true and
whether it can be false, so that:
- *can fire*: the query can be true, and no part of it was decided by a missing field;
- *weakened*: it can be true, but some alternatives (`or` branches) can never match, or some negative tests are
  always true because their field is missing (the rule then matches more than it should: `user.id != "0"`
  matched root's processes while user.id was absent); each is named;
- *cannot*: it can never be true; the missing fields, event kinds and values are named;
- *out of scope*: it needs event kinds beyond process and network ones (file events).
KQL queries (new_terms, threshold, query rules) are classified by the field names they use, without their logic.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eql import ast

from sensor.ecs.inventory import FieldInventory
from sensor.rules.eql_parse import QueryError, parse_query

CAN_FIRE, WEAKENED, CANNOT, OUT_OF_SCOPE = "can fire", "weakened", "cannot", "out of scope"
IN_SCOPE_CATEGORIES = frozenset({"process", "network", "any"})
# functions whose first argument is tested against the others (true only when the field has a value)
_TESTS = frozenset({":", "like", "like~", "wildcard", "in~", "regex", "regex~", "match", "startsWith",
                    "startsWith~", "endsWith", "endsWith~", "stringContains", "stringContains~", "cidrMatch"})


@dataclass
class RuleCoverage:
    path: Path
    name: str
    rule_id: str
    language: str
    status: str
    reasons: list[str] = field(default_factory=list)

    @property
    def fires(self) -> bool:
        return self.status in (CAN_FIRE, WEAKENED)


@dataclass(frozen=True)
class _Outcome:
    can_true: bool
    can_false: bool


_BOTH = _Outcome(True, True)
_NEVER = _Outcome(False, True)
_ALWAYS = _Outcome(True, False)


def _field_name(node: ast.Field) -> str:
    return ".".join([node.base, *(str(part) for part in node.path if not isinstance(part, int))])


def _fields_in(node: Any) -> list[str]:
    if isinstance(node, ast.Field):
        return [_field_name(node)]
    found: list[str] = []
    for name in getattr(node, "__slots__", ()):
        value = getattr(node, name, None)
        for child in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(child, ast.BaseNode):
                found.extend(_fields_in(child))
    return found


def _literal(node: Any) -> Any:
    return node.value if isinstance(node, ast.Literal) else None


class _Evaluator:
    def __init__(self, inventory: FieldInventory) -> None:
        self.inventory = inventory
        self.category: str | None = None
        self.missing: set[str] = set()  # fields of positive tests that are never written
        self.absent: set[str] = set()  # event kinds and event values never written
        self.weak: list[str] = []  # or-branches that can never match although the or can
        self.always_true: list[str] = []  # negative tests made true by a missing field

    # -- fields and values ----------------------------------------------------------------------------

    def _present(self, name: str) -> bool:
        fields = self.inventory.fields
        return name in fields or any(known.startswith(name + ".") for known in fields)

    def _values(self, name: str) -> frozenset[str] | None:
        """The values the sensor writes in an event field for the current category; None for other fields."""
        inventory = self.inventory
        if name == "event.category":
            return inventory.categories
        table = {"event.type": inventory.event_types, "event.action": inventory.event_actions}.get(name)
        if table is None:
            return None
        if self.category in (None, "any"):
            return frozenset().union(*table.values()) if table else frozenset()
        return table.get(self.category, frozenset())

    def _test(self, node: Any, name: str, accepts: Any, described: str) -> _Outcome:
        """A positive test of field NAME: `accepts(value)` says whether one written value passes."""
        values = self._values(name)
        if values is not None:
            if any(accepts(value) for value in values):
                return _BOTH
            self.absent.add(described)
            return _NEVER
        if self._present(name):
            return _BOTH
        self.missing.add(name)
        return _NEVER

    # -- nodes ----------------------------------------------------------------------------------------

    def visit(self, node: Any) -> _Outcome:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            return _BOTH if all(self._present(name) for name in _fields_in(node)) else _NEVER
        return method(node)

    # methods named after the eql node types they evaluate
    def _PipedQuery(self, node: ast.PipedQuery) -> _Outcome:
        return self.visit(node.first)

    def _EventQuery(self, node: ast.EventQuery) -> _Outcome:
        outer, self.category = self.category, node.event_type
        try:
            if node.event_type != "any" and node.event_type not in self.inventory.categories:
                self.absent.add(f"{node.event_type} events")
                self.visit(node.query)  # still names what else is missing
                return _NEVER
            return self.visit(node.query)
        finally:
            self.category = outer

    def _Sequence(self, node: ast.Sequence) -> _Outcome:
        outcomes = [self.visit(sub.query) for sub in node.queries]
        return _Outcome(all(o.can_true for o in outcomes), True)

    _Join = _Sequence

    def _And(self, node: ast.And) -> _Outcome:
        outcomes = [self.visit(term) for term in node.terms]
        return _Outcome(all(o.can_true for o in outcomes), any(o.can_false for o in outcomes))

    def _Or(self, node: ast.Or) -> _Outcome:
        outcomes = [self.visit(term) for term in node.terms]
        can_true = any(o.can_true for o in outcomes)
        if can_true:
            self.weak.extend(" ".join(str(term).split()) for term, o in zip(node.terms, outcomes, strict=True)
                             if not o.can_true)
        return _Outcome(can_true, all(o.can_false for o in outcomes))

    def _Not(self, node: ast.Not) -> _Outcome:
        inner = self.visit(node.term)
        if not inner.can_true:
            self.always_true.append(" ".join(str(node).split()))
        return _Outcome(inner.can_false, inner.can_true)

    def _Boolean(self, node: ast.Boolean) -> _Outcome:
        return _ALWAYS if node.value else _NEVER

    def _IsNull(self, node: ast.IsNull) -> _Outcome:
        names = _fields_in(node.expr)
        return _BOTH if all(self._present(name) for name in names) else _ALWAYS

    def _IsNotNull(self, node: ast.IsNotNull) -> _Outcome:
        names = _fields_in(node.expr)
        missing = [name for name in names if not self._present(name)]
        self.missing.update(missing)
        return _NEVER if missing else _BOTH

    def _Comparison(self, node: ast.Comparison) -> _Outcome:
        left, right = node.left, node.right
        if isinstance(right, ast.Field) and not isinstance(left, ast.Field):
            left, right = right, left
        if not isinstance(left, ast.Field):  # a function's result compared: false when any field is missing
            missing = [name for name in _fields_in(node) if not self._present(name)]
            self.missing.update(missing)
            return _NEVER if missing else _BOTH
        name, value = _field_name(left), _literal(right)
        if node.comparator == ast.Comparison.NE:
            if self._values(name) is None and not self._present(name):
                self.always_true.append(" ".join(str(node).split()))
                return _ALWAYS
            return _BOTH
        if node.comparator == ast.Comparison.EQ:
            return self._test(node, name, lambda written: written == str(value), f"{name} == {value!r}")
        return self._test(node, name, lambda _written: True, name)

    def _InSet(self, node: ast.InSet) -> _Outcome:
        if not isinstance(node.expression, ast.Field):
            return self.visit(node.expression)
        name = _field_name(node.expression)
        wanted = {str(_literal(item)) for item in node.container}
        return self._test(node, name, lambda written: written in wanted, f"{name} in {sorted(wanted)}")

    def _FunctionCall(self, node: ast.FunctionCall) -> _Outcome:
        args = node.arguments
        if node.name not in _TESTS or not args or not isinstance(args[0], ast.Field):
            missing = [name for name in _fields_in(node) if not self._present(name)]
            self.missing.update(missing)
            return _NEVER if missing else _BOTH
        name = _field_name(args[0])
        patterns = [str(_literal(arg)) for arg in args[1:]]
        folded = node.name.endswith("~") or node.name == ":"
        base = node.name.rstrip("~")

        def accepts(written: str) -> bool:
            text = written.lower() if folded else written
            for pattern in patterns:
                wanted = pattern.lower() if folded else pattern
                if base in (":", "like", "wildcard") and fnmatch.fnmatchcase(text, wanted):
                    return True
                if base in ("regex", "match") and re.fullmatch(wanted, text):
                    return True
                if base == "in" and text == wanted:
                    return True
                if base == "startsWith" and text.startswith(wanted):
                    return True
                if base == "endsWith" and text.endswith(wanted):
                    return True
                if base == "stringContains" and wanted in text:
                    return True
            return False

        return self._test(node, name, accepts, f"{name} {node.name} {patterns}")


def categories_of(query: ast.PipedQuery) -> set[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, ast.EventQuery):
            found.add(node.event_type)
        for name in getattr(node, "__slots__", ()):
            value = getattr(node, name, None)
            for child in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(child, ast.BaseNode):
                    walk(child)

    walk(query)
    return found


def classify_eql(text: str, inventory: FieldInventory) -> tuple[str, list[str]]:
    try:
        query = parse_query(text)
    except QueryError as exc:
        return CANNOT, [f"does not parse: {exc}"]
    beyond = sorted(categories_of(query) - IN_SCOPE_CATEGORIES)
    if beyond:
        return OUT_OF_SCOPE, [f"needs {', '.join(beyond)} events"]
    evaluator = _Evaluator(inventory)
    outcome = evaluator.visit(query)
    if not outcome.can_true:
        reasons = [f"no {item}" for item in sorted(evaluator.absent)]
        reasons += [f"missing field {name}" for name in sorted(evaluator.missing)]
        return CANNOT, reasons or ["never true"]
    reasons = [f"never matches: {branch}" for branch in dict.fromkeys(evaluator.weak)]
    reasons += [f"always true (field missing): {test}" for test in dict.fromkeys(evaluator.always_true)]
    return (WEAKENED, reasons) if reasons else (CAN_FIRE, [])


def fields_never_written(text: str, inventory: FieldInventory) -> list[str]:
    """The fields an EQL query names that no document of the sensor carries (a typo, or another agent's field):
    a test of one never matches, a negated test always does."""
    try:
        query = parse_query(text)
    except QueryError:
        return []
    evaluator = _Evaluator(inventory)
    return sorted({name for name in _fields_in(query) if not evaluator._present(name)})


# KQL: field names before a colon, outside quoted strings; `not` scopes are not followed
_KQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_KQL_FIELD = re.compile(r"(?<![\w.@])([A-Za-z_@][\w.@-]*)\s*:")


def classify_kql(text: str, inventory: FieldInventory) -> tuple[str, list[str]]:
    names = sorted(set(_KQL_FIELD.findall(_KQL_STRING.sub('""', text))))
    evaluator = _Evaluator(inventory)
    missing = [name for name in names if not evaluator._present(name)]
    categories = set(re.findall(r"event\.category\s*:\s*\(?\s*\"?(\w+)", text))
    absent = sorted(categories - inventory.categories)
    if absent and not categories & inventory.categories:
        return CANNOT, [f"no {category} events" for category in absent]
    if missing:
        return WEAKENED, [f"field never written (by name only, KQL logic not evaluated): {name}"
                          for name in missing]
    return CAN_FIRE, []


def classify_file(path: Path, inventory: FieldInventory) -> RuleCoverage | None:
    try:
        rule = tomllib.loads(path.read_text(encoding="utf-8")).get("rule")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return RuleCoverage(path, "?", "?", "?", CANNOT, [f"cannot read: {exc}"])
    if not isinstance(rule, dict) or not rule.get("query"):
        return None
    language = str(rule.get("language", "?"))
    classify = classify_eql if language == "eql" else classify_kql
    status, reasons = classify(str(rule["query"]), inventory)
    return RuleCoverage(path, str(rule.get("name", "?")), str(rule.get("rule_id", "?")), language, status, reasons)


def classify_rules(paths: Iterable[Path], inventory: FieldInventory) -> list[RuleCoverage]:
    results = []
    for path in paths:
        files = sorted(path.rglob("*.toml")) if path.is_dir() else [path]
        for file in files:
            outcome = classify_file(file, inventory)
            if outcome is not None:
                results.append(outcome)
    return sorted(results, key=lambda r: (r.path.name, r.name))


def summary(results: list[RuleCoverage]) -> dict[str, Any]:
    """Counts per language and status; `eql_fire_share` is the share of in-scope EQL rules that can fire."""
    counts: dict[str, dict[str, int]] = {}
    for result in results:
        per = counts.setdefault(result.language, {})
        per[result.status] = per.get(result.status, 0) + 1
    eql = [r for r in results if r.language == "eql" and r.status != OUT_OF_SCOPE]
    share = sum(r.fires for r in eql) / len(eql) if eql else 0.0
    return {"counts": counts, "eql_in_scope": len(eql), "eql_can_fire": sum(r.fires for r in eql),
            "eql_fire_share": share}


def markdown(results: list[RuleCoverage], inventory: FieldInventory, source: str) -> str:
    totals = summary(results)
    lines = [
        "# Elastic's prebuilt Linux rules on the sensor's documents",
        "",
        f"Generated by `container-sensor rules coverage {source}`; do not edit by hand. How each rule is",
        "classified: sensor/rules/coverage.py. The field inventory it is checked against is read off documents",
        "the ECS builder makes (sensor/ecs/inventory.py).",
        "",
        f"EQL rules over process and network events: **{totals['eql_can_fire']} of {totals['eql_in_scope']} can "
        f"fire ({totals['eql_fire_share']:.1%})**, weakened ones included.",
        "",
        "| language | " + " | ".join((CAN_FIRE, WEAKENED, CANNOT, OUT_OF_SCOPE)) + " |",
        "|---|---|---|---|---|",
    ]
    for language in sorted(totals["counts"]):
        per = totals["counts"][language]
        lines.append(f"| {language} | " + " | ".join(str(per.get(s, 0)) for s in (CAN_FIRE, WEAKENED, CANNOT,
                                                                                     OUT_OF_SCOPE)) + " |")
    events = inventory.as_dict()["events"]
    lines += ["", "Event kinds written: " + "; ".join(
        f"{category} (type {', '.join(v['type'])}; action {', '.join(v['action'])})"
        for category, v in events.items()) + ".", "",
        "| rule | file | language | status | why |", "|---|---|---|---|---|"]
    for result in results:
        why = "<br>".join(_cell(reason) for reason in result.reasons)
        lines.append(f"| {_cell(result.name)} | {result.path.name} | {result.language} | {result.status} | {why} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
