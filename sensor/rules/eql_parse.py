"""Parsing an Elastic detection rule's EQL query with the `eql` package, keeping Elasticsearch's distinctions.

The package's walker folds `:`, `like`, `like~` into one `wildcard` call, `regex`/`regex~` into `match`,
`in~` into `in`, and `startsWith~` into `startsWith`, which erases whether a test is case-sensitive. The walker
below renames those calls after the package has validated them: FunctionCall names `:`, `like`, `like~`, `regex`,
`regex~`, `in~`, and `<function>~`. The optimizer is left off because it rewrites those calls.
"""

from __future__ import annotations

import ipaddress

from eql import ast
from eql.errors import EqlError, EqlParseError
from eql.functions import CidrMatch
from eql.parser import LarkToEQL, lark_parser
from eql.utils import ParserConfig, load_extensions
from lark import Token
from lark.exceptions import LarkError


class QueryError(ValueError):
    """A query the `eql` package rejects, with a one-line reason."""


class _FunctionsByAnyCase(dict):
    """The package's function table, looked up as Elasticsearch does: whatever the case (`cidrmatch` is
    Elasticsearch's `cidrMatch`; the package knows only the camel-case name)."""

    def get(self, name, default=None):  # untyped: dict.get's signature
        found = super().get(name)
        if found is None and isinstance(name, str):
            found = super().get(self.canonical(name))
        return default if found is None else found

    def canonical(self, name: str) -> str:
        folded = name.lower()
        return next((known for known in self if known.lower() == folded), name)


class _CidrMatchAsElasticsearch(CidrMatch):
    """cidrMatch as Elasticsearch takes it: a lone address ("::1") is a network of that one address. The package
    requires a prefix length on every argument, so Elastic's own rules with "::1" did not load."""

    @classmethod
    def validate(cls, arguments):  # untyped: the package's signature
        for argument in arguments[1:]:
            node = argument.node
            if isinstance(node, ast.String) and "/" not in node.value:
                try:
                    address = ipaddress.ip_address(node.value.strip())
                except ValueError:
                    continue  # the package names the bad argument
                argument.node = ast.String(f"{address}/{address.max_prefixlen}")
        return super().validate(arguments)


class _ElasticsearchWalker(LarkToEQL):
    def __init__(self, text):  # untyped: the signature of the package's walker
        super().__init__(text)
        self._function_lookup = _FunctionsByAnyCase(self._function_lookup)
        self._function_lookup[CidrMatch.name] = _CidrMatchAsElasticsearch

    def string_predicate(self, node):  # untyped: the signature of the package's walker
        info = super().string_predicate(node)
        info.node.name = str(node["STRING_PREDICATE"])
        return info

    def in_set(self, node):
        info = super().in_set(node)
        if node.get("IN") == "in~":
            in_set = info.node
            info.node = ast.FunctionCall("in~", [in_set.expression, *in_set.container])
        return info

    def function_call(self, node, prev_node=None, prev_arg=None):
        info = super().function_call(node, prev_node=prev_node, prev_arg=prev_arg)
        insensitive = any(isinstance(child, Token) and child.type == "INSENSITIVE_NAME"
                          for child in node.children)
        if isinstance(info.node, ast.FunctionCall):
            info.node.name = self._function_lookup.canonical(info.node.name)
            if insensitive:
                info.node.name = info.node.name + "~"
        return info


def _one_line(exc: Exception) -> str:
    if isinstance(exc, EqlParseError):
        return f"{exc.error_msg} (query line {exc.line + 1}, column {exc.column + 1})"
    return " ".join(str(exc).split())


def parse_query(text: str) -> ast.PipedQuery:
    """Parse EQL as Elasticsearch reads it; raises QueryError with a one-line reason."""
    if not text or not text.strip():
        raise QueryError("empty query")
    if not text.endswith("\n"):
        text += "\n"
    load_extensions(force=False)
    with ParserConfig(elasticsearch_syntax=True, reject_field_comparisons=True, implied_any=False,
                      implied_base=False, allow_subqueries=True, allow_pipes=True, check_functions=True,
                      allow_runs=True):
        walker = _ElasticsearchWalker(text)
        try:
            tree = lark_parser.parse(text, start="piped_query")
        except LarkError as exc:
            line = getattr(exc, "line", None)
            where = f" (query line {line})" if line else ""
            raise QueryError(f"invalid syntax{where}") from None
        try:
            node = walker.visit(tree)
        except EqlError as exc:
            raise QueryError(_one_line(exc)) from None
    return getattr(node, "node", node)
