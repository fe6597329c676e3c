"""Output specs (`stdout`, `file[:PATH]`, `elasticsearch[:URL]`) to ready outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sensor.config.credentials import mask_spec
from sensor.outputs.base import Output
from sensor.outputs.elasticsearch import ElasticsearchConfigError, ElasticsearchOutput, ElasticsearchSettings
from sensor.outputs.files import FileOutputError, RotatingFileOutput
from sensor.outputs.spool import SpoolError
from sensor.outputs.stdout import StdoutOutput

if TYPE_CHECKING:
    from sensor.config.sections import ElasticsearchConfig, OutputsConfig


class OutputSpecError(ValueError):
    """One or more outputs cannot be built; one line per problem. `configuration`: every problem is in what the
    outputs were told (a spec, a URL, an index name), none in the host (a file or spool that cannot be opened),
    so the sensor exits with the configuration error's status, on which systemd does not restart it."""

    def __init__(self, problems: list[str], configuration: bool = True) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.configuration = configuration


def _show(spec: str) -> str:
    """The spec for messages: an Elasticsearch URL's credentials masked (`https://***@host`)."""
    return mask_spec(spec)


def elasticsearch_settings(url: str, config: ElasticsearchConfig) -> ElasticsearchSettings:
    """The Elasticsearch output's settings from its section of the configuration (flags > environment > file)."""
    return ElasticsearchSettings(
        url=url,
        api_key=config.api_key,
        username=config.username,
        password=config.password,
        ca_file=config.ca_cert,
        ca_fingerprint=config.ca_fingerprint,
        verify_tls=config.verify_tls,
        events_stream=config.index,
        alerts_stream=config.alerts_index,
        request_timeout=config.timeout,
        spool_dir=config.spool.dir,
        spool_bytes=config.spool.limit,
        spool_policy=config.spool.policy.replace("-", "_"),
    )


def _build_one(spec: str, config: OutputsConfig) -> Output:
    kind, _, argument = spec.partition(":")
    kind = kind.strip().lower()
    argument = argument.strip()
    if kind == "stdout":
        if argument:
            raise OutputSpecError([f"--output {spec}: stdout takes no argument"])
        return StdoutOutput(compact=config.format == "compact")
    if kind == "file":
        path = Path(argument) if argument else config.file.path
        if path is None:
            raise OutputSpecError([f"--output {spec}: needs a path (file:PATH, or file.path in the config)"])
        if Path(path).is_dir():
            raise OutputSpecError([f"--output {spec}: {path} is a directory"])
        return RotatingFileOutput(path, max_bytes=config.file.max_bytes, backups=config.file.backups)
    if kind == "elasticsearch":
        url = argument or config.elasticsearch.url
        if not url:
            raise OutputSpecError([f"--output {_show(spec)}: needs a URL (elasticsearch:URL, or elasticsearch.url)"])
        return ElasticsearchOutput(elasticsearch_settings(url, config.elasticsearch))
    raise OutputSpecError([f"--output {_show(spec)}: unknown output {kind!r} "
                           "(expected stdout, file:PATH or elasticsearch:URL)"])


def build_outputs(specs: list[str], config: OutputsConfig) -> list[Output]:
    """One output per spec, in order. Raises OutputSpecError naming every bad spec, one line each."""
    outputs: list[Output] = []
    problems: list[str] = []
    configuration = True  # every problem so far is one of configuration
    seen: set[str] = set()
    for spec in specs or ["stdout"]:
        key = spec.strip()
        if key in seen:
            continue
        seen.add(key)
        try:
            outputs.append(_build_one(key, config))
        except OutputSpecError as error:
            problems.extend(error.problems)
            configuration = configuration and error.configuration
        except ElasticsearchConfigError as error:
            problems.append(f"--output {_show(key)}: {error}")
        except (FileOutputError, SpoolError) as error:
            problems.append(f"--output {_show(key)}: {error}")
            configuration = False
        except OSError as error:
            problems.append(f"--output {_show(key)}: {error.strerror or error}: {error.filename or ''}".rstrip(": "))
            configuration = False
    if problems:
        for output in outputs:
            output.close(timeout=0)
        raise OutputSpecError(problems, configuration)
    return outputs

