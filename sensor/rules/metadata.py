"""What an alert says about the rule that raised it (ECS `rule.*`, `threat`, severity and risk score)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Elastic's default correspondence between a rule's severity and its numeric risk score, used for the numeric
# ECS `event.severity`.
SEVERITY_SCORES = {"low": 21, "medium": 47, "high": 73, "critical": 99}


@dataclass(frozen=True)
class RuleMetadata:
    rule_id: str
    name: str
    description: str
    severity: str
    risk_score: float
    references: tuple[str, ...] = ()
    version: str | None = None
    ruleset: str | None = None
    uuid: str | None = None
    author: tuple[str, ...] = ()
    license: str | None = None
    threat: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def rule_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"id": self.rule_id, "uuid": self.uuid or self.rule_id, "name": self.name,
                                  "description": self.description}
        if self.references:
            fields["reference"] = self.references[0] if len(self.references) == 1 else list(self.references)
        if self.ruleset:
            fields["ruleset"] = self.ruleset
        if self.version is not None:
            fields["version"] = self.version
        if self.author:
            fields["author"] = list(self.author)
        if self.license:
            fields["license"] = self.license
        return fields

    @property
    def severity_score(self) -> int | None:
        return SEVERITY_SCORES.get(self.severity.lower()) if self.severity else None
