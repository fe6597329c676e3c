"""Checks a document field by field against Elastic's ECS field list (../shared/ecs/fields-9.4.0.csv)."""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Any

ECS_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "ecs" / "fields-9.4.0.csv"
CUSTOM_KEY = "container_sensor"


@lru_cache(maxsize=1)
def ecs_fields() -> dict[str, tuple[str, bool]]:
    """field name -> (ECS type, must be an array)."""
    with open(ECS_CSV, newline="") as handle:
        return {row["Field"]: (row["Type"], "array" in row["Normalization"]) for row in csv.DictReader(handle)}


def leaves(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(leaves(value, name + "."))
        else:
            out.append((name, value))
    return out


def _type_ok(ecs_type: str, value: Any) -> bool:
    if ecs_type in ("keyword", "wildcard", "match_only_text", "text", "constant_keyword", "flattened"):
        return isinstance(value, str)
    if ecs_type in ("long", "integer", "short", "byte", "unsigned_long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if ecs_type in ("float", "double", "scaled_float", "half_float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ecs_type == "boolean":
        return isinstance(value, bool)
    if ecs_type == "date":
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except (AttributeError, ValueError):
            return False
        return value.endswith("Z")
    if ecs_type == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
        return True
    return True


# Fields outside ECS that Elastic Defend writes on its process events (its endpoint package maps them as
# keyword), which the sensor writes the same way so that rules reading them work: name -> (type, array).
DEFEND_FIELDS = {f"{who}.Ext.real.{what}": ("keyword", False) for who in ("user", "group") for what in ("id", "name")}


def ecs_problems(doc: dict[str, Any]) -> list[str]:
    """Every field outside ECS and Defend's (other than under the custom key) and every value of the wrong type or
    shape."""
    fields = {**ecs_fields(), **DEFEND_FIELDS}
    problems = []
    for name, value in leaves(doc):
        if name == CUSTOM_KEY or name.startswith(CUSTOM_KEY + "."):
            continue
        if name not in fields:
            problems.append(f"{name}: not an ECS field")
            continue
        ecs_type, must_be_array = fields[name]
        if must_be_array and not isinstance(value, list):
            problems.append(f"{name}: ECS says array, got {type(value).__name__}")
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not _type_ok(ecs_type, item):
                problems.append(f"{name}: {item!r} is not a valid {ecs_type}")
    return problems
