"""Every CONTAINER_SENSOR_* variable the documentation tells a user to set is one the sensor reads."""

from __future__ import annotations

import re
from pathlib import Path

from sensor.config.options import OPTIONS

REPO = Path(__file__).resolve().parents[2]
# read by name outside the option table: the configuration file's path, and the probe client's address
OTHERS = {"CONTAINER_SENSOR_CONFIG", "CONTAINER_SENSOR_METRICS_ADDRESS"}
# a misspelt name shown on purpose (docs/operations.md: the error it gets)
SHOWN_WRONG = {"CONTAINER_SENSOR_LOG_LEVL"}


def test_every_variable_named_in_the_docs_is_read() -> None:
    known = {option.env_name for option in OPTIONS} | OTHERS
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "packaging").rglob("*"))]
    unknown = set()
    for path in texts:
        if path.is_file():
            # a name ending in `_*` is a family (CONTAINER_SENSOR_ELASTICSEARCH_*): not one variable
            found = re.findall(r"CONTAINER_SENSOR_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*\*)", path.read_text(errors="replace"))
            unknown |= set(found) - known - SHOWN_WRONG
    assert unknown == set()
