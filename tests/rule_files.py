"""An Elastic detection rule file with the fields the loader needs, for tests that write rules of their own."""

from __future__ import annotations

RULE_TEMPLATE = """[rule]
rule_id = "{rule_id}"
name = "{name}"
description = "a rule written by a test"
type = "eql"
language = "eql"
severity = "{severity}"
risk_score = {risk_score}
query = '''
{query}
'''
"""
RISK = {"low": 21, "medium": 47, "high": 73, "critical": 99}


def rule_toml(name: str, query: str, rule_id: str = "00000000-0000-4000-8000-000000000001",
              severity: str = "medium") -> str:
    return RULE_TEMPLATE.format(rule_id=rule_id, name=name, query=query, severity=severity,
                                risk_score=RISK[severity])
