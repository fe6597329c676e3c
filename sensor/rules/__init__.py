"""Detection: the built-in ssh/sshd/autossh-in-container rule and Elastic EQL rules evaluated on the node."""

from sensor.rules.detector import Detector
from sensor.rules.loader import LoadedRule, Refusal, RulesPathError, load_rules

__all__ = ["Detector", "LoadedRule", "Refusal", "RulesPathError", "load_rules"]
