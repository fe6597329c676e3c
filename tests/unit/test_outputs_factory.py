"""build_outputs: specs to outputs, one clear line per bad spec, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.config.settings import Config
from sensor.outputs.elasticsearch import ElasticsearchOutput
from sensor.outputs.factory import OutputSpecError, build_outputs
from sensor.outputs.files import RotatingFileOutput
from sensor.outputs.stdout import StdoutOutput


def close_all(outputs: list) -> None:
    for output in outputs:
        output.close(timeout=0.1)


def test_builds_each_kind_in_order(tmp_path: Path) -> None:
    config = Config(spool_dir=tmp_path / "spool", elasticsearch_api_key="a2V5")
    outputs = build_outputs(
        ["stdout", f"file:{tmp_path / 'events.ndjson'}", "elasticsearch:http://127.0.0.1:9"], config.sections.outputs)
    try:
        assert [type(o) for o in outputs] == [StdoutOutput, RotatingFileOutput, ElasticsearchOutput]
        assert outputs[2].settings.api_key == "a2V5"
        assert outputs[2].settings.spool_policy == "drop_oldest"
    finally:
        close_all(outputs)


def test_bare_kinds_take_their_target_from_the_configuration(tmp_path: Path) -> None:
    config = Config(file_path=tmp_path / "f.ndjson", file_max_bytes=8192, file_backups=2,
                    elasticsearch_url="https://es.example:9200", spool_dir=tmp_path / "spool",
                    spool_policy="drop-newest", elasticsearch_index="logs-endpoint.events.process-prod")
    outputs = build_outputs(["file", "elasticsearch"], config.sections.outputs)
    try:
        file_output, es_output = outputs
        assert file_output.path == tmp_path / "f.ndjson" and file_output.max_bytes == 8192
        assert es_output.settings.spool_policy == "drop_newest"
        assert es_output.settings.events_stream == "logs-endpoint.events.process-prod"
    finally:
        close_all(outputs)


def test_every_bad_spec_gets_one_line(tmp_path: Path) -> None:
    config = Config(spool_dir=tmp_path / "spool")
    with pytest.raises(OutputSpecError) as raised:
        build_outputs(["stdout:x", "kafka:broker", "file", "elasticsearch:ftp://host",
                       f"file:{tmp_path}"], config.sections.outputs)
    problems = raised.value.problems
    assert len(problems) == 5
    assert problems[0] == "--output stdout:x: stdout takes no argument"
    assert "unknown output 'kafka'" in problems[1]
    assert "needs a path" in problems[2]
    assert "expected http(s)://HOST[:PORT]" in problems[3]
    assert "is a directory" in problems[4]


def test_credentials_in_a_url_never_appear_in_errors(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    config = Config(spool_dir=blocked / "spool")
    with pytest.raises(OutputSpecError) as raised:
        build_outputs(["elasticsearch:https://user:hunter2@es.example:9200"], config.sections.outputs)
    message = str(raised.value)
    assert "hunter2" not in message
    assert "spool" in message
    # a spool that cannot be made is the host's problem, not the configuration's: exit 1, restarts allowed
    assert raised.value.configuration is False


def test_bad_data_stream_name_is_refused(tmp_path: Path) -> None:
    config = Config(spool_dir=tmp_path / "spool", elasticsearch_index="Logs With Spaces")
    with pytest.raises(OutputSpecError, match="not a valid index or data stream name") as raised:
        build_outputs(["elasticsearch:http://127.0.0.1:9"], config.sections.outputs)
    # a configuration error: `run` exits 2, on which the systemd unit does not restart (no restart loop)
    assert raised.value.configuration is True
