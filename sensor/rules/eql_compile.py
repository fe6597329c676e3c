"""Compiling a parsed EQL query into Python closures with Elasticsearch's matching semantics.

What Elasticsearch does and Python's `eql` engine does not:
- a field holding an array matches a test when any element does;
- `==`, `in`, `like`, `regex` are case-sensitive; `:`, `like~`, `in~`, `regex~`, `f~()` are not;
- a test against a missing field is false, but `!=` and `not` are the query-DSL `must_not` of the positive
  test, so `missing != "x"` and `not missing == "x"` are true;
- `field == null` is true when the field is missing.
Anything the compiler cannot give that meaning to raises Unsupported with a one-line reason, at load time.
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from eql import ast

from sensor.rules.fields import Getter, make_getter
from sensor.rules.patterns import PatternError, compile_regexes, compile_wildcards, has_wildcard

Predicate = Callable[[dict], bool]
ElementTest = Callable[[Any], bool]


class Unsupported(ValueError):
    """A query construct that cannot be evaluated per event with Elasticsearch's meaning."""


@dataclass(frozen=True)
class Stage:
    predicate: Predicate
    keys: tuple[Getter, ...]


@dataclass(frozen=True)
class CompiledQuery:
    """Either a single event predicate or a sequence of stages."""

    predicate: Predicate | None = None
    stages: tuple[Stage, ...] = ()
    maxspan_s: float | None = None
    until: Stage | None = None
    # A top-level `process.name in (...)`-like conjunct: the rule cannot match a process.name outside this set
    # (compared lower-cased when `names_folded`), which lets the detector skip the rule with one set lookup.
    required_names: frozenset[str] | None = None
    names_folded: bool = False

    @property
    def is_sequence(self) -> bool:
        return bool(self.stages)


def _any_element(get: Getter, test: ElementTest) -> Predicate:
    def run(doc: dict) -> bool:
        value = get(doc)
        if value is None:
            return False
        if type(value) is list:
            for item in value:  # noqa: SIM110 - a plain loop avoids a generator per event
                if test(item):
                    return True
            return False
        return test(value)

    return run


def _as_text(item: Any) -> str | None:
    kind = type(item)
    if kind is str:
        return item
    if kind is bool:
        return "true" if item else "false"
    if kind is int or kind is float:
        return str(item)
    return None


def _as_number(item: Any) -> float | None:
    kind = type(item)
    if kind is int or kind is float:
        return item
    if kind is str:
        try:
            return float(item)
        except ValueError:
            return None
    return None


def _equals_test(literal: Any) -> ElementTest:
    if isinstance(literal, bool):
        text = "true" if literal else "false"
        return lambda item: item is literal or (type(item) is str and item == text)
    if isinstance(literal, (int, float)):
        def number_equals(item: Any) -> bool:
            if type(item) is bool:
                return False
            number = _as_number(item)
            return number is not None and number == literal
        return number_equals
    if isinstance(literal, str):
        def text_equals(item: Any) -> bool:
            if type(item) is str:
                return item == literal
            return _as_text(item) == literal
        return text_equals
    raise Unsupported(f"cannot compare with {literal!r}")


def _in_test(literals: list[Any], case_insensitive: bool) -> ElementTest:
    texts = {v.lower() if case_insensitive else v for v in literals if isinstance(v, str)}
    numbers = {v for v in literals if isinstance(v, (int, float)) and not isinstance(v, bool)}
    booleans = {v for v in literals if isinstance(v, bool)}
    if any(v is None for v in literals):
        raise Unsupported("null inside an `in` list")

    def member(item: Any) -> bool:
        kind = type(item)
        if kind is str:
            if (item.lower() if case_insensitive else item) in texts:
                return True
            if numbers:
                number = _as_number(item)
                return number is not None and number in numbers
            return False
        if kind is bool:
            return item in booleans or ("true" if item else "false") in texts
        if kind is int or kind is float:
            return item in numbers or str(item) in texts
        return False

    return member


def _ordering_test(op: str, literal: Any) -> ElementTest:
    compare = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}[op]
    if isinstance(literal, (int, float)) and not isinstance(literal, bool):
        def numeric(item: Any) -> bool:
            if type(item) is bool:
                return False
            number = _as_number(item)
            return number is not None and compare(number, literal)
        return numeric
    if isinstance(literal, str):
        return lambda item: type(item) is str and compare(item, literal)
    raise Unsupported(f"cannot order-compare with {literal!r}")


def _text_test(text_test: Callable[[str], bool]) -> ElementTest:
    def run(item: Any) -> bool:
        text = item if type(item) is str else _as_text(item)
        return text is not None and text_test(text)

    return run


def _cost(node: ast.Expression) -> int:
    """A rough evaluation cost, for ordering conjuncts."""
    if isinstance(node, (ast.Comparison, ast.InSet, ast.IsNull, ast.IsNotNull, ast.Field, ast.Boolean)):
        return 1
    if isinstance(node, ast.Not):
        return _cost(node.term)
    if isinstance(node, (ast.And, ast.Or)):
        return sum(_cost(t) for t in node.terms)
    if isinstance(node, ast.FunctionCall):
        if node.name.startswith("regex"):
            return 20
        if node.name in (":", "like", "like~"):
            wild = any(isinstance(a, ast.String) and has_wildcard(a.value) for a in node.arguments[1:])
            return 4 if wild else 2
        return 3
    return 5


