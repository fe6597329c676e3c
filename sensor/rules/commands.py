"""`container-sensor rules check|test`: which rules load, and what they raise over saved ECS documents."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click


def _load_all(paths: tuple[Path, ...]) -> tuple[list[Any], list[Any]]:
    # imported here so that `container-sensor --help` does not pay for the EQL parser
    from sensor.rules.loader import RulesPathError, load_rules

    loaded: list[Any] = []
    refused: list[Any] = []
    for path in paths:
        try:
            more, less = load_rules(path)
        except RulesPathError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        loaded.extend(more)
        refused.extend(less)
    return loaded, refused


def _rules_option(func: Any) -> Any:
    return click.option("--rules", "rules_paths", multiple=True, required=True,
                        type=click.Path(path_type=Path),
                        help="Elastic detection-rule TOML file or folder; repeat for several.")(func)


@click.group("rules")
def rules_group() -> None:
    """Check Elastic detection rules and evaluate them offline."""


@rules_group.command("check")
@_rules_option
@click.option("--strict", is_flag=True, help="Exit 1 when any rule is refused, for whatever reason.")
def rules_check(rules_paths: tuple[Path, ...], strict: bool) -> None:
    """List which rules load (and will run on the node) and which are refused, with why. Exit 1 when a file is
    not valid TOML, when no rule file is found, or when a loaded rule names a field the sensor never writes
    (a test of it can never match); 2 when a path does not exist."""
    from sensor.ecs.inventory import inventory
    from sensor.rules.coverage import fields_never_written

    loaded, refused = _load_all(rules_paths)
    fields = inventory()
    unknown_fields = 0
    for rule in loaded:
        kind = "sequence" if rule.compiled.is_sequence else "event"
        click.echo(f"loaded   {rule.path}: {rule.name!r} ({kind}, {rule.rule_id})")
        for name in fields_never_written(rule.query, fields):
            unknown_fields += 1
            click.echo(f"  unknown field {name}: the sensor never writes it")
    broken = [r for r in refused if r.reason.startswith(("not valid TOML", "cannot read"))]
    for refusal in refused:
        click.echo(f"refused  {refusal.path}: {refusal.name!r}: {refusal.reason}")
    click.echo(f"{len(loaded)} loaded, {len(refused)} refused"
               + (f", {unknown_fields} unknown fields" if unknown_fields else ""))
    problems = []
    if not loaded and not refused:
        problems.append("no rule file (*.toml) under " + ", ".join(str(p) for p in rules_paths))
    if broken:
        problems.append(f"{len(broken)} files are not valid TOML")
    if unknown_fields:
        problems.append(f"{unknown_fields} fields that no document carries")
    if strict and refused:
        problems.append(f"{len(refused)} rules refused (--strict)")
    if problems:
        click.echo("error: " + "; ".join(problems), err=True)
        sys.exit(1)


def _documents(source: str) -> Iterator[tuple[int, Any]]:
    stream: IO[str]
    stream = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, exc
    finally:
        if stream is not sys.stdin:
            stream.close()


def _hit_line(alert: dict) -> str:
    process = alert.get("process") or {}
    details = (alert.get("container_sensor") or {}).get("alert") or {}
    container = (alert.get("container") or {}).get("id") or "-"
    parts = [str(details.get("original_time") or alert.get("@timestamp")),
             f"rule={alert['rule']['name']!r}", f"rule_id={alert['rule']['id']}",
             f"event={details.get('original_event', {}).get('id', '-')}",
             f"process={process.get('executable') or process.get('name') or '-'}",
             f"pid={process.get('pid', '-')}", f"container={container[:12]}"]
    if "recognized_by" in details:
        parts.append(f"recognized_by={details['recognized_by']}")
    fold = details.get("fold") or {}
    if fold.get("count", 1) > 1:
        parts.append(f"count={fold['count']}")
    return " ".join(parts)


@rules_group.command("test")
@_rules_option
@click.option("--no-builtin-rules", is_flag=True, help="Leave out the built-in ssh-in-container rule.")
@click.option("--fold-window", type=float, default=0.0, show_default=True,
              help="Seconds within which identical alerts are folded (0: report every hit).")
@click.option("--json", "as_json", is_flag=True, help="Print each alert document as NDJSON instead of a line.")
@click.argument("events", nargs=-1, required=True)
def rules_test(rules_paths: tuple[Path, ...], no_builtin_rules: bool, fold_window: float, as_json: bool,
               events: tuple[str, ...]) -> None:
    """Evaluate the rules over saved ECS documents (NDJSON files, '-' for stdin) and print every hit."""
    from sensor.rules.detector import Detector

    loaded, refused = _load_all(rules_paths)
    for refusal in refused:
        click.echo(f"refused: {refusal.line()}", err=True)
    detector = Detector(loaded, builtin_ssh=not no_builtin_rules, fold_window_s=fold_window)
    documents = bad = 0

    def show(alerts: list[dict]) -> None:
        for alert in alerts:
            click.echo(json.dumps(alert, separators=(",", ":")) if as_json else _hit_line(alert))

    for source in events:
        try:
            for number, doc in _documents(source):
                if not isinstance(doc, dict):
                    bad += 1
                    what = f"not JSON ({doc.msg})" if isinstance(doc, json.JSONDecodeError) else "not a JSON object"
                    click.echo(f"error: {source}:{number}: {what}", err=True)
                    continue
                documents += 1
                show(detector.evaluate(doc))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            click.echo(f"error: {source}: cannot read: {reason}", err=True)
            sys.exit(1)
    show(detector.flush())
    stats = detector.stats()
    click.echo(f"{documents} documents, {stats['alerts']} alerts from {len(loaded)} rules"
               f"{'' if no_builtin_rules else ' + built-in'}, {stats['folded']} folded, "
               f"{stats['rule_errors']} rule errors, {len(refused)} rules refused, {bad} unreadable lines",
               err=True)
    if bad:
        sys.exit(1)


@rules_group.command("coverage")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--format", "output_format", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True, help="A Markdown table, or one JSON object per rule.")
@click.option("--fields", "show_fields", is_flag=True,
              help="Print the field inventory (every field and event value the sensor writes) as JSON instead.")
def rules_coverage(paths: tuple[Path, ...], output_format: str, show_fields: bool) -> None:
    """Say which rules (EQL or KQL, files or folders) can fire on the sensor's documents, which are weakened
    and which cannot, naming each missing field, event kind and value."""
    from sensor.ecs.inventory import inventory
    from sensor.rules.coverage import classify_rules, markdown, summary

    fields = inventory()
    if show_fields:
        click.echo(json.dumps(fields.as_dict(), indent=1))
        return
    results = classify_rules(paths, fields)
    if output_format == "json":
        for result in results:
            click.echo(json.dumps({"file": result.path.name, "name": result.name, "rule_id": result.rule_id,
                                   "language": result.language, "status": result.status,
                                   "reasons": result.reasons}))
        click.echo(json.dumps({"summary": summary(results)}))
        return
    label = " ".join("/".join(path.resolve().parts[-2:]) for path in paths)
    click.echo(markdown(results, fields, label), nl=False)
