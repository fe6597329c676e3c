"""`container-sensor view`: the golden replay's documents as a person reads them, and what a hostile process or
container name cannot do to the reader's terminal."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from sensor.cli import main
from sensor.outputs.view import TreeView, render

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures/golden/expected.ndjson"


def test_golden_documents_as_trees_per_container() -> None:
    result = CliRunner().invoke(main, ["view", str(GOLDEN)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    headers = [line for line in lines if line.startswith("── ")]
    assert headers[0] == "── host ──" and any(h.startswith("── container ") for h in headers)
    assert len(lines) == len(GOLDEN.read_text().splitlines()) + len(headers)
    # nested shells indent under their parents
    assert any(line.startswith("        └ ") for line in lines)
    assert any(" ALERT SSH Client or Server Started Inside a Container " in line for line in lines)
    assert "\x1b" not in result.output  # not a terminal: no colour, and escapes shown, never sent


def test_alerts_in_red_on_request_and_alerts_only() -> None:
    result = CliRunner().invoke(main, ["view", "--color", "--alerts-only", str(GOLDEN)])
    alerts = [line for line in result.output.splitlines() if "ALERT" in line]
    assert alerts and all("\x1b[1;31m" in line for line in alerts)
    assert not [line for line in result.output.splitlines() if " exec  [" in line]


def test_hostile_names_and_arguments_reach_the_terminal_escaped() -> None:
    doc = {"@timestamp": "2026-12-03T10:00:00.000Z", "event": {"kind": "event", "action": "exec"},
           "container": {"id": "c" * 64, "name": "web\x1b]0;owned\x07", "runtime": "docker"},
           "process": {"pid": 5, "entity_id": "e1", "command_line": "sh -c \x1b[2J\x9b31m\u202eevil",
                       "parent": {"pid": 1}}}
    out = "\n".join(render([json.dumps(doc), "not json", "{}", ""], view := TreeView(color=True)))
    assert "\x1b]" not in out and "\x1b[2J" not in out and "\x9b" not in out and "\u202e" not in out
    assert "web\\e]0;owned\\x07" in out and "\\e[2J" in out and "\\u202e" in out
    assert view.skipped == 2  # "not json" and "{}"; the empty line is not counted


def test_stdin_and_skipped_lines_said_on_stderr() -> None:
    text = GOLDEN.read_text().splitlines()[0] + "\ngarbage\n"
    result = CliRunner().invoke(main, ["view", "-"], input=text)
    assert result.exit_code == 0
    assert "1 lines were not documents" in result.output  # CliRunner mixes stderr in


def test_a_missing_file_is_one_line() -> None:
    result = CliRunner().invoke(main, ["view", "/nonexistent/x.ndjson"])
    assert result.exit_code == 1 and "No such file" in result.output and "Traceback" not in result.output
