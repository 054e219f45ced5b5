"""Slack, Teams and webhook notifications through the outbox, against a local HTTP receiver: payload
schemas, signatures, routing filters, retries with backoff, rate limit with a digest, and an
invocation that died before notifying."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import jsonschema
import pytest
from alert_fixtures import T0_NS, ManualClock, scan_batch, shell_batch, start_receiver

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared import lists_store
from kubesonar.shared.alert_query import AlertFilter, list_alerts
from kubesonar.shared.alerts import SEVERITIES
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.notify import slack, teams, webhook
from kubesonar.shared.notify.routing import ROUTING, ROUTING_KEY, parse_routing
from kubesonar.shared.pipeline import Dependencies, check_all_sensors, process_batch
from kubesonar.shared.state import read_document, update_document

SCHEMAS = Path(__file__).parent.parent / "fixtures" / "notify"
SECRET = "s3cret-for-tests"


@pytest.fixture
def receiver():
    rec, server = start_receiver()
    yield rec
    server.shutdown()
    server.server_close()


def _deps(tmp_path, receiver, extra: str = "", **dest_options) -> Dependencies:
    lists_store.ALLOW_LOADER.forget()
    ROUTING.forget()
    store = LocalObjectStore(tmp_path / "store")
    options = "".join(f"    {k}: {v}\n" for k, v in dest_options.items())
    store.put(ROUTING_KEY, f"""console_url: http://127.0.0.1:8080
destinations:
  - name: soc-slack
    kind: slack
    url: {receiver.url}/slack
{options}  - name: soc-teams
    kind: teams
    url: {receiver.url}/teams
  - name: siem
    kind: webhook
    url: {receiver.url}/hook
    secret: {SECRET}
{extra}""".encode())
    return Dependencies(store, CollectingNotifier(), ManualClock())


def _alert_doc(deps) -> dict:
    (key,) = list(deps.store.list("alerts/"))
    return read_document(deps.store, key)[0]


def test_payloads_match_the_published_field_sets_for_every_severity(tmp_path, receiver):
    deps = _deps(tmp_path, receiver)
    process_batch(scan_batch(1), deps)
    alert = _alert_doc(deps)
    slack_schema = json.loads((SCHEMAS / "slack_webhook.schema.json").read_text())
    teams_schema = json.loads((SCHEMAS / "teams_workflow.schema.json").read_text())
    for severity in SEVERITIES:
        for reason in ("new", "escalated", "reopened"):
            one = {**alert, "severity": severity}
            jsonschema.validate(slack.payload(one, reason, "http://127.0.0.1:8080"), slack_schema)
            jsonschema.validate(teams.payload(one, reason, ""), teams_schema)
    jsonschema.validate(slack.digest("x", {"port_scan": 3}, 600), slack_schema)
    jsonschema.validate(teams.digest("x", {"port_scan": 3}, 600), teams_schema)
    with pytest.raises(jsonschema.ValidationError):  # the schemas do reject what Slack would
        jsonschema.validate({"text": "x", "attachments": [{"color": "red", "blocks": []}]}, slack_schema)


def test_a_new_alert_reaches_every_destination_once_with_its_facts(tmp_path, receiver):
    deps = _deps(tmp_path, receiver)
    process_batch(scan_batch(1), deps)
    process_batch(scan_batch(2, 2000), deps)  # a count update: nobody is told
    (slack_msg,) = receiver.bodies("/slack")
    attachment = slack_msg["attachments"][0]
    assert attachment["color"] == "#e0592a"  # high
    fields = {f["text"].split("\n")[0].strip("*"): f["text"].split("\n")[1] for f in attachment["blocks"][1]["fields"]}
    assert fields["Rule"] == "Port scan from a workload (port_scan)" and fields["Severity"] == "high"
    assert fields["Source workload"] == "10.0.0.9" and fields["Count"] == "1"
    assert fields["MITRE ATT&CK"].startswith("T1046") and fields["Destination"]
    alert = _alert_doc(deps)
    assert attachment["blocks"][-1]["elements"][0]["url"] == f"http://127.0.0.1:8080/alerts/{alert['id']}"
    (card,) = receiver.bodies("/teams")
    facts = {f["title"]: f["value"] for f in card["attachments"][0]["content"]["body"][1]["facts"]}
    assert facts["Severity"] == "high" and facts["Namespace"] == "-"
    ((_path, headers, body),) = [r for r in receiver.requests if r[0] == "/hook"]
    now_s = T0_NS // 10**9
    assert webhook.verify(SECRET, headers, body, now_s)
    assert json.loads(body)["event"] == "new" and json.loads(body)["alert"]["id"] == alert["id"]
    assert not webhook.verify(SECRET, headers, body.replace(b'"new"', b'"old"'), now_s)  # forged
    assert not webhook.verify("another-secret", headers, body, now_s)
    assert not webhook.verify(SECRET, headers, body, now_s + 301)  # a replay, later
    assert len(deps.notifier.sent) == 1
    assert alert["notify"]["pending"] is None
    assert alert["notify"]["confirmed"] == {"topic": 1, "soc-slack": 1, "soc-teams": 1, "siem": 1}


def test_routing_filters_by_severity_type_and_namespace(tmp_path, receiver):
    deps = _deps(tmp_path, receiver, extra=f"""  - name: critical-only
    kind: slack
    url: {receiver.url}/critical
    min_severity: critical
  - name: shop-only
    kind: slack
    url: {receiver.url}/shop
    namespaces: [shop]
  - name: scans
    kind: slack
    url: {receiver.url}/scans
    types: [port_scan]
