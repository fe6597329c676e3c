"""The bulk client of the Elasticsearch output: `_bulk` `create` requests and what their results mean.

Per item, 2xx is delivered; 409 on a `create` with our deterministic `_id` (event.id) means an earlier attempt
already delivered it; 429 and 5xx are to be retried; any other status goes to the dead-letter file with its
reason. Whole requests that fail (connection errors, timeouts, 429, 5xx, 401/403 while credentials are fixed) are
to be retried; a 413 halves the request size. Retries wait `backoff_delay`: capped exponential with full jitter.
The client speaks the REST compatibility version of the server's major, so 8.x and 9.x servers both accept it.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from typing import Any

from sensor.config.credentials import scrub_urls
from sensor.outputs.deadletter import DeadLetterFile
from sensor.outputs.elasticsearch_naming import Item
from sensor.outputs.elasticsearch_settings import ElasticsearchSettings, redact_url

log = logging.getLogger("sensor.outputs.elasticsearch")  # the output's lines keep the logger name they always had

_PLAIN_ID_RE = re.compile(r"^[A-Za-z0-9_.:+=-]{1,512}$")
_FILTER_PATH = "errors,items.*.status,items.*.error"
# Oldest REST compatibility every server we support understands (8.x takes 8 and 7, 9.x takes 9 and 8).
_PROBE_COMPAT = 8


class _RequestFailed(Exception):
    def __init__(self, reason: str, retry: bool = True, status: int | None = None, too_large: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.status = status
        self.too_large = too_large


def make_client(settings: ElasticsearchSettings) -> Any:
    from elasticsearch import Elasticsearch

    kwargs: dict[str, Any] = {
        "hosts": [settings.url],
        "request_timeout": settings.request_timeout,
        "max_retries": 0,  # retries, backoff and spooling are ours
        "retry_on_timeout": False,
        "http_compress": False,
    }
    if settings.api_key:
        # Either the encoded form Kibana shows (base64 of id:key) or "id:key" as created through the API.
        key_id, colon, key = settings.api_key.partition(":")
        kwargs["api_key"] = (key_id, key) if colon else settings.api_key
    elif settings.username:
        kwargs["basic_auth"] = (settings.username, settings.password or "")
    if settings.ca_file:
        kwargs["ca_certs"] = str(settings.ca_file)
    if settings.ca_fingerprint:
        kwargs["ssl_assert_fingerprint"] = settings.ca_fingerprint
    if not settings.verify_tls:
        kwargs["verify_certs"] = False
        kwargs["ssl_show_warn"] = False
    return Elasticsearch(**kwargs)


def _compat_headers(major: int) -> dict[str, str]:
    return {
        "accept": f"application/vnd.elasticsearch+json; compatible-with={major}",
        "content-type": f"application/vnd.elasticsearch+x-ndjson; compatible-with={major}",
    }


def _client_major() -> int:
    from elasticsearch import __versionstr__

    return int(__versionstr__.split(".")[0])


def backoff_delay(attempt: int, initial: float, maximum: float,
                  jitter: Callable[[float], float] | None = None) -> float:
    """Full jitter over a capped exponential: retries of many sensors spread out instead of arriving together."""
    cap = min(maximum, initial * (2**attempt))
    return (jitter or (lambda top: random.uniform(0, top)))(cap)


class BulkClient:
    """Sends bulk items and settles each one: delivered, duplicate, dead-lettered, or returned to retry.
    Used by the sender thread only; its counters are written there."""

    def __init__(self, settings: ElasticsearchSettings, client: Any, dead_letter: DeadLetterFile) -> None:
        self.settings = settings
        self._client = client
        self._dead_letter = dead_letter
        self._bulk_headers: dict[str, str] | None = None
        self._max_request_bytes = settings.batch_bytes
        self.counters = {
            "delivered": 0, "duplicates": 0, "dead_lettered": 0, "retried_items": 0, "bulk_requests": 0,
            "bulk_failures": 0,
        }
        self.healthy = True
        self.stopping = False  # set at close: failures then count towards giving up
        self._last_error = ""
        self._failures_while_stopping = 0

    def close(self) -> None:
        self._client.close()

    def send_all(self, items: list[Item]) -> list[Item]:
        """Sends items in requests bounded by bytes; returns the items to try again."""
        retry: list[Item] = []
        chunk: list[Item] = []
        body: list[bytes] = []
        size = 0
        for item in items:
            action = self._action_line(item)
            if chunk and size + len(action) + len(item[2]) + 1 > self._max_request_bytes:
                retry.extend(self._send_chunk(chunk, body))
                chunk, body, size = [], [], 0
            chunk.append(item)
            body.append(action)
            body.append(item[2])
            body.append(b"\n")
            size += len(action) + len(item[2]) + 1
        if chunk:
            retry.extend(self._send_chunk(chunk, body))
        return retry

    @staticmethod
    def _action_line(item: Item) -> bytes:
        index, doc_id = item[0], item[1]
        if doc_id is not None and _PLAIN_ID_RE.match(doc_id):
            # Index names are checked at start-up and these ids need no JSON escaping: skip the encoder.
            return f'{{"create":{{"_index":"{index}","_id":"{doc_id}"}}}}\n'.encode()
        meta = {"_index": index}
        if doc_id is not None:
            meta["_id"] = doc_id
        return b'{"create":' + json.dumps(meta, separators=(",", ":")).encode() + b"}\n"

    def _send_chunk(self, chunk: list[Item], body: list[bytes]) -> list[Item]:
        try:
            response = self._bulk(b"".join(body))
        except _RequestFailed as failure:
            self.counters["bulk_failures"] += 1
            self._note_failure(failure.reason)
            if failure.too_large:
                if len(chunk) == 1:
                    self._dead(chunk[0], 413, {"type": "request_too_large", "reason": failure.reason})
                    return []
                self._max_request_bytes = max(64 * 1024, self._max_request_bytes // 2)
                self.counters["retried_items"] += len(chunk)
                return chunk
            if failure.retry:
                self.counters["retried_items"] += len(chunk)
                return chunk
            for item in chunk:
                self._dead(item, failure.status or 400, {"type": "request_refused", "reason": failure.reason})
            return []
        self._note_success()
        return self._settle(chunk, response)

    def _settle(self, chunk: list[Item], response: dict[str, Any]) -> list[Item]:
        results = response.get("items")
        if not response.get("errors") and isinstance(results, list) and len(results) == len(chunk):
            self.counters["delivered"] += len(chunk)
            return []
        if not isinstance(results, list) or len(results) != len(chunk):
            self._note_failure("bulk response does not match the request")
            self.counters["retried_items"] += len(chunk)
            return chunk
        retry = []
        first_dead: str | None = None
        for item, result in zip(chunk, results, strict=True):
            outcome = next(iter(result.values())) if isinstance(result, dict) and result else {}
            status = outcome.get("status", 0) if isinstance(outcome, dict) else 0
            if 200 <= status < 300:
                self.counters["delivered"] += 1
            elif status == 409 and item[1] is not None:
                self.counters["duplicates"] += 1  # an earlier attempt got there: delivered once
            elif status == 429 or status >= 500 or status == 0:
                retry.append(item)
            else:
                error = outcome.get("error") if isinstance(outcome, dict) else None
                self._dead(item, status, error)
                if first_dead is None:
                    first_dead = f"{status} {error.get('type') if isinstance(error, dict) else error}"
        if first_dead is not None:
            log.warning("elasticsearch: documents refused (first: %s); see the dead-letter file", first_dead)
        self.counters["retried_items"] += len(retry)
        return retry

    def _dead(self, item: Item, status: int, error: Any) -> None:
        self.counters["dead_lettered"] += 1
        self._dead_letter.add(item[0], item[1], status, error, item[2])

    def _note_failure(self, reason: str) -> None:
        reason = scrub_urls(reason)  # a client's exception text may quote a URL
        if self.healthy or reason != self._last_error:
            log.warning("elasticsearch %s: %s; retrying", redact_url(self.settings.url), reason)
        self.healthy = False
        self._last_error = reason
        if self.stopping:
            self._failures_while_stopping += 1

    def given_up(self) -> bool:
        """At close, a couple more tries (the first may meet a connection the server dropped), not a wait for
        the whole deadline."""
        return self._failures_while_stopping >= 2

    def _note_success(self) -> None:
        if not self.healthy:
            log.info("elasticsearch %s: delivering again", redact_url(self.settings.url))
        self.healthy = True
        self._last_error = ""
        self._failures_while_stopping = 0

    def _bulk(self, payload: bytes) -> dict[str, Any]:
        from elasticsearch import ApiError, TransportError, UnsupportedProductError

        self.counters["bulk_requests"] += 1
        try:
            headers = self._ready_headers()
            # perform_request keeps our headers; the typed bulk() would reset them to the client's own major.
            response = self._client.perform_request(
                "PUT", "/_bulk", params={"filter_path": _FILTER_PATH}, headers=headers, body=payload,
                endpoint_id="bulk",
            )
            return dict(response.body)
        except UnsupportedProductError:
            raise _RequestFailed("the server is not Elasticsearch (no X-Elastic-Product header)") from None
        except ApiError as error:
            status = error.meta.status
            kind = error.message if isinstance(error.message, str) else str(error.message)
            reason = f"HTTP {status} {kind}"
            if status == 413:
                raise _RequestFailed(reason, too_large=True, status=status) from None
            if status in (401, 403):
                raise _RequestFailed(f"{reason} (check the credentials)", status=status) from None
            if status in (408, 429) or status >= 500:
                raise _RequestFailed(reason, status=status) from None
            if status == 400 and "media_type_header" in kind:
                self._bulk_headers = None  # server changed under us: probe its version again
                raise _RequestFailed(reason, status=status) from None
            raise _RequestFailed(reason, retry=False, status=status) from None
        except TransportError as error:
            self._bulk_headers = None
            raise _RequestFailed(f"{type(error).__name__}: {error.message}") from None

    def _ready_headers(self) -> dict[str, str]:
        """REST compatibility headers of the server's major version, so 8.x and 9.x servers both accept us."""
        if self._bulk_headers is None:
            info = self._client.perform_request(
                "GET", "/", headers=_compat_headers(_PROBE_COMPAT), endpoint_id="info"
            ).body
            number = str(info.get("version", {}).get("number", "0")) if isinstance(info, dict) else "0"
            major = int(number.split(".")[0]) if number.split(".")[0].isdigit() else 0
            if major < 8:
                raise _RequestFailed(f"Elasticsearch {number} is not supported (8.x or later is needed)")
            self._bulk_headers = _compat_headers(min(major, _client_major()))
            log.info("elasticsearch %s: version %s", redact_url(self.settings.url), number)
        return self._bulk_headers