_FLIPPED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


class _Compiler:
    def __init__(self) -> None:
        # one getter per field path, shared by every condition on it
        self._getters = cache(make_getter)

    # values -------------------------------------------------------------------------------------------------
    def getter(self, field: ast.Field) -> Getter:
        return self._getters((field.base, *field.path))

    def value(self, node: ast.Expression) -> Getter:
        """A getter-like closure for a field or a value-producing function."""
        if isinstance(node, ast.Field):
            return self.getter(node)
        if isinstance(node, ast.FunctionCall) and node.name == "length" and len(node.arguments) == 1:
            inner = self.value(node.arguments[0])

            def length(doc: dict) -> Any:
                value = inner(doc)
                if value is None:
                    return None
                if type(value) is list:
                    return [len(v) for v in value if isinstance(v, str)] or None
                return len(value) if isinstance(value, str) else None

            return length
        if isinstance(node, ast.FunctionCall):
            raise Unsupported(f"function {node.name}() is not supported as a value")
        raise Unsupported(f"{type(node).__name__} is not supported as a value")

    @staticmethod
    def literal(node: ast.Expression) -> Any:
        if isinstance(node, (ast.String, ast.Number, ast.Boolean)):
            return node.value
        raise Unsupported(f"expected a literal, found {node}")

    # predicates ---------------------------------------------------------------------------------------------
    def predicate(self, node: ast.Expression) -> Predicate:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            raise Unsupported(f"{type(node).__name__} is not supported")
        return method(node)

    def _And(self, node: ast.And) -> Predicate:
        # Conjuncts have no side effects, so the cheap ones run first and the expensive ones (regex, leading
        # wildcards, long OR groups) only on the events that pass them.
        ordered = sorted(node.terms, key=_cost)
        terms = [self.predicate(t) for t in ordered]
        if len(terms) == 2:
            a, b = terms
            return lambda doc: a(doc) and b(doc)

        def all_of(doc: dict) -> bool:
            for term in terms:  # noqa: SIM110 - as above, on the hot path
                if not term(doc):
                    return False
            return True

        return all_of

    def _Or(self, node: ast.Or) -> Predicate:
        terms = [self.predicate(t) for t in node.terms]
        if len(terms) == 2:
            a, b = terms
            return lambda doc: a(doc) or b(doc)

        def any_of(doc: dict) -> bool:
            for term in terms:  # noqa: SIM110 - as above, on the hot path
                if term(doc):
                    return True
            return False

        return any_of

    def _Not(self, node: ast.Not) -> Predicate:
        term = self.predicate(node.term)
        return lambda doc: not term(doc)

    def _Boolean(self, node: ast.Boolean) -> Predicate:
        constant = bool(node.value)
        return lambda doc: constant

    def _Field(self, node: ast.Field) -> Predicate:
        return _any_element(self.getter(node), lambda item: item is True)

    def _IsNull(self, node: ast.IsNull) -> Predicate:
        get = self.value(node.expr)
        return lambda doc: get(doc) is None

    def _IsNotNull(self, node: ast.IsNotNull) -> Predicate:
        get = self.value(node.expr)
        return lambda doc: get(doc) is not None

    def _Comparison(self, node: ast.Comparison) -> Predicate:
        left, op, right = node.left, node.comparator, node.right
        if isinstance(left, ast.Literal) and not isinstance(right, ast.Literal):
            left, right, op = right, left, _FLIPPED[op]
        if isinstance(left, ast.Literal):
            raise Unsupported("comparison of two constants")
        get = self.value(left)
        literal = self.literal(right)
        if op in ("==", "!="):
            positive = _any_element(get, _equals_test(literal))
            if op == "==":
                return positive
            return lambda doc: not positive(doc)
        return _any_element(get, _ordering_test(op, literal))

    def _InSet(self, node: ast.InSet) -> Predicate:
        get = self.value(node.expression)
        return _any_element(get, _in_test([self.literal(c) for c in node.container], False))

    def _FunctionCall(self, node: ast.FunctionCall) -> Predicate:
        name, args = node.name, node.arguments
        if name in (":", "like", "like~", "regex", "regex~"):
            get = self.value(args[0])
            patterns = [self.literal(a) for a in args[1:]]
            if not all(isinstance(p, str) for p in patterns):
                raise Unsupported(f"`{name}` needs string patterns")
            insensitive = name in (":", "like~", "regex~")
            try:
                if name.startswith("regex"):
                    text_test = compile_regexes(patterns, insensitive)
                else:
                    text_test = compile_wildcards(patterns, insensitive)
            except PatternError as exc:
                raise Unsupported(str(exc)) from None
            return _any_element(get, _text_test(text_test))
        if name == "in~":
            get = self.value(args[0])
            return _any_element(get, _in_test([self.literal(a) for a in args[1:]], True))
        base = name.rstrip("~")
        insensitive = name.endswith("~")
        if base in ("startsWith", "endsWith", "stringContains") and len(args) == 2:
            get = self.value(args[0])
            needle = self.literal(args[1])
            if not isinstance(needle, str):
                raise Unsupported(f"{base}() needs a string literal as its second argument")
            if insensitive:
                needle = needle.lower()
            fold = str.lower if insensitive else (lambda s: s)
            if base == "startsWith":
                test: Callable[[str], bool] = lambda s: fold(s).startswith(needle)  # noqa: E731
            elif base == "endsWith":
                test = lambda s: fold(s).endswith(needle)  # noqa: E731
            else:
                test = lambda s: needle in fold(s)  # noqa: E731
            return _any_element(get, _text_test(test))
        if name == "cidrMatch" and len(args) >= 2:
            get = self.value(args[0])
            try:
                networks = [ipaddress.ip_network(self.literal(a), strict=False) for a in args[1:]]
            except ValueError as exc:
                raise Unsupported(f"cidrMatch(): {exc}") from None

            def in_networks(item: Any) -> bool:
                try:
                    address = ipaddress.ip_address(item)
                except ValueError:
                    return False
                return any(address in net for net in networks)

            return _any_element(get, in_networks)
        raise Unsupported(f"function {name}() is not supported")

    # queries ------------------------------------------------------------------------------------------------
    def event_query(self, query: ast.EventQuery) -> Predicate:
        condition = self.predicate(query.query)
        if query.event_type in ("any", "*"):
            return condition
        category = query.event_type
        get_category = self.getter(ast.Field("event", ["category"]))
        in_category = _any_element(get_category, lambda item: item == category)
        return lambda doc: in_category(doc) and condition(doc)

    def stage(self, subquery: ast.SubqueryBy) -> Stage:
        data = subquery.data or {}
        if data.get("is_negated"):
            raise Unsupported("missing-event subqueries `![...]` are not supported")
        if data.get("fork"):
            raise Unsupported("`fork` is not supported")
        keys = tuple(self.value(v) for v in subquery.join_values)
        predicate = self.event_query(subquery.query)
        required = _required_names(subquery.query.query)
        if required is not None:
            predicate = _name_guard(predicate, *required)
        return Stage(predicate, keys)


