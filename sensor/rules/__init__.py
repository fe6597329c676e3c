"""Detection: the built-in ssh/sshd/autossh-in-container rule and Elastic EQL rules evaluated on the node.

`Detector` and `load_rules` are the entry points; they are imported on first use, so that merely reaching the
package (for its CLI commands) does not load the EQL parser.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Detector", "LoadedRule", "Refusal", "RulesPathError", "load_rules"]

_HOMES = {"Detector": "sensor.rules.detector", "LoadedRule": "sensor.rules.loader",
          "Refusal": "sensor.rules.loader", "RulesPathError": "sensor.rules.loader",
          "load_rules": "sensor.rules.loader"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sensor.rules' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
