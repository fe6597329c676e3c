#!/usr/bin/env python3
"""Per-pattern cost of the rules' wildcard and regex tests (`sensor/rules/patterns.py`).

Collects every `:`, `like`, `like~`, `regex`, `regex~` test of the EQL rules under --rules, compiles each as the
detector does, and reports the time one test takes on ordinary values (paths, names, command lines of a few
hundred bytes) and on one 16 KiB hostile command line. Run it on two checkouts to compare implementations:

  .venv/bin/python scripts/bench_patterns.py --rules ../shared/elastic-rules/linux/
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eql import ast  # noqa: E402

from sensor.rules.eql_parse import parse_query  # noqa: E402
from sensor.rules.patterns import PatternError, compile_regexes, compile_wildcards  # noqa: E402

ORDINARY = [
    "/usr/bin/python3", "python3", "sh", "/bin/sh -c ls -la /home/user", "/usr/lib/systemd/systemd-journald",
    "curl -s -o /tmp/x https://example.com/install.sh", "/usr/sbin/sshd -D -e", "bash",
    "/usr/bin/python3 -m pytest -q tests/unit/test_rules_eql.py --maxfail=1 -p no:cacheprovider",
    "java -Xmx2g -cp /opt/app/lib/* com.example.Main --config /etc/app/app.yaml " + "--flag value " * 20,
]
HOSTILE = "/tmp/" + "a/tmp/" * 2730   # ~16 KiB, the shape that made `*/tmp/*/*.sh*` backtrack


def pattern_tests(rules: Path) -> list[tuple[str, str, list[str]]]:
    """(rule file, function, patterns) for every pattern test of the EQL rules under `rules`."""
    found: list[tuple[str, str, list[str]]] = []
    for path in sorted(rules.rglob("*.toml")):
        try:
            rule = tomllib.loads(path.read_text()).get("rule", {})
            if rule.get("language") != "eql":
                continue
            parsed = parse_query(str(rule["query"]))
        except Exception:  # a rule the loader refuses is not measured
            continue
        for node in parsed:
            if isinstance(node, ast.FunctionCall) and node.name in (":", "like", "like~", "regex", "regex~"):
                values = [a.value for a in node.arguments[1:] if isinstance(a, ast.String)]
                if len(values) == len(node.arguments) - 1:
                    found.append((path.name, node.name, values))
    return found


def per_call_us(test, values: list[str], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for value in values:
            test(value)
    return (time.perf_counter() - start) / (rounds * len(values)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, default=REPO.parent / "shared" / "elastic-rules" / "linux")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--hostile-timeout", type=float, default=2.0,
                        help="stop the hostile measurement after one test takes longer than this (seconds)")
    args = parser.parse_args()
    tests = pattern_tests(args.rules)
    ordinary: list[float] = []
    hostile: list[float] = []
    refused = 0
    hostile_skipped = 0
    for _file, name, patterns in tests:
        insensitive = name in (":", "like~", "regex~")
        try:
            test = compile_regexes(patterns, insensitive) if name.startswith("regex") \
                else compile_wildcards(patterns, insensitive)
        except PatternError:
            refused += 1
            continue
        ordinary.append(per_call_us(test, ORDINARY, args.rounds))
        if hostile and max(hostile) > args.hostile_timeout * 1e6:
            hostile_skipped += 1   # a backtracking implementation: one such test is figure enough
            continue
        start = time.perf_counter()
        test(HOSTILE)
        hostile.append((time.perf_counter() - start) * 1e6)
    print(f"{len(tests)} pattern tests in {args.rules} ({refused} refused); {len(ORDINARY)} ordinary values")
    print(f"ordinary value, one test: median {statistics.median(ordinary):.2f} us, "
          f"mean {statistics.fmean(ordinary):.2f} us, max {max(ordinary):.2f} us; "
          f"all tests once per value: {sum(ordinary):.0f} us")
    print(f"16 KiB hostile command line, one test: median {statistics.median(hostile):.1f} us, "
          f"max {max(hostile) / 1e6:.3f} s, all measured tests {sum(hostile) / 1e6:.3f} s"
          + (f" ({hostile_skipped} tests not measured after one took over {args.hostile_timeout} s)"
             if hostile_skipped else ""))


if __name__ == "__main__":
    main()