def _name_guard(inner: Predicate, names: frozenset[str], folded: bool) -> Predicate:
    def guarded(doc: dict) -> bool:
        process = doc.get("process")
        name = process.get("name") if isinstance(process, dict) else None
        if name is None:
            return False
        if type(name) is str and (name.lower() if folded else name) not in names:
            return False
        return inner(doc)

    return guarded


def _is_process_name(node: ast.Expression) -> bool:
    return isinstance(node, ast.Field) and node.base == "process" and node.path == ["name"]


def _required_names(condition: ast.Expression) -> tuple[frozenset[str], bool] | None:
    """Names a top-level conjunct restricts process.name to, if any (exact, or lower-cased when folded)."""
    terms = condition.terms if isinstance(condition, ast.And) else [condition]
    for term in terms:
        if isinstance(term, ast.InSet) and _is_process_name(term.expression):
            values = [c.value for c in term.container if isinstance(c, ast.String)]
            if len(values) == len(term.container):
                return frozenset(values), False
        if isinstance(term, ast.Comparison) and term.comparator == "==":
            for field, literal in ((term.left, term.right), (term.right, term.left)):
                if _is_process_name(field) and isinstance(literal, ast.String):
                    return frozenset([literal.value]), False
        if isinstance(term, ast.FunctionCall) and term.name in (":", "like", "like~", "in~") \
                and term.arguments and _is_process_name(term.arguments[0]):
            values = [a.value for a in term.arguments[1:] if isinstance(a, ast.String)]
            if len(values) == len(term.arguments) - 1 and not any(has_wildcard(v) for v in values):
                if term.name == "like":
                    return frozenset(values), False
                return frozenset(v.lower() for v in values), True
    return None


def compile_query(parsed: ast.PipedQuery) -> CompiledQuery:
    if parsed.pipes:
        raise Unsupported("pipes (`| head`, `| tail`, ...) are not supported on a live stream")
    first = parsed.first
    compiler = _Compiler()
    if isinstance(first, ast.EventQuery):
        required = _required_names(first.query)
        return CompiledQuery(predicate=compiler.event_query(first),
                             required_names=required[0] if required else None,
                             names_folded=required[1] if required else False)
    if isinstance(first, ast.Sequence):
        stages = tuple(compiler.stage(q) for q in first.queries)
        until = compiler.stage(first.close) if first.close is not None else None
        maxspan = first.max_span.as_milliseconds() / 1000.0 if first.max_span is not None else None
        return CompiledQuery(stages=stages, maxspan_s=maxspan, until=until)
    raise Unsupported(f"`{type(first).__name__.lower()}` queries are not supported")
