"""An alert cut to fit a notification channel's message limit (SNS 256 KB, Event Grid 1 MB per event,
Pub/Sub 10 MB). Without it an alert grown past the limit (up to 200 comments of any length, and a history
that repeats them) is refused at every notification attempt and never announced.

What people add and what the core accumulates goes first; the facts subscribers route and act on stay:
the history, then the oldest comments; the evidence only when the alert is too large even without
comments (and then the newest comments that fit come back); only then (no alert the core builds needs
it) the largest remaining fields. A cut alert says so in ``cut``: the fields dropped or shortened, the
size of the whole alert, and how many comments it kept; the alert store keeps the whole document.
"""

from __future__ import annotations

import json
from typing import Any

_KEPT = ("id", "type", "rule", "severity", "title", "cluster", "cut")  # never dropped: what routes and names it


def alert_json(alert: dict[str, Any]) -> bytes:
    """The alert as the notifiers send it."""
    return json.dumps(alert, sort_keys=True).encode()


def fit_alert(alert: dict[str, Any], limit: int) -> dict[str, Any]:
    """The alert itself if its JSON is at most `limit` bytes, else a copy cut to fit (see the module)."""
    size = len(alert_json(alert))
    if size <= limit:
        return alert
    out = dict(alert, cut={"fields": [], "whole_bytes": size})
    comments = list(out.get("comments") or [])
    for name in ("history", "comments"):
        if out.get(name):
            out["cut"]["fields"].append(name)
            out[name] = []
    if len(alert_json(out)) > limit and out.get("evidence"):  # not even without comments: the evidence goes
        out["cut"]["fields"].append("evidence")
        out["evidence"] = type(out["evidence"])()
    if comments:
        out["comments"] = _newest_comments(out, comments, limit)
        if len(out["comments"]) == len(comments):  # all fit once the history (or evidence) went
            out["cut"]["fields"].remove("comments")
            del out["cut"]["comments_kept"]
    if len(alert_json(out)) <= limit:
        return out
    for name in sorted(set(out) - set(_KEPT), key=lambda n: -len(alert_json({n: out[n]}))):
        out["cut"]["fields"].append(name)
        del out[name]
        if len(alert_json(out)) <= limit:
            break
    return out


def _newest_comments(out: dict[str, Any], comments: list[Any], limit: int) -> list[Any]:
    """As many of the newest comments as fit with the rest of `out` (its "cut" says how many)."""
    out["cut"]["comments_kept"] = len(comments)  # counted at its widest, so the budget below holds
    room = limit - len(alert_json(out))
    kept: list[Any] = []
    for comment in reversed(comments):
        room -= len(alert_json(comment)) + (2 if kept else 0)  # ", " between list items
        if room < 0:
            break
        kept.append(comment)
    out["cut"]["comments_kept"] = len(kept)
    return kept[::-1]
