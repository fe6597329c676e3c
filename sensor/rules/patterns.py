"""Elasticsearch wildcard and Lucene regular-expression patterns, matched in linear time with RE2.

Wildcards: `*` any run of characters, `?` one character, `\\` escapes the next character (a trailing lone `\\` is
itself), as Lucene's WildcardQuery reads them. Lucene regular expressions are read by a parser that follows
Lucene's `RegExp` grammar step by step (so `^ $` are plain characters, `.` matches a newline, the whole value must
match, `\\d \\s \\w` are the ASCII classes Lucene gives them) and written out in RE2's syntax with every literal
escaped. Lucene's operators RE2 has no equivalent for (`@ # & ~ <...>` under Elasticsearch's default ALL flags)
and anything Elasticsearch itself would reject are refused with one reason, at load time.

Why RE2: Python's `re` backtracks, so `*/tmp/*/*.sh*` against one 16 KiB command line took ~55 s on the pipeline
thread. RE2 never backtracks: matching is linear in the length of the text whatever the pattern, and a pattern RE2
cannot express is refused, never handed to a backtracking engine instead.

Case-insensitive variants use RE2's Unicode simple case folding (as Python's `re.IGNORECASE` did before); patterns
without wildcards are still compared by one set lookup (lower-cased when case-insensitive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import re2
from re2 import _re2

# RE2's own limit for one compiled program is 8 MiB; one rule's long list of wildcards can need more. The memory is
# taken as the program and its lazily built DFA need it, so this is a ceiling, not a cost paid per pattern.
_MAX_MEM = 64 << 20
_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_MAX_CODE_POINT = 0x10FFFF


class PatternError(ValueError):
    """A pattern that cannot be evaluated with Elasticsearch's meaning."""


def _char(ch: str) -> str:
    """One literal character in RE2 syntax: ASCII letters and digits as they are, anything else by code point."""
    if ch.isascii() and (ch.isalnum() or ch == "_"):
        return ch
    return f"\\x{{{ord(ch):x}}}"


def _range(low: int, high: int) -> str:
    if low == high:
        return _char(chr(low))
    return f"{_char(chr(low))}-{_char(chr(high))}"


def _compile(source: str, case_insensitive: bool, whole: bool = True) -> Callable[[str], bool]:
    """A test for an RE2 pattern: matching the whole value, or (whole=False) anywhere in it."""
    options = re2.Options()
    options.dot_nl = True            # Lucene's `.` and wildcards' `?`/`*` match a newline too
    options.never_capture = True     # only "does it match" is asked: no submatch bookkeeping
    options.case_sensitive = not case_insensitive
    options.log_errors = False       # failures become PatternError below, not lines on stderr
    options.max_mem = _MAX_MEM
    regexp = _re2.RE2(source.encode("utf-8"), options)
    if not regexp.ok():
        raise PatternError(f"pattern cannot be compiled for linear-time matching: {regexp.error()}")
    match = regexp.Match
    anchor = _ANCHOR_BOTH if whole else _UNANCHORED

    def test(text: str) -> bool:
        # surrogatepass: a lone surrogate (possible in JSON input) is one character to RE2, as it was to `re`
        data = text.encode("utf-8", "surrogatepass")
        return match(anchor, data, 0, len(data))[0][0] >= 0

    return test


