"""The alert lifecycle: triage changes with history, recurrence, snooze, and allowlists from the store."""

from __future__ import annotations

import pytest
from alert_fixtures import ManualClock, scan_batch

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared import lists_store
from kubesonar.shared.errors import ConfigError, TriageError
from kubesonar.shared.notify.routing import ROUTING
from kubesonar.shared.pipeline import Dependencies, check_all_sensors, process_batch
from kubesonar.shared.state import read_document, update_document
from kubesonar.shared.triage import TriageChange, apply_triage, normalize, parse_duration_s


@pytest.fixture
def deps(tmp_path):
    lists_store.ALLOW_LOADER.forget()
    ROUTING.forget()
    return Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), ManualClock())


def _alert(deps):
    (key,) = [k for k in deps.store.list("alerts/")]
    return key, read_document(deps.store, key)[0]


def _triage(deps, change: TriageChange, by: str = "ana") -> dict:
    key, _ = _alert(deps)
    return update_document(deps.store, key, lambda a: apply_triage(a, change, by, deps.clock.now_ns()))


def test_an_older_closed_alert_reads_as_resolved_with_every_field():
    alert = normalize({"id": "x", "status": "closed", "tags": None})
    assert alert["status"] == "resolved" and alert["tags"] == [] and alert["history"] == []
    assert alert["comments"] == [] and alert["snoozed_until"] is None and alert["assignee"] is None


def test_each_change_is_a_history_entry_saying_who_when_and_what(deps):
    process_batch(scan_batch(1), deps)
    _triage(deps, TriageChange(status="acknowledged", assignee="team-sec", add_tags=["scan", "prod"]))
    deps.clock.advance(60)
    alert = _triage(deps, TriageChange(remove_tags=["prod"], comment="looking at it"), by="bo")
    assert alert["status"] == "acknowledged" and alert["assignee"] == "team-sec" and alert["tags"] == ["scan"]
    assert alert["comments"] == [{"at": "2026-01-01T00:01:00Z", "by": "bo", "text": "looking at it"}]
    created, first, second = alert["history"]
    assert created["by"] == "kubesonar" and created["changes"] == {"status": [None, "open"]}
    assert first == {"at": "2026-01-01T00:00:00Z", "by": "ana",
                     "changes": {"status": ["open", "acknowledged"], "assignee": [None, "team-sec"],
                                 "tags": [[], ["scan", "prod"]]}}
    assert second["by"] == "bo" and second["changes"] == {"tags": [["scan", "prod"], ["scan"]],
                                                          "comment": [None, "looking at it"]}


@pytest.mark.parametrize("change, message", [
    (TriageChange(status="closed"), "status 'closed' does not exist"),
    (TriageChange(add_tags=[" "]), "must be 1 to 64 characters"),
    (TriageChange(), "nothing to change"),
    (TriageChange(comment="  "), "needs some text"),
])
def test_a_bad_change_is_one_clear_error(change, message):
    with pytest.raises(TriageError, match=message):
        apply_triage({"id": "x", "status": "open"}, change, "ana", 0)


def test_durations():
    assert [parse_duration_s(t) for t in ("30s", "15m", "4h", "2d", "1w")] == [30, 900, 14400, 172800, 604800]
    for bad in ("", "4", "h", "-1h", "0m", "1y", "1.5h"):
        with pytest.raises(TriageError):
            parse_duration_s(bad)


def test_a_resolved_alert_that_recurs_reopens_and_is_notified_again(deps):
    process_batch(scan_batch(1), deps)
    _triage(deps, TriageChange(status="resolved", assignee="ana"))
    process_batch(scan_batch(2, 2000), deps)  # the scan comes back
    _, alert = _alert(deps)
    assert alert["status"] == "open" and alert["assignee"] == "ana" and alert["count"] == 2
    assert alert["history"][-1]["changes"] == {"status": ["resolved", "open"]}
    assert [a["count"] for a in deps.notifier.sent] == [1, 2]
    process_batch(scan_batch(3, 3000), deps)  # a count update: not notified
    assert len(deps.notifier.sent) == 2 and _alert(deps)[1]["count"] == 3


def test_an_acknowledged_alert_keeps_its_triage_when_detectors_merge_into_it(deps):
    process_batch(scan_batch(1), deps)
    _triage(deps, TriageChange(status="acknowledged", add_tags=["t"], comment="mine"))
    process_batch(scan_batch(2, 2000), deps)
    _, alert = _alert(deps)
    assert (alert["status"], alert["tags"], alert["count"], len(alert["comments"])) == ("acknowledged", ["t"], 2, 1)
    assert len(deps.notifier.sent) == 1


