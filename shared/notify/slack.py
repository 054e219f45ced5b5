"""Slack incoming webhook: Block Kit inside an attachment, whose ``color`` bar shows the severity
(Block Kit alone has no colour). Fields: rule, severity, source workload, namespace, destination,
count, MITRE technique; a button to the console when one is configured."""

from __future__ import annotations

from typing import Any

from kubesonar.shared.notify.message import REASON_TITLE, SEVERITY_COLOUR, console_link, facts

_TEXT_MAX = 2000  # a section field's text is at most 2000 characters


def payload(alert: dict[str, Any], reason: str, console_url: str = "") -> dict[str, Any]:
    title = f"{REASON_TITLE.get(reason, 'Alert')}: {alert['title']}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150], "emoji": False}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{name}*\n{_escape(value)}"[:_TEXT_MAX]}
                                       for name, value in facts(alert)[:10]]},
        {"type": "context", "elements": [{
            "type": "mrkdwn", "text": f"cluster {_escape(alert.get('cluster', ''))} · alert {alert['id']}"}]},
    ]
    link = console_link(alert, console_url)
    if link:
        blocks.append({"type": "actions", "elements": [{"type": "button", "text": {"type": "plain_text",
                                                                                     "text": "Open in console"},
                                                        "url": link, "action_id": "open_console"}]})
    return {"text": f"KubeSonar {alert['severity']}: {title}",
            "attachments": [{"color": SEVERITY_COLOUR[alert["severity"]], "blocks": blocks}]}


def digest(destination: str, held: dict[str, int], window_s: int) -> dict[str, Any]:
    lines = [f"{n} more alerts of type {t} in the last {window_s // 60} minutes" for t, n in sorted(held.items())]
    return {"text": "KubeSonar digest: " + "; ".join(lines),
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}}]}


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
