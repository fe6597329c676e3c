"""EQL evaluated with Elasticsearch's semantics: arrays, case, wildcards, `in`, `!=`, missing fields, regex."""

from __future__ import annotations

import pytest

from sensor.rules.eql_compile import Unsupported, compile_query
from sensor.rules.eql_parse import QueryError, parse_query


def matches(query: str, doc: dict) -> bool:
    compiled = compile_query(parse_query(query))
    assert compiled.predicate is not None
    return compiled.predicate(doc)


def proc(**process: object) -> dict:
    return {"event": {"category": ["process"], "type": ["start"], "action": "exec"}, "process": process}


def test_array_field_matches_when_any_element_matches() -> None:
    assert matches('process where event.type == "start"', proc())
    doc = proc()
    doc["event"]["type"] = ["change", "start"]
    assert matches('process where event.type == "start"', doc)
    doc["event"]["type"] = ["end"]
    assert not matches('process where event.type == "start"', doc)


def test_event_type_of_query_is_event_category() -> None:
    doc = proc(name="ssh")
    assert matches('process where process.name == "ssh"', doc)
    doc["event"]["category"] = ["network"]
    assert not matches('process where process.name == "ssh"', doc)
    assert matches('any where process.name == "ssh"', doc)


@pytest.mark.parametrize(("query", "expected"), [
    ('process where process.name == "SSH"', False),
    ('process where process.name : "SSH"', True),
    ('process where process.name like "SSH"', False),
    ('process where process.name like~ "SSH"', True),
    ('process where process.name in ("SSH", "sshd")', False),
    ('process where process.name in~ ("SSH", "sshd")', True),
    ('process where process.name regex "SS."', False),
    ('process where process.name regex~ "SS."', True),
    ('process where startsWith(process.name, "SS")', False),
    ('process where startsWith~(process.name, "SS")', True),
    ('process where process.name != "SSH"', True),
])
def test_case_sensitivity_follows_the_operator(query: str, expected: bool) -> None:
    assert matches(query, proc(name="ssh")) is expected


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("ss?", "ssh", True),
    ("ss?", "sshd", False),
    ("*sh", "/usr/bin/ssh", True),
    ("*sh", "/usr/bin/sshd", False),
    ("a\\\\*b", "a*b", True),      # EQL "a\\*b" is the pattern a\*b: a literal star
    ("a\\\\*b", "axxb", False),
    ("", "", True),
])
def test_wildcards(pattern: str, value: str, expected: bool) -> None:
    assert matches(f'process where process.name like "{pattern}"', proc(name=value)) is expected


def test_wildcard_list_and_array_field() -> None:
    doc = proc(args=["ssh", "-o", "ProxyCommand=nc %h %p", "host"])
    assert matches('process where process.args like ("-o*", "-L*")', doc)
    assert matches('process where process.args : "*proxycommand*"', doc)
    assert not matches('process where process.args like "*proxycommand*"', doc)
    assert not matches('process where process.args like ("-L*", "-R*")', doc)


def test_in_with_numbers_and_booleans_keeps_types_apart() -> None:
    assert matches("process where process.pid in (1, 2)", proc(pid=2))
    assert not matches("process where process.pid in (1, 2)", proc(pid=3))
    assert not matches("process where process.pid == 1", proc(pid=True))
    assert matches("process where process.interactive == true", proc(interactive=True))
    assert not matches("process where process.interactive == true", proc(interactive=1))
    assert not matches("process where process.pid in (1, 2)", proc(pid=[3, 4]))
    assert matches("process where process.pid in (1, 2)", proc(pid=[3, 2]))


def test_not_equal_is_the_negation_of_equal_as_in_query_dsl() -> None:
    assert matches("process where process.exit_code != 0", proc())           # missing: must_not matches
    assert not matches("process where process.exit_code != 0", proc(exit_code=0))
    assert matches("process where process.exit_code != 0", proc(exit_code=1))
    assert not matches('process where process.args != "-c"', proc(args=["sh", "-c", "x"]))
    assert matches('process where process.args != "-c"', proc(args=["sh", "x"]))


def test_missing_fields() -> None:
    empty = proc()
    assert not matches('process where process.name == "ssh"', empty)
    assert not matches('process where process.name : "*"', empty)
    assert not matches("process where process.pid > 0", empty)
    assert not matches('process where process.name in ("ssh")', empty)
    assert matches('process where not process.name == "ssh"', empty)
    assert matches("process where process.name == null", empty)
    assert not matches("process where process.name != null", empty)
    assert matches("process where process.name != null", proc(name="sh"))
    assert matches("process where process.args == null", proc(args=[]))
    assert not matches('process where container.id like "?*"', proc(name="ssh"))


