"""The sensor's configuration: one frozen `Config` built from a YAML file, the environment and flags.

Precedence is flags over environment over file over defaults. Every option has one dotted key (as in the YAML
file, e.g. `elasticsearch.url`), one environment variable (`CONTAINER_SENSOR_` + the key upper-cased with dots
as underscores, e.g. `CONTAINER_SENSOR_ELASTICSEARCH_URL`) and one field of `Config` (the key with dots as
underscores, e.g. `elasticsearch_url`). `load_config` checks everything and raises one `ConfigError` listing
every problem it found, so an operator fixes them all in one go.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from sensor.config.credentials import Redactor, UrlError, mask_url, parse_url, secret_forms

ENV_PREFIX = "CONTAINER_SENSOR_"
# Names the configuration file; read by `resolve_config_file`, not an option itself.
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_CONFIG_FILE = Path("/etc/container-sensor/config.yaml")
SECRET_MASK = "********"

OUTPUT_KINDS = ("stdout", "file", "elasticsearch")
FORMATS = ("ndjson", "compact")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RING_READERS = ("auto", "mmap", "libbpf")
SPOOL_POLICIES = ("drop-oldest", "drop-newest")
PAGE_SIZE = 4096


class ConfigError(Exception):
    """Every problem found in one configuration, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Config:
    """The effective configuration. Field names are the dotted keys with dots as underscores."""

    outputs: tuple[str, ...] = ("stdout",)
    format: str = "ndjson"
    ready_file: Path | None = None
    rules_paths: tuple[Path, ...] = ()
    rules_builtin: bool = True
    fold_window: float = 60.0
    metrics_address: str | None = "127.0.0.1:9464"
    log_format: str = "json"
    log_level: str = "info"
    node_name: str | None = None
    file_path: Path | None = None
    file_max_bytes: int = 100 * 1024 * 1024
    file_backups: int = 5
    spool_dir: Path = Path("/var/lib/container-sensor/spool")
    spool_limit: int = 1024 * 1024 * 1024
    spool_policy: str = "drop-oldest"
    elasticsearch_url: str | None = None
    elasticsearch_api_key: str | None = None
    elasticsearch_username: str | None = None
    elasticsearch_password: str | None = None
    elasticsearch_ca_cert: Path | None = None
    elasticsearch_verify_tls: bool = True
    elasticsearch_ca_fingerprint: str | None = None
    elasticsearch_index: str | None = None
    elasticsearch_alerts_index: str | None = None
    elasticsearch_timeout: float = 10.0
    # 8 MiB: a storm of small records at saturation fits several hundred ms of backlog.
    probe_ringbuf_size: int = 8 * 1024 * 1024
    probe_argv_max_bytes: int = 16384
    probe_ring_reader: str = "auto"
    priority_boost: int = 4
    stall_timeout: float = 30.0
    drain_timeout: float = 20.0
    runtime_state_root: Path = Path("/")
    # Where each value came from ("default", "file PATH", "env CONTAINER_SENSOR_...", "command line"), by field.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def sections(self) -> Sections:
        """The stages' typed sections, built once on first use (a cached_property writes the instance's
        __dict__ directly, which a frozen dataclass allows)."""
        return _sections(self)

    def masked(self) -> dict[str, Any]:
        """The configuration as a nested dict in the file's layout, secrets replaced by a mask."""
        nested: dict[str, Any] = {}
        for option in OPTIONS:
            value = _shown(option.field_name, getattr(self, option.field_name))
            section = nested
            *parents, leaf = option.key.split(".")
            for part in parents:
                section = section.setdefault(part, {})
            section[leaf] = _plain(value)
        return nested

    def __repr__(self) -> str:
        # Written out so that a repr in a log line or a traceback never holds a password, API key or URL
        # credentials (dataclass keeps a __repr__ the class defines).
        shown = (f"{f.name}={_shown(f.name, getattr(self, f.name))!r}" for f in fields(self) if f.repr)
        return f"Config({', '.join(shown)})"


