"""``kubesonar report``: one self-contained HTML file (styles inline, charts and map as inline SVG, no
script, nothing fetched) for people who would rather look than read: alerts over time by severity,
by type and namespace, the open alerts with their triage state, top talkers and the service map."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from html import escape
from importlib import resources

from kubesonar.console.charts import bars, per_day
from kubesonar.console.pages import sev
from kubesonar.console.servicemap import render
from kubesonar.shared.alert_query import list_alerts
from kubesonar.shared.alerts import type_and_rule
from kubesonar.shared.edges import read_edges
from kubesonar.shared.notify.message import workload
from kubesonar.shared.ports import ObjectStore


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def build_report(store: ObjectStore) -> str:
    alerts = list_alerts(store)
    edges = read_edges(store)
    css = resources.files("kubesonar.console").joinpath("assets", "console.css").read_text()
    active = [a for a in alerts if a["status"] in ("open", "acknowledged")]
    talkers: Counter[str] = Counter()
    for e in edges:
        talkers[e["src"]] += e["bytes"]
    rows = "".join(
        f'<tr><td>{sev(a["severity"])}</td><td>{escape(type_and_rule(a))}</td><td>{escape(a["status"])}</td>'
        f'<td>{escape(a.get("assignee") or "-")}</td><td>{escape(", ".join(a["tags"]) or "-")}</td>'
        f'<td>{escape(workload(a.get("source")))}</td>'
        f'<td>{escape((a.get("source") or {}).get("namespace") or "-")}</td>'
        f'<td>{a["count"]}</td><td>{escape(a["last_seen"])}</td>'
        f'<td>{escape(a["comments"][-1]["text"] if a["comments"] else "")}</td></tr>' for a in active)
    open_table = (f"<table><thead><tr><th>severity</th><th>type</th><th>status</th><th>assignee</th><th>tags</th>"
                  f"<th>source</th><th>namespace</th><th>count</th><th>last seen</th><th>last comment</th></tr></thead>"
                  f"<tbody>{rows}</tbody></table>") if active else '<p class="empty">No open alerts.</p>'
    talker_rows = "".join(f"<tr><td>{escape(name)}</td><td>{_size(b)}</td></tr>" for name, b in talkers.most_common(10))
    status = Counter(a["status"] for a in alerts)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>KubeSonar report</title>
<style>{css}</style></head><body><header><span>KubeSonar report</span><span class="who">generated {generated}</span>
</header><main>
<h1>{len(alerts)} alerts, {len(active)} open or acknowledged</h1>
<div class="counts">{"".join(f"<div><b>{escape(s)}</b>{n}</div>" for s, n in status.most_common())}</div>
<h2>Alerts per day, by severity</h2><div class="panel" id="per-day">{per_day(alerts)}</div>
<div class="grid"><div class="panel"><h2>By type</h2>{bars(Counter(a["type"] for a in alerts), "by type")}</div>
<div class="panel"><h2>By namespace</h2>{bars(Counter((a.get("source") or {}).get("namespace") or "-" for a in alerts),
                                               "by namespace")}</div></div>
<h2>Open alerts and their triage</h2>{open_table}
<h2>Top talkers (bytes sent)</h2>
<table id="talkers"><tbody>{talker_rows or "<tr><td>no flows summarised</td></tr>"}</tbody></table>
<h2>Service map</h2><div class="panel" id="map">{render(edges, alerts)}</div>
</main></body></html>"""
