"""An alert as the lab counts it: its type, the rule that raised it and its source address.

A label or a scenario names what it expects as alert types (``beaconing|unusual_destination``) or as
rules (``reverse_shell``); an alert answers to either (shared/alerts.py: types and rules)."""

from __future__ import annotations

from typing import NamedTuple

from kubesonar.shared.alerts import alert_rule


class Raised(NamedTuple):
    type: str
    rule: str
    ip: str

    def named(self, names: set[str]) -> bool:
        return self.type in names or self.rule in names

    def text(self) -> str:
        return self.type if self.rule == self.type else f"{self.type} ({self.rule})"


def raised(alerts: list[dict]) -> list[Raised]:
    return sorted({Raised(a["type"], alert_rule(a), a["source"]["ip"]) for a in alerts})
