"""Settings of the Elasticsearch output, checked when they are made: a setting that cannot work is named."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sensor.config.credentials import UrlError, mask_url, parse_url
from sensor.outputs.elasticsearch_naming import valid_index_name


class ElasticsearchConfigError(ValueError):
    """A setting of the Elasticsearch output that cannot work; the message names it."""


def check_index_name(name: str, what: str) -> None:
    if not valid_index_name(name):
        raise ElasticsearchConfigError(f"{what}: {name!r} is not a valid index or data stream name")


def redact_url(url: str) -> str:
    """The URL for messages: without credentials, or masked (`https://***@host`) when it does not parse."""
    try:
        return parse_url(url).without_credentials()
    except UrlError:
        return mask_url(url)


@dataclass
class ElasticsearchSettings:
    url: str
    api_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    ca_fingerprint: str | None = None
    verify_tls: bool = True
    # None: an event goes to the data stream its data_stream.* fields name (DEFAULT_EVENTS_STREAM when they are
    # missing or no valid name), an alert to DEFAULT_ALERTS_STREAM; a name here sends every event (or alert)
    # there. Either way the document's data_stream.* and event.dataset are made to match its stream.
    events_stream: str | None = None
    alerts_stream: str | None = None
    request_timeout: float = 10.0
    batch_docs: int = 1000
    batch_bytes: int = 5 * 1024 * 1024
    batch_wait: float = 0.5
    queue_docs: int = 10000
    spool_dir: Path | None = None
    spool_bytes: int = 1024 * 1024 * 1024
    spool_policy: str = "drop_oldest"
    dead_letter_path: Path | None = None
    backoff_initial: float = 0.5
    backoff_max: float = 30.0

    def __post_init__(self) -> None:
        # The last `@` ends the credentials, so a password may hold `/`, `#`, `?`, `:` or `@` (config/credentials.py).
        try:
            parts = parse_url(self.url)
        except UrlError as error:
            raise ElasticsearchConfigError(f"elasticsearch url: {error}") from None
        if parts.has_credentials:
            # Credentials in the URL become basic auth; the URL kept here (and given to the client) carries none.
            if self.api_key or self.username:
                raise ElasticsearchConfigError("elasticsearch: credentials both in the URL and in settings")
            self.username = parts.username
            self.password = parts.password or ""
        self.url = parts.without_credentials()
        if self.api_key and self.username:
            raise ElasticsearchConfigError("elasticsearch: give either an API key or a username, not both")
        if self.username and self.password is None:
            raise ElasticsearchConfigError("elasticsearch: a username needs a password")
        for what, name in (("events data stream", self.events_stream), ("alerts data stream", self.alerts_stream)):
            if name is not None:
                check_index_name(name, what)
        if self.batch_docs < 1 or self.batch_bytes < 1024 or self.queue_docs < self.batch_docs:
            raise ElasticsearchConfigError("elasticsearch: batch and queue sizes must be positive, queue >= batch")
