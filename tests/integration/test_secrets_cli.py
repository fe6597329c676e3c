"""Secrets through the real command: `container-sensor run --output elasticsearch:URL` with a password full of URL
syntax, against a closed port and against a server that checks it, and `config show`; plus configuration files
that are not UTF-8, not YAML or not a mapping. Nothing the sensor prints may hold the password in any form."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.es_server import EsServer

REPO = Path(__file__).resolve().parents[2]
USER = "elastic"
PASSWORD = "p/a#s@w:rd?x%zz"


def leaked_forms(password: str = PASSWORD) -> list[str]:
    return [password, quote(password, safe=""), "p/a#s", base64.b64encode(f"{USER}:{password}".encode()).decode()]


def assert_clean(text: str, password: str = PASSWORD) -> None:
    for form in leaked_forms(password):
        assert form not in text, f"{form!r} printed:\n{text}"
    assert "Traceback" not in text, text


def sensor_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONTAINER_SENSOR_")}
    empty = tmp_path / "empty-config.yaml"
    empty.write_text("")
    env.update(CONTAINER_SENSOR_CONFIG=str(empty), CONTAINER_SENSOR_SPOOL_DIR=str(tmp_path / "spool"),
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sensor", *args]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, err: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout}s:\n{err.read_text(errors='replace')}")
        time.sleep(0.1)


def run_sensor(tmp_path: Path, url: str, until: Callable[[str], bool], what: str, log_format: str = "text",
               during: Callable[[], None] | None = None) -> str:
    """`run --output elasticsearch:URL` until `until(stderr)` holds, then SIGINT; its whole stderr and stdout."""
    err_path, out_path, ready = tmp_path / "stderr.log", tmp_path / "stdout.log", tmp_path / "ready"
    with open(err_path, "wb") as err, open(out_path, "wb") as out:
        proc = subprocess.Popen(
            command("run", "--output", f"elasticsearch:{url}", "--ready-file", str(ready), "--metrics-address",
                    "off", "--log-format", log_format),
            stdout=out, stderr=err, cwd=REPO, env=sensor_env(tmp_path))
        try:
            wait_until(lambda: ready.exists() or proc.poll() is not None, 120, "ready file", err_path)
            assert proc.poll() is None, err_path.read_text(errors="replace")

            def done() -> bool:
                if during is not None:
                    during()
                return until(err_path.read_text(errors="replace"))

            wait_until(done, 60, what, err_path)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text(errors="replace")
    assert proc.returncode == 0, stderr
    return stderr + out_path.read_text(errors="replace")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exec_something() -> None:
    subprocess.run(["/bin/true"], check=True)


@pytest.mark.kernel
def test_run_against_a_closed_port_never_prints_the_password(tmp_path):
    port = closed_port()
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"
    text = run_sensor(tmp_path, url, lambda err: "retrying" in err, "connection failure logged", during=exec_something)
    assert_clean(text)
    assert f"elasticsearch http://127.0.0.1:{port}: ConnectionError" in text
    # One warning that the command line shows the credentials, naming where they belong instead.
    assert text.count("can be read by every user of this host") == 1
    assert "CONTAINER_SENSOR_ELASTICSEARCH_PASSWORD" in text


@pytest.mark.kernel
def test_run_delivers_with_the_password_and_never_prints_it(tmp_path):
    with EsServer(basic_auth=(USER, PASSWORD)) as server:
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{server.port}"
        text = run_sensor(tmp_path, url, lambda err: server.count() > 0, "document delivered", log_format="json",
                          during=exec_something)
        assert server.counters["auth_failures"] == 0
    assert_clean(text)


@pytest.mark.kernel
def test_run_with_a_refused_password_never_prints_it(tmp_path):
    with EsServer(basic_auth=(USER, "the-right-one")) as server:
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{server.port}"
        text = run_sensor(tmp_path, url, lambda err: "check the credentials" in err, "401 logged",
                          during=exec_something)
        assert server.counters["auth_failures"] > 0 and server.count() == 0
    assert_clean(text)
    assert f"elasticsearch http://127.0.0.1:{server.port}: HTTP 401" in text


def test_a_bad_url_on_the_command_line_is_one_line_without_the_password(tmp_path):
    for url in (f"https://{USER}:{PASSWORD}@es.example:9200/x?pretty", f"es://{USER}:{PASSWORD}@es.example:9200"):
        result = subprocess.run(command("run", "--output", f"elasticsearch:{url}"), cwd=REPO, capture_output=True,
                                text=True, env=sensor_env(tmp_path), timeout=60)
        assert result.returncode == 2, result.stderr
        assert_clean(result.stdout + result.stderr)
        assert result.stderr.count("\n") == 1 and "elasticsearch.url:" in result.stderr
        assert "https://***@es.example:9200" in result.stderr or "es://***@es.example:9200" in result.stderr


def test_config_show_masks_the_password_from_every_source(tmp_path):
    url = f"https://{USER}:{PASSWORD}@es.example:9200"
    file = tmp_path / "config.yaml"
    file.write_text(f"outputs: [elasticsearch]\nelasticsearch:\n  url: '{url}'\n")
    cases = [
        (command("config", "show", "--output", f"elasticsearch:{url}"), {}),
        (command("config", "show", "--config", str(file)), {}),
        (command("config", "show"), {"CONTAINER_SENSOR_OUTPUTS": "elasticsearch",
                                     "CONTAINER_SENSOR_ELASTICSEARCH_URL": url}),
        (command("config", "show", "--output", "elasticsearch:https://es.example:9200"),
         {"CONTAINER_SENSOR_ELASTICSEARCH_USERNAME": USER, "CONTAINER_SENSOR_ELASTICSEARCH_PASSWORD": PASSWORD}),
    ]
    for args, extra in cases:
        result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=sensor_env(tmp_path, **extra),
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert_clean(result.stdout + result.stderr)
        assert "url: https://" in result.stdout and "es.example:9200" in result.stdout
        on_command_line = "--output" in args and "@" in args[-1]
        assert ("can be read by every user of this host" in result.stderr) == on_command_line, result.stderr
    assert "url: https://***@es.example:9200  # command line" in subprocess.run(
        cases[0][0], cwd=REPO, capture_output=True, text=True, env=sensor_env(tmp_path), timeout=60).stdout


@pytest.mark.parametrize("content,problem", [
    ("elasticsearch:\n  password: caf\u00e9-s3cret\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at line 2"),
    (b"outputs: [stdout\n", "not valid YAML at line 2"),
    (b"- stdout\n", "expected a mapping of keys at the top, got list"),
    (b"\xff\xfeo\x00u\x00", "not UTF-8 text (byte 0xff at line 1, offset 0)"),
])
@pytest.mark.parametrize("subcommand", [["run"], ["config", "show"]])
def test_a_broken_config_file_is_one_line_and_exit_2(tmp_path, content, problem, subcommand):
    file = tmp_path / "config.yaml"
    file.write_bytes(content)
    for args, extra in ((["--config", str(file)], {}), ([], {"CONTAINER_SENSOR_CONFIG": str(file)})):
        env = sensor_env(tmp_path)
        env.update(extra)
        result = subprocess.run(command(*subcommand, *args), cwd=REPO, capture_output=True, env=env, timeout=60)
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode == 2, stderr
        assert stderr == f"container-sensor: config: {file}: " + stderr.split(f"{file}: ", 1)[1]
        assert stderr.count("\n") == 1 and problem in stderr, stderr
        assert "Traceback" not in stderr and "s3cret" not in stderr and result.stdout == b""
