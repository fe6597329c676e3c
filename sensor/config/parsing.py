"""The value parsers: each takes a raw value (a YAML scalar or list, or an environment or flag string) and returns
the typed value, or raises ValueError with a message that completes "KEY: ...". Also the output specs
(`file:PATH`, `elasticsearch:URL`) and how `load_config` folds their targets into file.path / elasticsearch.url.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sensor.config.credentials import mask_url

OUTPUT_KINDS = ("stdout", "file", "elasticsearch")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected a size such as 16MiB, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(raw))
        unit = match.group(2).lower() if match else None
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"expected a size such as 16MiB, 512k or 1048576, got {raw!r}")
        value = int(match.group(1)) * _SIZE_UNITS[unit]
    if value < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return value


def parse_duration(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"expected a duration such as 2s or 500ms, got {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", str(raw).lower())
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"expected a duration such as 2s, 500ms or 1.5, got {raw!r}")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if value < 0:
        raise ValueError(f"must not be negative, got {raw!r}")
    return value


def parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def parse_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise ValueError(f"expected a whole number, got {raw!r}")
    try:
        return int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def parse_str(raw: Any) -> str | None:
    if isinstance(raw, list | dict):
        raise ValueError(f"expected a single value, got {raw!r}")
    text = str(raw).strip()
    return text or None


def parse_path(raw: Any) -> Path | None:
    text = parse_str(raw)
    return Path(text) if text else None


def _items(raw: Any) -> list[str]:
    if isinstance(raw, list | tuple):
        items = [str(item).strip() for item in raw]
    elif isinstance(raw, dict):
        raise ValueError(f"expected a list, got {raw!r}")
    else:
        # Comma-separated in the environment and on the command line.
        items = [item.strip() for item in str(raw).split(",")]
    return [item for item in items if item]


ENV_NAMES_MAX = 64  # each name costs every exec a little more matching


def parse_env_names(raw: Any) -> tuple[str, ...]:
    """Environment variable names, case kept (http_proxy and HTTP_PROXY are two variables)."""
    names = tuple(dict.fromkeys(_items(raw)))
    bad = [name for name in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)]
    if bad:
        raise ValueError(f"not environment variable names: {', '.join(bad)}")
    if len(names) > ENV_NAMES_MAX:
        raise ValueError(f"{len(names)} names, more than the {ENV_NAMES_MAX} allowed")
    return names


def parse_strs(raw: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_items(raw)))


def parse_paths(raw: Any) -> tuple[Path, ...]:
    return tuple(Path(item) for item in _items(raw))


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        # drop_oldest and drop-oldest are the same choice.
        text = str(raw).strip().lower().replace("_", "-")
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return text

    return parse


def parse_fingerprint(raw: Any) -> str | None:
    text = parse_str(raw)
    if text is None:
        return None
    digits = text.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError("expected a SHA-256 fingerprint: 64 hex digits, colons allowed")
    return digits


def parse_outputs(raw: Any) -> tuple[str, ...]:
    """Output specs: a kind (stdout, file, elasticsearch), or `file:PATH` / `elasticsearch:URL`.

    `load_config` folds the PATH/URL of a spec into file.path / elasticsearch.url, so `Config.outputs` only
    ever holds kinds.
    """
    specs = split_specs(raw) if isinstance(raw, str) else _items(raw)
    kinds = [spec.partition(":")[0].lower() for spec in specs]
    unknown = [kind for kind in kinds if kind not in OUTPUT_KINDS]
    if unknown:
        raise ValueError(f"unknown output {', '.join(unknown)} (known: {', '.join(OUTPUT_KINDS)})")
    if not specs:
        raise ValueError("at least one output is needed")
    if any(spec.lower().startswith("stdout:") for spec in specs):
        raise ValueError("stdout takes no argument")
    return tuple(specs)


def split_specs(text: str) -> list[str]:
    """Comma-separated specs, where a comma in an Elasticsearch URL's password does not start a new spec: a
    piece that names no output kind joins the `elasticsearch:` spec before it while an `@` is still to come."""
    pieces = text.split(",")
    specs: list[str] = []
    for number, piece in enumerate(pieces):
        kind = piece.strip().partition(":")[0].lower()
        in_credentials = any("@" in later for later in pieces[number:])
        if specs and kind not in OUTPUT_KINDS and in_credentials and specs[-1].lower().startswith("elasticsearch:"):
            specs[-1] += "," + piece
        else:
            specs.append(piece.strip())
    return [spec.strip() for spec in specs if spec.strip()]


def fold_output_specs(values: dict[str, Any], origins: dict[str, str], problems: list[str]) -> None:
    """`file:PATH` and `elasticsearch:URL` in outputs set file.path / elasticsearch.url; kinds stay."""
    specs = values.get("outputs")
    if specs is None:
        return
    kinds: list[str] = []
    targets = {"file": ("file_path", Path), "elasticsearch": ("elasticsearch_url", str)}
    given: dict[str, str] = {}
    for spec in specs:
        kind, _, argument = spec.partition(":")
        kind = kind.lower()
        kinds.append(kind)
        if not argument:
            continue
        if kind in given and given[kind] != argument:
            shown = (mask_url(given[kind]), mask_url(argument)) if kind == "elasticsearch" else (given[kind], argument)
            problems.append(f"outputs: only one {kind} output is supported, got {shown[0]} and {shown[1]}")
            continue
        given[kind] = argument
        field_name, convert = targets[kind]
        values[field_name] = convert(argument)
        origins[field_name] = origins["outputs"]
    # Order kept, duplicates dropped: `stdout,stdout` means stdout once.
    values["outputs"] = tuple(dict.fromkeys(kinds))


def parse_address(raw: Any) -> str | None:
    """`host:port` or `[v6]:port`; empty, `off` or `none` turns the server off."""
    text = "" if raw is None else str(raw).strip()
    if text.lower() in ("", "off", "none", "false", "no"):
        return None
    split_address(text)
    return text


def split_address(text: str, allow_any_port: bool = False) -> tuple[str, int]:
    """(host, port) of `host:port` or `[v6]:port`; port 0 (any free port) only with allow_any_port."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if not match:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), or off, got {text!r}")
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    if not (0 if allow_any_port else 1) <= port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    if match.group(1) is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    return host, port
