"""Which documents go out: `--where EQL`, `--alerts-only`, and allow/deny lists of containers and Kubernetes
namespaces (the `filter.*` options). Detection still sees every document; only what reaches the outputs is cut.

Alerts always go out, whatever the filters say: a filter is there to cut noise, and a container whose name an
attacker could pick to match a deny list must not be able to hide its ssh alert that way.

A container matches a list when any of its name, image name or id (the full id, or a glob on it) matches one of
the glob patterns; a namespace when `orchestrator.namespace` does. Documents without a container (the host)
or without a namespace are not touched by those lists.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

from sensor.config.sections import FilterConfig
from sensor.rules.eql_compile import Unsupported, compile_query
from sensor.rules.eql_parse import QueryError, parse_query

Doc = dict[str, Any]


class FilterError(ValueError):
    """A filter that cannot work (an EQL condition that does not parse, or is a sequence)."""


def _globs(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def where_predicate(condition: str) -> Callable[[Doc], bool]:
    """An EQL condition (`process.name == "ssh"`) or whole query (`process where ...`), with Elasticsearch's
    semantics, as a predicate over documents."""
    query = condition if re.match(r"\s*[a-z_]+\s+where\b", condition) else f"any where {condition}"
    try:
        compiled = compile_query(parse_query(query))
    except (QueryError, Unsupported, ValueError) as error:
        raise FilterError(f"filter.where: {error}") from None
    if compiled.predicate is None:
        raise FilterError("filter.where: a sequence cannot choose single documents")
    return compiled.predicate


def _container_keys(doc: Doc) -> list[str] | None:
    container = doc.get("container")
    if not isinstance(container, dict) or not container.get("id"):
        return None
    keys = [str(container["id"])]
    if isinstance(container.get("name"), str):
        keys.append(container["name"])
    image = container.get("image")
    if isinstance(image, dict) and isinstance(image.get("name"), str):
        keys.append(image["name"])
    return keys


def build_filter(settings: FilterConfig) -> Callable[[Doc], bool] | None:
    """The predicate deciding which documents go out, or None when every one does."""
    if not settings.active:
        return None
    where = where_predicate(settings.where) if settings.where else None
    allow_c, deny_c = _globs(settings.containers_allow), _globs(settings.containers_deny)
    allow_n, deny_n = _globs(settings.namespaces_allow), _globs(settings.namespaces_deny)
    alerts_only = settings.alerts_only

    def keep(doc: Doc) -> bool:
        event = doc.get("event")
        if isinstance(event, dict) and event.get("kind") == "alert":
            return True
        if alerts_only:
            return False
        if allow_c is not None or deny_c is not None:
            keys = _container_keys(doc)
            if keys is not None:
                if allow_c is not None and not any(allow_c.fullmatch(k) for k in keys):
                    return False
                if deny_c is not None and any(deny_c.fullmatch(k) for k in keys):
                    return False
        if allow_n is not None or deny_n is not None:
            orchestrator = doc.get("orchestrator")
            namespace = orchestrator.get("namespace") if isinstance(orchestrator, dict) else None
            if isinstance(namespace, str):
                if allow_n is not None and not allow_n.fullmatch(namespace):
                    return False
                if deny_n is not None and deny_n.fullmatch(namespace):
                    return False
        return where is None or bool(where(doc))

    return keep
