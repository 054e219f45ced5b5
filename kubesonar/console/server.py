"""``kubesonar console``: the alert list, an alert's detail with triage actions, and the service map,
served from the store by a small threaded HTTP server (loopback unless told otherwise)."""

from __future__ import annotations

import json
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlparse

from kubesonar.console import pages
from kubesonar.console.auth import ConsoleAuth
from kubesonar.console.servicemap import render
from kubesonar.shared.alert_query import AlertFilter, find_key, get_alert, list_alerts, triage_alert
from kubesonar.shared.alerts import alert_rule
from kubesonar.shared.edges import read_edges
from kubesonar.shared.errors import AlertNotFound, KubeSonarError, StoreError
from kubesonar.shared.ports import ObjectStore
from kubesonar.shared.triage import TriageChange, parse_duration_s, record

_ASSETS = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
_SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                       "form-action 'self'; base-uri 'none'",
             "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
             "Cache-Control": "no-store"}
_MAX_FORM = 16 << 10
_IDLE_S = 30.0  # a connection that sends nothing for this long is closed: each one holds a thread
ALLOWLIST_NAME = "console"  # where false positives marked in the console add their entries


def _form_change(action: str, form: dict[str, str]) -> TriageChange:
    if action in ("acknowledged", "resolved", "open", "false_positive"):
        return TriageChange(status=action)
    if action == "assign":
        return TriageChange(assignee=form.get("assignee", ""))
    if action in ("tag", "untag"):
        tag = form.get("tag", "").strip()
        return TriageChange(add_tags=[tag]) if action == "tag" else TriageChange(remove_tags=[tag])
    if action == "snooze":
        text = form.get("snooze", "")
        return TriageChange(snooze_s=0 if text == "0" else parse_duration_s(text))
    if action == "comment":
        return TriageChange(comment=form.get("comment", ""))
    raise KubeSonarError(f"unknown action {action!r}")


def _status(exc: KubeSonarError, otherwise: int) -> int:
    """404 for an alert that is not there, 503 for a store that failed (no fault of the asker's)."""
    return 404 if isinstance(exc, AlertNotFound) else 503 if isinstance(exc, StoreError) else otherwise


