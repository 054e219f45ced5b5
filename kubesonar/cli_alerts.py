"""``kubesonar alerts``, ``allowlist`` and ``watchlist``: triage from the command line, on any store URL.

Every command names its store with ``--store URL`` (KUBESONAR_STORE): a directory, ``s3://BUCKET[/PREFIX]``
or any kind kubesonar/stores.py knows. Bad input is one line and no change.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from kubesonar.shared.alerts import SEVERITIES, alert_rule, type_and_rule
from kubesonar.shared.errors import KubeSonarError, StoreError
from kubesonar.shared.triage import STATUSES
from kubesonar.shared.url_credentials import without_credentials

if TYPE_CHECKING:  # every start of the CLI registers these commands: only what their options need
    from kubesonar.shared.ports import ObjectStore, StoredObject

_STORE = click.option("--store", "store_url", required=True, envvar="KUBESONAR_STORE",
                      help="Where alerts live: a directory, s3://BUCKET[/PREFIX], gs://, az://, nats://.")
# Lists live with the state, which on AWS is another bucket than the alerts' (the function routes only
# alerts/ there): KUBESONAR_LISTS_STORE first, as `alerts update --allowlist` and the console take it, so a
# shell that exports both for triage edits the lists the function reads, not copies in the alerts bucket.
_LISTS_STORE = click.option("--store", "store_url", required=True,
                            envvar=["KUBESONAR_LISTS_STORE", "KUBESONAR_STORE"],
                            help="Where the lists live: a directory, s3://BUCKET[/PREFIX], gs://, az://, nats:// "
                                 "(AWS: the state bucket) [default: KUBESONAR_LISTS_STORE, else KUBESONAR_STORE].")


@contextmanager
def _opened(url: str) -> Iterator[ObjectStore]:
    """The store. A failure to open or reach it is one line saying so (a StoreError), not an SDK's
    traceback; any other fault of the command is what it is: a KubeSonarError keeps its message, and
    anything else is one line naming its type, never blamed on the store."""
    from kubesonar.stores import open_store

    with _reaching(url):
        store = open_store(url)
    try:
        yield _Reached(store, url)
    except (KubeSonarError, click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:  # a fault of ours (a bug, a document we cannot read), not the store's
        raise KubeSonarError(f"unexpected {type(exc).__name__}: {exc}") from exc


@contextmanager
def _reaching(url: str) -> Iterator[None]:
    try:
        yield
    except KubeSonarError:
        raise
    except Exception as exc:  # SDKs raise their own kinds for an unreachable endpoint or refused credentials
        raise StoreError(f"store {without_credentials(url)} could not be reached: "
                         f"{type(exc).__name__}: {exc}") from None


class _Reached:
    """A store whose calls fail as :func:`_reaching` says: only what goes wrong inside them is the store's."""

    def __init__(self, store: ObjectStore, url: str):
        self._store, self._url = store, url

    def get(self, key: str) -> StoredObject | None:
        with _reaching(self._url):
            return self._store.get(key)

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        with _reaching(self._url):
            return self._store.put(key, data, if_version=if_version, create_only=create_only)

    def list(self, prefix: str) -> Iterator[str]:
        with _reaching(self._url):  # listing is lazy: its pages are fetched as they are read
            yield from self._store.list(prefix)


def _who(by: str | None) -> str:
    return by or os.environ.get("USER") or "unknown"


@click.group()
def alerts() -> None:
    """List, show and triage alerts in a store."""


def _known_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """``--type``'s names, each a type, a rule or TYPE/RULE: a misspelt one would list nothing, silently."""
    from kubesonar.shared.alerts import alert_names

    wrong = sorted(set(names) - alert_names())
    if wrong:
        raise click.BadParameter(f"unknown type or rule '{wrong[0]}': give a type, a rule id or TYPE/RULE "
                                 "(`unusual_destination/reverse_shell`, `beaconing/beaconing`)")
    return names


@alerts.command("list")
@_STORE
@click.option("--status", multiple=True, type=click.Choice(STATUSES), help="Repeat for several.")
@click.option("--severity", multiple=True, type=click.Choice(SEVERITIES), help="Repeat for several.")
@click.option("--type", "types", multiple=True, callback=lambda _c, _p, names: _known_names(names),
              help="An alert type, a rule id, or TYPE/RULE (unusual_destination/reverse_shell, "
                   "beaconing/beaconing) (repeat for several).")
@click.option("--namespace", multiple=True, help="The source's namespace (repeat for several).")
@click.option("--assignee", multiple=True, help="Repeat for several.")
@click.option("--tag", multiple=True, help="Alerts with every tag given.")
@click.option("--since", help="Last seen within this long: 30m, 4h, 2d, 1w.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "ocsf"]), default="table",
              help="json: one alert per line (as analyze); ocsf: one OCSF Detection Finding per line.")
