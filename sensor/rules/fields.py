"""Reading a dotted ECS field out of a nested event document the way Elasticsearch indexes it.

Elasticsearch flattens arrays of objects, so `a.b` over `{"a": [{"b": 1}, {"b": 2}]}` holds `[1, 2]`; a
field whose value is null or an empty array is missing. A getter returns None for a missing field, else a
scalar or a list of scalars; callers apply "any element matches" to lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Getter = Callable[[dict], Any]


def _walk(doc: Any, parts: Sequence[str | int]) -> Any:
    current = doc
    for part in parts:
        kind = type(current)
        if isinstance(current, dict):  # a plain dict, or a block the builder shares between documents
            if type(part) is int:
                return None
            current = current.get(part)
        elif kind is list:
            if type(part) is int:
                current = current[part] if -len(current) <= part < len(current) else None
            else:
                gathered: list = []
                for item in current:
                    if isinstance(item, dict):
                        value = item.get(part)
                        if type(value) is list:
                            gathered.extend(value)
                        elif value is not None:
                            gathered.append(value)
                current = gathered
        else:
            return None
        if current is None:
            return None
    if type(current) is list:
        present = [item for item in current if item is not None]
        return present or None
    return current


def make_getter(parts: Sequence[str | int]) -> Getter:
    """A closure reading one field; the all-dict path (the usual case) costs one .get per level."""
    path = tuple(parts)
    if not path:
        raise ValueError("empty field path")
    if any(type(p) is not str for p in path):
        return lambda doc: _walk(doc, path)

    def slow(doc: dict) -> Any:
        return _walk(doc, path)

    if len(path) == 1:
        (k0,) = path

        def get1(doc: dict) -> Any:
            value = doc.get(k0)
            if type(value) is list:
                return value if value and None not in value else slow(doc)
            return value

        return get1

    if len(path) == 2:
        k0, k1 = path

        def get2(doc: dict) -> Any:
            a = doc.get(k0)
            if not isinstance(a, dict):
                return slow(doc) if a is not None else None
            value = a.get(k1)
            if type(value) is list:
                return value if value and None not in value else slow(doc)
            return value

        return get2

    if len(path) == 3:
        k0, k1, k2 = path

        def get3(doc: dict) -> Any:
            a = doc.get(k0)
            if not isinstance(a, dict):
                return slow(doc) if a is not None else None
            b = a.get(k1)
            if not isinstance(b, dict):
                return slow(doc) if b is not None else None
            value = b.get(k2)
            if type(value) is list:
                return value if value and None not in value else slow(doc)
            return value

        return get3

    head, tail = path[:-1], path[-1]

    def get_n(doc: dict) -> Any:
        current: Any = doc
        for key in head:
            nxt = current.get(key)
            if not isinstance(nxt, dict):
                return slow(doc) if nxt is not None else None
            current = nxt
        value = current.get(tail)
        if type(value) is list:
            return value if value and None not in value else slow(doc)
        return value

    return get_n
