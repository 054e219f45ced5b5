"""Findings, rules kept as data, and alerts with stable fingerprints.

An alert has a *type* and a *rule*. The type is the threat, from a small set that does not grow with
every mechanism: what labels, notification routes, SIEM filters and SNS filter policies name
(``beaconing``, ``unusual_destination``, ``exfiltration``...). The rule is the mechanism that decided,
with its own title, severity, MITRE technique and allowlist entries. Most rules report under their own
name; a rule added to detect an existing threat another way says so in rules.json (``"type"``): a
reverse shell or TLS to a bare address is an unusual destination found by its shape rather than by the
workload's past, a long quiet connection is a beacon's channel held open.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC
from functools import lru_cache
from typing import Any

SEVERITIES = ("informational", "low", "medium", "high", "critical")


@lru_cache(maxsize=1)
def rules() -> dict[str, dict[str, Any]]:
    from importlib import resources  # here: importing it cost every start of the CLI 4 ms

    return json.loads(resources.files("kubesonar.shared").joinpath("rules.json").read_text())


@dataclass
class Finding:
    """What a detector decided, before it becomes (or updates) an alert."""

    type: str  # the rule that decided (a rules.json key); the alert's type is the one that rule reports as
    source: dict[str, str]  # ip, namespace, pod, workload, node
    first_seen_ns: int
    last_seen_ns: int
    evidence: dict[str, Any]
    destination: dict[str, Any] | None = None
    identity: tuple[str, ...] = ()  # what makes two findings the same alert, beyond type and source
    severity: str | None = None  # when not the rule's: how sure this finding is (a rule judging two ways)

    def document(self) -> dict[str, Any]:
        """The finding as JSON keeps it (the replay log); no ``severity`` when it is the rule's, so a
        function of the version before, reading the log in a rollout or a rollback, reads it too. That
        version refuses a finding with one (a client's reverse shell): its redelivery fails there until
        the batch leaves the log; versions since leave out the fields they do not know."""
        out = asdict(self)
        if self.severity is None:
            del out["severity"]
        return out

    def alert_severity(self) -> str:
        return self.severity or rules()[self.type]["severity"]

    def fingerprint(self, cluster: str) -> str:
        who = self.source.get("workload") or self.source.get("ip", "")
        namespace = self.source.get("namespace", "")
        parts = (self.type, cluster, namespace, who) + self.identity
        import hashlib  # here: loading OpenSSL cost every start of the CLI 2-3 ms

        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def reported_type(rule: str) -> str:
    """The alert type a rule reports as: its own name unless rules.json names the threat it detects."""
    return rules()[rule].get("type", rule)


def alert_rule(alert: dict[str, Any]) -> str:
    """The rule that raised an alert (an alert written before alerts named their rule: its type)."""
    return alert.get("rule") or alert["type"]


def with_rule(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert stored before alerts named their rule, as one written now: its ``type`` was the rule, so
    a reverse shell of then is an ``unusual_destination`` with rule ``reverse_shell``, and a route, a
    filter or an SNS policy on the type takes it (reopened or escalated, it is notified as one of now)."""
    if alert.get("rule") or alert.get("type") not in rules():
        return alert
    return {**alert, "type": reported_type(alert["type"]), "rule": alert["type"]}


def names_alert(names: frozenset[str] | set[str] | tuple[str, ...], alert: dict[str, Any]) -> bool:
    """Whether a filter's names take an alert: its type, the rule that raised it, or both as
    ``TYPE/RULE`` (``beaconing/beaconing``: the clocks alone, where ``beaconing`` takes long_connection's
    held channels too, since that type and that rule share the name)."""
    rule = alert_rule(alert)
    return alert["type"] in names or rule in names or f"{alert['type']}/{rule}" in names


def alert_names() -> set[str]:
    """Every name a filter may give: each rule, each type (a rule's own name or the one it reports as),
    and each ``TYPE/RULE``."""
    return set(rules()) | {f"{reported_type(rule)}/{rule}" for rule in rules()}


def type_and_rule(alert: dict[str, Any]) -> str:
    """An alert's type for people, with its rule when that is another: ``unusual_destination/reverse_shell``."""
    rule = alert_rule(alert)
    return alert["type"] if rule == alert["type"] else f"{alert['type']}/{rule}"


def _iso(ns: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_alert(finding: Finding, cluster: str) -> dict[str, Any]:
    rule = rules()[finding.type]
    return {
        "id": finding.fingerprint(cluster),
        "type": reported_type(finding.type),
        "rule": finding.type,
        "cluster": cluster,
        "severity": finding.alert_severity(),
        "title": rule["title"],
        "description": rule["description"],
        "first_seen": _iso(finding.first_seen_ns),
        "last_seen": _iso(finding.last_seen_ns),
        "count": 1,
        "source": finding.source,
        "destination": finding.destination,
        "evidence": finding.evidence,
        "mitre": rule["mitre"],
        "status": "open",
        "tags": [],
        "assignee": None,
    }


def merge_alert(alert: dict[str, Any], finding: Finding) -> dict[str, Any]:
    """The same ongoing activity seen again: one alert updated, not a new one."""
    updated = dict(alert)
    updated["count"] = alert["count"] + 1
    updated["last_seen"] = max(alert["last_seen"], _iso(finding.last_seen_ns))
    updated["first_seen"] = min(alert["first_seen"], _iso(finding.first_seen_ns))
    updated["evidence"] = finding.evidence
    # a rule that judges two ways may become surer of the same activity (a client's shell, its
    # workload seen serving since): the alert takes the higher severity, never a lower one
    updated["severity"] = max(alert["severity"], finding.alert_severity(), key=SEVERITIES.index)
    return updated
