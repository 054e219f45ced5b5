"""The console's pages, rendered on the server as plain HTML (escaped everywhere): the alert list with
filters, sorting and counts; an alert's detail with its evidence, MITRE link, history, comments and
triage actions; the service map."""

from __future__ import annotations

import json
from collections import Counter
from html import escape
from typing import Any
from urllib.parse import urlencode

from kubesonar.shared.alerts import SEVERITIES, alert_rule, type_and_rule
from kubesonar.shared.notify.message import destination_text, mitre_url, workload
from kubesonar.shared.triage import STATUSES

FILTERS = ("status", "severity", "type", "namespace", "assignee", "tag")
SORTS = {"last_seen": lambda a: a["last_seen"], "first_seen": lambda a: a["first_seen"],
         "severity": lambda a: SEVERITIES.index(a["severity"]), "count": lambda a: a["count"],
         "type": type_and_rule, "status": lambda a: a["status"]}


def layout(title: str, body: str, user: str) -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · KubeSonar</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/console.css"><script src="/static/console.js" defer></script></head>
<body><header><a href="/alerts">KubeSonar</a><a href="/alerts">Alerts</a><a href="/map">Service map</a>
<span class="who">signed in as {escape(user)}</span></header><main>{body}</main></body></html>"""


def sev(severity: str) -> str:
    return f'<span class="sev sev-{escape(severity)}">{escape(severity)}</span>'


def _select(name: str, options: list[str], chosen: str) -> str:
    opts = "".join(f'<option value="{escape(o)}"{" selected" if o == chosen else ""}>{escape(o) or "any"}</option>'
                   for o in ["", *options])
    return f'<label>{name}<select name="{name}" id="filter-{name}">{opts}</select></label>'


def alert_list(alerts: list[dict[str, Any]], shown: list[dict[str, Any]], query: dict[str, str]) -> str:
    types = sorted({a["type"] for a in alerts} | {alert_rule(a) for a in alerts})  # the filter takes either
    namespaces = sorted({(a.get("source") or {}).get("namespace") or "" for a in alerts} - {""})
    assignees = sorted({a.get("assignee") or "" for a in alerts} - {""})
    form = ('<form class="filters" method="get" action="/alerts">'
            + _select("status", list(STATUSES), query.get("status", ""))
            + _select("severity", list(SEVERITIES), query.get("severity", ""))
            + _select("type", types, query.get("type", ""))
            + _select("namespace", namespaces, query.get("namespace", ""))
            + _select("assignee", assignees, query.get("assignee", ""))
            + f'<label>tag<input name="tag" id="filter-tag" value="{escape(query.get("tag", ""))}"></label>'
            + f'<input type="hidden" name="sort" value="{escape(query.get("sort", "last_seen"))}">'
            + '<button type="submit" id="apply-filters">Filter</button> <a href="/alerts">clear</a></form>')
    counts = "".join(f"<div><b>by {name}</b>{_counts(Counter(key(a) for a in shown))}</div>" for name, key in (
        ("severity", lambda a: a["severity"]), ("type", lambda a: a["type"]),
        ("namespace", lambda a: (a.get("source") or {}).get("namespace") or "-"), ("status", lambda a: a["status"])))
    heads = "".join(_sort_head(name, label, query) for name, label in (
        ("severity", "severity"), ("type", "type"), ("status", "status"), ("", "assignee"), ("", "source"),
        ("", "namespace"), ("count", "count"), ("last_seen", "last seen"), ("", "tags")))
    rows = "".join(
        f'<tr data-id="{escape(a["id"])}"><td>{sev(a["severity"])}</td>'
        f'<td><a class="alert-link" href="/alerts/{escape(a["id"])}">{escape(type_and_rule(a))}</a></td>'
        f'<td><span class="status">{escape(a["status"])}</span></td><td>{escape(a.get("assignee") or "-")}</td>'
        f'<td>{escape(workload(a.get("source")))}</td>'
        f'<td>{escape((a.get("source") or {}).get("namespace") or "-")}</td>'
        f'<td>{a["count"]}</td><td>{escape(a["last_seen"])}</td><td>{escape(", ".join(a["tags"]))}</td></tr>'
        for a in shown)
    table = f'<table id="alerts"><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>' if shown \
        else '<p class="empty" id="no-alerts">No alerts match.</p>'
    return (f'<h1>Alerts <small id="alert-count">{len(shown)} of {len(alerts)}</small></h1>{form}'
            f'<div class="counts">{counts}</div>{table}')


def _counts(counter: Counter) -> str:
    return "<br>".join(f"{escape(str(k))}: {n}" for k, n in counter.most_common()) or "-"


def _sort_head(name: str, label: str, query: dict[str, str]) -> str:
    if not name:
        return f"<th>{label}</th>"
    order = "asc" if query.get("sort") == name and query.get("order", "desc") == "desc" else "desc"
    params = {k: v for k, v in query.items() if k in FILTERS and v} | {"sort": name, "order": order}
    return f'<th><a href="/alerts?{escape(urlencode(params))}">{label}</a></th>'


def alert_detail(alert: dict[str, Any], csrf: str, flash: str = "") -> str:
    aid = escape(alert["id"])
    mitre = alert.get("mitre") or {}
    link = mitre_url(alert)
    facts = [("Rule", f'{escape(alert["title"])} ({escape(type_and_rule(alert))})'),
             ("Severity", sev(alert["severity"])),
             ("Status", f'<span class="status" id="alert-status">{escape(alert["status"])}</span>'),
             ("Assignee", f'<span id="alert-assignee">{escape(alert.get("assignee") or "-")}</span>'),
             ("Tags", f'<span id="alert-tags">{escape(", ".join(alert["tags"]) or "-")}</span>'),
             ("Snoozed until", escape(alert.get("snoozed_until") or "-")),
             ("Cluster", escape(alert.get("cluster", ""))), ("Source", escape(workload(alert.get("source")))),
             ("Namespace", escape((alert.get("source") or {}).get("namespace") or "-")),
             ("Destination", escape(destination_text(alert))), ("Count", str(alert["count"])),
             ("First seen", escape(alert["first_seen"])), ("Last seen", escape(alert["last_seen"])),
             ("MITRE ATT&CK", f'<a href="{escape(link)}" rel="noreferrer" id="mitre-link">'
                              f'{escape(mitre.get("technique_id", ""))} {escape(mitre.get("technique", ""))}</a> '
                              f'({escape(mitre.get("tactic", ""))})' if link else "-")]
    fact_rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    evidence = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(json.dumps(v))}</code></td></tr>"
                       for k, v in sorted(alert["evidence"].items()))
    endpoints = "".join(f"<tr><th>{side}</th><td><code>{escape(json.dumps(alert.get(side), sort_keys=True))}"
                        "</code></td></tr>" for side in ("source", "destination"))
    history = "".join(f'<li>{escape(h["at"])} <b>{escape(h["by"])}</b>: ' + "; ".join(
        f"{escape(k)}: {escape(json.dumps(old))} → {escape(json.dumps(new))}" for k, (old, new) in h["changes"].items())
        + "</li>" for h in alert["history"])
    comments = "".join(f'<li>{escape(c["at"])} <b>{escape(c["by"])}</b>: {escape(c["text"])}</li>'
                       for c in alert["comments"]) or '<li class="empty">No comments.</li>'
    hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'

    def action(name: str, label: str, extra: str = "", cls: str = "", confirm: str = "") -> str:
        conf = f' data-confirm="{escape(confirm)}"' if confirm else ""
        return (f'<form method="post" action="/alerts/{aid}"{conf}>{hidden}<input type="hidden" name="action" '
                f'value="{name}">{extra}<button type="submit" id="action-{name}" class="{cls}">{label}</button></form>')

    actions = "".join([
        action("acknowledged", "Acknowledge"), action("resolved", "Resolve", cls="secondary"),
        action("open", "Reopen", cls="secondary"),
        action("false_positive", "False positive", cls="danger",
               extra='<label><input type="checkbox" name="allowlist" value="1" id="fp-allowlist"> also add an '
                     'allowlist entry for this rule and subject</label>'),
        action("assign", "Assign", '<input name="assignee" id="assignee-input" placeholder="user or team">'),
        action("tag", "Tag", '<input name="tag" id="tag-input" placeholder="tag">'),
        action("untag", "Untag", '<input name="tag" id="untag-input" placeholder="tag">', "secondary"),
        action("snooze", "Snooze", '<select name="snooze" id="snooze-input"><option>1h</option>'
                                   '<option>4h</option><option>1d</option><option>1w</option>'
                                   '<option value="0">end snooze</option></select>'),
        action("comment", "Comment", '<input name="comment" id="comment-input" size="40" placeholder="comment">'),
    ])
    note = f'<div class="flash" id="flash">{escape(flash)}</div>' if flash else ""
    return (f'<h1>{sev(alert["severity"])} {escape(alert["title"])}</h1>{note}'
            f'<div class="panel actions" id="actions">{actions}</div>'
            f'<div class="grid"><div class="panel"><h2>Alert {aid}</h2><table>{fact_rows}</table></div>'
            f'<div class="panel"><h2>Evidence</h2><table id="evidence">{evidence}{endpoints}</table>'
            f'<p>{escape(alert.get("description", ""))}</p></div>'
            f'<div class="panel"><h2>Comments</h2><ul class="comments" id="comments">{comments}</ul></div>'
            f'<div class="panel"><h2>History</h2><ul class="history" id="history">{history}</ul></div></div>')


def map_page(svg: str, edges: list[dict[str, Any]]) -> str:
    rows = "".join(f'<tr><td>{escape(e["src"])}</td><td>{escape(e["dst"])}</td><td>{e["port"]}/{e["proto"]}</td>'
                   f'<td>{e["flows"]}</td><td>{e["bytes"]}</td></tr>' for e in edges[:30])
    return (f'<h1>Service map</h1><p>Workloads with open or acknowledged alerts are red; line width grows with '
            f'bytes. Largest {min(len(edges), 30)} of {len(edges)} edges below.</p>'
            f'<div class="panel" id="map">{svg}</div>'
            f'<h2>Top edges</h2><table><thead><tr><th>from</th><th>to</th><th>port/proto</th><th>flows</th>'
            f'<th>bytes</th></tr></thead><tbody>{rows}</tbody></table>')


def login_page(error: str = "") -> str:
    note = f'<div class="error">{escape(error)}</div>' if error else ""
    return (f'<h1>Sign in</h1>{note}<form method="post" action="/login" class="panel">'
            '<p><label>Your name (for the history) <input name="user" id="login-user" required></label></p>'
            '<p><label>Console token <input name="token" id="login-token" type="password" required></label></p>'
            '<button type="submit" id="login-submit">Sign in</button></form>')
