"""Alert types and rules (shared/alerts.py, docs/detection.md#alert-types-and-rules): a rule added to see an
existing threat another way reports under that threat's type and keeps its own name, title, severity
and MITRE technique; filters, routes and the outputs take either name; alerts stored before rules were
named read as their type's own."""

from __future__ import annotations

import pytest

from kubesonar.cli_alerts import render_text
from kubesonar.console.pages import alert_list
from kubesonar.shared.alert_query import AlertFilter
from kubesonar.shared.alerts import Finding, alert_rule, new_alert, reported_type, rules, type_and_rule
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.notify.message import facts
from kubesonar.shared.notify.routing import parse_routing
from kubesonar.shared.ocsf import to_ocsf
from kubesonar.shared.triage import normalize


def _alert(rule: str) -> dict:
    finding = Finding(rule, {"ip": "10.0.0.7", "namespace": "shop", "workload": "shop/Deployment/web"},
                      1_700_000_000_000_000_000, 1_700_000_060_000_000_000, {"destination": "203.0.113.9:4444"},
                      destination={"ip": "203.0.113.9", "port": 4444}, identity=("203.0.113.9:4444",))
    return new_alert(finding, "prod")


def test_a_reverse_shell_is_an_unusual_destination_that_says_it_is_a_reverse_shell():
    alert = _alert("reverse_shell")
    assert (alert["type"], alert["rule"]) == ("unusual_destination", "reverse_shell")
    own = rules()["reverse_shell"]
    assert (alert["title"], alert["severity"], alert["mitre"]) == (own["title"], "critical", own["mitre"])
    assert alert["severity"] != rules()["unusual_destination"]["severity"]  # the rule's, not the type's
    assert type_and_rule(alert) == "unusual_destination/reverse_shell"
    assert ("Rule", f"{own['title']} (unusual_destination/reverse_shell)") in facts(alert)


def test_ids_come_from_the_rule_so_they_did_not_change_and_two_rules_never_merge():
    shell, port = _alert("reverse_shell"), _alert("unusual_destination")
    assert shell["type"] == port["type"] and shell["id"] != port["id"]


def test_a_rule_named_as_its_own_type_has_one_name():
    alert = _alert("port_scan")
    assert (alert["type"], alert["rule"], type_and_rule(alert)) == ("port_scan", "port_scan", "port_scan")


def test_every_reported_type_is_a_rule_that_reports_as_itself():
    for rule in rules():
        assert reported_type(reported_type(rule)) == reported_type(rule), rule
    assert {r for r in rules() if reported_type(r) != r} == {
        "reverse_shell", "tls_bare_ip", "tool_transfer", "new_tls_client", "long_connection", "icmp_tunneling"}


def test_filters_and_routes_take_the_type_or_the_rule():
    alert = _alert("reverse_shell")
    assert AlertFilter(types=("unusual_destination",)).matches(alert)
    assert AlertFilter(types=("reverse_shell",)).matches(alert)
    assert not AlertFilter(types=("beaconing",)).matches(alert)
    routing = parse_routing("destinations:\n"
                            "  - {name: soc, kind: webhook, url: 'https://soc.example/hook', secret: s,"
                            " types: [unusual_destination]}\n"
                            "  - {name: shells, kind: webhook, url: 'https://soc.example/shells', secret: s,"
                            " types: [reverse_shell]}\n"
                            "  - {name: beacons, kind: webhook, url: 'https://soc.example/b', secret: s,"
                            " types: [beaconing]}\n")
    assert [d.name for d in routing.destinations if d.wants(alert)] == ["soc", "shells"]


def test_an_alert_stored_before_rules_were_named_reads_as_its_type():
    alert = _alert("port_scan")
    del alert["rule"]
    assert alert_rule(alert) == "port_scan" and type_and_rule(alert) == "port_scan"
    assert AlertFilter(types=("port_scan",)).matches(alert)


