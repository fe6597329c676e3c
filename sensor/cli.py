"""The `container-sensor` command: parses flags and hands them to sensor.app, nothing else."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sensor import __version__
from sensor.config.options import FORMATS, LOG_FORMATS
from sensor.config.settings import (
    Config,
    ConfigError,
    command_line_secrets_warning,
    load_config,
    render_config,
    resolve_config_file,
)

if TYPE_CHECKING:
    from sensor.ops.health import PipelineHealth

# The flags have no defaults of their own: a flag not given is None, and the configuration layer (file <
# environment < flags, then Config's field defaults) decides. Help texts quote Config's defaults.
DEFAULTS = Config()

log = logging.getLogger("container_sensor")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"container-sensor: {message}", err=True)
    sys.exit(code)


def _load_config(config_file: Path | None, flags: dict[str, Any]) -> Config:
    try:
        path = resolve_config_file(config_file, os.environ)
        return load_config(path, os.environ, flags)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"container-sensor: config: {problem}", err=True)
        sys.exit(2)


def _check_filter(config: Config) -> None:
    """A `filter.where` that does not parse is a configuration error: said before anything starts."""
    from sensor.app import DetectionUnavailable, build_keep

    try:
        build_keep(config.sections)
    except DetectionUnavailable as exc:
        _fail(str(exc))
    except ValueError as exc:  # sensor.rules.noise.FilterError
        _fail(f"config: {exc}", 2)


def _setup_logging(config: Config) -> None:
    from sensor.config.credentials import protect_stderr
    from sensor.ops.logs import setup_logging

    # Before the log handler takes sys.stderr: its lines, and any traceback, go through the secret redactor.
    protect_stderr(config)
    log_config = config.sections.ops.log
    setup_logging(log_config.format, log_config.level)
    warning = command_line_secrets_warning(config)
    if warning:
        log.warning(warning)


def _ops_server(config: Config, health: PipelineHealth) -> Any:
    address = config.sections.ops.metrics_address
    if not address:
        return None
    from sensor.ops.server import OpsServer

    server = OpsServer(address, health.metrics, health.health, health.live, histograms=health.histograms)
    try:
        server.start()
    except OSError as exc:
        _fail(f"cannot listen on {address} for /healthz and /metrics: {exc.strerror}")
    return server


_CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(path_type=Path), default=None,
    help="YAML configuration file (default: $CONTAINER_SENSOR_CONFIG or /etc/container-sensor/config.yaml when "
         "present).")


def _run_options(func: Any) -> Any:
    options = [
        _CONFIG_OPTION,
        click.option("--output", "outputs", multiple=True,
                     help="stdout (default), file:PATH or elasticsearch:URL; repeat for several."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                     help="ndjson: one ECS document per line; compact: one short line per event."),
        click.option("--ready-file", type=click.Path(path_type=Path), default=None,
                     help="Created once the probes are attached; removed on exit."),
        click.option("--rules", "rules_paths", multiple=True, type=click.Path(path_type=Path),
                     help="Elastic detection-rule TOML file or folder; repeat for several."),
        click.option("--no-builtin-rules", is_flag=True, default=None,
                     help="Do not run the built-in ssh-in-container rule."),
        click.option("--where", "where", default=None, metavar="EQL",
                     help="Write only the documents meeting this EQL condition, e.g. 'container.id != null' or "
                          "'process where process.name == \"curl\"'; alerts always go out."),
        click.option("--alerts-only", is_flag=True, default=None,
                     help="Write alerts only; detection still sees every document."),
        click.option("--fold-window", default=None,
                     help="Window within which identical alerts fold into one with a count: seconds or a "
                          f"duration such as 90s or 1m (default {DEFAULTS.fold_window:g}s)."),
        click.option("--metrics-address", default=None,
                     help=f"HOST:PORT for /healthz and /metrics (default {DEFAULTS.metrics_address}; 'off' disables)."),
        click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
                     help=f"The sensor's own log lines on stderr (default {DEFAULTS.log_format})."),
        click.option("--log-level", default=None,
                     help=f"debug, info, warning or error (default {DEFAULTS.log_level})."),
        click.option("--stall-timeout", default=None,
                     help="/livez fails once the pipeline has not advanced this long "
                          f"(default {DEFAULTS.stall_timeout:g}s; 0 never)."),
        click.option("--drain-timeout", default=None,
                     help="Most time SIGTERM/SIGINT spends draining before exiting "
                          f"(default {DEFAULTS.drain_timeout:g}s)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _flags(outputs: tuple[str, ...], fmt: str | None, ready_file: Path | None, rules_paths: tuple[Path, ...],
           no_builtin_rules: bool | None, fold_window: str | None, metrics_address: str | None,
           log_format: str | None, log_level: str | None, stall_timeout: str | None = None,
           drain_timeout: str | None = None, where: str | None = None,
           alerts_only: bool | None = None) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "outputs": list(outputs) or None,
        "format": fmt,
        "ready_file": ready_file,
        "rules_paths": list(rules_paths) or None,
        "rules_builtin": False if no_builtin_rules else None,
        "fold_window": fold_window,
        "metrics_address": metrics_address,
        "log_format": log_format,
        "log_level": log_level,
        "stall_timeout": stall_timeout,
        "drain_timeout": drain_timeout,
        "filter_where": where,
        "filter_alerts_only": alerts_only,
    }
    return flags


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="container-sensor")
def main() -> None:
    """eBPF live container sensor: every exec as an ECS document, ssh-in-container alerts."""


def _run(config_file: Path | None, flags: dict[str, Any], record_to: Path | None) -> None:
    from sensor.app import DetectionUnavailable
    from sensor.config.statefiles import StateFileError
    from sensor.ops.health import PipelineHealth
    from sensor.outputs.factory import OutputSpecError
    from sensor.probe.loader import ProbeError
    from sensor.run import run_live

    config = _load_config(config_file, flags)
    _check_filter(config)
    _setup_logging(config)
    health = PipelineHealth()
    server = _ops_server(config, health)
    try:
        summary = run_live(config, record_to=record_to, on_ready=health.attach)
    except ProbeError as exc:
        _fail(f"{exc} (run 'container-sensor check' for every prerequisite)")
    except OutputSpecError as exc:
        _fail(str(exc), 2 if exc.configuration else 1)
    except DetectionUnavailable as exc:
        _fail(str(exc))
    except StateFileError as exc:  # the ready file or the recording: a link, another user's file, no directory
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    finally:
        if server is not None:
            server.stop()
    click.echo(summary.line(), err=True)
    if summary.exit_code:
        sys.exit(summary.exit_code)  # a second signal cut the drain short: 128 + its number


@main.command()
@_run_options
def run(config_file: Path | None, **kwargs: Any) -> None:
    """Attach the probes and emit one ECS document per exec and exit until SIGINT/SIGTERM."""
    _run(config_file, _flags(**kwargs), None)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@_run_options
def record(file: Path, config_file: Path | None, **kwargs: Any) -> None:
    """Like run, and also save every probe record to FILE (msgpack) for `replay`."""
    _run(config_file, _flags(**kwargs), file)


@main.command()
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_run_options
def replay(file: Path, config_file: Path | None, **kwargs: Any) -> None:
    """Run a recording through the whole pipeline, without BPF or root, to the same outputs."""
    from sensor.app import DetectionUnavailable
    from sensor.model.records import RecordingReader
    from sensor.outputs.factory import OutputSpecError
    from sensor.run import run_replay

    flags = _flags(**kwargs)
    flags["metrics_address"] = flags["metrics_address"] or "off"
    config = _load_config(config_file, flags)
    _check_filter(config)
    _setup_logging(config)
    try:
        with open(file, "rb") as stream:
            reader = RecordingReader(stream)
            summary = run_replay(config, reader, reader.meta)
    except OutputSpecError as exc:
        _fail(str(exc), 2 if exc.configuration else 1)
    except DetectionUnavailable as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(f"{file}: {exc}")
    click.echo(summary.line(), err=True)


@main.command()
@click.argument("file", type=click.Path(path_type=Path, allow_dash=True, dir_okay=False))
@click.option("-f", "--follow", is_flag=True, help="Keep reading as the file grows (as tail -f).")
@click.option("--alerts-only", is_flag=True, help="Show alerts only.")
@click.option("--color/--no-color", default=None, help="Colour (default: when writing to a terminal).")
def view(file: Path, follow: bool, alerts_only: bool, color: bool | None) -> None:
    """Show NDJSON the sensor wrote (FILE, or - for stdin) for a person: one line per document, processes
    indented under their parents in each container's tree, alerts in red."""
    from sensor.outputs.view import TreeView, render
    from sensor.outputs.view import follow as follow_lines

    tree = TreeView(color=sys.stdout.isatty() if color is None else color, alerts_only=alerts_only)
    try:
        stream = sys.stdin if str(file) == "-" else open(file, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError as exc:
        _fail(f"{file}: {exc.strerror}")
    try:
        lines = follow_lines(stream) if follow else stream
        for line in render(lines, tree):
            click.echo(line, color=tree.color)  # click would strip colour asked for off a terminal
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `view FILE | head`
        sys.stderr.close()
    finally:
        if stream is not sys.stdin:
            stream.close()
    if tree.skipped:
        click.echo(f"container-sensor: {tree.skipped} lines were not documents and were skipped", err=True)


@main.group("config")
def config_group() -> None:
    """Inspect the configuration (file < CONTAINER_SENSOR_* environment < flags)."""


@config_group.command("show")
@_run_options
def config_show(config_file: Path | None, **kwargs: Any) -> None:
    """Print the effective configuration as YAML, secrets masked, each value's origin as a comment."""
    config = _load_config(config_file, _flags(**kwargs))
    warning = command_line_secrets_warning(config)
    if warning:
        click.echo(f"container-sensor: warning: {warning}", err=True)
    click.echo(render_config(config), nl=False)


@main.command()
@_CONFIG_OPTION
@click.option("--timeout", type=float, default=15.0, show_default=True,
              help="Seconds to wait for the alert after the container starts.")
@click.option("--method", type=click.Choice(["auto", "podman", "unshare"]), default="auto", show_default=True,
              help="How to make the container: podman, or new namespaces with unshare when no runtime is here.")
def selftest(config_file: Path | None, timeout: float, method: str) -> None:
    """Start ssh in a short-lived container and check that its alert comes out; exit 0 when it does."""
    from sensor.ops.logs import setup_logging
    from sensor.selftest import run_selftest

    config = _load_config(config_file, {"metrics_address": "off"})
    setup_logging("text", "warning")
    result = run_selftest(config, method=method, timeout=timeout)
    for line in result.lines:
        click.echo(line)
    sys.exit(0 if result.passed else 1)


@main.command()
@_CONFIG_OPTION
def check(config_file: Path | None) -> None:
    """Name each missing prerequisite with its fix; exit non-zero when the sensor cannot run here."""
    from sensor.ops.deploy_checks import deployment_checks
    from sensor.ops.preflight import report, run_checks

    text, can_run = report(run_checks(deployment_checks(_load_config(config_file, {"metrics_address": "off"}))))
    click.echo(text)
    sys.exit(0 if can_run else 1)


def _elasticsearch_settings(config_file: Path | None, url: str | None) -> Any:
    from sensor.outputs.elasticsearch_settings import ElasticsearchConfigError
    from sensor.outputs.factory import elasticsearch_settings

    config = _load_config(config_file, {"metrics_address": "off"})
    section = config.sections.outputs.elasticsearch
    target = url or section.url
    if not target:
        _fail("no Elasticsearch URL: give --url, or elasticsearch.url (CONTAINER_SENSOR_ELASTICSEARCH_URL)", 2)
    try:
        return elasticsearch_settings(target, section)
    except ElasticsearchConfigError as exc:
        _fail(str(exc), 2)


_URL_OPTION = click.option("--url", default=None,
                           help="Elasticsearch URL (default: elasticsearch.url of the configuration); credentials "
                                "come from the configuration or CONTAINER_SENSOR_ELASTICSEARCH_* variables.")


@main.group("setup")
def setup_group() -> None:
    """Prepare what the sensor writes to, as Beats' `setup` does."""


@setup_group.command("elasticsearch")
@_CONFIG_OPTION
@_URL_OPTION
@click.option("--dry-run", is_flag=True, help="Print the templates as JSON and connect to nothing.")
def setup_elasticsearch_command(config_file: Path | None, url: str | None, dry_run: bool) -> None:
    """Map the sensor's own fields in the streams it writes (the @custom component templates Defend's and the
    built-in index templates compose in) and install the alerts stream's index template. Needs
    manage_index_templates: run it once with an administrator's credentials, not the sensor's."""
    if dry_run:
        import json

        from sensor.outputs.elasticsearch_templates import (
            ALERTS_TEMPLATE,
            DATASETS,
            alerts_index_template,
            custom_component_template,
            custom_template_name,
        )

        plan = {f"_component_template/{custom_template_name(d)}": custom_component_template(None)[0]
                for d in DATASETS}
        plan[f"_index_template/{ALERTS_TEMPLATE}"] = alerts_index_template()
        click.echo(json.dumps(plan, indent=2))
        return
    from sensor.outputs.elasticsearch_setup import setup_elasticsearch

    report = setup_elasticsearch(_elasticsearch_settings(config_file, url))
    for line in report.lines:
        click.echo(line)
    sys.exit(0 if report.ok else 1)


@main.group("test")
def test_group() -> None:
    """Check a connection without sending anything, as Beats' `test` does."""


@test_group.command("output")
@_CONFIG_OPTION
@_URL_OPTION
def test_output_command(config_file: Path | None, url: str | None) -> None:
    """Connect to Elasticsearch and check that the credentials hold every privilege the sensor needs (monitor;
    create_doc and auto_configure on its streams). Writes nothing; exits 1 when something is missing."""
    from sensor.outputs.elasticsearch_setup import check_output

    report = check_output(_elasticsearch_settings(config_file, url))
    for line in report.lines:
        click.echo(line)
    sys.exit(0 if report.ok else 1)


def _add_rules_commands() -> None:
    from sensor.rules.commands import rules_group

    main.add_command(rules_group)


_add_rules_commands()
