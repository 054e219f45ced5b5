"""Microsoft Teams through a Workflows webhook: a message carrying one Adaptive Card (1.4: the
version Teams renders), the severity as the title's colour, the facts as a FactSet, a link to the
console when one is configured."""

from __future__ import annotations

from typing import Any

from kubesonar.shared.notify.message import REASON_TITLE, console_link, facts, mitre_url

_COLOUR = {"informational": "default", "low": "accent", "medium": "warning", "high": "attention",
           "critical": "attention"}
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


def _card(body: list[dict[str, Any]], actions: list[dict[str, Any]]) -> dict[str, Any]:
    card: dict[str, Any] = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": "1.4", "body": body}
    if actions:
        card["actions"] = actions
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


def payload(alert: dict[str, Any], reason: str, console_url: str = "") -> dict[str, Any]:
    title = f"{REASON_TITLE.get(reason, 'Alert')}: {alert['title']}"
    body = [
        {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": _COLOUR[alert["severity"]]},
        {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in facts(alert)]},
        {"type": "TextBlock", "text": f"cluster {alert.get('cluster', '')} · alert {alert['id']}",
         "isSubtle": True, "size": "Small", "wrap": True},
    ]
    actions = [{"type": "Action.OpenUrl", "title": "Open in console", "url": link}
               for link in [console_link(alert, console_url)] if link]
    actions += [{"type": "Action.OpenUrl", "title": "MITRE ATT&CK", "url": link} for link in [mitre_url(alert)] if link]
    return _card(body, actions)


def digest(destination: str, held: dict[str, int], window_s: int) -> dict[str, Any]:
    lines = [f"{n} more alerts of type {t} in the last {window_s // 60} minutes" for t, n in sorted(held.items())]
    return _card([{"type": "TextBlock", "text": "KubeSonar digest", "weight": "Bolder", "wrap": True},
                  *({"type": "TextBlock", "text": line, "wrap": True} for line in lines)], [])