def test_optional_field_syntax() -> None:
    query = 'process where ?process.parent.command_line in ("pvedaemon") or process.name == "ssh"'
    assert matches(query, proc(name="ssh"))
    assert not matches('process where ?process.parent.name == "sshd"', proc(name="ssh"))
    assert matches('process where ?process.parent.name == "sshd"', proc(parent={"name": "sshd"}))


def test_array_of_objects_is_flattened() -> None:
    doc = proc()
    doc["threat"] = [{"tactic": {"id": "TA0008"}}, {"tactic": {"id": "TA0003"}}]
    assert matches('any where threat.tactic.id == "TA0003"', doc)
    assert not matches('any where threat.tactic.id == "TA0001"', doc)


def test_array_index() -> None:
    assert matches('process where process.args[1] == "-V"', proc(args=["ssh", "-V"]))
    assert not matches('process where process.args[0] == "-V"', proc(args=["ssh", "-V"]))


def test_regex_is_anchored_lucene() -> None:
    assert matches('process where process.name regex "ss.*"', proc(name="sshd"))
    assert not matches('process where process.name regex "sh"', proc(name="ssh"))
    assert matches('process where process.name regex "[a-z]{3}"', proc(name="ssh"))
    assert not matches('process where process.name regex "^ssh$"', proc(name="ssh"))  # ^ $ are literal
    assert matches('process where process.name regex "^ssh$"', proc(name="^ssh$"))
    query = ('process where process.args regex """.*[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:'
             '[0-9]{1,5}:[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}:[0-9]{1,5}.*"""')
    assert matches(query, proc(args=["ssh", "-L", "127.0.0.1:8080:10.0.0.5:80", "h"]))
    assert not matches(query, proc(args=["ssh", "-L", "8080:db:80", "h"]))


def test_ordering_comparisons() -> None:
    assert matches("process where process.pid >= 100", proc(pid=100))
    assert not matches("process where process.pid < 100", proc(pid=100))
    assert matches("process where 100 > process.pid", proc(pid=99))


def test_boolean_logic() -> None:
    doc = proc(name="ssh", args=["ssh", "-V"])
    assert matches('process where process.name == "ssh" and not process.args == "-c"', doc)
    assert matches('process where process.name == "x" or process.args == "-V"', doc)
    assert not matches('process where process.name == "x" or process.args == "-c" or false', doc)


def test_other_functions() -> None:
    doc = proc(name="sshd", command_line="/usr/sbin/sshd -D")
    assert matches('process where endsWith(process.name, "hd")', doc)
    assert matches('process where stringContains(process.command_line, "-D")', doc)
    assert matches("process where length(process.name) == 4", doc)
    net = {"event": {"category": ["network"]}, "source": {"ip": "10.1.2.3"}}
    assert matches('network where cidrMatch(source.ip, "10.0.0.0/8")', net)
    assert not matches('network where cidrMatch(source.ip, "192.168.0.0/16")', net)


@pytest.mark.parametrize(("query", "reason"), [
    ('process where wildcard(process.name, "a*")', "wildcard"),
    ('process where process.name == "a" | head 1', "pipes"),
    ('process where process.name regex "a@"', "'@'"),
    ('process where concat(process.name, "x") == "sshx"', "concat"),
])
def test_unsupported_constructs_are_refused_with_a_reason(query: str, reason: str) -> None:
    with pytest.raises(Unsupported, match=reason):
        compile_query(parse_query(query))


@pytest.mark.parametrize("query", [
    'process where nosuchfunction(process.name)',
    'process where process.name = "ssh"',
    'process where process.name == process.executable',
    "process where",
])
def test_invalid_queries_are_refused_by_the_parser(query: str) -> None:
    with pytest.raises(QueryError):
        parse_query(query)


def test_function_names_are_case_insensitive_as_in_elasticsearch() -> None:
    """Elastic ships `cidrmatch`; the `eql` package knows only `cidrMatch`."""
    doc = proc(name="curl")
    doc["destination"] = {"ip": "10.1.2.3"}
    assert matches('process where cidrmatch(destination.ip, "10.0.0.0/8")', doc)
    assert matches('process where STARTSWITH(process.name, "cu")', doc)
    assert not matches('process where cidrmatch(destination.ip, "192.168.0.0/16")', doc)


def test_cidrmatch_takes_a_lone_address_as_elasticsearch_does() -> None:
    doc = proc(name="curl")
    doc["destination"] = {"ip": "::1"}
    assert matches('process where cidrMatch(destination.ip, "10.0.0.0/8", "::1")', doc)
    doc["destination"] = {"ip": "::2"}
    assert not matches('process where cidrMatch(destination.ip, "10.0.0.0/8", "::1")', doc)
    with pytest.raises(QueryError):
        parse_query('process where cidrMatch(destination.ip, "not-an-address")')
