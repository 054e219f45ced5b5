"""The service map as inline SVG: workloads (and addresses) around a circle, grouped by namespace,
flows as lines whose width grows with bytes, workloads with open alerts in red. No script, no CDN:
it renders the same in the console and in a saved report."""

from __future__ import annotations

import math
from html import escape
from typing import Any

MAX_NODES = 40
SIZE = 760


def alerted_subjects(alerts: list[dict[str, Any]]) -> set[str]:
    """Workload keys and addresses of the sources of alerts still open or acknowledged."""
    out = set()
    for a in alerts:
        if a["status"] in ("open", "acknowledged"):
            source = a.get("source") or {}
            out.update(v for v in (source.get("workload"), source.get("ip")) if v)
    return out


def _short(label: str) -> tuple[str, str]:
    parts = label.split("/")
    return (parts[-1], parts[0]) if len(parts) == 3 else (label, "")


def render(edges: list[dict[str, Any]], alerts: list[dict[str, Any]]) -> str:
    """SVG of the largest edges' endpoints (at most MAX_NODES of them)."""
    if not edges:
        return '<p class="empty">No flows summarised yet: the map fills as the core scores batches.</p>'
    volume: dict[str, int] = {}
    for e in edges:
        for side in ("src", "dst"):
            volume[e[side]] = volume.get(e[side], 0) + e["bytes"]
    nodes = sorted(sorted(volume, key=lambda n: -volume[n])[:MAX_NODES], key=lambda n: (_short(n)[1] == "",
                                                                                         _short(n)[1], n))
    hot = alerted_subjects(alerts)
    centre, radius = SIZE / 2, SIZE / 2 - 120
    where = {n: (centre + radius * math.cos(2 * math.pi * i / len(nodes) - math.pi / 2),
                 centre + radius * math.sin(2 * math.pi * i / len(nodes) - math.pi / 2)) for i, n in enumerate(nodes)}
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="servicemap" viewBox="-110 0 {SIZE + 220} {SIZE}" '
             f'width="{SIZE + 220}" height="{SIZE}" role="img" aria-label="service map">'),
             ('<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#8895a7"/></marker></defs>')]
    for e in edges:
        if e["src"] not in where or e["dst"] not in where or e["src"] == e["dst"]:
            continue
        (x1, y1), (x2, y2) = where[e["src"]], where[e["dst"]]
        width = 0.8 + math.log10(max(e["bytes"], 1)) / 2.5
        red = e["src"] in hot
        parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke-width="{width:.2f}" '
                     f'class="edge{" alerted" if red else ""}" marker-end="url(#arrow)">'
                     f'<title>{escape(e["src"])} → {escape(e["dst"])}:{e["port"]}/{e["proto"]}: '
                     f'{e["flows"]} flows, {e["bytes"]} bytes</title></line>')
    for n in nodes:
        x, y = where[n]
        name, namespace = _short(n)
        cls = "node alerted" if n in hot else ("node" if namespace else "node external")
        anchor = "start" if x >= centre else "end"
        dx = 12 if x >= centre else -12
        parts.append(f'<g class="{cls}" data-node="{escape(n)}"><circle cx="{x:.1f}" cy="{y:.1f}" r="8"/>'
                     f'<text x="{x + dx:.1f}" y="{y + 4:.1f}" text-anchor="{anchor}">{escape(name)}'
                     f'{f" <tspan class=ns>({escape(namespace)})</tspan>" if namespace else ""}</text>'
                     f'<title>{escape(n)}</title></g>')
    parts.append("</svg>")
    return "".join(parts)
