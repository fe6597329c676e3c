"""Elasticsearch wildcard and Lucene regular-expression patterns, translated to Python's `re`.

Wildcards: `*` any run of characters, `?` one character, `\\` escapes the next character (Lucene's
WildcardQuery). Lucene regular expressions always match the whole string and give `^ $` no special meaning;
their operators that Python lacks (`@ # & ~ < >` under Elasticsearch's default ALL flags) are refused rather
than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable


class PatternError(ValueError):
    """A pattern that cannot be evaluated with Elasticsearch's meaning."""


def wildcard_to_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern or "\\" in pattern


def compile_wildcards(patterns: Iterable[str], case_insensitive: bool) -> Callable[[str], bool]:
    """One test for a list of wildcard patterns: exact ones by set lookup, the rest by one anchored regex."""
    exact: set[str] = set()
    wild: list[str] = []
    for pattern in patterns:
        if has_wildcard(pattern):
            wild.append(wildcard_to_regex(pattern))
        else:
            exact.add(pattern.lower() if case_insensitive else pattern)
    flags = re.DOTALL | (re.IGNORECASE if case_insensitive else 0)
    matcher = re.compile("(?:" + "|".join(wild) + ")", flags).fullmatch if wild else None

    if case_insensitive:
        if matcher is None:
            return lambda text: text.lower() in exact
        if not exact:
            return lambda text: matcher(text) is not None
        return lambda text: text.lower() in exact or matcher(text) is not None
    if matcher is None:
        return exact.__contains__
    if not exact:
        return lambda text: matcher(text) is not None
    return lambda text: text in exact or matcher(text) is not None


_LUCENE_UNSUPPORTED = {
    "@": "'@' (any string)",
    "#": "'#' (empty language)",
    "&": "'&' (intersection)",
    "~": "'~' (complement)",
    "<": "'<n-m>' (numeric range)",
    ">": "'<n-m>' (numeric range)",
}
_LUCENE_CLASSES = {"d": r"\d", "D": r"\D", "s": r"\s", "S": r"\S", "w": r"\w", "W": r"\W"}


def lucene_regex_to_python(pattern: str) -> str:
    """Translate one Lucene regular expression to an equivalent Python one (to be used with fullmatch)."""
    out: list[str] = []
    i = 0
    in_class = False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= len(pattern):
                raise PatternError("regex ends with a lone backslash")
            nxt = pattern[i + 1]
            out.append(_LUCENE_CLASSES.get(nxt) or re.escape(nxt))
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
                out.append(ch)
            elif ch in "[&~|":
                out.append("\\" + ch)
            else:
                out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            if i + 1 < len(pattern) and pattern[i + 1] == "^":
                out.append("^")
                i += 1
        elif ch == '"':
            end = pattern.find('"', i + 1)
            if end < 0:
                raise PatternError("regex has an unterminated quoted string")
            out.append(re.escape(pattern[i + 1:end]))
            i = end + 1
            continue
        elif ch in _LUCENE_UNSUPPORTED:
            raise PatternError(f"Lucene regex operator {_LUCENE_UNSUPPORTED[ch]} is not supported")
        elif ch in "^$":
            out.append("\\" + ch)
        elif ch == "(" and pattern.startswith("(?", i):
            raise PatternError("'(?' is not valid Lucene regex syntax")
        else:
            out.append(ch)
        i += 1
    if in_class:
        raise PatternError("regex has an unterminated character class")
    return "".join(out)


def compile_regexes(patterns: Iterable[str], case_insensitive: bool) -> Callable[[str], bool]:
    translated = [lucene_regex_to_python(p) for p in patterns]
    flags = re.DOTALL | (re.IGNORECASE if case_insensitive else 0)
    try:
        matcher = re.compile("(?:" + "|".join(f"(?:{t})" for t in translated) + ")", flags).fullmatch
    except re.error as exc:
        raise PatternError(f"invalid regex: {exc}") from None
    return lambda text: matcher(text) is not None