def test_ocsf_names_both():
    assert to_ocsf(_alert("tls_bare_ip"))["finding_info"]["types"] == ["unusual_destination", "tls_bare_ip"]
    assert to_ocsf(_alert("beaconing"))["finding_info"]["types"] == ["beaconing"]


def test_the_console_list_and_alerts_show_name_the_rule_and_offer_it_as_a_filter():
    """A critical reverse shell in the console's list is not a bare unusual_destination row, and the type
    filter offers the rules the store holds (the filter takes either)."""
    shell, scan = normalize(_alert("reverse_shell")), normalize(_alert("port_scan"))
    page = alert_list([shell, scan], [shell, scan], {})
    assert f'href="/alerts/{shell["id"]}">unusual_destination/reverse_shell</a>' in page
    assert f'href="/alerts/{scan["id"]}">port_scan</a>' in page
    assert '<option value="reverse_shell">' in page and '<option value="unusual_destination">' in page
    assert render_text(shell).splitlines()[0].endswith(f"{shell['title']} (unusual_destination/reverse_shell)")


def test_a_finding_surer_than_before_raises_its_alerts_severity_and_triage_tells_it_escalated():
    """reverse_shell judges two ways: a session from a workload serving nothing is high, the same session
    once its workload is seen serving is critical; the alert (one id) takes the higher, never a lower."""
    from kubesonar.shared.alerts import merge_alert
    from kubesonar.shared.triage import on_detection

    source = {"ip": "10.0.0.7", "namespace": "shop", "workload": "shop/Deployment/web"}
    client = Finding("reverse_shell", source, 1, 2, {"role": "client"}, identity=("203.0.113.9:4444",),
                     severity="high")
    server = Finding("reverse_shell", source, 3, 4, {"role": "server"}, identity=("203.0.113.9:4444",))
    first = new_alert(client, "prod")
    assert first["severity"] == "high" and first["id"] == new_alert(server, "prod")["id"]
    raised = merge_alert(first, server)
    assert raised["severity"] == "critical"
    assert on_detection(first, raised, 5)[1] == "escalated"
    assert merge_alert(raised, client)["severity"] == "critical"


def test_a_finding_at_its_rules_severity_is_kept_as_before_so_the_version_before_reads_the_replay_log():
    source = {"ip": "10.0.0.7"}
    plain = Finding("port_scan", source, 1, 2, {}, identity=("x",))
    assert "severity" not in plain.document()  # Finding(**document) of the code before takes no severity
    assert Finding(**{**plain.document(), "identity": ("x",)}) == plain
    surer = Finding("reverse_shell", source, 1, 2, {}, severity="high")
    assert surer.document()["severity"] == "high"


def test_type_slash_rule_tells_apart_a_rule_from_the_type_it_shares_a_name_with():
    """beaconing is a type and a rule: long_connection reports as it. ``beaconing/beaconing`` takes the
    clocks alone, as ``unusual_destination/reverse_shell`` takes the shells alone."""
    clock, held, shell = _alert("beaconing"), _alert("long_connection"), _alert("reverse_shell")
    assert [AlertFilter(types=("beaconing",)).matches(a) for a in (clock, held, shell)] == [True, True, False]
    assert [AlertFilter(types=("beaconing/beaconing",)).matches(a) for a in (clock, held, shell)] == \
        [True, False, False]
    assert AlertFilter(types=("unusual_destination/reverse_shell",)).matches(shell)
    routing = parse_routing("destinations:\n"
                            "  - {name: clocks, kind: webhook, url: 'https://soc.example/c', secret: s,"
                            " types: [beaconing/beaconing]}\n")
    assert [d.wants(a) for d in routing.destinations for a in (clock, held)] == [True, False]
    with pytest.raises(ConfigError, match="unknown type or rule 'beaconing/reverse_shell'"):
        parse_routing("destinations:\n  - {name: x, kind: webhook, url: 'https://soc.example/x', secret: s,"
                      " types: [beaconing/reverse_shell]}\n")
