"""What every output says about an alert, once: the facts and the console link."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kubesonar.shared.alerts import type_and_rule

SEVERITY_COLOUR = {"informational": "#6c757d", "low": "#2b7bb9", "medium": "#e8a33d", "high": "#e0592a",
                   "critical": "#b3001b"}
REASON_TITLE = {"new": "New alert", "escalated": "Severity rose", "reopened": "Reopened"}


def workload(side: dict[str, Any] | None) -> str:
    side = side or {}
    return side.get("workload") or side.get("pod") or side.get("ip") or "unknown"


def destination_text(alert: dict[str, Any]) -> str:
    dest = alert.get("destination") or {}
    where = dest.get("workload") or dest.get("domain") or dest.get("ip") or ""
    return f"{where}:{dest['port']}" if where and dest.get("port") else (where or "-")


def facts(alert: dict[str, Any]) -> list[tuple[str, str]]:
    mitre = alert.get("mitre") or {}
    return [
        ("Rule", f"{alert['title']} ({type_and_rule(alert)})"),
        ("Severity", alert["severity"]),
        ("Source workload", workload(alert.get("source"))),
        ("Namespace", (alert.get("source") or {}).get("namespace") or "-"),
        ("Destination", destination_text(alert)),
        ("Count", str(alert.get("count", 1))),
        ("MITRE ATT&CK", f"{mitre.get('technique_id', '-')} {mitre.get('technique', '')}".strip()),
    ]


def mitre_url(alert: dict[str, Any]) -> str:
    technique = (alert.get("mitre") or {}).get("technique_id", "")
    return f"https://attack.mitre.org/techniques/{technique.replace('.', '/')}/" if technique else ""


def console_link(alert: dict[str, Any], console_url: str) -> str:
    return f"{console_url}/alerts/{quote(alert['id'])}" if console_url else ""