def list_command(store_url: str, status: tuple[str, ...], severity: tuple[str, ...], types: tuple[str, ...],
                 namespace: tuple[str, ...], assignee: tuple[str, ...], tag: tuple[str, ...], since: str | None,
                 fmt: str) -> None:
    """Alerts of every cluster in the store, newest first."""
    from kubesonar.shared.alert_query import AlertFilter, list_alerts
    from kubesonar.shared.triage import parse_duration_s

    since_ns = time.time_ns() - parse_duration_s(since) * 1_000_000_000 if since else None
    which = AlertFilter(status, severity, types, namespace, assignee, tag, since_ns)
    with _opened(store_url) as store:
        found = list_alerts(store, which)
    if fmt == "json":
        for alert in found:
            click.echo(json.dumps(alert, sort_keys=True))
    elif fmt == "ocsf":
        from kubesonar.shared.ocsf import to_ocsf

        for alert in found:
            click.echo(json.dumps(to_ocsf(alert), sort_keys=True))
    else:
        _table(found)


def _table(found: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = click.get_text_stream("stdout")
    console = Console(width=None if out.isatty() else 200)
    if not found:
        console.print("no alerts")
        return
    table = Table("id", "severity", "type", "status", "assignee", "source", "namespace", "count", "last seen",
                  "tags", box=None)
    for a in found:
        source = a["source"].get("workload") or a["source"].get("ip") or ""
        table.add_row(a["id"][:12], a["severity"], type_and_rule(a), a["status"], a.get("assignee") or "-", source,
                      a["source"].get("namespace") or "-", str(a["count"]), a["last_seen"], ",".join(a["tags"]))
    console.print(table)


@alerts.command("show")
@click.argument("alert_id")
@_STORE
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              help="json: the alert's document as the store holds it.")
def show_command(alert_id: str, store_url: str, fmt: str) -> None:
    """One alert: its facts, evidence, comments and history."""
    from kubesonar.shared.alert_query import get_alert

    with _opened(store_url) as store:
        alert = get_alert(store, alert_id)
    if fmt == "json":
        click.echo(json.dumps(alert, sort_keys=True))
        return
    click.echo(render_text(alert))