# ---- the stages' sections: what each stage is built from, typed and frozen. Every default lives once, in
# `Config`'s fields above; the sections have none, so a stage never falls back to a value of its own.

@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    ringbuf_size: int  # bytes, a power of two of at least one page
    argv_max_bytes: int
    ring_reader: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    node_name: str | None  # None: the kernel's hostname


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolverConfig:
    runtime_state_root: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionConfig:
    rules_paths: tuple[Path, ...]
    builtin: bool
    fold_window: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOutputConfig:
    path: Path | None
    max_bytes: int
    backups: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolConfig:
    dir: Path
    limit: int
    policy: str  # one of SPOOL_POLICIES


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchConfig:
    url: str | None
    api_key: str | None
    username: str | None
    password: str | None
    ca_cert: Path | None
    verify_tls: bool
    ca_fingerprint: str | None
    index: str | None
    alerts_index: str | None
    timeout: float
    spool: SpoolConfig

    def __repr__(self) -> str:
        # Masked as Config's repr is: the secrets and the URL's credentials never reach a log line.
        shown = (f"{f.name}={_shown('elasticsearch_' + f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"ElasticsearchConfig({', '.join(shown)})"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputsConfig:
    kinds: tuple[str, ...]  # output kinds in order, without targets (load_config folds those into file/es)
    format: str  # stdout's encoding
    file: FileOutputConfig
    elasticsearch: ElasticsearchConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    format: str
    level: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsConfig:
    metrics_address: str | None  # None: no /metrics, /healthz and /livez server
    stall_timeout: float  # 0: never stalled
    drain_timeout: float
    ready_file: Path | None
    priority_boost: int
    log: LogConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class Sections:
    probe: ProbeConfig
    host: HostConfig
    resolver: ResolverConfig
    detection: DetectionConfig
    outputs: OutputsConfig
    ops: OpsConfig


def _sections(config: Config) -> Sections:
    """Each option goes to exactly one section; tests/unit/test_config.py checks that none is left out."""
    return Sections(
        probe=ProbeConfig(ringbuf_size=config.probe_ringbuf_size, argv_max_bytes=config.probe_argv_max_bytes,
                          ring_reader=config.probe_ring_reader),
        host=HostConfig(node_name=config.node_name),
        resolver=ResolverConfig(runtime_state_root=config.runtime_state_root),
        detection=DetectionConfig(rules_paths=config.rules_paths, builtin=config.rules_builtin,
                                  fold_window=config.fold_window),
        outputs=OutputsConfig(
            kinds=config.outputs,
            format=config.format,
            file=FileOutputConfig(path=config.file_path, max_bytes=config.file_max_bytes,
                                  backups=config.file_backups),
            elasticsearch=ElasticsearchConfig(
                url=config.elasticsearch_url, api_key=config.elasticsearch_api_key,
                username=config.elasticsearch_username, password=config.elasticsearch_password,
                ca_cert=config.elasticsearch_ca_cert, verify_tls=config.elasticsearch_verify_tls,
                ca_fingerprint=config.elasticsearch_ca_fingerprint, index=config.elasticsearch_index,
                alerts_index=config.elasticsearch_alerts_index, timeout=config.elasticsearch_timeout,
                spool=SpoolConfig(dir=config.spool_dir, limit=config.spool_limit, policy=config.spool_policy)),
        ),
        ops=OpsConfig(metrics_address=config.metrics_address, stall_timeout=config.stall_timeout,
                      drain_timeout=config.drain_timeout, ready_file=config.ready_file,
                      priority_boost=config.priority_boost,
                      log=LogConfig(format=config.log_format, level=config.log_level)),
    )


def _shown(field_name: str, value: Any) -> Any:
    """A field's value as it may be printed: secrets masked, credentials cut out of the URL."""
    option = OPTIONS_BY_FIELD.get(field_name)
    if value is not None and option is not None and option.secret:
        return SECRET_MASK
    if field_name == "elasticsearch_url" and value:
        return mask_url(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


# ---- value parsers: each takes a raw value (YAML scalar/list, or an env/flag string) and returns the typed
# value, or raises ValueError with a message that completes "KEY: ...".

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected a size such as 16MiB, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(raw))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 16MiB, 512k or 1048576, got {raw!r}")
        value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return value


def parse_duration(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a duration such as 2s or 500ms, got {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", str(raw).lower())
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"expected a duration such as 2s, 500ms or 1.5, got {raw!r}")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if value < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return value


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected a whole number, got {raw!r}")
    try:
        return int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def parse_str(raw: Any) -> str | None:
    if isinstance(raw, list | dict):
        raise ValueError(f"expected a single value, got {raw!r}")
    text = str(raw).strip()
    return text or None


def parse_path(raw: Any) -> Path | None:
    text = parse_str(raw)
    return Path(text) if text else None


def _items(raw: Any) -> list[str]:
    if isinstance(raw, list | tuple):
        items = [str(item).strip() for item in raw]
    elif isinstance(raw, dict):
        raise ValueError(f"expected a list, got {raw!r}")
    else:
        # Comma-separated in the environment and on the command line.
        items = [item.strip() for item in str(raw).split(",")]
    return [item for item in items if item]


def parse_paths(raw: Any) -> tuple[Path, ...]:
    return tuple(Path(item) for item in _items(raw))


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        # drop_oldest and drop-oldest are the same choice.
        text = str(raw).strip().lower().replace("_", "-")
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return text

    return parse


def parse_fingerprint(raw: Any) -> str | None:
    text = parse_str(raw)
    if text is None:
        return None
    digits = text.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError("expected a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return digits


def parse_outputs(raw: Any) -> tuple[str, ...]:
    """Output specs: a kind (stdout, file, elasticsearch), or `file:PATH` / `elasticsearch:URL`.

    `load_config` folds the PATH/URL of a spec into file.path / elasticsearch.url, so `Config.outputs` only
    ever holds kinds.
    """
    specs = _split_specs(raw) if isinstance(raw, str) else _items(raw)
    kinds = [spec.partition(":")[0].lower() for spec in specs]
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown:
        raise ValueError(f"unknown output {', '.join(unknown)} (known: {', '.join(OUTPUT_KINDS)})")
    if not specs:
        raise ValueError("at least one output is needed")
    if any(spec.lower().startswith("stdout:") for spec in specs):
        raise ValueError("stdout takes no argument")
    return tuple(specs)


def _split_specs(text: str) -> list[str]:
    """Comma-separated specs, where a comma in an Elasticsearch URL's password does not start a new spec: a
    piece that names no output kind joins the `elasticsearch:` spec before it while an `@` is still to come."""
    pieces = text.split(",")
    specs: list[str] = []
    for number, piece in enumerate(pieces):
        kind = piece.strip().partition(":")[0].lower()
        in_credentials = any("@" in later for later in pieces[number:])
        if specs and kind not in OUTPUT_KINDS and in_credentials and specs[-1].lower().startswith("elasticsearch:"):
            specs[-1] += "," + piece
        else:
            specs.append(piece.strip())
    return [spec.strip() for spec in specs if spec.strip()]


def _fold_output_specs(values: dict[str, Any], origins: dict[str, str], problems: list[str]) -> None:
    """`file:PATH` and `elasticsearch:URL` in outputs set file.path / elasticsearch.url; kinds stay."""
    specs = values.get("outputs")
    if specs is None:
        return
    kinds: list[str] = []
    targets = {"file": ("file_path", Path), "elasticsearch": ("elasticsearch_url", str)}
    given: dict[str, str] = {}
    for spec in specs:
        kind, _, argument = spec.partition(":")
        kind = kind.lower()
        kinds.append(kind)
        if not argument:
            continue
        if kind in given and given[kind] != argument:
            shown = (mask_url(given[kind]), mask_url(argument)) if kind == "elasticsearch" else (given[kind], argument)
            problems.append(f"outputs: only one {kind} output is supported, got {shown[0]} and {shown[1]}")
            continue
        given[kind] = argument
        field_name, convert = targets[kind]
        values[field_name] = convert(argument)
        origins[field_name] = origins["outputs"]
    # Order kept, duplicates dropped: `stdout,stdout` means stdout once.
    values["outputs"] = tuple(dict.fromkeys(kinds))


def parse_address(raw: Any) -> str | None:
    """`host:port` or `[v6]:port`; empty, `off` or `none` turns the server off."""
    text = "" if raw is None else str(raw).strip()
    if text.lower() in ("", "off", "none", "false", "no"):
        return None
    split_address(text)
    return text


def split_address(text: str, allow_any_port: bool = False) -> tuple[str, int]:
    """(host, port) of `host:port` or `[v6]:port`; port 0 (any free port) only with allow_any_port."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), or off, got {text!r}")
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    if not (0 if allow_any_port else 1) <= port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    return host, port


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False

    @property
    def may_be_empty(self) -> bool:
        """Whether None is a meaningful value (unset, or off) rather than a mistake."""
        return OPTIONAL_FIELDS.get(self.field_name, False)

    @property
    def field_name(self) -> str:
        return self.key.replace(".", "_")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.field_name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("outputs", parse_outputs, "where documents go: stdout, file[:PATH], elasticsearch[:URL] (list)"),
    Option("format", choice(FORMATS), "stdout encoding: ndjson (JSON per line) or compact (one short line)"),
    Option("ready_file", parse_path, "file written once the probes are attached and outputs are up"),
    Option("rules.paths", parse_paths, "Elastic detection-rule files or directories to load (list)"),
    Option("rules.builtin", parse_bool, "load the built-in ssh/sshd/autossh-in-container rule"),
    Option("fold_window", parse_duration, "window within which identical alerts fold into one with a count"),
    Option("metrics.address", parse_address, "HOST:PORT of /metrics and /healthz; off disables"),
    Option("log.format", choice(LOG_FORMATS), "json or text log lines on stderr"),
    Option("log.level", choice(LOG_LEVELS), "debug, info, warning, error or critical"),
    Option("node_name", parse_str, "name of this node (the DaemonSet passes spec.nodeName)"),
    Option("file.path", parse_path, "file the file output writes (rotated)"),
    Option("file.max_bytes", parse_size, "size at which the file output rotates"),
    Option("file.backups", parse_int, "rotated files kept"),
    Option("spool.dir", parse_path, "directory of the Elasticsearch outage spool"),
    Option("spool.limit", parse_size, "most bytes the spool may hold"),
    Option("spool.policy", choice(SPOOL_POLICIES), "when the spool is full: drop-oldest or drop-newest"),
    Option("elasticsearch.url", parse_str, "Elasticsearch URL, e.g. https://es.example:9200"),
    Option("elasticsearch.api_key", parse_str, "API key (base64 id:key) for Elasticsearch", secret=True),
    Option("elasticsearch.username", parse_str, "basic-auth user for Elasticsearch"),
    Option("elasticsearch.password", parse_str, "basic-auth password for Elasticsearch", secret=True),
    Option("elasticsearch.ca_cert", parse_path, "PEM file of the CA that signed Elasticsearch's certificate"),
    Option("elasticsearch.verify_tls", parse_bool, "verify Elasticsearch's TLS certificate"),
    Option("elasticsearch.ca_fingerprint", parse_fingerprint,
           "SHA-256 fingerprint of the CA (or server) certificate to pin, instead of ca_cert"),
    Option("elasticsearch.index", parse_str, "data stream for events (default logs-endpoint.events.process-default)"),
    Option("elasticsearch.alerts_index", parse_str,
           "data stream for alerts (default logs-container_sensor.alerts-default)"),
    Option("elasticsearch.timeout", parse_duration, "request timeout for Elasticsearch"),
    Option("probe.ringbuf_size", parse_size, "BPF ring buffer size (power of two, at least 4096)"),
    Option("probe.argv_max_bytes", parse_size, "argv bytes captured per exec (power of two, 512-16384)"),
    Option("priority_boost", parse_int,
           "how many nice levels above normal the sensor runs (as auditd's priority_boost; 0 keeps it normal)"),
    Option("probe.ring_reader", choice(RING_READERS),
           "how records are read: mmap (x86 only), libbpf (a callback per record), or auto"),
    Option("stall_timeout", parse_duration,
           "/livez fails and systemd watchdog pings stop once the pipeline has not advanced this long; 0 never"),
    Option("drain_timeout", parse_duration,
           "most time SIGTERM/SIGINT spends draining the ring buffer and outputs before exiting"),
    Option("runtime_state_root", parse_path,
           "where the host's / is seen for the runtimes' state (/run/containerd, ...); a DaemonSet mounts /host"),
)
# Fields whose type admits None.
OPTIONAL_FIELDS = {f.name: "None" in str(f.type) for f in fields(Config)}
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
OPTIONS_BY_FIELD = {option.field_name: option for option in OPTIONS}
OPTIONS_BY_ENV = {option.env_name: option for option in OPTIONS}


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _flatten(data: Mapping[str, Any], prefix: str, problems: list[str], source: str) -> dict[str, Any]:
    """The file's nested mapping as {dotted key: raw value}; unknown keys become problems."""
    known_sections = {key.split(".")[0] for key in OPTIONS_BY_KEY if "." in key}
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if key in OPTIONS_BY_KEY:
            flat[key] = value
        elif isinstance(value, Mapping) and not prefix and key in known_sections:
            flat.update(_flatten(value, key + ".", problems, source))
        elif not prefix and key in known_sections:
            problems.append(f"{source}: {key}: expected a section (a mapping of keys), got {value!r}")
        else:
            problems.append(f"{source}: unknown key {key}{_suggest(key, list(OPTIONS_BY_KEY))}")
    return flat


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    # Every way a file can be wrong is one problem line naming the place; none quotes the file's text, which may
    # hold a password.
    try:
        raw = path.read_bytes()
    except OSError as error:
        problems.append(f"{path}: cannot read the configuration file: {error.strerror or error}")
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        problems.append(f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at line {line}, offset "
                        f"{error.start}); save the file as UTF-8")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        where = error.problem_mark
        line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problems.append(f"{path}: not valid YAML{line}: {error.problem or type(error).__name__}")
        return {}
    except yaml.reader.ReaderError as error:
        problems.append(f"{path}: not valid YAML: {error.reason} (character #x{error.character:04x} at offset "
                        f"{error.position})" if isinstance(error.character, int) else
                        f"{path}: not valid YAML: {error.reason} (at offset {error.position})")
        return {}
    except yaml.YAMLError as error:
        problems.append(f"{path}: not valid YAML: {type(error).__name__}")
        return {}
    except RecursionError:
        problems.append(f"{path}: not valid YAML: nested too deeply")
        return {}
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        problems.append(f"{path}: expected a mapping of keys at the top, got {type(data).__name__}")
        return {}
    return _flatten(data, "", problems, str(path))


def _env_values(env: Mapping[str, str], problems: list[str]) -> dict[str, tuple[str, Any]]:
    values: dict[str, tuple[str, Any]] = {}
    for name, value in sorted(env.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        option = OPTIONS_BY_ENV.get(name)
        if option is None:
            problems.append(f"unknown environment variable {name}{_suggest(name, list(OPTIONS_BY_ENV))}")
            continue
        values[option.key] = (f"env {name}", value)
    return values


def _flag_values(flags: Mapping[str, Any], problems: list[str]) -> dict[str, tuple[str, Any]]:
    values: dict[str, tuple[str, Any]] = {}
    for name, value in flags.items():
        # click hands over every declared option, None (or an empty tuple for multiple=True) when not given.
        if value is None or value == ():
            continue
        option = OPTIONS_BY_FIELD.get(name.replace("-", "_")) or OPTIONS_BY_KEY.get(name)
        if option is None:
            problems.append(f"unknown option {name}")
            continue
        values[option.key] = ("command line", value)
    return values


def _check(config: Config, problems: list[str]) -> None:
    """Problems that involve more than one option, or the filesystem."""
    if "elasticsearch" in config.outputs and not config.elasticsearch_url:
        problems.append("elasticsearch.url: required when outputs include elasticsearch")
    if config.elasticsearch_url:
        try:
            url = parse_url(config.elasticsearch_url)
        except UrlError as error:
            problems.append(f"elasticsearch.url: {error}")
        else:
            if url.has_credentials and (config.elasticsearch_api_key or config.elasticsearch_username):
                problems.append("elasticsearch: credentials both in elasticsearch.url and in elasticsearch."
                                f"{'api_key' if config.elasticsearch_api_key else 'username'}; give them once")
    if config.elasticsearch_api_key and (config.elasticsearch_username or config.elasticsearch_password):
        problems.append("elasticsearch: give either api_key or username/password, not both")
    if bool(config.elasticsearch_username) != bool(config.elasticsearch_password):
        problems.append("elasticsearch: username and password go together; one of them is missing")
    if config.elasticsearch_ca_cert and not config.elasticsearch_ca_cert.is_file():
        problems.append(f"elasticsearch.ca_cert: no such file {config.elasticsearch_ca_cert}")
    if config.elasticsearch_timeout <= 0:
        problems.append("elasticsearch.timeout: must be more than 0")
    if "file" in config.outputs and config.file_path is None:
        problems.append("file.path: required when outputs include file")
    if config.file_max_bytes < 4096:
        problems.append(f"file.max_bytes: must be at least 4096, got {config.file_max_bytes}")
    if config.file_backups < 0:
        problems.append(f"file.backups: must not be negative, got {config.file_backups}")
    if config.spool_limit < 1024 * 1024:
        problems.append(f"spool.limit: must be at least 1MiB, got {config.spool_limit}")
    size = config.probe_ringbuf_size
    if size < PAGE_SIZE or size & (size - 1):
        problems.append(f"probe.ringbuf_size: must be a power of two of at least 4096 bytes, got {size}")
    if config.drain_timeout <= 0:
        problems.append("drain_timeout: must be more than 0")
    if not 0 <= config.priority_boost <= 19:
        problems.append(f"priority_boost: must be from 0 to 19, got {config.priority_boost}")
    argv = config.probe_argv_max_bytes
    # the per-CPU scratch record (argv + path + header) must fit the kernel's 32 KiB per-CPU allocation
    if not 512 <= argv <= 16384 or argv & (argv - 1):
        problems.append(f"probe.argv_max_bytes: must be a power of two from 512 to 16384, got {argv}")
    for path in config.rules_paths:
        if not path.exists():
            problems.append(f"rules.paths: no such file or directory {path}")


def load_config(file: Path | None, env: Mapping[str, str], flags: Mapping[str, Any]) -> Config:
    """The configuration from defaults < file < environment < flags, or ConfigError with every problem.

    `flags` maps `Config` field names (or dotted keys) to values; None means "not given".
    """
    problems: list[str] = []
    raw: dict[str, tuple[str, Any]] = {}
    if file is not None:
        for key, value in _read_file(file, problems).items():
            raw[key] = (f"file {file}", value)
    raw.update(_env_values(env, problems))
    raw.update(_flag_values(flags, problems))

    values: dict[str, Any] = {}
    origins: dict[str, str] = {option.field_name: "default" for option in OPTIONS}
    for key, (origin, value) in raw.items():
        option = OPTIONS_BY_KEY[key]
        if value is None:
            continue  # `key: null` in the file means "not set here"
        try:
            parsed = option.parse(value)
        except ValueError as error:
            # A secret's parse error says what is wrong, not what was given ("..., got VALUE").
            message = str(error).split(", got ")[0] if option.secret else error
            problems.append(f"{key}: {message} (from {origin})")
            continue
        if parsed is None and not option.may_be_empty:
            problems.append(f"{key}: must not be empty (from {origin})")
            continue
        values[option.field_name] = parsed
        origins[option.field_name] = origin
    _fold_output_specs(values, origins, problems)

    config = Config(**values, origins=origins)
    _check(config, problems)
    if problems:
        raise ConfigError(_scrubbed(problems, raw))
    return config


def _scrubbed(problems: list[str], raw: Mapping[str, tuple[str, Any]]) -> list[str]:
    """Problems with any secret given (and the user info of any URL) masked, however a message came to hold
    one: a value quoted back, a URL in an unknown key's value."""
    def given(key: str) -> str | None:
        value = raw.get(key, (None, None))[1]
        return value if isinstance(value, str) else None

    redactor = Redactor()
    outputs = raw.get("outputs", (None, None))[1]
    specs = _split_specs(outputs) if isinstance(outputs, str) else outputs if isinstance(outputs, list | tuple) else []
    urls = [given("elasticsearch.url")] + [str(spec).partition(":")[2] for spec in specs]
    for url in urls:
        redactor.add(secret_forms(url=url))
    redactor.add(secret_forms(username=given("elasticsearch.username"), password=given("elasticsearch.password"),
                              api_key=given("elasticsearch.api_key")))
    return [redactor.scrub(problem) for problem in problems]


def command_line_secrets_warning(config: Config) -> str | None:
    """One warning line when a secret came from the command line, where every user of the host sees it in `ps`;
    it names the environment variables and file keys that keep it out of sight. None when there is nothing to say.
    """
    def from_flags(field_name: str) -> bool:
        return config.origins.get(field_name) == "command line" and bool(getattr(config, field_name))

    given = [option.key for option in OPTIONS if option.secret and from_flags(option.field_name)]
    url = OPTIONS_BY_KEY["elasticsearch.url"]
    try:
        url_credentials = from_flags(url.field_name) and parse_url(config.elasticsearch_url or "").has_credentials
    except UrlError:
        url_credentials = False
    if not given and not url_credentials:
        return None
    user, password, api_key = (OPTIONS_BY_KEY[f"elasticsearch.{name}"] for name in ("username", "password", "api_key"))
    if url_credentials:
        given.insert(0, "the credentials in the Elasticsearch URL")
        instead = (f"set the URL in {url.env_name}, or give it without credentials and set {user.env_name} and "
                   f"{password.env_name} (or {api_key.env_name}); or use {url.key}, {user.key} and {password.key} "
                   "in the configuration file")
    else:
        secrets = [option for option in OPTIONS if option.secret and from_flags(option.field_name)]
        instead = (f"set {' and '.join(option.env_name for option in secrets)}, or "
                   f"{' and '.join(option.key for option in secrets)} in the configuration file")
    return (f"{' and '.join(given)} given on the command line can be read by every user of this host (ps, "
            f"/proc/PID/cmdline): {instead}")


def resolve_config_file(flag: Path | None, env: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $CONTAINER_SENSOR_CONFIG, else the default file if it exists."""
    if flag is not None:
        return flag
    if env.get(CONFIG_FILE_ENV):
        return Path(env[CONFIG_FILE_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


def render_config(config: Config, with_origins: bool = True) -> str:
    """The configuration as YAML in the file's layout, secrets masked, non-default origins as comments."""
    text = yaml.safe_dump(config.masked(), sort_keys=False, default_flow_style=False)
    if not with_origins:
        return text
    lines = []
    section = ""
    for line in text.splitlines():
        stripped = line.lstrip()
        key = stripped.split(":", 1)[0]
        if line == stripped:
            section = key
            dotted = key
        else:
            dotted = f"{section}.{key}"
        option = OPTIONS_BY_KEY.get(dotted)
        origin = config.origins.get(option.field_name) if option else None
        lines.append(f"{line}  # {origin}" if origin and origin != "default" else line)
    return "\n".join(lines) + "\n"
