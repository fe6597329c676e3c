"""Credentials in Elasticsearch URLs: parsed by the last-`@` rule wherever a URL is read, handed to the client as
basic auth, and never printed: not in config problems, output-spec errors, reprs, log lines or tracebacks."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor.config.credentials import (
    MASK,
    RedactingStream,
    Redactor,
    UrlError,
    mask_spec,
    mask_url,
    parse_url,
    secret_forms,
)
from sensor.config.settings import ConfigError, command_line_secrets_warning, load_config, render_config
from sensor.ops.logs import JsonFormatter, TextFormatter
from sensor.outputs.elasticsearch import ElasticsearchConfigError, ElasticsearchSettings, make_client, redact_url
from sensor.outputs.factory import OutputSpecError, build_outputs

PASSWORD = "p/a#s@w:rd?x%zz"  # every character that breaks a naive URL parser
URL = f"https://elastic:{PASSWORD}@es.example:9200"


@pytest.mark.parametrize("url,parts", [
    ("https://elastic:p/a#s@w:rd@es.example:9200", ("elastic", "p/a#s@w:rd", "es.example", 9200, "")),
    (URL + "/prefix/", ("elastic", PASSWORD, "es.example", 9200, "/prefix")),
    ("http://u:p?q@10.0.0.1", ("u", "p?q", "10.0.0.1", None, "")),
    ("https://u:100%@h:1", ("u", "100%", "h", 1, "")),
    ("https://u%3Aname:p%40ss%2Fw%25@h:9200", ("u:name", "p@ss/w%", "h", 9200, "")),
    ("https://user@corp.example:secret@h:9200", ("user@corp.example", "secret", "h", 9200, "")),
    ("https://elastic@h:9200", ("elastic", None, "h", 9200, "")),
    ("https://elastic:@h:9200", ("elastic", "", "h", 9200, "")),
    ("https://u:p@[::1]:9200/es", ("u", "p", "::1", 9200, "/es")),
    ("  HTTPS://es.example:9200/  ", (None, None, "es.example", 9200, "")),
    ("https://es.example/a%40b", (None, None, "es.example", None, "/a%40b")),
])
def test_last_at_sign_ends_the_credentials(url, parts):
    parsed = parse_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.path) == parts
    assert PASSWORD not in repr(parsed) and PASSWORD not in str(parsed)


def test_clean_and_masked_forms():
    parsed = parse_url(URL + "/prefix")
    assert parsed.without_credentials() == "https://es.example:9200/prefix"
    assert parsed.masked() == "https://***@es.example:9200/prefix"
    assert parse_url("https://u:p@[::1]:9200").without_credentials() == "https://[::1]:9200"
    assert parse_url("https://h:9200").masked() == "https://h:9200"
    assert mask_url(URL) == "https://***@es.example:9200"
    assert mask_url("not a url u:p@h") == "***@h"
    assert mask_url("https://es.example:9200") == "https://es.example:9200"
    assert mask_spec(f"elasticsearch:{URL}") == "elasticsearch:https://***@es.example:9200"
    assert mask_spec("file:/tmp/a@b") == "file:/tmp/a@b"


@pytest.mark.parametrize("url,problem", [
    (f"es://elastic:{PASSWORD}@h:9200", "got scheme 'es'"),
    (f"elastic:{PASSWORD}@h:9200", "expected http(s)://HOST[:PORT][/PATH]"),
    (f"https://elastic:{PASSWORD}@h:9200/x?pretty", "a query (?) or fragment (#)"),
    (f"https://elastic:{PASSWORD}@h:9200#top", "a query (?) or fragment (#)"),
    (f"https://elastic:{PASSWORD}@h:99999", "port must be 1-65535"),
    (f"https://elastic:{PASSWORD}@h:port", "expected http(s)"),
    (f"https://elastic:{PASSWORD}@", "expected http(s)"),
    (f"https://:{PASSWORD}@h", "no user name"),
    (f"https://elastic:{PASSWORD}@[::1::2]:9200", "not an IPv6 address"),
    (f"https://elastic:{PASSWORD}@h!st:9200", "not a host name"),
    (f"https://elastic:{PASSWORD}@h:9200/a b", "white space"),
])
def test_unusable_urls_are_refused_without_their_password(url, problem):
    with pytest.raises(UrlError) as raised:
        parse_url(url)
    assert problem in str(raised.value)
    assert PASSWORD not in str(raised.value) and "p/a#s" not in str(raised.value)


_HOSTS = st.sampled_from(["es.example", "10.1.2.3", "[::1]", "[fd00::1:2]", "elastic-01.internal"])
_PATHS = st.sampled_from(["", "/es", "/a/b", "/%40x"])
# User names may hold anything but `:` (basic auth splits there); passwords anything printable but `%`
# (percent-escapes are decoded: see the percent-encoded property below).
_USERS = st.text(st.characters(codec="utf-8", exclude_characters=":%", exclude_categories=("Cc", "Cs", "Zs")),
                 min_size=1, max_size=20)
_PASSWORDS = st.text(st.characters(codec="utf-8", exclude_characters="%", exclude_categories=("Cc", "Cs")),
                     max_size=40)


@given(user=_USERS, password=_PASSWORDS, host=_HOSTS, port=st.integers(1, 65535), path=_PATHS)
def test_any_password_as_typed(user, password, host, port, path):
    url = f"https://{user}:{password}@{host}:{port}{path}"
    parsed = parse_url(url)
    assert (parsed.username, parsed.password, parsed.port, parsed.path) == (user, password, port, path)
    assert parsed.netloc == f"{host}:{port}"
    assert parsed.masked() == f"https://***@{host}:{port}{path}" == mask_url(url)
    settings = ElasticsearchSettings(url=url)
    assert (settings.url, settings.username, settings.password) == (f"https://{host}:{port}{path}", user, password)


@given(user=st.text(min_size=1, max_size=20), password=st.text(max_size=40), host=_HOSTS)
def test_any_password_percent_encoded(user, password, host):
    parsed = parse_url(f"http://{quote(user, safe='')}:{quote(password, safe='')}@{host}")
    assert (parsed.username, parsed.password, parsed.port) == (user, password, None)


def test_the_client_gets_basic_auth_and_a_url_without_credentials():
    settings = ElasticsearchSettings(url=URL + "/prefix/")
    assert settings.url == "https://es.example:9200/prefix"
    assert (settings.username, settings.password) == ("elastic", PASSWORD)
    assert PASSWORD not in repr(settings)
    client = make_client(settings)
    node = client.transport.node_pool.all()[0].config
    assert (node.scheme, node.host, node.port, node.path_prefix) == ("https", "es.example", 9200, "/prefix")
    assert "authorization" not in {key.lower() for key in node.headers}
    expected = base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()
    assert client._headers["authorization"] == f"Basic {expected}"
    assert PASSWORD not in repr(client) and expected not in repr(client)
    client.close()


def test_settings_errors_hold_no_password():
    with pytest.raises(ElasticsearchConfigError) as raised:
        ElasticsearchSettings(url=URL + "?pretty")
    assert PASSWORD not in str(raised.value) and "https://***@es.example:9200?pretty" in str(raised.value)
    with pytest.raises(ElasticsearchConfigError, match="credentials both in the URL and in settings"):
        ElasticsearchSettings(url=URL, api_key="abcd:efgh")
    assert redact_url(URL + "/x") == "https://es.example:9200/x"
    assert redact_url(f"nonsense:{PASSWORD}@h") == "***@h"


def test_output_spec_errors_hold_no_password(tmp_path):
    config = load_config(None, {"CONTAINER_SENSOR_SPOOL_DIR": str(tmp_path / "spool")}, {})
    specs = [f"elasticsearch:{URL}/x?y", f"kafka:{URL}", "elasticsearch"]
    with pytest.raises(OutputSpecError) as raised:
        build_outputs(specs, config.sections.outputs)
    text = str(raised.value)
    assert PASSWORD not in text and "p/a#s" not in text
    assert "--output elasticsearch:https://***@es.example:9200/x?y: elasticsearch url: a query" in text


def _problems(env=None, flags=None, file=None):
    with pytest.raises(ConfigError) as raised:
        load_config(file, env or {}, flags or {})
    return raised.value.problems


def test_config_url_from_every_source_is_parsed_the_same(tmp_path):
    file = tmp_path / "config.yaml"
    file.write_text(f"outputs: [elasticsearch]\nelasticsearch:\n  url: '{URL}'\n")
    for config in (
        load_config(file, {}, {}),
        load_config(None, {"CONTAINER_SENSOR_OUTPUTS": "elasticsearch", "CONTAINER_SENSOR_ELASTICSEARCH_URL": URL}, {}),
        load_config(None, {"CONTAINER_SENSOR_OUTPUTS": f"stdout,elasticsearch:{URL}"}, {}),
        load_config(None, {}, {"outputs": [f"elasticsearch:{URL}"]}),
    ):
        assert config.elasticsearch_url == URL
        assert "elasticsearch" in config.outputs
        text = render_config(config) + repr(config)
        assert PASSWORD not in text and "url: https://***@es.example:9200" in text


def test_a_comma_in_the_password_does_not_split_the_outputs():
    url = "https://elastic:a,b,c@es.example:9200"
    config = load_config(None, {"CONTAINER_SENSOR_OUTPUTS": f"stdout,elasticsearch:{url},file:/tmp/x"}, {})
    assert config.outputs == ("stdout", "elasticsearch", "file") and config.elasticsearch_url == url
    # Without an `@` ahead, a piece after the URL is an output of its own, and a typo is named as such.
    assert "outputs: unknown output kafka" in _problems(
        {"CONTAINER_SENSOR_OUTPUTS": "elasticsearch:https://es.example:9200,kafka"})[0]


def test_config_problems_hold_no_secret(tmp_path):
    other = "https://elastic:other-s3cret@es.example:9200"
    problems = _problems(flags={"outputs": [f"elasticsearch:{URL}", f"elasticsearch:{other}"]})
    assert problems == ["outputs: only one elasticsearch output is supported, got https://***@es.example:9200 "
                        "and https://***@es.example:9200"]
    problems = _problems({"CONTAINER_SENSOR_ELASTICSEARCH_URL": URL + "#x", "CONTAINER_SENSOR_ELASTICSEARCH_API_KEY":
                          "QUJDRDpzM2NyM3Qta2V5"})
    assert len(problems) == 1 and "a query (?) or fragment (#)" in problems[0]
    problems = _problems({"CONTAINER_SENSOR_ELASTICSEARCH_URL": URL, "CONTAINER_SENSOR_ELASTICSEARCH_API_KEY": "k"})
    assert problems == ["elasticsearch: credentials both in elasticsearch.url and in elasticsearch.api_key; "
                        "give them once"]
    file = tmp_path / "config.yaml"
    # A password given as a list, a URL as a section's value, a URL in an unknown key.
    file.write_text(f"elasticsearch:\n  username: elastic\n  password: ['{PASSWORD}']\n"
                    f"rules: '{URL}'\nelastic_url: '{URL}'\n")
    problems = _problems(file=file)
    assert len(problems) == 4, problems
    assert all(PASSWORD not in problem and "p/a#s" not in problem for problem in problems), problems
    assert f"elasticsearch.password: expected a single value (from file {file})" in problems


def test_secret_forms_cover_the_wire_forms():
    forms = set(secret_forms(url=URL, api_key="key-id:s3cr3t-key"))
    assert {PASSWORD, quote(PASSWORD, safe=""), base64.b64encode(f"elastic:{PASSWORD}".encode()).decode(),
            "s3cr3t-key", base64.b64encode(b"key-id:s3cr3t-key").decode()} <= forms
    encoded = base64.b64encode(b"key-id:s3cr3t-key").decode()
    assert {"key-id:s3cr3t-key", "s3cr3t-key"} <= set(secret_forms(api_key=encoded))


def test_log_lines_and_tracebacks_are_scrubbed():
    redactor = Redactor()
    redactor.add(secret_forms(url=URL))
    assert not Redactor() and redactor
    for formatter in (JsonFormatter(), TextFormatter()):
        sink = io.StringIO()
        handler = logging.StreamHandler(RedactingStream(sink, redactor))  # type: ignore[arg-type]
        handler.setFormatter(formatter)
        logger = logging.getLogger("test_secrets")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            try:
                raise ValueError(f"Could not parse URL {URL!r} (password {PASSWORD})")
            except ValueError:
                logger.exception("client said %s", f"connect to {URL}/_bulk failed")
        finally:
            logger.removeHandler(handler)
        text = sink.getvalue()
        assert "Traceback" in text or '"stack_trace"' in text
        assert PASSWORD not in text and "p/a#s" not in text and "https://***@es.example:9200" in text
    with pytest.raises(TypeError):
        RedactingStream(io.StringIO(), redactor).write(b"bytes")  # type: ignore[arg-type]


def test_short_secrets_are_not_scrubbed_from_free_text_but_urls_are():
    redactor = Redactor()
    redactor.add(secret_forms(url="https://u:ab@h:9200"))
    assert redactor.scrub("about https://u:ab@h:9200") == f"about https://{MASK}@h:9200"


def test_warning_for_credentials_on_the_command_line():
    assert command_line_secrets_warning(load_config(None, {"CONTAINER_SENSOR_ELASTICSEARCH_URL": URL}, {})) is None
    assert command_line_secrets_warning(load_config(None, {}, {"outputs": ["elasticsearch:https://h:9200"]})) is None
    warning = command_line_secrets_warning(load_config(None, {}, {"outputs": [f"elasticsearch:{URL}"]}))
    assert warning is not None and PASSWORD not in warning and "\n" not in warning
    for name in ("CONTAINER_SENSOR_ELASTICSEARCH_URL", "CONTAINER_SENSOR_ELASTICSEARCH_USERNAME",
                 "CONTAINER_SENSOR_ELASTICSEARCH_PASSWORD", "CONTAINER_SENSOR_ELASTICSEARCH_API_KEY",
                 "elasticsearch.password"):
        assert name in warning
    # Any secret option set by a flag is named with its variable.
    warning = command_line_secrets_warning(load_config(None, {}, {"elasticsearch_api_key": "QUJDRDpzM2NyM3Q="}))
    assert warning is not None and "elasticsearch.api_key given on the command line" in warning
    assert "set CONTAINER_SENSOR_ELASTICSEARCH_API_KEY, or elasticsearch.api_key in the configuration file" in warning



def test_uncaught_tracebacks_of_a_protected_process_are_scrubbed():
    script = f"""
import threading
from sensor.config.settings import load_config
from sensor.config.credentials import protect_stderr

protect_stderr(load_config(None, {{"CONTAINER_SENSOR_ELASTICSEARCH_URL": {URL!r}}}, {{}}))

def fail():
    raise RuntimeError("in a thread: " + {PASSWORD!r})

thread = threading.Thread(target=fail)
thread.start()
thread.join()
raise ValueError("Could not parse URL " + {URL!r})
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 1
    assert result.stderr.count("Traceback") == 2 and "RuntimeError: in a thread: ***" in result.stderr
    assert "ValueError: Could not parse URL https://***@es.example:9200" in result.stderr
    assert PASSWORD not in result.stderr and "p/a#s" not in result.stderr
