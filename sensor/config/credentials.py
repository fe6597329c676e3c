"""URLs that carry credentials, and keeping secrets out of everything the sensor prints.

The URL rule, the way a user writes a password without thinking of URL syntax: after `scheme://`, everything
up to the LAST `@` is the credentials (`user:password`, split at the first `:`), and what follows is
`host[:port][/path-prefix]`. So `/`, `#`, `?`, `:` and `@` may appear in a password as they are. Credentials are
percent-decoded (`%40` is `@`, `%25` is `%`; a `%` not followed by two hex digits stays as it is). A path prefix
that contains `@` must write it `%40`, or it would be read as the end of the credentials.

Masking: a URL is shown as `https://***@host:port/path`, user and password both hidden. Nothing here puts the
text of a URL that fails to parse into an error message unmasked.

Last line of defence: `protect_stderr` registers the configured secrets (and the forms they take on the wire,
such as the base64 of `user:password` in an Authorization header) with a process-wide `Redactor` and wraps
`sys.stderr`, so a log line, a library's exception text or an uncaught traceback that still contains one shows
the mask instead.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote

if TYPE_CHECKING:
    from sensor.config.settings import Config  # sensor.config.settings imports this module

MASK = "***"
# Shorter secrets are not replaced in free text: a two-letter password would turn every such pair of letters
# in a log line into the mask. Such a secret is still never printed by the sensor itself.
MIN_SCRUB_LENGTH = 4

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# A URL with user info inside free text: up to the last `@` before white space or a quote.
_URL_USERINFO_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^\s'\"<>]*@")
_AUTHORITY_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d*))?|([^:\[\]@]+)(?::(\d*))?")
# A registered name: letters (any script, for IDNs), digits, `-`, `.`, `_`, `~`.
_HOST_RE = re.compile(r"[\w.~-]+")


class UrlError(ValueError):
    """A URL that cannot be used; the message never holds its credentials."""


@dataclass(frozen=True, repr=False)
class ServiceUrl:
    """A parsed `scheme://[user[:password]@]host[:port][/path]`; credentials decoded."""

    scheme: str
    host: str  # IPv6 without brackets
    port: int | None
    path: str = ""  # path prefix as written (percent-encoding kept), no trailing `/`; "" for none
    username: str | None = None
    password: str | None = None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def without_credentials(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.path}"

    def masked(self) -> str:
        prefix = f"{MASK}@" if self.has_credentials else ""
        return f"{self.scheme}://{prefix}{self.netloc}{self.path}"

    def __repr__(self) -> str:
        return f"ServiceUrl({self.masked()!r})"

    __str__ = masked


def mask_url(text: str) -> str:
    """`scheme://user:secret@host...` -> `scheme://***@host...`, for any text, parseable or not."""
    match = _SCHEME_RE.match(text)
    prefix, rest = (text[: match.end()], text[match.end():]) if match else ("", text)
    if "@" not in rest:
        return text
    return f"{prefix}{MASK}@{rest.rpartition('@')[2]}"


def mask_spec(spec: str) -> str:
    """An output spec for messages: the argument masked as a URL unless it is a file's path (an unknown kind,
    such as a typo of elasticsearch, may well carry one)."""
    kind, colon, argument = spec.partition(":")
    if kind.strip().lower() != "file" and argument:
        return f"{kind}{colon}{mask_url(argument)}"
    return spec


def parse_url(text: str, schemes: tuple[str, ...] = ("http", "https")) -> ServiceUrl:
    """The URL's parts, by the rule in the module's docstring; UrlError with a masked URL when it is unusable."""
    text = text.strip()
    shown = repr(mask_url(text))
    shown_schemes = "http(s)" if set(schemes) == {"http", "https"} else "|".join(schemes)
    expected = f"expected {shown_schemes}://HOST[:PORT][/PATH]"
    match = _SCHEME_RE.match(text)
    if not match:
        raise UrlError(f"{expected}, got {shown}")
    scheme = match.group(1).lower()
    if scheme not in schemes:
        raise UrlError(f"{expected}, got scheme {scheme!r} in {shown}")
    rest = text[match.end():]
    username = password = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        raw_user, colon, raw_password = userinfo.partition(":")
        if not raw_user:
            raise UrlError(f"no user name before the password in {shown}")
        username = unquote(raw_user)
        password = unquote(raw_password) if colon else None
    if any(char in rest for char in "?#"):
        raise UrlError(f"a query (?) or fragment (#) after the host is not supported, got {shown} "
                       "(in a password they are fine: everything up to the last @ is credentials)")
    if any(char.isspace() or not char.isprintable() for char in rest):
        raise UrlError(f"white space or a control character in the host or path of {shown}")
    authority, slash, path = rest.partition("/")
    found = _AUTHORITY_RE.fullmatch(authority)
    if not found:
        raise UrlError(f"{expected}, got {shown}")
    if found.group(1) is not None:
        host, port_text = found.group(1), found.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UrlError(f"{host!r} is not an IPv6 address in {shown}") from None
    else:
        host, port_text = found.group(3), found.group(4)
        if not _HOST_RE.fullmatch(host):
            raise UrlError(f"{host!r} is not a host name in {shown}")
    port = None
    if port_text:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise UrlError(f"port must be 1-65535, got {port} in {shown}")
    return ServiceUrl(scheme, host, port, (slash + path).rstrip("/"), username, password)


def scrub_urls(text: str) -> str:
    """Any `scheme://user:password@` inside free text masked (up to the last `@` of that word)."""
    return _URL_USERINFO_RE.sub(rf"\1{MASK}@", text)


def secret_forms(*, url: str | None = None, username: str | None = None, password: str | None = None,
                 api_key: str | None = None) -> list[str]:
    """Each secret, and each form it takes on the wire or in a URL, that must never be printed."""
    forms: list[str] = []

    def add(value: str | None) -> None:
        if value:
            forms.extend({value, quote(value, safe=""), quote(value)})

    if url:
        try:
            parsed = parse_url(url, schemes=("http", "https"))
        except UrlError:
            parsed = None
        if "@" in url:
            match = _SCHEME_RE.match(url.strip())
            userinfo = url.strip()[match.end() if match else 0:].rpartition("@")[0]
            add(userinfo)
            add(userinfo.partition(":")[2])
        if parsed is not None and parsed.has_credentials:
            add(parsed.password)
            if parsed.password is not None:
                forms.append(_b64(f"{parsed.username}:{parsed.password}"))
    add(password)
    if password is not None and username:
        forms.append(_b64(f"{username}:{password}"))
    if api_key:
        add(api_key)
        key_id, colon, key = api_key.partition(":")
        if colon:
            forms.append(_b64(api_key))
            add(key)
        else:
            # The encoded form Kibana shows: its decoded `id:key` and the key part are secrets too.
            try:
                decoded = base64.b64decode(api_key, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                decoded = ""
            if ":" in decoded:
                add(decoded)
                add(decoded.partition(":")[2])
    return forms


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Redactor:
    """Replaces registered secrets, and the user info of any URL, in text."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, values: Iterable[str]) -> None:
        with self._lock:
            merged = set(self._secrets) | {value for value in values if len(value) >= MIN_SCRUB_LENGTH}
            # Longest first, so a secret that contains another is replaced whole.
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return scrub_urls(text) if "@" in text else text


REDACTOR = Redactor()


class RedactingStream:
    """A text stream that writes through `redactor.scrub`; everything else is the wrapped stream's."""

    def __init__(self, stream: IO[str], redactor: Redactor) -> None:
        self._stream = stream
        self._redactor = redactor

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            # As a text stream does; click tells text streams from binary ones by this.
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._stream.write(self._redactor.scrub(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def config_secret_forms(config: Config) -> list[str]:
    """`secret_forms` of the sensor's configuration."""
    elasticsearch = config.sections.outputs.elasticsearch
    return secret_forms(url=elasticsearch.url, username=elasticsearch.username, password=elasticsearch.password,
                        api_key=elasticsearch.api_key)


def protect_stderr(config: Config) -> None:
    """Registers the configuration's secrets and routes sys.stderr through the redactor (once)."""
    REDACTOR.add(config_secret_forms(config))
    if not isinstance(sys.stderr, RedactingStream) and sys.stderr is not None:
        sys.stderr = RedactingStream(sys.stderr, REDACTOR)  # type: ignore[assignment]
