"""Reading alerts back from the store: every cluster's, filtered, and one by id (or a unique prefix).

Used by the CLI, the console and the report; the core writes alerts as ``alerts/<cluster>/<id>.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubesonar.shared.alerts import names_alert
from kubesonar.shared.errors import AlertNotFound
from kubesonar.shared.ports import ObjectStore
from kubesonar.shared.state import read_document, update_document
from kubesonar.shared.triage import TriageChange, apply_triage, normalize, parse_iso_ns

PREFIX = "alerts/"
_MIN_ID = 6  # characters of an id prefix that are enough to name one alert


@dataclass
class AlertFilter:
    statuses: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    assignees: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # every one of them
    since_ns: int | None = None  # last seen at or after
    extra: dict[str, Any] = field(default_factory=dict)

    def matches(self, alert: dict[str, Any]) -> bool:
        if self.types and not names_alert(self.types, alert):
            return False
        checks = ((self.statuses, alert["status"]), (self.severities, alert["severity"]),
                  (self.namespaces, (alert.get("source") or {}).get("namespace")),
                  (self.assignees, alert.get("assignee")))
        if any(wanted and value not in wanted for wanted, value in checks):
            return False
        if self.tags and not set(self.tags) <= set(alert["tags"]):
            return False
        return self.since_ns is None or parse_iso_ns(alert["last_seen"]) >= self.since_ns


def alert_keys(store: ObjectStore) -> list[str]:
    return [k for k in store.list(PREFIX) if k.endswith(".json") and k.count("/") == 2]


def list_alerts(store: ObjectStore, which: AlertFilter | None = None) -> list[dict[str, Any]]:
    """Alerts of every cluster, newest last seen first."""
    found = []
    for key in alert_keys(store):
        doc, _ = read_document(store, key)
        if doc is not None:
            alert = normalize(doc)
            if which is None or which.matches(alert):
                found.append(alert)
    return sorted(found, key=lambda a: a["last_seen"], reverse=True)


def find_key(store: ObjectStore, alert_id: str) -> str:
    """The key of the alert with this id or unique id prefix; AlertNotFound otherwise."""
    alert_id = alert_id.strip()
    if len(alert_id) < _MIN_ID or not alert_id.isalnum():
        raise AlertNotFound(f"alert id {alert_id!r}: give the id (at least {_MIN_ID} characters) "
                            "as 'kubesonar alerts list' shows it")
    keys = [k for k in alert_keys(store) if k.rsplit("/", 1)[1].startswith(alert_id)]
    if not keys:
        raise AlertNotFound(f"no alert has id {alert_id!r} in this store")
    if len(keys) > 1:
        raise AlertNotFound(f"id {alert_id!r} names {len(keys)} alerts; give more of it")
    return keys[0]


def get_alert(store: ObjectStore, alert_id: str) -> dict[str, Any]:
    doc, _ = read_document(store, find_key(store, alert_id))
    return normalize(doc or {})


def triage_alert(store: ObjectStore, alert_id: str, change: TriageChange, by: str, now_ns: int) -> dict[str, Any]:
    """Apply a person's change by compare-and-swap: a detector's concurrent merge is kept too."""
    change.validate()
    key = find_key(store, alert_id)
    return update_document(store, key, lambda a: apply_triage(a, change, by, now_ns))
