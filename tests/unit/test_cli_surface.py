"""The command line as a user meets it: every command and option explains itself, durations are read as the
configuration file reads them, every command that reads the configuration takes --config, the probe client says
plainly when the server is off, and `check` names a file output the systemd unit would make read-only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from sensor.cli import main
from sensor.config.settings import Config
from sensor.ops.deploy_checks import check_file_output, unit_writable_paths

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging/systemd/container-sensor.service"


def _commands(group: click.Group, prefix: str = "container-sensor"):
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, command in _commands(main):
        if not (command.help or command.short_help):
            missing.append(path)
        missing += [f"{path} {'/'.join(p.opts)}" for p in command.params
                    if isinstance(p, click.Option) and not p.help and p.name != "help"]
    assert missing == []


def test_fold_window_takes_a_duration_on_the_command_line_as_in_the_file() -> None:
    shown = CliRunner().invoke(main, ["config", "show", "--fold-window", "1m"])
    assert shown.exit_code == 0, shown.output
    assert "fold_window: 60.0  # command line" in shown.output
    bad = CliRunner().invoke(main, ["config", "show", "--fold-window", "soon"])
    assert bad.exit_code == 2


def test_check_and_selftest_take_config(tmp_path: Path) -> None:
    for command in ("check", "selftest", "run", "config show"):
        result = CliRunner().invoke(main, [*command.split(), "--help"])
        assert "--config PATH" in result.output, command
    broken = tmp_path / "config.yaml"
    broken.write_text("fold_window: [\n")
    result = CliRunner().invoke(main, ["check", "--config", str(broken)])
    assert result.exit_code == 2  # the file given was read, and its error is a configuration error


def test_probe_client_with_the_server_off_says_so() -> None:
    result = subprocess.run([sys.executable, "-m", "sensor.ops.server"], capture_output=True, text=True,
                            env={"CONTAINER_SENSOR_METRICS_ADDRESS": "off", "PATH": "/usr/bin:/bin"}, cwd=REPO,
                            timeout=60)
    assert result.returncode == 2
    assert "serves no /healthz" in result.stderr and "expected HOST:PORT" not in result.stderr
    assert "Traceback" not in result.stderr


def test_the_units_writable_paths_include_its_logs_directory() -> None:
    writable = unit_writable_paths(UNIT)
    assert writable is not None  # ProtectSystem=strict
    assert Path("/var/log/container-sensor") in writable
    assert Path("/var/lib/container-sensor") in writable


def test_check_names_a_file_output_the_unit_makes_read_only(tmp_path: Path) -> None:
    outside = Config(outputs=("file",), file_path=tmp_path / "events.ndjson")
    check = check_file_output(outside, units=(UNIT,))
    assert not check.ok and "read-only to the sensor" in check.detail and "LogsDirectory" in check.fix
    none_installed = check_file_output(outside, units=(tmp_path / "absent.service",))
    assert none_installed.ok
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = check_file_output(Config(outputs=("file",), file_path=blocked / "events.ndjson"),
                                   units=(tmp_path / "absent.service",))
    assert not unwritable.ok and "cannot write" in unwritable.detail
    assert check_file_output(Config(), units=(UNIT,)).detail == "none configured"
