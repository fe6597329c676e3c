"""The Elasticsearch output against a real cluster: opt-in, runs only when ES_URL is set.

    ES_URL=https://es.example:9200 ES_API_KEY=... .venv/bin/python -m pytest -m elasticsearch tests/integration
(or ES_USERNAME/ES_PASSWORD; ES_CA_FILE or ES_CA_FINGERPRINT for a private CA). It writes into data streams of a
namespace of its own (cstest<random>) and deletes them afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from sensor.outputs.elasticsearch import ElasticsearchOutput, ElasticsearchSettings, make_client
from tests.unit.test_outputs_elasticsearch import BASE_DOC

pytestmark = [
    pytest.mark.elasticsearch,
    pytest.mark.skipif(not os.environ.get("ES_URL"), reason="set ES_URL (and credentials) to run against a cluster"),
]

COMPAT = {"accept": "application/vnd.elasticsearch+json; compatible-with=8"}


def settings(tmp_path: Path, namespace: str) -> ElasticsearchSettings:
    ca_file = os.environ.get("ES_CA_FILE")
    return ElasticsearchSettings(
        url=os.environ["ES_URL"],
        api_key=os.environ.get("ES_API_KEY") or None,
        username=os.environ.get("ES_USERNAME") or None,
        password=os.environ.get("ES_PASSWORD") or None,
        ca_file=Path(ca_file) if ca_file else None,
        ca_fingerprint=os.environ.get("ES_CA_FINGERPRINT") or None,
        events_stream=f"logs-endpoint.events.process-{namespace}",
        alerts_stream=f"logs-container_sensor.alerts-{namespace}",
        spool_dir=tmp_path / "spool",
        dead_letter_path=tmp_path / "dead-letter.ndjson",
        batch_wait=0.1,
    )


def make_doc(number: int, run: str, kind: str = "event") -> dict[str, Any]:
    doc = copy.deepcopy(BASE_DOC)
    doc["event"]["id"] = f"{run}-{number:08d}"
    doc["event"]["kind"] = kind
    doc["@timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return doc


def count(client: Any, stream: str) -> int:
    client.perform_request("POST", f"/{stream}/_refresh", headers=COMPAT)
    return int(client.perform_request("GET", f"/{stream}/_count", headers=COMPAT).body["count"])


def test_delivers_once_into_data_streams_and_counts_resends_as_duplicates(tmp_path: Path) -> None:
    namespace = "cstest" + secrets.token_hex(4)
    run = secrets.token_hex(4)
    config = settings(tmp_path, namespace)
    client = make_client(config)  # same URL, credentials and TLS settings as the output's
    first = ElasticsearchOutput(config)
    try:
        for number in range(500):
            first.write(make_doc(number, run))
        for number in range(500, 502):
            first.write(make_doc(number, run, kind="alert"))
        first.close(timeout=60)
        stats = first.stats()
        assert stats["delivered"] == 502, stats
        assert stats["dead_lettered"] == 0 and stats["dropped"] == 0, stats
        second = ElasticsearchOutput(config)
        for number in range(502):
            second.write(make_doc(number, run, kind="alert" if number >= 500 else "event"))
        second.close(timeout=60)
        assert second.stats()["duplicates"] == 502, second.stats()
        assert count(client, config.events_stream) == 500
        assert count(client, config.alerts_stream) == 2
    finally:
        for stream in (config.events_stream, config.alerts_stream):
            # Best effort: the stream may not exist if the test failed early.
            with contextlib.suppress(Exception):
                client.perform_request("DELETE", f"/_data_stream/{stream}", headers=COMPAT)
        client.close()
