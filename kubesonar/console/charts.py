"""Small inline-SVG charts (no script, no CDN): alert counts per day stacked by severity, and bars."""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from kubesonar.shared.alerts import SEVERITIES

COLOURS = {"informational": "#6c757d", "low": "#2b7bb9", "medium": "#e8a33d", "high": "#e0592a",
           "critical": "#b3001b"}


def per_day(alerts: list[dict[str, Any]], width: int = 720, height: int = 180) -> str:
    """Alerts by the day they were first seen, stacked by severity."""
    days = Counter((a["first_seen"][:10], a["severity"]) for a in alerts)
    order = sorted({d for d, _ in days})
    if not order:
        return '<p class="empty">No alerts.</p>'
    top = max(sum(days[(d, s)] for s in SEVERITIES) for d in order)
    bar = max(4, min(40, (width - 40) // len(order) - 4))
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height + 30}" '
             f'width="{width}" height="{height + 30}" role="img" aria-label="alerts per day">')]
    for i, day in enumerate(order):
        x, y = 30 + i * (bar + 4), height
        for severity in SEVERITIES:
            n = days[(day, severity)]
            if n:
                h = n / top * (height - 10)
                y -= h
                parts.append(f'<rect x="{x}" y="{y:.1f}" width="{bar}" height="{h:.1f}" fill="{COLOURS[severity]}">'
                             f'<title>{day}: {n} {severity}</title></rect>')
        if len(order) <= 12 or i % max(1, len(order) // 8) == 0:
            parts.append(f'<text x="{x}" y="{height + 16}" class="axis">{day[5:]}</text>')
    parts.append(f'<text x="0" y="12" class="axis">{top}</text></svg>')
    return "".join(parts)


def bars(counts: dict[str, int], label: str, width: int = 340) -> str:
    """Horizontal bars, largest first."""
    if not counts:
        return '<p class="empty">None.</p>'
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    top = items[0][1]
    row = 20
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {row * len(items)}" '
             f'width="{width}" height="{row * len(items)}" role="img" aria-label="{escape(label)}">')]
    for i, (name, n) in enumerate(items):
        w = max(2, n / top * (width - 190))
        parts.append(f'<text x="0" y="{i * row + 14}" class="axis">{escape(name[:26])}</text>'
                     f'<rect x="170" y="{i * row + 4}" width="{w:.1f}" height="12" fill="#3d6fb4"/>'
                     f'<text x="{175 + w:.1f}" y="{i * row + 14}" class="axis">{n}</text>')
    parts.append("</svg>")
    return "".join(parts)