def test_a_snoozed_alert_counts_but_stays_silent_until_its_time(deps):
    process_batch(scan_batch(1), deps)
    _triage(deps, TriageChange(status="resolved", snooze_s=3600))
    process_batch(scan_batch(2, 2000), deps)  # reopened during the snooze: counted, not told
    assert _alert(deps)[1]["count"] == 2 and len(deps.notifier.sent) == 1
    deps.clock.advance(1800)
    process_batch(scan_batch(3, 3000), deps)
    assert len(deps.notifier.sent) == 1
    deps.clock.advance(1801)  # the snooze is over: the schedule's tick (or the next invocation) tells it, once
    check_all_sensors(deps)
    assert [a["count"] for a in deps.notifier.sent] == [1, 3]  # the reopen, told when the snooze ended
    process_batch(scan_batch(4, 4000), deps)
    check_all_sensors(deps)
    assert len(deps.notifier.sent) == 2


def test_an_allowlist_in_the_store_silences_every_runtime(deps):
    entry = lists_store.add_allow_entry(deps.store, "scanners", "port_scan", "the scanner is ours",
                                        {"cidr": "10.0.0.9/32"})
    assert "cidr: 10.0.0.9/32" in entry
    result = process_batch(scan_batch(1), deps)
    assert result.allowlisted == 1 and result.alerts == [] and deps.notifier.sent == []
    assert process_batch(scan_batch(2, 2000, src="10.0.0.8"), deps).new_alerts  # another source still alerts
    lists_store.remove_allow_entry(deps.store, "scanners", 1)
    assert process_batch(scan_batch(3, 3000), deps).new_alerts


def test_a_bad_allowlist_is_refused_on_write_and_reported_when_found_in_the_store(deps):
    with pytest.raises(ConfigError, match="unknown rule 'no_such_rule'"):
        lists_store.add_allow_entry(deps.store, "x", "no_such_rule", "", {"namespace": "a"})
    with pytest.raises(ConfigError, match="is not an address or network"):
        lists_store.add_allow_entry(deps.store, "x", "port_scan", "", {"cidr": "nope"})
    assert list(deps.store.list("allowlists/")) == []
    deps.store.put("allowlists/broken.yaml", b"- rule: port_scan\n  match: {colour: red}\n")
    result = process_batch(scan_batch(1), deps)
    assert result.new_alerts and result.errors == [
        "allowlists/broken.yaml line 2: unknown match field 'colour' (known: namespace, workload, label, cidr, port)"]


def test_the_stored_lists_are_cached_with_a_freshness_bound(deps):
    loader = lists_store.AllowlistLoader(fresh_s=0.2)
    assert loader.load(deps.store) == ([], [])
    deps.store.put("allowlists/a.yaml", b"- rule: port_scan\n  match: {namespace: x}\n")
    assert loader.load(deps.store) == ([], [])  # warm: the cached copy
    import time

    time.sleep(0.25)
    assert len(loader.load(deps.store)[0]) == 1


def test_watchlist_entries_are_validated_and_replaced_by_indicator(deps):
    lists_store.add_watch_entry(deps.store, "feed", "192.0.2.66", "c2")
    lists_store.add_watch_entry(deps.store, "feed", "192.0.2.66", "c2, again")
    lists_store.add_watch_entry(deps.store, "feed", "Evil.Example.", expires="2030-01-01T00:00:00Z")
    from kubesonar.shared.watchlist import parse_watchlist

    entries = parse_watchlist(deps.store.get("watchlists/feed.json").data, "feed")
    assert [(e.indicator, e.reason) for e in entries] == [("192.0.2.66", "c2, again"), ("evil.example", "")]
    with pytest.raises(ConfigError, match="neither an IP, a network nor a domain"):
        lists_store.add_watch_entry(deps.store, "feed", "not a/domain")
    with pytest.raises(ConfigError, match="has no entry"):
        lists_store.remove_watch_entry(deps.store, "feed", "198.51.100.1")
    lists_store.remove_watch_entry(deps.store, "feed", "evil.example")
    assert len(parse_watchlist(deps.store.get("watchlists/feed.json").data, "feed")) == 1


def test_a_severity_that_rises_is_notified_a_count_update_is_not():
    from kubesonar.shared.triage import on_detection

    before = {"id": "x", "status": "acknowledged", "severity": "medium", "history": []}
    after, reason = on_detection(before, {**before, "severity": "critical"}, 0)
    assert reason == "escalated" and after["status"] == "acknowledged"
    assert after["history"][-1]["changes"] == {"severity": ["medium", "critical"]}
    assert on_detection(before, {**before, "count": 2}, 0)[1] is None
    quiet = {**before, "status": "false_positive"}
    assert on_detection(quiet, {**quiet, "severity": "critical"}, 0)[1] is None  # a false positive stays silent
