"""Output specs (`stdout`, `file[:PATH]`, `elasticsearch[:URL]`) to ready outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sensor.credentials import mask_spec
from sensor.outputs.base import Output
from sensor.outputs.elasticsearch import ElasticsearchConfigError, ElasticsearchOutput, ElasticsearchSettings
from sensor.outputs.files import FileOutputError, RotatingFileOutput
from sensor.outputs.spool import SpoolError
from sensor.outputs.stdout import StdoutOutput


class OutputSpecError(ValueError):
    """One or more outputs cannot be built; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _setting(settings: Any, name: str, default: Any = None) -> Any:
    value = getattr(settings, name, None)
    return default if value is None else value


def _show(spec: str) -> str:
    """The spec for messages: an Elasticsearch URL's credentials masked (`https://***@host`)."""
    return mask_spec(spec)


def elasticsearch_settings(url: str, settings: Any) -> ElasticsearchSettings:
    """The Elasticsearch output's settings from the sensor's configuration (flags > environment > file)."""
    policy = str(_setting(settings, "spool_policy", "drop_oldest")).replace("-", "_")
    spool_dir = _setting(settings, "spool_dir")
    return ElasticsearchSettings(
        url=url,
        api_key=_setting(settings, "elasticsearch_api_key"),
        username=_setting(settings, "elasticsearch_username"),
        password=_setting(settings, "elasticsearch_password"),
        ca_file=_setting(settings, "elasticsearch_ca_cert"),
        ca_fingerprint=_setting(settings, "elasticsearch_ca_fingerprint"),
        verify_tls=bool(_setting(settings, "elasticsearch_verify_tls", True)),
        events_stream=_setting(settings, "elasticsearch_index"),
        alerts_stream=_setting(settings, "elasticsearch_alerts_index"),
        request_timeout=float(_setting(settings, "elasticsearch_timeout", 10.0)),
        spool_dir=Path(spool_dir) if spool_dir is not None else None,
        spool_bytes=int(_setting(settings, "spool_limit", 1024**3)),
        spool_policy=policy,
    )


def _build_one(spec: str, settings: Any) -> Output:
    kind, _, argument = spec.partition(":")
    kind = kind.strip().lower()
    argument = argument.strip()
    if kind == "stdout":
        if argument:
            raise OutputSpecError([f"--output {spec}: stdout takes no argument"])
        return StdoutOutput(compact=_setting(settings, "format", "ndjson") == "compact")
    if kind == "file":
        path = Path(argument) if argument else _setting(settings, "file_path")
        if path is None:
            raise OutputSpecError([f"--output {spec}: needs a path (file:PATH, or file.path in the config)"])
        if Path(path).is_dir():
            raise OutputSpecError([f"--output {spec}: {path} is a directory"])
        return RotatingFileOutput(
            Path(path),
            max_bytes=int(_setting(settings, "file_max_bytes", 100 * 1024 * 1024)),
            backups=int(_setting(settings, "file_backups", 5)),
        )
    if kind == "elasticsearch":
        url = argument or _setting(settings, "elasticsearch_url")
        if not url:
            raise OutputSpecError([f"--output {_show(spec)}: needs a URL (elasticsearch:URL, or elasticsearch.url)"])
        return ElasticsearchOutput(elasticsearch_settings(url, settings))
    raise OutputSpecError([f"--output {_show(spec)}: unknown output {kind!r} "
                           "(expected stdout, file:PATH or elasticsearch:URL)"])


def build_outputs(specs: list[str], settings: Any) -> list[Output]:
    """One output per spec, in order. Raises OutputSpecError naming every bad spec, one line each."""
    outputs: list[Output] = []
    problems: list[str] = []
    seen: set[str] = set()
    for spec in specs or ["stdout"]:
        key = spec.strip()
        if key in seen:
            continue
        seen.add(key)
        try:
            outputs.append(_build_one(key, settings))
        except OutputSpecError as error:
            problems.extend(error.problems)
        except (ElasticsearchConfigError, FileOutputError, SpoolError) as error:
            problems.append(f"--output {_show(key)}: {error}")
        except OSError as error:
            problems.append(f"--output {_show(key)}: {error.strerror or error}: {error.filename or ''}".rstrip(": "))
    if problems:
        for output in outputs:
            output.close(timeout=0)
        raise OutputSpecError(problems)
    return outputs

