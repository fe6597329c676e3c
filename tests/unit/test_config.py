from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from sensor.config.options import OPTIONS, SECRET_MASK
from sensor.config.parsing import parse_duration, parse_size
from sensor.config.sections import (
    DetectionConfig,
    ElasticsearchConfig,
    FileOutputConfig,
    HostConfig,
    LogConfig,
    OpsConfig,
    OutputsConfig,
    ProbeConfig,
    ResolverConfig,
    Sections,
    SpoolConfig,
)
from sensor.config.settings import Config, ConfigError, load_config, render_config, resolve_config_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def problems_of(file: Path | None = None, env: dict | None = None, flags: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(file, env or {}, flags or {})
    return caught.value.problems


def test_defaults_without_any_source():
    config = load_config(None, {}, {})
    assert config == Config()
    assert config.outputs == ("stdout",)
    assert config.metrics_address == "127.0.0.1:9464"
    assert all(origin == "default" for origin in config.origins.values())


def test_every_option_maps_to_a_config_field():
    field_names = set(Config.__dataclass_fields__) - {"origins"}
    assert {option.field_name for option in OPTIONS} == field_names


def test_flags_override_env_which_overrides_file(tmp_path):
    file = write(tmp_path, "log:\n  level: warning\n  format: text\nfold_window: 2s\nformat: compact\n")
    env = {"CONTAINER_SENSOR_LOG_LEVEL": "error", "CONTAINER_SENSOR_FOLD_WINDOW": "500ms"}
    config = load_config(file, env, {"log_level": "debug", "format": None})
    assert config.log_level == "debug"  # flag beats env and file
    assert config.fold_window == 0.5  # env beats file
    assert config.log_format == "text"  # file beats default
    assert config.format == "compact"  # a flag given as None is "not given"
    assert config.origins["log_level"] == "command line"
    assert config.origins["fold_window"] == "env CONTAINER_SENSOR_FOLD_WINDOW"
    assert config.origins["log_format"] == f"file {file}"


def test_lists_from_yaml_env_and_flags(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    text = f"outputs: [stdout, file]\nfile:\n  path: {tmp_path}/out.ndjson\nrules:\n  paths: [{rules}]\n"
    file = write(tmp_path, text)
    config = load_config(file, {}, {})
    assert config.outputs == ("stdout", "file")
    assert config.rules_paths == (rules,)
    config = load_config(file, {"CONTAINER_SENSOR_OUTPUTS": "file, stdout,file"}, {})
    assert config.outputs == ("file", "stdout")
    config = load_config(file, {}, {"outputs": ("stdout",)})
    assert config.outputs == ("stdout",)


def test_output_specs_carry_their_path_or_url(tmp_path):
    flags = {"outputs": ["stdout", f"file:{tmp_path}/events.ndjson", "elasticsearch:https://es.example:9200"]}
    config = load_config(None, {"CONTAINER_SENSOR_FILE_PATH": "/elsewhere"}, flags)
    assert config.outputs == ("stdout", "file", "elasticsearch")
    assert config.file_path == tmp_path / "events.ndjson"
    assert config.elasticsearch_url == "https://es.example:9200"
    assert config.origins["file_path"] == "command line"
    assert problems_of(flags={"outputs": ["file:/a", "file:/b"]}) == [
        "outputs: only one file output is supported, got /a and /b"
    ]
    assert problems_of(flags={"outputs": ["stdout:x"]}) == ["outputs: stdout takes no argument (from command line)"]


def test_all_problems_are_reported_together(tmp_path):
    file = write(tmp_path, "log:\n  levle: info\nspool:\n  limit: lots\nmetrics: 9464\n")
    env = {"CONTAINER_SENSOR_OUTPUT": "stdout", "CONTAINER_SENSOR_PROBE_RINGBUF_SIZE": "3000"}
    flags = {"outputs": "stdout,kafka", "metrics_address": "localhost"}
    problems = problems_of(file, env, flags)
    text = "\n".join(problems)
    assert f"{file}: unknown key log.levle (did you mean log.level?)" in problems
    assert "spool.limit: expected a size" in text
    assert f"{file}: metrics: expected a section" in text
    typo = "unknown environment variable CONTAINER_SENSOR_OUTPUT"
    assert f"{typo} (did you mean CONTAINER_SENSOR_OUTPUTS?)" in text
    assert "outputs: unknown output kafka" in text
    assert "metrics.address: expected HOST:PORT" in text and "(from command line)" in text
    assert "probe.ringbuf_size: must be a power of two" in text
    assert len(problems) == 7


def test_cross_field_checks():
    problems = problems_of(env={
        "CONTAINER_SENSOR_OUTPUTS": "elasticsearch,file",
        "CONTAINER_SENSOR_ELASTICSEARCH_API_KEY": "k",
        "CONTAINER_SENSOR_ELASTICSEARCH_USERNAME": "elastic",
        "CONTAINER_SENSOR_ELASTICSEARCH_CA_CERT": "/nonexistent/ca.pem",
        "CONTAINER_SENSOR_RULES_PATHS": "/nonexistent/rules",
    })
    assert "elasticsearch.url: required when outputs include elasticsearch" in problems
    assert "file.path: required when outputs include file" in problems
    assert "elasticsearch: give either api_key or username/password, not both" in problems
    assert "elasticsearch: username and password go together; one of them is missing" in problems
    assert "elasticsearch.ca_cert: no such file /nonexistent/ca.pem" in problems
    assert "rules.paths: no such file or directory /nonexistent/rules" in problems


def test_bad_elasticsearch_url_is_shown_masked():
    problems = problems_of(env={"CONTAINER_SENSOR_OUTPUTS": "elasticsearch",
                                "CONTAINER_SENSOR_ELASTICSEARCH_URL": "es://elastic:hunter2@es:9200"})
    assert len(problems) == 1
    assert "hunter2" not in problems[0] and "'es://***@es:9200'" in problems[0]


@pytest.mark.parametrize("text,problem", [
    ("outputs: [stdout\n", "not valid YAML at line 2"),
    ("- stdout\n", "expected a mapping of keys at the top, got list"),
    ("just text\n", "expected a mapping of keys at the top, got str"),
    ("elasticsearch:\n  password: s3cr3t-value\n\tindex: x\n", "not valid YAML at line 3, column 1: found character"),
    ("outputs: [stdout]\nnode_name: a\x07b\n", "not valid YAML: special characters are not allowed (character #x0007"),
    ("outputs: " + "[" * 5000 + "\n", "not valid YAML: nested too deeply"),
    ("a: *nowhere\n", "not valid YAML at line 1, column 4: found undefined alias"),
])
def test_broken_files(tmp_path, text, problem):
    file = write(tmp_path, text)
    problems = problems_of(file)
    assert len(problems) == 1 and problem in problems[0] and str(file) in problems[0], problems
    # The file's text is not quoted back: it may hold a password.
    assert "s3cr3t" not in problems[0]


def test_a_file_that_is_not_utf8_is_one_problem(tmp_path):
    file = tmp_path / "latin1.yaml"
    file.write_bytes("node_name: n\nelasticsearch:\n  password: caf\u00e9-s3cr3t\n".encode("latin-1"))
    assert problems_of(file) == [
        f"{file}: not UTF-8 text (byte 0xe9 at line 3, offset 43); save the file as UTF-8"
    ]


def test_a_directory_as_the_file_is_one_problem(tmp_path):
    assert problems_of(tmp_path) == [f"{tmp_path}: cannot read the configuration file: Is a directory"]


def test_missing_file_is_one_problem(tmp_path):
    absent = tmp_path / "absent.yaml"
    assert problems_of(absent) == [f"{absent}: cannot read the configuration file: No such file or directory"]


def test_empty_file_and_null_values_keep_defaults(tmp_path):
    assert load_config(write(tmp_path, ""), {}, {}) == Config()
    config = load_config(write(tmp_path, "spool:\n  dir: null\nready_file: null\n"), {}, {})
    assert config.spool_dir == Config().spool_dir and config.ready_file is None


def test_empty_value_for_a_required_setting():
    assert problems_of(env={"CONTAINER_SENSOR_SPOOL_DIR": " "}) == [
        "spool.dir: must not be empty (from env CONTAINER_SENSOR_SPOOL_DIR)"
    ]


def test_metrics_address_forms_and_off():
    for raw in ("off", "", "none"):
        assert load_config(None, {"CONTAINER_SENSOR_METRICS_ADDRESS": raw}, {}).metrics_address is None
    assert load_config(None, {}, {"metrics_address": "[::1]:9464"}).metrics_address == "[::1]:9464"
    assert load_config(None, {}, {"metrics_address": "0.0.0.0:9100"}).metrics_address == "0.0.0.0:9100"
    assert problems_of(flags={"metrics_address": "127.0.0.1:70000"}) == [
        "metrics.address: port must be 1-65535, got 70000 (from command line)"
    ]


def test_sizes_and_durations():
    assert parse_size("16MiB") == 16 * 1024 * 1024
    assert parse_size("512k") == 512_000
    assert parse_size(4096) == 4096
    assert parse_size("1 GiB") == 1 << 30
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2") == 2.0
    assert parse_duration(1.5) == 1.5
    assert parse_duration("1m") == 60.0
    for bad in ("16 parsecs", "-1", True, "1.5MiB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_booleans():
    env = {"CONTAINER_SENSOR_ELASTICSEARCH_VERIFY_TLS": "no"}
    assert load_config(None, env, {}).elasticsearch_verify_tls is False
    assert load_config(None, {}, {"rules_builtin": False}).rules_builtin is False
    assert problems_of(env={"CONTAINER_SENSOR_RULES_BUILTIN": "maybe"}) == [
        "rules.builtin: expected true or false, got 'maybe' (from env CONTAINER_SENSOR_RULES_BUILTIN)"
    ]


def test_render_masks_secrets_and_names_origins(tmp_path):
    env = {
        "CONTAINER_SENSOR_OUTPUTS": "elasticsearch",
        "CONTAINER_SENSOR_ELASTICSEARCH_URL": "https://elastic:pa55word@es.example:9200",
    }
    with_url = render_config(load_config(None, env, {}))
    assert "pa55word" not in with_url and "url: https://***@es.example:9200  # env" in with_url
    env["CONTAINER_SENSOR_ELASTICSEARCH_URL"] = "https://es.example:9200"
    env["CONTAINER_SENSOR_ELASTICSEARCH_API_KEY"] = "VnVhQ2ZHY0JDZGJrU"
    config = load_config(None, env, {"node_name": "node-1"})
    text = render_config(config)
    assert "VnVhQ2ZHY0JDZGJrU" not in text
    assert "node_name: node-1  # command line" in text
    assert "  api_key: '********'  # env CONTAINER_SENSOR_ELASTICSEARCH_API_KEY" in text
    # Without the comments it is a valid configuration file again (secrets aside).
    reloaded = yaml.safe_load(render_config(config, with_origins=False))
    assert reloaded["elasticsearch"]["url"] == "https://es.example:9200"
    assert reloaded["outputs"] == ["elasticsearch"]
    assert reloaded["probe"]["ringbuf_size"] == config.probe_ringbuf_size


def test_rendered_defaults_load_back_to_the_same_config(tmp_path):
    file = write(tmp_path, render_config(Config(), with_origins=False))
    assert load_config(file, {}, {}) == Config()


def test_repr_masks_secrets():
    config = load_config(None, {"CONTAINER_SENSOR_ELASTICSEARCH_URL": "https://elastic:pa55word@es.example:9200"}, {})
    shown = repr(config)
    assert "pa55word" not in shown and "elasticsearch_url='https://***@es.example:9200'" in shown
    config = load_config(None, {"CONTAINER_SENSOR_ELASTICSEARCH_USERNAME": "elastic",
                                "CONTAINER_SENSOR_ELASTICSEARCH_PASSWORD": "pa55word"}, {})
    shown = repr(config)
    assert "pa55word" not in shown and "spool_dir=" in shown
    assert f"elasticsearch_password='{SECRET_MASK}'" in shown and "elasticsearch_username='elastic'" in shown


def test_resolve_config_file(tmp_path):
    flag = tmp_path / "a.yaml"
    assert resolve_config_file(flag, {"CONTAINER_SENSOR_CONFIG": "/x.yaml"}) == flag
    assert resolve_config_file(None, {"CONTAINER_SENSOR_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    # CONTAINER_SENSOR_CONFIG names the file; it is not an unknown option.
    assert load_config(None, {"CONTAINER_SENSOR_CONFIG": "/x.yaml"}, {}) == Config()


def test_spool_policy_spellings_and_fingerprint():
    env = {"CONTAINER_SENSOR_SPOOL_POLICY": "drop_newest",
           "CONTAINER_SENSOR_ELASTICSEARCH_CA_FINGERPRINT": "AB:" * 31 + "AB"}
    config = load_config(None, env, {})
    assert config.spool_policy == "drop-newest"
    assert config.elasticsearch_ca_fingerprint == "ab" * 32
    assert problems_of(env={"CONTAINER_SENSOR_ELASTICSEARCH_CA_FINGERPRINT": "abc"}) == [
        "elasticsearch.ca_fingerprint: expected a SHA-256 fingerprint: 64 hex digits, colons allowed "
        "(from env CONTAINER_SENSOR_ELASTICSEARCH_CA_FINGERPRINT)"
    ]


def test_probe_sizes():
    env = {"CONTAINER_SENSOR_PROBE_RINGBUF_SIZE": "32MiB", "CONTAINER_SENSOR_PROBE_ARGV_MAX_BYTES": "4KiB"}
    config = load_config(None, env, {})
    assert (config.probe_ringbuf_size, config.probe_argv_max_bytes) == (32 << 20, 4096)
    # 4k is 4000 bytes, not a power of two.
    assert problems_of(env={"CONTAINER_SENSOR_PROBE_ARGV_MAX_BYTES": "4k"}) == [
        "probe.argv_max_bytes: must be a power of two from 512 to 16384, got 4000"
    ]


def test_operations_doc_lists_every_option():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `") for line in doc.splitlines()
            if line.startswith("| `") and "CONTAINER_SENSOR_" in line}
    assert rows == {option.key: option.env_name for option in OPTIONS}


# ---- the stages' sections


def _leaves(section: object) -> list[object]:
    """Every value a section holds, nested sections walked."""
    values = []
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        values.extend(_leaves(value) if dataclasses.is_dataclass(value) else [value])
    return values


def test_every_option_reaches_exactly_one_section_field():
    for option in OPTIONS:
        marker = object()
        leaves = _leaves(Config(**{option.field_name: marker}).sections)
        assert sum(leaf is marker for leaf in leaves) == 1, f"{option.key} reaches no stage, or more than one"
    assert len(_leaves(Config().sections)) == len(OPTIONS)


def test_sections_have_no_defaults_of_their_own():
    """A default lives once, in Config: a section field with its own default could drift from it."""
    def walk(cls: type) -> None:
        for item in dataclasses.fields(cls):
            assert item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING, (
                f"{cls.__name__}.{item.name} has a default")
            if isinstance(item.type, str) and item.type in SECTION_TYPES:
                walk(SECTION_TYPES[item.type])

    walk(Sections)


SECTION_TYPES = {cls.__name__: cls for cls in (
    Sections, ProbeConfig, HostConfig, ResolverConfig, DetectionConfig, OutputsConfig, FileOutputConfig,
    ElasticsearchConfig, SpoolConfig, OpsConfig, LogConfig)}


def test_sections_are_built_once_and_frozen(tmp_path):
    config = load_config(None, {"CONTAINER_SENSOR_FOLD_WINDOW": "2s", "CONTAINER_SENSOR_SPOOL_DIR": str(tmp_path)},
                         {"drain_timeout": "5s", "outputs": [f"file:{tmp_path / 'out'}"]})
    sections = config.sections
    assert config.sections is sections
    assert sections.detection.fold_window == 2.0 and sections.detection.builtin is True
    assert sections.ops.drain_timeout == 5.0 and sections.ops.stall_timeout == 30.0
    assert sections.outputs.kinds == ("file",) and sections.outputs.file.path == tmp_path / "out"
    assert sections.outputs.elasticsearch.spool.dir == tmp_path
    with pytest.raises(dataclasses.FrozenInstanceError):
        sections.ops.drain_timeout = 1.0  # type: ignore[misc]
    # Config's own fields, equality and repr are as they were: the sections are derived, not compared.
    assert config == dataclasses.replace(config) and "sections=" not in repr(config)


def test_section_reprs_mask_secrets():
    config = load_config(None, {"CONTAINER_SENSOR_ELASTICSEARCH_URL": "https://u:pa55word@es.example:9200",
                                "CONTAINER_SENSOR_ELASTICSEARCH_INDEX": "logs-x-y"}, {})
    shown = repr(config.sections)
    assert "pa55word" not in shown and "url='https://***@es.example:9200'" in shown and "index='logs-x-y'" in shown
    keyed = Config(elasticsearch_api_key="c2VjcmV0OmtleQ==", elasticsearch_password="pa55word").sections
    shown = repr(keyed.outputs.elasticsearch)
    assert "c2VjcmV0" not in shown and "pa55word" not in shown
    assert f"api_key='{SECRET_MASK}'" in shown and f"password='{SECRET_MASK}'" in shown


def test_command_line_flags_have_no_defaults_of_their_own():
    """A flag not given must reach load_config as None, so the file and the environment are not overridden."""
    from sensor.cli import _flags, main  # click only here

    for command in (main.commands["run"], main.commands["config"].commands["show"]):
        with command.make_context(command.name, []) as context:
            params = dict(context.params)
        assert params.pop("config_file") is None
        assert set(_flags(**params).values()) == {None}, f"{command.name}: a flag not given is not None"