# wildcards ------------------------------------------------------------------------------------------------------
def _wildcard_atoms(pattern: str) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(_char(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            if not out or out[-1] != ".*":   # `**` means what `*` means; one is enough for the automaton
                out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(_char(ch))
        i += 1
    return out


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern or "\\" in pattern


def _wildcards_re2(wild: list[str], case_insensitive: bool) -> Callable[[str], bool]:
    """`*X*` patterns as one search for X anywhere, the others as one whole-value match. In a whole-value match
    every `*X*` that has matched stays a live thread to the end, so the automaton's states multiply with the
    patterns a long value happens to contain (a 125-pattern list took ~12 ms on 16 KiB of random text); a search
    stops at the first hit and tracks only partial matches (~1 ms)."""
    atoms = [_wildcard_atoms(p) for p in wild]
    anywhere = ["".join(a[1:-1]) for a in atoms if a[0] == ".*" and a[-1] == ".*"]
    whole = ["".join(a) for a in atoms if not (a[0] == ".*" and a[-1] == ".*")]
    tests = []
    if anywhere:
        tests.append(_compile("|".join(anywhere), case_insensitive, whole=False))
    if whole:
        tests.append(_compile("|".join(whole), case_insensitive))
    if len(tests) == 1:
        return tests[0]
    first, second = tests
    return lambda text: first(text) or second(text)


def star_segments(pattern: str) -> list[str] | None:
    """The literal pieces between the `*`s of a pattern whose only wildcard is `*` (escapes resolved), else None."""
    segments: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            current.append(pattern[i + 1])
            i += 2
            continue
        if ch == "?":
            return None
        if ch == "*":
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    segments.append("".join(current))
    return segments


def _segments_test(segments: list[str]) -> Callable[[str], bool]:
    """`first*middle*...*last` by prefix, suffix and leftmost finds in between: linear, no backtracking needed
    (taking each middle piece at its leftmost place never loses a match another place would give)."""
    first, last = segments[0], segments[-1]
    if len(segments) == 1:      # escapes but no `*`: the value itself
        return first.__eq__
    middle = [s for s in segments[1:-1] if s]
    shortest = len(first) + len(last) + sum(len(s) for s in middle)

    def test(text: str) -> bool:
        if len(text) < shortest or not text.startswith(first) or not text.endswith(last):
            return False
        pos, end = len(first), len(text) - len(last)
        for piece in middle:
            found = text.find(piece, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True

    return test


# Up to this many `*`-only patterns in one test are checked with string methods (a few tenths of a microsecond
# each) rather than one RE2 call (about half a microsecond of fixed cost); longer lists go to RE2 in one pass.
FAST_PATH_MAX = 4


def compile_wildcards(patterns: Iterable[str], case_insensitive: bool) -> Callable[[str], bool]:
    """One test for a list of wildcard patterns: exact ones by set lookup, a few `*`-only ones with string
    methods, the rest by one anchored RE2 pattern."""
    exact: set[str] = set()
    wild: list[str] = []
    for pattern in dict.fromkeys(patterns):
        if has_wildcard(pattern):
            wild.append(pattern)
        else:
            exact.add(pattern.lower() if case_insensitive else pattern)
    matcher = _wildcards_re2(wild, case_insensitive) if wild else None
    segmented = [star_segments(p) for p in wild]
    if matcher is not None and len(wild) <= FAST_PATH_MAX and all(s is not None for s in segmented):
        if not case_insensitive:
            tests = [_segments_test(s) for s in segmented if s is not None]

            def matcher(text: str) -> bool:
                for test in tests:  # noqa: SIM110 - no generator on the hot path
                    if test(text):
                        return True
                return False
        elif all(p.isascii() for p in wild):
            # ASCII pieces against an ASCII value: lower-casing both is exactly RE2's case folding there; any
            # other value goes to RE2, whose Unicode folding lower() does not reproduce (e.g. 'ſ' is an 's').
            lowered = [_segments_test([piece.lower() for piece in s]) for s in segmented if s is not None]
            folded = matcher

            def matcher(text: str) -> bool:
                if text.isascii():
                    low = text.lower()
                    for test in lowered:  # noqa: SIM110 - no generator on the hot path
                        if test(low):
                            return True
                    return False
                return folded(text)

    if case_insensitive:
        if matcher is None:
            return lambda text: text.lower() in exact
        if not exact:
            return matcher
        return lambda text: text.lower() in exact or matcher(text)
    if matcher is None:
        return exact.__contains__
    if not exact:
        return matcher
    return lambda text: text in exact or matcher(text)


# Lucene regular expressions -------------------------------------------------------------------------------------
_UNSUPPORTED = {
    "@": "'@' (any string)",
    "#": "'#' (empty language)",
    "&": "'&' (intersection)",
    "~": "'~' (complement)",
    "<": "'<...>' (numeric range or named automaton)",
}
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Lucene's predefined classes (RegExp.expandPreDefined): ASCII only, and `\s` is [\t\n\r ] (no \f, no \v)
_CLASSES: dict[str, list[tuple[int, int]]] = {
    "d": [(0x30, 0x39)],
    "s": [(0x09, 0x0A), (0x0D, 0x0D), (0x20, 0x20)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    low = 0
    for start, end in sorted(ranges):
        if start > low:
            out.append((low, start - 1))
        low = max(low, end + 1)
    if low <= _MAX_CODE_POINT:
        out.append((low, _MAX_CODE_POINT))
    return out


def _predefined(letter: str) -> list[tuple[int, int]]:
    """The ranges of `\\<letter>`; Lucene rejects a backslash before any other letter."""
    if letter == "\\":
        return [(0x5C, 0x5C)]
    if letter.lower() in _CLASSES:
        ranges = _CLASSES[letter.lower()]
        return ranges if letter.islower() else _complement(ranges)
    raise PatternError(f"regex escape '\\{letter}' is not valid Lucene syntax (Elasticsearch rejects it)")


class _LuceneParser:
    """Lucene's RegExp recursive descent (parseUnionExp ... parseCharExp), emitting RE2 syntax."""

    def __init__(self, pattern: str) -> None:
        self.text = pattern
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.text)

    def peek(self, chars: str) -> bool:
        return self.more() and self.text[self.pos] in chars

    def match(self, ch: str) -> bool:
        if self.more() and self.text[self.pos] == ch:
            self.pos += 1
            return True
        return False

    def next(self) -> str:
        if not self.more():
            raise PatternError("regex ends too early (a lone backslash, or an operator with nothing after it)")
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def parse(self) -> str:
        if not self.text:
            return ""
        out = self.union()
        if self.more():
            raise PatternError(f"regex has an unexpected {self.text[self.pos]!r} at position {self.pos}")
        return out

    def union(self) -> str:
        parts = [self.concat()]
        while self.match("|"):
            parts.append(self.concat())
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"

    def concat(self) -> str:
        # Lucene always reads at least one item, even when `|` or `)` comes next (then that is a plain character)
        items = [self.repeat()]
        while self.more() and not self.peek(")|"):
            if self.peek("&"):
                raise PatternError(f"Lucene regex operator {_UNSUPPORTED['&']} is not supported")
            items.append(self.repeat())
        return "".join(items)

    def repeat(self) -> str:
        atom = self.complement()
        while self.peek("?*+{"):
            ch = self.next()
            if ch == "{":
                low = self.integer()
                high: int | None = low
                if self.match(","):
                    high = self.integer() if self.peek("0123456789") else None
                if not self.match("}"):
                    raise PatternError(f"regex expects '}}' at position {self.pos}")
                if high is not None and low > high:
                    raise PatternError(f"regex repetition {{{low},{high}}} is out of order")
                if max(low, high or 0) > 1000:
                    raise PatternError("regex repetition counts above 1000 are not supported")
                ch = f"{{{low}}}" if high == low else f"{{{low},{'' if high is None else high}}}"
            atom = f"(?:{atom}){ch}"
        return atom

    def integer(self) -> int:
        start = self.pos
        while self.peek("0123456789"):
            self.pos += 1
        if start == self.pos:
            raise PatternError(f"regex expects a number at position {self.pos}")
        return int(self.text[start:self.pos])

    def complement(self) -> str:
        if self.peek("~"):
            raise PatternError(f"Lucene regex operator {_UNSUPPORTED['~']} is not supported")
        if self.match("["):
            negate = self.match("^")
            ranges = self.char_classes()
            if not self.match("]"):
                raise PatternError("regex has an unterminated character class")
            return ("[^" if negate else "[") + "".join(_range(a, b) for a, b in ranges) + "]"
        return self.simple()

    def char_classes(self) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        while True:       # Lucene reads one item before looking for `]`, so `[]a]` holds `]` and `a`
            if self.match("\\"):
                if self.peek("\\" + _LETTERS):
                    ranges.extend(_predefined(self.next()))
                else:
                    ch = ord(self.next())
                    ranges.append((ch, ch))
            else:
                low = ord(self.char())
                if self.match("-"):
                    high = ord(self.char())
                    if low > high:
                        raise PatternError(f"regex class range {chr(low)!r}-{chr(high)!r} is out of order")
                    ranges.append((low, high))
                else:
                    ranges.append((low, low))
            if not self.more() or self.peek("]"):
                return ranges

    def char(self) -> str:
        self.match("\\")
        return self.next()

    def simple(self) -> str:
        if self.match("."):
            return "."
        if self.peek("#@<"):
            raise PatternError(f"Lucene regex operator {_UNSUPPORTED[self.text[self.pos]]} is not supported")
        if self.match('"'):
            end = self.text.find('"', self.pos)
            if end < 0:
                raise PatternError("regex has an unterminated quoted string")
            literal = self.text[self.pos:end]
            self.pos = end + 1
            return "(?:" + "".join(_char(c) for c in literal) + ")"
        if self.match("("):
            if self.match(")"):
                return "(?:)"
            inner = self.union()
            if not self.match(")"):
                raise PatternError(f"regex expects ')' at position {self.pos}")
            return f"(?:{inner})"
        if self.match("\\"):
            if self.peek("\\" + _LETTERS):
                ranges = _predefined(self.next())
                return "[" + "".join(_range(a, b) for a, b in ranges) + "]"
            return _char(self.next())
        return _char(self.next())


def lucene_regex_to_re2(pattern: str) -> str:
    """Translate one Lucene regular expression to RE2 syntax with the same meaning (to be matched whole)."""
    return _LuceneParser(pattern).parse()


def compile_regexes(patterns: Iterable[str], case_insensitive: bool) -> Callable[[str], bool]:
    translated = [lucene_regex_to_re2(p) for p in patterns]
    return _compile("|".join(f"(?:{t})" for t in translated), case_insensitive)