def make_handler(store: ObjectStore, auth: ConsoleAuth, lists: ObjectStore) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kubesonar-console"
        timeout = _IDLE_S

        def log_message(self, *_: Any) -> None:
            pass

        def _send(self, status: int, body: str | bytes, kind: str = "text/html; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for name, value in {**_SECURITY, "Content-Type": kind, "Content-Length": str(len(data)),
                                **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _redirect(self, where: str, cookie: str | None = None) -> None:
            self._send(303, "", headers={"Location": where, **({"Set-Cookie": cookie} if cookie else {})})

        def _user(self) -> str | None:
            user = auth.user(self.headers)
            if user is None:
                if auth.trusted_header:
                    self._send(401, f"missing {auth.trusted_header}: sign in through the proxy", "text/plain")
                else:
                    self._redirect("/login")
            return user

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            if url.path.startswith("/static/"):
                return self._static(url.path[len("/static/"):])
            if url.path == "/login":
                if "token" in query:
                    cookie = auth.sign_in(query["token"], query.get("user", "console"))
                    if cookie:
                        return self._redirect("/alerts", cookie)
                return self._send(200, pages.layout("Sign in", pages.login_page(), "-"))
            user = self._user()
            if user is None:
                return None
            try:
                if url.path in ("/", "/alerts"):
                    return self._list(user, query)
                if url.path.startswith("/alerts/"):
                    alert = get_alert(store, url.path[len("/alerts/"):])
                    done = query.get("done", "")
                    body = pages.alert_detail(alert, auth.csrf(user),
                                              done if auth.note_ok(user, done, query.get("sig", "")) else "")
                    return self._send(200, pages.layout(alert["title"], body, user))
                if url.path == "/map":
                    edges = read_edges(store)
                    svg = render(edges, list_alerts(store))
                    return self._send(200, pages.layout("Service map", pages.map_page(svg, edges), user))
            except KubeSonarError as exc:
                status, why = _status(exc, 404), escape(str(exc), quote=False)  # it may repeat the id asked for
                return self._send(status, pages.layout("Not found" if status == 404 else "Store unavailable",
                                                       f'<div class="error">{why}</div>', user))
            return self._send(404, "not found", "text/plain")

        def _list(self, user: str, query: dict[str, str]) -> None:
            alerts = list_alerts(store)
            which = AlertFilter(*(tuple(filter(None, [query.get(k, "")])) for k in pages.FILTERS))
            shown = [a for a in alerts if which.matches(a)]
            key = pages.SORTS.get(query.get("sort", "last_seen"), pages.SORTS["last_seen"])
            shown.sort(key=key, reverse=query.get("order", "desc") == "desc")
            self._send(200, pages.layout("Alerts", pages.alert_list(alerts, shown, query), user))

        def _static(self, name: str) -> None:
            if name not in _ASSETS:
                return self._send(404, "not found", "text/plain")
            data = resources.files("kubesonar.console").joinpath("assets", name).read_bytes()
            return self._send(200, data, _ASSETS[name])

        def do_POST(self) -> None:
            url = urlparse(self.path)
            declared = self.headers.get("Content-Length") or "0"
            if not (declared.isascii() and declared.isdigit()):  # rfile.read(-1) would read until the client closes
                return self._send(400, "Content-Length is not a byte count", "text/plain")
            length = int(declared)
            if length > _MAX_FORM:
                return self._send(413, "form too large", "text/plain")
            form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode("utf-8", "replace")).items()}
            if url.path == "/login":
                cookie = auth.sign_in(form.get("token", ""), form.get("user", ""))
                if cookie:
                    return self._redirect("/alerts", cookie)
                return self._send(403, pages.layout("Sign in", pages.login_page("Wrong token or name."), "-"))
            user = self._user()
            if user is None:
                return None
            if not auth.csrf_ok(user, form.get("csrf", "")):
                return self._send(403, "the form's CSRF token is missing or wrong: reload the page", "text/plain")
            if not url.path.startswith("/alerts/"):
                return self._send(404, "not found", "text/plain")
            alert_id = url.path[len("/alerts/"):]
            try:
                done = self._triage(alert_id, form, user)
            except KubeSonarError as exc:
                why = escape(str(exc), quote=False)  # it may repeat what was posted
                return self._send(_status(exc, 400), pages.layout(
                    "Not changed", f'<div class="error" id="error">{why}</div>'
                                   f'<p><a href="/alerts/{quote(alert_id)}">back</a></p>', user))
            return self._redirect(f"/alerts/{quote(alert_id)}?done={quote(done)}&sig={auth.note_signature(user, done)}")

        def _triage(self, alert_id: str, form: dict[str, str], user: str) -> str:
            from kubesonar.shared.lists_store import add_allow_entry, subject_match
            from kubesonar.shared.state import update_document

            action = form.get("action", "")
            change = _form_change(action, form).validate()
            note = ""
            if action == "false_positive" and form.get("allowlist") == "1":
                alert = get_alert(store, alert_id)
                match = subject_match(alert)
                snippet = add_allow_entry(lists, ALLOWLIST_NAME, alert_rule(alert), f"false positive ({user})", match)
                note = (f" Added to allowlist {ALLOWLIST_NAME}: {' '.join(snippet.split())}" if snippet else
                        f" Allowlist {ALLOWLIST_NAME} already has an entry for this rule and subject: none added.")
                triage_alert(store, alert_id, change, user, time.time_ns())
                if snippet:
                    update_document(store, find_key(store, alert_id), lambda a: record(
                        a, user, time.time_ns(), {"allowlist": [None, f"{ALLOWLIST_NAME}: {json.dumps(match)}"]}))
            else:
                triage_alert(store, alert_id, change, user, time.time_ns())
            return f"Saved: {action}.{note}"

    return Handler


def serve(store: ObjectStore, host: str, port: int, auth: ConsoleAuth, lists: ObjectStore | None = None
          ) -> ThreadingHTTPServer:
    """A server bound to host:port (not yet serving: call serve_forever); ``lists`` is where allowlist
    entries go (the store itself unless alerts are kept apart)."""
    return ThreadingHTTPServer((host, port), make_handler(store, auth, lists or store))