""")
    process_batch(scan_batch(1), deps)
    assert receiver.bodies("/critical") == [] and receiver.bodies("/shop") == []
    assert len(receiver.bodies("/scans")) == 1


class _TopicDown:
    def notify(self, alert: dict) -> None:
        raise ConnectionError("topic unreachable")


def test_an_alert_stored_before_rules_were_named_reads_and_is_told_as_the_type_its_rule_reports_as(
        tmp_path, receiver):
    """A reverse shell written by a release before alert types (``type`` the rule, no ``rule``), its
    notification still pending at the upgrade: it lists, routes and is told as an unusual destination
    raised by reverse_shell, as the alerts written since are."""
    deps = _deps(tmp_path, receiver, extra=f"""  - name: unusual
    kind: webhook
    url: {receiver.url}/unusual
    secret: {SECRET}
    types: [unusual_destination]
""")
    receiver.fail_next = 100  # every destination down, and the topic: the notification stays pending
    process_batch(shell_batch(1), Dependencies(deps.store, _TopicDown(), deps.clock))
    (key,) = deps.store.list("alerts/")
    update_document(deps.store, key, lambda a: {**{k: v for k, v in a.items() if k != "rule"}, "type": "reverse_shell"})
    (stored,) = list_alerts(deps.store, AlertFilter(types=("unusual_destination",)))
    assert (stored["type"], stored["rule"]) == ("unusual_destination", "reverse_shell")
    receiver.fail_next = 0
    deps.clock.advance(31)
    check_all_sensors(deps)  # the schedule's tick retries
    assert [(b["alert"]["type"], b["alert"]["rule"]) for b in receiver.bodies("/unusual")] == [
        ("unusual_destination", "reverse_shell")]
    assert [(a["type"], a["rule"]) for a in deps.notifier.sent] == [("unusual_destination", "reverse_shell")]


@pytest.mark.parametrize("text, message", [
    ("destinations:\n  - name: a\n    kind: pager\n    url: http://x\n", "line 3: kind 'pager' is not one of"),
    ("destinations:\n  - name: a\n    kind: slack\n", "line 2: a destination needs 'url' or 'url_env'"),
    ("destinations:\n  - name: a\n    kind: webhook\n    url: http://x\n", "line 2: a webhook needs 'secret'"),
    ("destinations:\n  - name: a\n    kind: slack\n    url: http://x\n    min_severity: loud\n",
     "line 5: min_severity must be one of"),
    ("destinations:\n  - name: a\n    kind: slack\n    url: http://x\n    types: [nope]\n",
     "line 5: unknown type or rule 'nope'"),
    ("destinations:\n  - name: a\n    kind: slack\n    url_env: NOT_SET_ANYWHERE\n",
     "line 4: environment variable NOT_SET_ANYWHERE is not set"),
    ("destinations:\n  - name: a\n    kind: slack\n    url: ftp://x\n", "line 4: the url must start with"),
    ("destinations:\n  - name: a\n    kind: slack\n    url: http://x\n    window: soon\n", "line 5: duration 'soon'"),
    ("destinations:\n  - {name: a, kind: slack, url: 'http://x'}\n  - {name: a, kind: slack, url: 'http://y'}\n",
     "line 3: destination name 'a' is used twice"),
    ("destinations: [\n", "line 2: not valid YAML"),
    ("routes: []\n", "line 1: unknown field 'routes'"),
])
def test_a_bad_routing_document_names_the_line(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_routing(text, env={})


def test_a_broken_routing_document_still_notifies_the_topic_and_says_why(tmp_path, receiver):
    deps = _deps(tmp_path, receiver)
    deps.store.put(ROUTING_KEY, b"destinations:\n  - name: a\n    kind: pager\n    url: http://x\n",
                   if_version=deps.store.get(ROUTING_KEY).version)
    ROUTING.forget()
    result = process_batch(scan_batch(1), deps)
    assert len(deps.notifier.sent) == 1 and receiver.requests == []
    assert any("line 3: kind 'pager'" in e for e in result.errors)


def test_a_failed_delivery_is_retried_with_backoff_and_confirmed_destinations_are_not_repeated(tmp_path, receiver):
    deps = _deps(tmp_path, receiver)
    receiver.fail_next = 2  # both quick attempts to the first HTTP destination fail
    result = process_batch(scan_batch(1), deps)
    assert any("to soc-slack failed: HTTP 500" in e for e in result.errors)
    alert = _alert_doc(deps)
    assert alert["notify"]["pending"]["reason"] == "new" and alert["notify"]["attempts"] == 1
    assert set(alert["notify"]["confirmed"]) == {"topic", "soc-teams", "siem"}
    deps.clock.advance(10)  # before the backoff: nothing is retried
    check_all_sensors(deps)
    assert receiver.bodies("/slack") == []
    deps.clock.advance(31)
    check_all_sensors(deps)  # the schedule's tick retries
    assert len(receiver.bodies("/slack")) == 1 and len(receiver.bodies("/teams")) == 1
    assert len(deps.notifier.sent) == 1
    assert _alert_doc(deps)["notify"]["pending"] is None


def test_the_rate_limit_holds_alerts_and_sends_a_digest(tmp_path, receiver):
    deps = _deps(tmp_path, receiver, rate_limit=2, window="10m")
    for n in range(5):  # five scanners: five alerts
        process_batch(scan_batch(n + 1, 1000 + 20 * n, src=f"10.0.0.{20 + n}"), deps)
    assert len(receiver.bodies("/slack")) == 2 and len(receiver.bodies("/teams")) == 5
    deps.clock.advance(601)
    check_all_sensors(deps)
    check_all_sensors(deps)  # a digest is sent once
    digest = receiver.bodies("/slack")[2:]
    assert [d["text"] for d in digest] == ["KubeSonar digest: 3 more alerts of type port_scan in the last 10 minutes"]


def test_a_digest_names_the_rule_of_a_held_alert_whose_type_is_another_s(tmp_path, receiver):
    """A critical reverse shell held behind a scan is told as one, not as one more unusual destination."""
    deps = _deps(tmp_path, receiver, rate_limit=1, window="10m")
    process_batch(scan_batch(1), deps)
    process_batch(shell_batch(2), deps)
    deps.clock.advance(601)
    check_all_sensors(deps)
    assert [d["text"] for d in receiver.bodies("/slack")[1:]] == [
        "KubeSonar digest: 1 more alerts of type unusual_destination/reverse_shell in the last 10 minutes"]


def test_a_digest_that_could_not_be_sent_is_sent_later(tmp_path, receiver):
    """The held counts are taken from the rate document before the digest is posted: a failed post must
    give them back, or the alerts it counts are never told to that destination."""
    deps = _deps(tmp_path, receiver, rate_limit=2, window="10m")
    for n in range(5):
        process_batch(scan_batch(n + 1, 1000 + 20 * n, src=f"10.0.0.{20 + n}"), deps)
    deps.clock.advance(601)
    receiver.fail_next = 2  # both quick attempts of the digest
    assert any("digest to soc-slack failed" in e for e in check_all_sensors(deps).errors)
    deps.clock.advance(601)
    check_all_sensors(deps)
    digest = [d for d in receiver.bodies("/slack") if d["text"].startswith("KubeSonar digest")]
    assert [d["text"] for d in digest] == ["KubeSonar digest: 3 more alerts of type port_scan in the last 10 minutes"]


class _DiesBeforeDelivering(LocalObjectStore):
    def get(self, key: str):
        if key == ROUTING_KEY:
            os._exit(137)  # killed after writing its alerts, before delivering any
        return super().get(key)


class _DiesOnNotify:
    def notify(self, alert: dict) -> None:
        os._exit(137)  # killed after claiming the delivery, before any destination confirmed


def _crashing_invocation(root: str, where: str) -> None:
    ROUTING.forget()
    store = _DiesBeforeDelivering(root) if where == "before" else LocalObjectStore(root)
    notifier = _DiesOnNotify() if where == "during" else CollectingNotifier()
    process_batch(scan_batch(1), Dependencies(store, notifier, ManualClock()))


@pytest.mark.parametrize("where", ["before", "during"])
def test_an_alert_whose_invocation_died_before_notifying_is_notified_once_by_the_next(tmp_path, receiver, where):
    wait_s = 61  # the dead invocation's claim (taken in its alert write) lapses after 60 s
    deps = _deps(tmp_path, receiver)
    child = multiprocessing.get_context("fork").Process(target=_crashing_invocation,
                                                        args=(str(tmp_path / "store"), where))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 137
    alert = _alert_doc(deps)
    assert alert["notify"]["pending"]["reason"] == "new" and receiver.requests == []
    assert alert["id"] in read_document(deps.store, "outbox/c.json")[0]["pending"]
    check_all_sensors(deps)  # the dead invocation may still be alive and delivering: wait
    deps.clock.advance(wait_s - 2)
    check_all_sensors(deps)
    assert deps.notifier.sent == []
    deps.clock.advance(2)
    process_batch(scan_batch(7, 7000, src="10.0.0.77"), deps)  # the next invocation, about another alert
    assert [a["id"] for a in deps.notifier.sent].count(alert["id"]) == 1
    assert len(receiver.bodies("/slack")) == 2  # the orphan and the new one
    deps.clock.advance(60)
    check_all_sensors(deps)
    process_batch(scan_batch(8, 8000, src="10.0.0.78"), deps)
    assert [a["id"] for a in deps.notifier.sent].count(alert["id"]) == 1  # exactly once
    assert read_document(deps.store, "outbox/c.json")[0]["pending"] == {}
