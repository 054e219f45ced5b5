"""The alert lifecycle: statuses, triage fields and their history, and what a detection does to them.

Everything here is a pure function of an alert document, so a person's change and a detector's merge
both run inside :func:`kubesonar.shared.state.update_document` (compare-and-swap): on a lost race each
is re-applied to the newer document and neither is lost.

An alert carries ``status`` (open, acknowledged, resolved, false_positive), ``assignee`` (a user or a
team, free text), ``tags``, ``comments``, ``snoozed_until`` (ISO 8601 or null) and ``history``: one
entry per change, ``{"at": ISO, "by": who, "changes": {field: [old, new]}}`` (a comment is
``{"comment": [null, text]}``). Documents written before the lifecycle say ``closed``: read as resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubesonar.shared.alerts import SEVERITIES, with_rule
from kubesonar.shared.errors import TriageError

STATUSES = ("open", "acknowledged", "resolved", "false_positive")
CLOSED = ("resolved", "false_positive")
DETECTOR = "kubesonar"  # who the history names for the core's own changes
_HISTORY_KEEP = 200  # entries an alert keeps (the oldest go first; the first one is kept)
_COMMENTS_KEEP = 200
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_DURATION_S = 100 * 365 * 86400  # a snooze's end must still be a date (year 9999 at most)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1e9)


def parse_duration_s(text: str) -> int:
    """``30m``, ``4h``, ``2d``, ``1w``: seconds; anything else is a TriageError."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise TriageError(f"duration {text!r} is not a number and a unit, like 30m, 4h, 2d or 1w")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if seconds > _MAX_DURATION_S:
        raise TriageError(f"duration {text!r} is longer than 100 years")
    return seconds


def normalize(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert with every lifecycle field present; an older document's ``closed`` reads as resolved, and
    one written before alerts named their rule reads with its rule and the type that rule reports as."""
    out = dict(with_rule(alert))
    if out.get("status") == "closed":
        out["status"] = "resolved"
    out.setdefault("status", "open")
    out.setdefault("assignee", None)
    out["tags"] = list(out.get("tags") or [])
    out["comments"] = list(out.get("comments") or [])
    out.setdefault("snoozed_until", None)
    out["history"] = list(out.get("history") or [])
    return out


def is_snoozed(alert: dict[str, Any], now_ns: int) -> bool:
    until = alert.get("snoozed_until")
    return bool(until) and parse_iso_ns(until) > now_ns


@dataclass
class TriageChange:
    """What a person asks for; fields left None (or empty) are not touched."""

    status: str | None = None
    assignee: str | None = None  # "" unassigns
    add_tags: list[str] = field(default_factory=list)
    remove_tags: list[str] = field(default_factory=list)
    comment: str | None = None
    snooze_s: int | None = None  # 0 ends a snooze

    def validate(self) -> TriageChange:
        if self.status is not None and self.status not in STATUSES:
            raise TriageError(f"status {self.status!r} does not exist (one of: {', '.join(STATUSES)})")
        for tag in [*self.add_tags, *self.remove_tags]:
            if not tag.strip() or len(tag) > 64:
                raise TriageError(f"tag {tag!r} must be 1 to 64 characters")
        if self.comment is not None and not self.comment.strip():
            raise TriageError("a comment needs some text")
        if self.assignee is not None and len(self.assignee) > 128:
            raise TriageError("an assignee is at most 128 characters")
        if not any([self.status, self.assignee is not None, self.add_tags, self.remove_tags, self.comment,
                    self.snooze_s is not None]):
            raise TriageError("nothing to change: give a status, an assignee, tags, a comment or a snooze")
        return self


def apply_triage(alert: dict[str, Any], change: TriageChange, by: str, now_ns: int) -> dict[str, Any]:
    """The alert after a person's change, with one history entry saying what changed."""
    change.validate()
    out = normalize(alert)
    changes: dict[str, list[Any]] = {}

    def put(name: str, value: Any) -> None:
        if out.get(name) != value:
            changes[name] = [out.get(name), value]
            out[name] = value

    if change.status is not None:
        put("status", change.status)
    if change.assignee is not None:
        put("assignee", change.assignee.strip() or None)
    tags = [t for t in out["tags"] if t not in change.remove_tags]
    tags += [t for t in dict.fromkeys(change.add_tags) if t not in tags]
    put("tags", tags)
    if change.snooze_s is not None:
        put("snoozed_until", iso(now_ns + change.snooze_s * 1_000_000_000) if change.snooze_s else None)
    if change.comment is not None:
        out["comments"] = [*out["comments"], {"at": iso(now_ns), "by": by, "text": change.comment.strip()}
                           ][-_COMMENTS_KEEP:]
        changes["comment"] = [None, change.comment.strip()]
    return _record(out, by, now_ns, changes) if changes else out


def record(alert: dict[str, Any], by: str, now_ns: int, changes: dict[str, list[Any]]) -> dict[str, Any]:
    """The alert with one more history entry (for changes made elsewhere, like an allowlist entry added)."""
    return _record(normalize(alert), by, now_ns, changes)


def _record(out: dict[str, Any], by: str, now_ns: int, changes: dict[str, list[Any]]) -> dict[str, Any]:
    history = [*out["history"], {"at": iso(now_ns), "by": by, "changes": changes}]
    if len(history) > _HISTORY_KEEP:
        history = history[:1] + history[-(_HISTORY_KEEP - 1):]
    out["history"] = history
    return out


def on_detection(before: dict[str, Any] | None, merged: dict[str, Any], now_ns: int
                 ) -> tuple[dict[str, Any], str | None]:
    """A detector created or merged an alert: (the alert, why it deserves a notification or None).

    New: notify. A resolved alert that recurs reopens and is notified. A severity that rose is
    notified. A false positive stays one (its allowlist entry silences it; until then it counts).
    A count update never notifies. Whether a snooze delays it is the outbox's business.
    """
    out = normalize(merged)
    if before is None:
        return _record(out, DETECTOR, now_ns, {"status": [None, "open"]}), "new"
    previous = normalize(before)
    if previous["status"] == "resolved":
        out["status"] = "open"
        return _record(out, DETECTOR, now_ns, {"status": ["resolved", "open"]}), "reopened"
    if SEVERITIES.index(out["severity"]) > SEVERITIES.index(previous["severity"]):
        out = _record(out, DETECTOR, now_ns, {"severity": [previous["severity"], out["severity"]]})
        return out, "escalated" if previous["status"] != "false_positive" else None
    return out, None