def render_text(alert: dict[str, Any]) -> str:
    mitre = alert.get("mitre") or {}
    lines = [f"{alert['id']}  {alert['severity'].upper()}  {alert['title']} ({type_and_rule(alert)})",
             (f"status: {alert['status']}   assignee: {alert.get('assignee') or '-'}   "
             f"tags: {', '.join(alert['tags']) or '-'}   snoozed until: {alert.get('snoozed_until') or '-'}"),
             (f"cluster: {alert.get('cluster', '')}   count: {alert['count']}   "
             f"first seen: {alert['first_seen']}   last seen: {alert['last_seen']}"),
             f"source: {json.dumps(alert['source'], sort_keys=True)}",
             f"destination: {json.dumps(alert.get('destination'), sort_keys=True)}",
             (f"MITRE ATT&CK: {mitre.get('technique_id', '-')} {mitre.get('technique', '')} "
             f"({mitre.get('tactic', '')})"), "evidence:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in sorted(alert["evidence"].items())]
    lines.append("comments:" if alert["comments"] else "comments: none")
    lines += [f"  {c['at']} {c['by']}: {c['text']}" for c in alert["comments"]]
    lines.append("history:")
    for entry in alert["history"]:
        what = "; ".join(f"{k}: {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in entry["changes"].items())
        lines.append(f"  {entry['at']} {entry['by']}: {what}")
    return "\n".join(lines)


@alerts.command("update")
@click.argument("alert_id")
@_STORE
@click.option("--status", type=click.Choice(STATUSES), help="The new status.")
@click.option("--assign", "assignee", help="A user or a team; '' unassigns.")
@click.option("--tag", multiple=True, help="Add a tag (repeat for several).")
@click.option("--untag", multiple=True, help="Remove a tag (repeat for several).")
@click.option("--comment", help="A comment, kept with who wrote it and when.")
@click.option("--snooze", help="Stay silent this long (30m, 4h, 2d, 1w); 0 ends a snooze.")
@click.option("--allowlist", "allowlist_name",
              help="With --status false_positive: also add an allowlist entry (to this allowlist) that covers "
                   "the alert's rule and subject; it is printed.")
@click.option("--lists-store", "lists_url", envvar="KUBESONAR_LISTS_STORE",
              help="Where allowlists live when alerts are kept apart (AWS: the state bucket) [default: --store].")
@click.option("--by", help="Who makes the change [default: $USER].")
def update_command(alert_id: str, store_url: str, status: str | None, assignee: str | None, tag: tuple[str, ...],
                   untag: tuple[str, ...], comment: str | None, snooze: str | None, allowlist_name: str | None,
                   lists_url: str | None, by: str | None) -> None:
    """Triage an alert: status, assignee, tags, a comment, a snooze. Kept in its history."""
    from kubesonar.shared.alert_query import get_alert, triage_alert
    from kubesonar.shared.lists_store import add_allow_entry, subject_match
    from kubesonar.shared.triage import TriageChange, parse_duration_s, record

    if allowlist_name and status != "false_positive":
        raise click.UsageError("--allowlist goes with --status false_positive")
    snooze_s = None if snooze is None else 0 if snooze.strip() == "0" else parse_duration_s(snooze)
    change = TriageChange(status, assignee, list(tag), list(untag), comment, snooze_s).validate()
    who = _who(by)
    with _opened(store_url) as store, _opened(lists_url or store_url) as lists:
        if allowlist_name:  # written first: a refused entry leaves the alert as it was
            alert = get_alert(store, alert_id)
            match = subject_match(alert)
            snippet = add_allow_entry(lists, allowlist_name, alert_rule(alert), f"false positive ({who}): "
                                      f"{comment or alert['title']}", match)
            click.echo(f"added to allowlist {allowlist_name}:\n{snippet.rstrip()}" if snippet else
                       f"allowlist {allowlist_name} already has an entry for this rule and subject: none added")
        alert = triage_alert(store, alert_id, change, who, time.time_ns())
        if allowlist_name and snippet:
            from kubesonar.shared.alert_query import find_key
            from kubesonar.shared.state import update_document

            alert = update_document(store, find_key(store, alert_id), lambda a: record(
                a, who, time.time_ns(), {"allowlist": [None, f"{allowlist_name}: {json.dumps(match)}"]}))
    click.echo(f"{alert['id']}: {alert['status']}, assignee {alert.get('assignee') or '-'}, "
               f"tags {','.join(alert['tags']) or '-'}")


@click.group("allowlist")
def allowlist_group() -> None:
    """Allowlists kept in the store (allowlists/<name>.yaml), applied by every runtime."""


@allowlist_group.command("list")
@_LISTS_STORE
def allowlist_list(store_url: str) -> None:
    """Every entry of every allowlist, numbered per list as 'allowlist remove' takes them."""
    from kubesonar.shared.lists_store import read_allowlists

    with _opened(store_url) as store:
        lists = read_allowlists(store)
    if not lists:
        click.echo("no allowlists")
    for name, entries in lists.items():
        for number, e in enumerate(entries, 1):
            fields = {k: getattr(e, k) for k in ("namespace", "workload", "label", "cidr")
                      if getattr(e, k) is not None}
            if e.ports is not None:  # as the file writes it: 9100, or 9100-9110
                low, high = e.ports
                fields["port"] = str(low) if low == high else f"{low}-{high}"
            click.echo(f"{name} {number}: {','.join(sorted(e.rules))} "
                       f"{' '.join(f'{k}={v}' for k, v in fields.items())}  # {e.reason}")


@allowlist_group.command("add")
@_LISTS_STORE
@click.option("--name", default="default", help="Which allowlist.")
@click.option("--rule", required=True, help="A rule id.")
@click.option("--reason", required=True, help="Why this is expected (shown to whoever reads the list).")
@click.option("--namespace", help="The source's namespace.")
@click.option("--workload", help="kind/name, or the name.")
@click.option("--label", help="key=value of the source's labels.")
@click.option("--cidr", help="The source address or network.")
@click.option("--port", help="The destination port or a range, 8000-8100.")
def allowlist_add(store_url: str, name: str, rule: str, reason: str, namespace: str | None, workload: str | None,
                  label: str | None, cidr: str | None, port: str | None) -> None:
    """Add one entry, validated before it is written."""
    from kubesonar.shared.lists_store import add_allow_entry

    match = {k: v for k, v in (("namespace", namespace), ("workload", workload), ("label", label),
                               ("cidr", cidr), ("port", port)) if v}
    with _opened(store_url) as store:
        snippet = add_allow_entry(store, name, rule, reason, match)
    click.echo(snippet.rstrip() if snippet else f"allowlist {name} already has an entry of this rule and scope: "
               "none added")


@allowlist_group.command("remove")
@_LISTS_STORE
@click.option("--name", default="default", help="Which allowlist.")
@click.argument("number", type=click.IntRange(min=1))
def allowlist_remove(store_url: str, name: str, number: int) -> None:
    """Remove entry NUMBER (as 'allowlist list' numbers them)."""
    from kubesonar.shared.lists_store import remove_allow_entry

    with _opened(store_url) as store:
        click.echo(f"removed: {json.dumps(remove_allow_entry(store, name, number), sort_keys=True)}")


@click.group("watchlist")
def watchlist_group() -> None:
    """Watchlists kept in the store (watchlists/<name>.json): addresses, networks, domains to be told about."""


@watchlist_group.command("list")
@_LISTS_STORE
def watchlist_list(store_url: str) -> None:
    """Every entry of every watchlist: the list, the indicator, its kind and reason."""
    from kubesonar.shared.watchlist import LOADER

    with _opened(store_url) as store:
        LOADER.forget()
        entries, errors = LOADER.load(store)
    for e in entries:
        click.echo(f"{e.list_name}: {e.indicator} ({e.kind}) {e.reason}")
    for error in errors:
        click.echo(f"kubesonar: error: {error}", err=True)
    if not entries and not errors:
        click.echo("no watchlists")


@watchlist_group.command("add")
@_LISTS_STORE
@click.option("--name", default="default", help="Which watchlist.")
@click.argument("indicator")
@click.option("--reason", default="", help="Why it is listed (shown in its alerts).")
@click.option("--expires", help="ISO 8601 time after which the entry no longer matches.")
def watchlist_add(store_url: str, name: str, indicator: str, reason: str, expires: str | None) -> None:
    """Add INDICATOR (an IP, a CIDR network or a domain), validated before it is written."""
    from kubesonar.shared.lists_store import add_watch_entry

    with _opened(store_url) as store:
        click.echo(f"added to watchlist {name}: {json.dumps(add_watch_entry(store, name, indicator, reason, expires))}")


@watchlist_group.command("remove")
@_LISTS_STORE
@click.option("--name", default="default", help="Which watchlist.")
@click.argument("indicator")
def watchlist_remove(store_url: str, name: str, indicator: str) -> None:
    """Remove INDICATOR from the watchlist."""
    from kubesonar.shared.lists_store import remove_watch_entry

    with _opened(store_url) as store:
        remove_watch_entry(store, name, indicator)
    click.echo(f"removed {indicator} from watchlist {name}")


@click.command("console")
@_STORE
@click.option("--listen", default="127.0.0.1:8080", envvar="KUBESONAR_CONSOLE_LISTEN", show_default=True,
              help="HOST:PORT to listen on; loopback unless told otherwise.")
@click.option("--token", envvar="KUBESONAR_CONSOLE_TOKEN",
              help="Bearer token to sign in with [default: a random one, printed at start].")
@click.option("--trusted-header", envvar="KUBESONAR_CONSOLE_TRUSTED_HEADER",
              help="Trust this header (set by an authenticating proxy) to name the user, instead of a token.")
@click.option("--lists-store", "lists_url", envvar="KUBESONAR_LISTS_STORE",
              help="Where allowlists live when alerts are kept apart (AWS: the state bucket) [default: --store].")
def console_command(store_url: str, listen: str, token: str | None, trusted_header: str | None,
                    lists_url: str | None) -> None:
    """The web console: alert list, detail and triage, service map."""
    from kubesonar.console.auth import ConsoleAuth
    from kubesonar.console.server import serve
    from kubesonar.shared.errors import ConfigError

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {listen!r} is not HOST:PORT")
    auth = ConsoleAuth(token, trusted_header)
    with _opened(store_url) as store, _opened(lists_url or store_url) as lists:
        list(store.list("alerts/"))  # reachable now, not at the first page
        list(lists.list("allowlists/"))
    try:
        server = serve(store, host.strip("[]"), int(port), auth, lists)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    where = f"http://{listen}"
    if trusted_header:
        click.echo(f"console on {where} (user from the {trusted_header} header)", err=True)
    else:
        click.echo(f"console on {where}: sign in at {where}/login?token={auth.token}&user=YOUR_NAME", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.command("report")
@_STORE
@click.option("--out", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML file to write.")
def report_command(store_url: str, out: str) -> None:
    """One self-contained HTML file: alerts over time, open alerts and their triage, top talkers, the map."""
    from pathlib import Path

    from kubesonar.report import build_report

    with _opened(store_url) as store:
        html = build_report(store)
    Path(out).write_text(html, encoding="utf-8")  # what its <meta charset> says, whatever the locale
    click.echo(f"wrote {out} ({len(html) // 1024} KiB)")


def register(main: click.Group) -> None:
    for command in (alerts, allowlist_group, watchlist_group, console_command, report_command):
        main.add_command(command)
