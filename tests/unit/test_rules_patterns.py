"""Wildcard and Lucene regex matching: Elasticsearch's meaning, in linear time whatever the pattern.

The timing asserts are guards against exponential blow-up (the backtracking implementation took ~55 s on the
first of these), not benchmarks: linear matching of 16 KiB takes milliseconds, so "well under a second" holds
even on a loaded machine.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.rules import patterns
from sensor.rules.eql_compile import compile_query
from sensor.rules.eql_parse import parse_query
from sensor.rules.loader import load_rule_file
from sensor.rules.patterns import PatternError, compile_regexes, compile_wildcards

KIB16 = 16 * 1024
QUICK_S = 0.5


@pytest.fixture(params=["fast path", "re2 only"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every wildcard test runs twice: with the string-method fast path and with everything in RE2."""
    if request.param == "re2 only":
        monkeypatch.setattr(patterns, "FAST_PATH_MAX", 0)
    return request.param


def timed(test, text: str) -> tuple[bool, float]:
    start = time.perf_counter()
    result = test(text)
    return result, time.perf_counter() - start


# a reference matcher: dynamic programming over (pattern position, text position), no regex engine --------------
def wildcard_tokens(pattern: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            tokens.append(("lit", pattern[i + 1]))
            i += 2
            continue
        tokens.append(("star", "") if ch == "*" else ("one", "") if ch == "?" else ("lit", ch))
        i += 1
    return tokens


def reference_wildcard(pattern: str, text: str, case_insensitive: bool) -> bool:
    tokens = wildcard_tokens(pattern)
    fold = str.lower if case_insensitive else (lambda c: c)
    row = [True] + [False] * len(text)          # row[j]: tokens so far match text[:j]
    for kind, ch in tokens:
        new = [False] * (len(text) + 1)
        for j in range(len(text) + 1):
            if kind == "star":
                new[j] = row[j] or (j > 0 and new[j - 1])
            elif j > 0 and row[j - 1] and (kind == "one" or fold(ch) == fold(text[j - 1])):
                new[j] = True
        row = new
    return row[len(text)]


# pathological patterns against 16 KiB --------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("*a*a*a*a*a*b", "a" * KIB16, False),
    ("*a*a*a*a*a*b", "a" * KIB16 + "b", True),
    ("*/tmp/*/*.sh*", "/tmp/" + "a/tmp/" * 2730, False),
    ("*/tmp/*/*.sh*", "/tmp/" + "a/tmp/" * 2730 + "x.sh", True),
    ("*?*?*?*?*?*?*b", "a" * KIB16, False),
    ("a*?*?*?*?*?*a", "a" * KIB16, True),
    ("*a*b*c*d*e*f*g*h*i*j*k*l*m*n*o*p*q*r*s*t*u*v*w*x*y*z", "abcdefghijklmnopqrstuvwxy" * 650, False),
])
def test_pathological_wildcards_answer_correctly_and_quickly(engine: str, pattern: str, text: str,
                                                             expected: bool) -> None:
    for insensitive in (False, True):
        test = compile_wildcards([pattern], insensitive)
        result, took = timed(test, text)
        assert result is expected and took < QUICK_S, (pattern, insensitive, took)
        result, took = timed(test, text.upper())
        assert result is (expected and (insensitive or text.upper() == text)), (pattern, insensitive)
        assert took < QUICK_S


