"""The sensor's configuration: one frozen `Config` built from a YAML file, the environment and flags.

Precedence is flags over environment over file over defaults. Every option has one dotted key (as in the YAML
file, e.g. `elasticsearch.url`), one environment variable (`CONTAINER_SENSOR_` + the key upper-cased with dots
as underscores, e.g. `CONTAINER_SENSOR_ELASTICSEARCH_URL`) and one field of `Config` (the key with dots as
underscores, e.g. `elasticsearch_url`). `load_config` checks everything and raises one `ConfigError` listing
every problem it found, so an operator fixes them all in one go.

The option table is in options.py, the value parsers in parsing.py and the stages' typed sections in sections.py;
this module holds `Config` itself, its loading, its checks and its rendering.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from sensor.config.credentials import Redactor, UrlError, parse_url, secret_forms
from sensor.config.options import ENV_PREFIX, OPTIONS, OPTIONS_BY_ENV, OPTIONS_BY_FIELD, OPTIONS_BY_KEY, shown_value
from sensor.config.parsing import fold_output_specs, split_specs
from sensor.config.sections import Sections, build_sections

# Names the configuration file; read by `resolve_config_file`, not an option itself.
CONFIG_FILE_ENV = ENV_PREFIX + "CONFIG"
DEFAULT_CONFIG_FILE = Path("/etc/container-sensor/config.yaml")
PAGE_SIZE = 4096


class ConfigError(Exception):
    """Every problem found in one configuration, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# The variables Elastic's Linux rules read from process.env_vars (capture_env_vars in Defend's policy)
DEFAULT_ENV_VARS = (
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GLIBC_TUNABLES",
    "HISTFILE", "HISTSIZE", "HISTFILESIZE", "HISTCONTROL",
    "http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
    "RUNNER_TRACKING_ID",
)


@dataclass(frozen=True)
class Config:
    """The effective configuration. Field names are the dotted keys with dots as underscores."""

    outputs: tuple[str, ...] = ("stdout",)
    format: str = "ndjson"
    ready_file: Path | None = None
    rules_paths: tuple[Path, ...] = ()
    rules_builtin: bool = True
    fold_window: float = 60.0
    alert_metadata_wait: float = 0.25
    metrics_address: str | None = "127.0.0.1:9464"
    log_format: str = "json"
    log_level: str = "info"
    node_name: str | None = None
    kubernetes_cluster_name: str | None = None
    kubernetes_api: str = "auto"
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
    # uid_change, gid_change and session_id_change documents (set*id and setsid calls): few, and rules read them
    events_cred_changes: bool = True
    # one already_running document per process found running at start-up, as Elastic Defend writes them
    events_already_running: bool = True
    # process.env_vars: these variables of each exec's environment, and nothing else of it (Elastic Defend's
    # capture_env_vars): the loader, proxy, history and runner variables Elastic's rules read
    events_env_vars: tuple[str, ...] = DEFAULT_ENV_VARS
    # load_module documents (Elastic Defend's): rare, and the kernel's most privileged change
    events_modules: bool = True
    # one fork document per new process (Session View draws forks); off: a node forks far more than it execs
    events_fork: bool = False
    # connection_attempted/connection_accepted documents (TCP connects and accepts), as Elastic Defend writes them
    events_network: bool = True
    priority_boost: int = 4
    # what reaches the outputs (sensor/rules/noise.py): everything by default
    filter_where: str | None = None
    filter_alerts_only: bool = False
    filter_allow_containers: tuple[str, ...] = ()
    filter_deny_containers: tuple[str, ...] = ()
    filter_allow_namespaces: tuple[str, ...] = ()
    filter_deny_namespaces: tuple[str, ...] = ()
    stall_timeout: float = 30.0
    drain_timeout: float = 20.0
    runtime_state_root: Path = Path("/")
    # Where each value came from ("default", "file PATH", "env CONTAINER_SENSOR_...", "command line"), by field.
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def sections(self) -> Sections:
        """The stages' typed sections, built once on first use (a cached_property writes the instance's
        __dict__ directly, which a frozen dataclass allows)."""
        return build_sections(self)

    def masked(self) -> dict[str, Any]:
        """The configuration as a nested dict in the file's layout, secrets replaced by a mask."""
        nested: dict[str, Any] = {}
        for option in OPTIONS:
            value = shown_value(option.field_name, getattr(self, option.field_name))
            section = nested
            *parents, leaf = option.key.split(".")
            for part in parents:
                section = section.setdefault(part, {})
            section[leaf] = _plain(value)
        return nested

    def __repr__(self) -> str:
        # Written out so that a repr in a log line or a traceback never holds a password, API key or URL
        # credentials (dataclass keeps a __repr__ the class defines).
        shown = (f"{f.name}={shown_value(f.name, getattr(self, f.name))!r}" for f in fields(self) if f.repr)
        return f"Config({', '.join(shown)})"


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


# Fields whose type admits None: for them None is a meaningful value (unset, or off) rather than a mistake.
_MAY_BE_EMPTY = {f.name: "None" in str(f.type) for f in fields(Config)}


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
        if parsed is None and not _MAY_BE_EMPTY.get(option.field_name, False):
            problems.append(f"{key}: must not be empty (from {origin})")
            continue
        values[option.field_name] = parsed
        origins[option.field_name] = origin
    fold_output_specs(values, origins, problems)

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
    specs = split_specs(outputs) if isinstance(outputs, str) else outputs if isinstance(outputs, list | tuple) else []
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
