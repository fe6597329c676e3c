"""The golden replay: a recording of a mixed workload (tests/fixtures/golden/) replayed through the real
`container-sensor replay` command, its output compared byte for byte with the committed expected output.

It is the proof that a restructure changes no behaviour, so it goes through the command line (which a package
move does not change) rather than through module paths, and it compares the raw bytes of every line, key
order and escaping included. Only values that depend on the machine or the moment of the replay are
neutralised, each named below with the reason; everything else in a replayed document comes from the recording
(its records, plus the boot id, boot-to-wall-clock offset, host name and host namespaces in its metadata).

Used by tests/unit/test_golden_replay.py and by scripts/make_golden.py, which makes the fixture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from json.decoder import scanstring
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DIR = REPO / "tests" / "fixtures" / "golden"
RECORDING = FIXTURE_DIR / "workload.rec"
EXPECTED_NDJSON = FIXTURE_DIR / "expected.ndjson"
EXPECTED_COMPACT = FIXTURE_DIR / "expected.compact"
EXPECTED_SUMMARY = FIXTURE_DIR / "expected.summary"
# The Elastic rules kept beside the repository (read-only reference material, as CI sees it), and the alerts they
# raise on the recording. Their replay is cheap (about a second) and deterministic: rules see only the recorded
# documents, and their budget is CPU time, which load on the machine does not spend.
SHARED_RULES = REPO.parent / "shared" / "rules"
EXPECTED_RULE_ALERTS = FIXTURE_DIR / "expected.rules.ndjson"

PLACEHOLDER = "<replay>"
_PLACEHOLDER_JSON = json.dumps(PLACEHOLDER)

# Each (path, what is done, why). Paths are dotted field names; "alert" applies to alert documents only.
# - event.created: the wall clock when the replay built the document (sensor/ecs/builder.py event_block).
# - @timestamp of alerts: an alert's time is when it was raised, the replay's wall clock (rules/alerts.py,
#   and the fold summaries of rules/folding.py); an event's @timestamp comes from the recording and is kept.
# - host.*: the facts of the machine that replays (/etc/os-release, /etc/machine-id, uname, its interfaces;
#   sensor/model/host.py), except host.hostname and host.name, which come from the recording. Values always present
#   are replaced; members present only on some machines (id, ip, mac, os.version) are removed.
# - agent.id: the replaying machine's machine-id.
# - container_sensor.identity.reason: offline the built-in rule's look at a container's executed file finds
#   none of the recorded processes; whether it says "unreachable" (no such pid on this machine) or "replaced"
#   (the pid is now another process) or that the look ran out of time depends on this machine's /proc and
#   load. That the identity is unknown (the member and its status) is kept.
# Kept though they could vary: user.name and group.name of host processes are looked up on the replaying machine,
# but the workload's host processes are uid/gid 0, root everywhere; container.name and image are looked up in
# the runtimes' state on the replaying machine, where the container (removed with --rm) is nowhere; agent.version
# is the package's version, so a version bump re-makes the golden.
REPLACED = ("event.created", "agent.id", "host.architecture", "host.os.kernel", "host.os.name",
            "host.os.family", "host.os.platform", "container_sensor.identity.reason")
REPLACED_IN_ALERTS = ("@timestamp",)
REMOVED = ("host.id", "host.ip", "host.mac", "host.os.version")


@dataclass
class Member:
    key_start: int  # offset of the key's opening quote
    value_start: int
    value_end: int  # offset just past the value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _scan(text: str, pos: int, path: str, members: dict[str, Member]) -> int:
    """Scans the JSON value at pos, recording the span of every object member by its dotted path; returns
    the offset past the value. Arrays are not descended into: no neutralised field lives in one."""
    pos = _skip_ws(text, pos)
    char = text[pos]
    if char == "{":
        pos = _skip_ws(text, pos + 1)
        if text[pos] == "}":
            return pos + 1
        while True:
            key_start = pos
            key, pos = scanstring(text, pos + 1)
            pos = _skip_ws(text, pos)
            if text[pos] != ":":
                raise ValueError(f"expected ':' at offset {pos}")
            dotted = f"{path}.{key}" if path else key
            value_start = _skip_ws(text, pos + 1)
            pos = _scan(text, value_start, dotted, members)
            members[dotted] = Member(key_start, value_start, pos)
            pos = _skip_ws(text, pos)
            if text[pos] == "}":
                return pos + 1
            if text[pos] != ",":
                raise ValueError(f"expected ',' or '}}' at offset {pos}")
            pos = _skip_ws(text, pos + 1)
    if char == "[":
        depth = 0
        while True:
            char = text[pos]
            if char == '"':
                _, pos = scanstring(text, pos + 1)
                continue
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
                if depth == 0:
                    return pos + 1
            pos += 1
    if char == '"':
        return scanstring(text, pos + 1)[1]
    _, end = json.JSONDecoder().raw_decode(text, pos)  # a number, true, false or null
    return end


def member_spans(line: str) -> dict[str, Member]:
    members: dict[str, Member] = {}
    end = _skip_ws(line, _scan(line, 0, "", members))
    if end != len(line):
        raise ValueError(f"trailing text after the document at offset {end}")
    return members


def normalise_ndjson_line(line: str) -> str:
    """LINE (one document, without its newline) with the neutralised fields changed, every other byte kept."""
    members = member_spans(line)
    doc = json.loads(line)
    is_alert = isinstance(doc.get("event"), dict) and doc["event"].get("kind") == "alert"
    edits: list[tuple[int, int, str]] = []
    for path in REPLACED + (REPLACED_IN_ALERTS if is_alert else ()):
        member = members.get(path)
        if member is not None:
            edits.append((member.value_start, member.value_end, _PLACEHOLDER_JSON))
    for path in REMOVED:
        member = members.get(path)
        if member is None:
            continue
        before = line.rfind(",", 0, member.key_start)
        opening = line.rfind("{", 0, member.key_start)
        if before > opening:  # not the first member: take the comma before it
            edits.append((before, member.value_end, ""))
        else:  # the first: take the comma after it, if any
            after = _skip_ws(line, member.value_end)
            edits.append((member.key_start, after + 1 if line[after] == "," else member.value_end, ""))
    for start, end, text in sorted(edits, reverse=True):
        line = line[:start] + text + line[end:]
    return line


COMPACT_STAMP = 12  # "HH:MM:SS.mmm" at the start of every compact line (sensor/outputs/compact.py)


def normalise_compact_line(line: str) -> str:
    """A compact line's leading time is its document's @timestamp: for an alert, the replay's wall clock."""
    if line[COMPACT_STAMP:COMPACT_STAMP + 7] == " ALERT ":
        return PLACEHOLDER + line[COMPACT_STAMP:]
    return line