def test_a_long_list_of_pathological_wildcards_in_one_test_is_still_linear(engine: str) -> None:
    wild = [f"*{c}*{c}*{c}*{c}*{c}*/" for c in "abcdefghijklmnopqrstuvwxyz"] + ["*/tmp/*/*.sh*"]
    test = compile_wildcards(wild, True)
    text = "".join("abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(KIB16))
    result, took = timed(test, text)
    assert result is False and took < QUICK_S
    assert test(text + "/") is True


@pytest.mark.parametrize(("regex", "text", "expected"), [
    ("(a+)+b", "a" * KIB16, False),
    ("(a+)+b", "a" * KIB16 + "b", True),
    ("(a|a)*b", "a" * KIB16, False),
    ("(a|aa)+c", "a" * KIB16, False),
    ("((a*)*)*b", "a" * KIB16, False),
    ("(.*a){12}", "a" * KIB16, True),
    ("(.*a){12}b", "a" * KIB16, False),
    ("((a|b|ab)*|(ba)*)*c", "ab" * (KIB16 // 2), False),
    ("(((a|b)*(b|a)*)*|(ab|ba)*)*(c|d)", "ab" * (KIB16 // 2), False),
    (".*[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{1,5}.*", "1." * (KIB16 // 2), False),
    ("(x+x+)+y", "x" * KIB16, False),
])
def test_pathological_regexes_answer_correctly_and_quickly(regex: str, text: str, expected: bool) -> None:
    for insensitive in (False, True):
        result, took = timed(compile_regexes([regex], insensitive), text)
        assert result is expected and took < QUICK_S, (regex, insensitive, took)


def test_the_stall_rule_loads_and_evaluates_a_hostile_command_line_quickly(tmp_path: Path) -> None:
    rule_file = tmp_path / "stall.toml"
    rule_file.write_text('[rule]\nrule_id = "x"\nname = "Shell script in a tmp subfolder"\ndescription = "d"\n'
                         'severity = "low"\nrisk_score = 21\ntype = "eql"\nlanguage = "eql"\nquery = \'\'\'\n'
                         'process where process.command_line : "*/tmp/*/*.sh*"\n\'\'\'\n')
    rule = load_rule_file(rule_file)
    predicate = rule.compiled.predicate
    hostile = {"event": {"category": ["process"]}, "process": {"command_line": "/tmp/" + "a/tmp/" * 2730}}
    result, took = timed(predicate, hostile)
    assert result is False and took < QUICK_S
    assert predicate({"event": {"category": ["process"]}, "process": {"command_line": "sh /TMP/x/run.SH -c"}})


# Elasticsearch's meaning --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("pattern", "text", "insensitive", "expected"), [
    ("a?c", "a\nc", False, True),               # `?` and `*` match a newline
    ("*", "", False, True),
    ("a\\*b", "a*b", False, True),
    ("a\\*b", "axb", False, False),
    ("a\\?", "a?", False, True),
    ("a\\?", "ab", False, False),
    ("ab\\", "ab\\", False, True),              # a trailing lone backslash is itself
    ("\\\\*", "\\x", False, True),
    ("*é*", "xÉy", True, True),
    ("*é*", "xÉy", False, False),
    ("*ß", "STRAẞ", True, True),
    ("*s", "ſ", True, True),                    # Unicode simple case folding, as `re.IGNORECASE` had
    ("[a-z]*", "[a-z]x", False, True),          # brackets mean nothing in a wildcard
    ("*(*", "a(b", False, True),
    ("*.sh", "xxsh", False, False),
    ("*a", "\ud800a", False, True),             # a lone surrogate (JSON input) is one character
    ("?a", "\ud800a", False, True),
])
def test_wildcard_meaning(engine: str, pattern: str, text: str, insensitive: bool, expected: bool) -> None:
    assert compile_wildcards([pattern], insensitive)(text) is expected


@pytest.mark.parametrize(("regex", "text", "expected"), [
    ("[^a]", "\n", True),
    (".", "\n", True),                          # DOTALL
    ("a^b$", "a^b$", True),                     # ^ and $ are plain characters
    ("abc", "xabcx", False),                    # the whole value must match
    ("\\d+", "123", True),
    ("\\d", "٣", False),                        # Lucene's \d is ASCII only
    ("\\w+", "a_9Z", True),
    ("\\w", "é", False),
    ("\\s", "\t", True),
    ("\\s", "\f", False),                       # Lucene's \s is [\t\n\r ]
    ("\\S", "\r", False),
    ("[\\d]", "5", True),
    ("[^\\d]", "5", False),
    ("[\\D]", "\n", True),
    ("[]a]+", "]a]", True),                     # Lucene reads one class item before looking for ']'
    ("a||b", "|b", True),                       # ... and one item after '|', so '|' here is a character
    ("a||b", "b", False),
    ("*a", "*a", True),                         # an operator with nothing before it is a character
    ('"a.b"+', "a.ba.b", True),                 # quoted strings are literal
    ('"a.b"', "axb", False),
    ("()", "", True),
    ("(a)?", "", True),
    ("a{2,3}", "aaa", True),
    ("a{2,3}", "aaaa", False),
    ("a{2,}", "aaaaa", True),
    ("a{2}", "aa", True),
    ("\\.", ".", True),
    ("\\.", "x", False),
    ("\\\\", "\\", True),
    ("[a\\-z]", "-", True),
    ("[a\\-z]", "b", False),
    ("a*?", "aaa", True),                       # repetition operators stack
    ("[&~#@<]+", "&~#@<", True),                # inside a class these are characters
    ('"&~#@<"', "&~#@<", True),
    ("a>b", "a>b", True),
    ("", "", True),
    ("", "a", False),
])
def test_lucene_regex_meaning(regex: str, text: str, expected: bool) -> None:
    assert compile_regexes([regex], False)(text) is expected


def test_case_insensitive_regex_and_lists_of_regexes() -> None:
    test = compile_regexes(["/[a-z0-9\\s_\\-\\\\./]+\\s", "x+"], True)
    assert test("/Usr/Bin ") and test("XXX") and not test("/usr/bin")
    assert not compile_regexes(["abc"], False)("ABC")


@pytest.mark.parametrize(("regex", "reason"), [
    ("a&b", "'&' (intersection)"),
    ("~a", "'~' (complement)"),
    ("a@", "'@' (any string)"),
    ("#", "'#' (empty language)"),
    ("<1-5>", "numeric range"),
    ("\\n", "not valid Lucene syntax"),
    ("a{1001}", "above 1000"),
    ("[a", "unterminated character class"),
    ("(a", "expects ')'"),
    ("a)", "unexpected ')'"),
    ('"x', "unterminated quoted string"),
    ("a{x}", "expects a number"),
    ("a{3,2}", "out of order"),
    ("[z-a]", "out of order"),
    ("a|", "ends too early"),
    ("\\", "ends too early"),
    ("((a{1000}){1000}){1000}", "linear-time matching"),
])
def test_unsupported_or_invalid_regexes_are_refused_with_one_reason(regex: str, reason: str) -> None:
    with pytest.raises(PatternError, match=re.escape(reason)) as info:
        compile_regexes([regex], False)
    assert "\n" not in str(info.value)


def test_a_refused_regex_refuses_the_rule_at_load_with_the_reason() -> None:
    from sensor.rules.eql_compile import Unsupported

    with pytest.raises(Unsupported, match="intersection"):
        compile_query(parse_query('process where process.name regex "a&b"'))


def test_many_wildcards_in_one_test_compile() -> None:
    many = [f"*/opt/tool-{i}/*/bin/*.sh*" for i in range(3000)]
    test = compile_wildcards(many, True)
    assert test("/OPT/tool-2999/x/bin/run.sh") and not test("/opt/tool-3000/x/bin/run.sh")


# equivalence on random input ----------------------------------------------------------------------------------
# Characters whose case-insensitive equality is the same under lower() and Unicode simple case folding (the
# reference folds with lower(); 'ſ', 'K' (Kelvin) or 'İ' would need the folding tables).
ALPHABET = "aAbB/.\n é Éß ẞ"
PATTERN_ALPHABET = ALPHABET + "***??\\"
# One or two letters make repeated pieces and real matches common (`*a*a*` against `aa`); the wide set covers the
# rest, and each pattern is also tried on values made from it (each `*` and `?` filled in at random).
PATTERNS = st.one_of(st.text("a*", max_size=8), st.text("ab**?\\", max_size=10),
                     st.text(PATTERN_ALPHABET, max_size=10))
TEXTS = st.lists(st.one_of(st.text("abA", max_size=14), st.text(ALPHABET, max_size=14)), max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pattern=PATTERNS, texts=TEXTS, insensitive=st.booleans(), data=st.data())
def test_wildcards_equal_the_reference_matcher(engine: str, pattern: str, texts: list[str], insensitive: bool,
                                               data: st.DataObject) -> None:
    test = compile_wildcards([pattern], insensitive)
    filled = "".join(data.draw(st.text("aAb", max_size=3)) if kind == "star" else
                     data.draw(st.sampled_from("aAb")) if kind == "one" else ch
                     for kind, ch in wildcard_tokens(pattern))
    for text in [*texts, pattern, filled, filled[1:], filled + "a"]:
        assert test(text) is reference_wildcard(pattern, text, insensitive), (pattern, text, insensitive)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(group=st.lists(PATTERNS, min_size=1, max_size=8), texts=TEXTS, insensitive=st.booleans())
def test_lists_of_wildcards_equal_any_of_the_reference(engine: str, group: list[str], texts: list[str],
                                                       insensitive: bool) -> None:
    test = compile_wildcards(group, insensitive)
    for text in [*texts, *group]:
        expected = any(reference_wildcard(p, text, insensitive) for p in group)
        assert test(text) is expected, (group, text, insensitive)


# Random Lucene regexes built together with an independent Python `re` spelling of the same language (the
# engine the rules used before); both are run on short values, where backtracking costs nothing.
_RX_CHARS = "ab.-]|"


def _atom() -> st.SearchStrategy[tuple[str, str]]:
    literal = st.sampled_from("ab").map(lambda c: (c, c))
    escaped = st.sampled_from(".-]|*").map(lambda c: ("\\" + c, re.escape(c)))
    any_char = st.just((".", "."))
    classes = st.sampled_from([("[ab]", "[ab]"), ("[^a]", "[^a]"), ("[a-c]", "[a-c]"), ("\\d", "[0-9]"),
                               ("[\\s.]", "[\\t\\n\\r .]"), ("\\W", "[^0-9A-Z_a-z]"), ('"a."', "a\\.")])
    return st.one_of(literal, escaped, any_char, classes)


def _extend(children: st.SearchStrategy[tuple[str, str]]) -> st.SearchStrategy[tuple[str, str]]:
    def concat(parts: list[tuple[str, str]]) -> tuple[str, str]:
        return "".join(p[0] for p in parts), "".join(f"(?:{p[1]})" for p in parts)

    def union(parts: list[tuple[str, str]]) -> tuple[str, str]:
        return "(" + "|".join(p[0] for p in parts) + ")", "(?:" + "|".join(p[1] for p in parts) + ")"

    def repeat(part: tuple[str, str], op: str) -> tuple[str, str]:
        return f"({part[0]}){op}", f"(?:{part[1]}){op}"

    return st.one_of(
        st.lists(children, min_size=2, max_size=3).map(concat),
        st.lists(children, min_size=2, max_size=3).map(union),
        st.tuples(children, st.sampled_from(["*", "+", "?", "{2}", "{1,2}", "{0,}"])).map(lambda t: repeat(*t)),
    )


REGEXES = st.recursive(_atom(), _extend, max_leaves=6)


@functools.cache
def _python(source: str, insensitive: bool) -> re.Pattern[str]:
    return re.compile(source, re.DOTALL | (re.IGNORECASE if insensitive else 0))


@settings(max_examples=300, deadline=None)
@given(regex=REGEXES, texts=st.lists(st.text("aAbB0.-]|\n x", max_size=8), min_size=1, max_size=8),
       insensitive=st.booleans())
def test_lucene_regexes_equal_the_python_spelling(regex: tuple[str, str], texts: list[str],
                                                  insensitive: bool) -> None:
    lucene, python = regex
    test = compile_regexes([lucene], insensitive)
    reference = _python(python, insensitive)
    for text in texts:
        assert test(text) is (reference.fullmatch(text) is not None), (lucene, python, text, insensitive)