def _clean_env() -> dict[str, str]:
    """The environment without CONTAINER_SENSOR_* settings (a node name there would replace the recorded one)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CONTAINER_SENSOR_")}


@dataclass
class Replay:
    lines: list[str]  # normalised, without newlines
    summary: str  # the summary line the command prints on stderr
    stderr: str


def replay(recording: Path = RECORDING, fmt: str = "ndjson", rules: Path | None = None,
           timeout: float = 300.0) -> Replay:
    """`container-sensor replay` of RECORDING with the defaults (built-in rule only, unless RULES names more),
    normalised lines."""
    with tempfile.TemporaryDirectory(prefix="golden-replay-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text("")  # an empty file, not /etc/container-sensor/config.yaml: the defaults only
        result = subprocess.run(
            [sys.executable, "-m", "sensor", "replay", str(recording), "--config", str(config), "--format", fmt,
             "--log-format", "text", *(["--rules", str(rules)] if rules is not None else [])],
            capture_output=True, cwd=REPO, env=_clean_env(), timeout=timeout, check=False)
    stderr = result.stderr.decode("utf-8", "replace")
    if result.returncode != 0:
        raise AssertionError(f"replay exited with {result.returncode}: {stderr.strip()}")
    text = result.stdout.decode("utf-8")  # the encoder promises valid UTF-8; a failure here is a finding
    if text and not text.endswith("\n"):
        raise AssertionError("replay output does not end with a newline")
    raw = text.split("\n")[:-1]  # split only at newlines: str.splitlines also splits at U+2028 and others
    normalise = normalise_compact_line if fmt == "compact" else normalise_ndjson_line
    summaries = [line for line in stderr.splitlines() if line.startswith("container-sensor: ")
                 and " events seen, " in line]
    return Replay([normalise(line) for line in raw], summaries[-1] if summaries else "", stderr)


def is_loaded_rule_alert(line: str) -> bool:
    """An alert of a rule loaded from a file (they name it; the built-in rule's alerts do not)."""
    doc = json.loads(line)
    return doc["event"]["kind"] == "alert" and "rule_file" in doc.get("container_sensor", {}).get("alert", {})


def read_expected(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def first_field_difference(expected: Any, actual: Any, path: str = "") -> str | None:
    """The first dotted field where two decoded documents differ (values, members or member order)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in list(expected) + [k for k in actual if k not in expected]:
            dotted = f"{path}.{key}" if path else key
            if key not in actual:
                return f"{dotted}: missing (expected {json.dumps(expected[key], ensure_ascii=False)[:200]})"
            if key not in expected:
                return f"{dotted}: unexpected member ({json.dumps(actual[key], ensure_ascii=False)[:200]})"
            found = first_field_difference(expected[key], actual[key], dotted)
            if found:
                return found
        if list(expected) != list(actual):
            return f"{path or '(document)'}: member order {list(actual)} instead of {list(expected)}"
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        for index, (e, a) in enumerate(zip(expected, actual, strict=False)):
            found = first_field_difference(e, a, f"{path}[{index}]")
            if found:
                return found
        if len(expected) != len(actual):
            return f"{path}: {len(actual)} items instead of {len(expected)}"
        return None
    if expected != actual or type(expected) is not type(actual):
        return (f"{path}: {json.dumps(actual, ensure_ascii=False)[:200]} instead of "
                f"{json.dumps(expected, ensure_ascii=False)[:200]}")
    return None


def describe_difference(expected: list[str], actual: list[str], what: str = "document") -> str | None:
    """None when the lines are identical; else the first differing line and, for JSON, its first field."""
    for number, (e, a) in enumerate(zip(expected, actual, strict=False), start=1):
        if e == a:
            continue
        where = ""
        try:
            field = first_field_difference(json.loads(e), json.loads(a))
        except ValueError:
            field = None
        if field:
            where = f"\n  first differing field: {field}"
        else:
            offset = next((i for i, (x, y) in enumerate(zip(e, a, strict=False)) if x != y), min(len(e), len(a)))
            where = (f"\n  same content, different bytes from offset {offset}: "
                     f"{a[max(0, offset - 40):offset + 40]!r} instead of {e[max(0, offset - 40):offset + 40]!r}")
        return (f"{what} line {number} differs{where}\n  expected: {e[:400]}\n  actual:   {a[:400]}")
    if len(expected) != len(actual):
        extra = actual[len(expected)] if len(actual) > len(expected) else expected[len(actual)]
        return (f"{len(actual)} {what} lines instead of {len(expected)}; first "
                f"{'extra' if len(actual) > len(expected) else 'missing'} line {min(len(expected), len(actual)) + 1}:"
                f" {extra[:400]}")
    return None
