"""shared/alert_fit.py: what goes first when an alert must be cut to fit a notification channel."""

from __future__ import annotations

from alert_fixtures import grown_alert

from kubesonar.shared.alert_fit import alert_json, fit_alert


def test_an_alert_that_fits_is_sent_as_it_is():
    alert = grown_alert(100, comments=3)
    assert fit_alert(alert, len(alert_json(alert))) is alert


def test_the_evidence_goes_after_every_comment():
    alert = grown_alert(100, comments=3)
    alert["evidence"] = {"ports": list(range(20_000))}
    fitted = fit_alert(alert, 8192)
    assert fitted["cut"]["fields"] == ["history", "evidence"] and fitted["evidence"] == {}
    assert fitted["comments"] == alert["comments"] and len(alert_json(fitted)) <= 8192


def test_past_the_usual_fields_the_largest_go_and_what_names_the_alert_stays():
    alert = grown_alert(100, comments=0)
    alert["description"] = "d" * 50_000
    fitted = fit_alert(alert, 4096)
    assert "description" in fitted["cut"]["fields"] and "description" not in fitted
    assert {k: fitted[k] for k in ("id", "type", "severity", "title", "cluster")} == \
        {k: alert[k] for k in ("id", "type", "severity", "title", "cluster")}
    assert fitted["cut"]["whole_bytes"] == len(alert_json(alert)) and len(alert_json(fitted)) <= 4096


def test_the_rule_stays_beside_the_type_whatever_is_cut():
    """A reverse shell cut to its last fields is still one: without ``rule`` a subscriber reads it as the
    rule of its type (shared/alerts.py: ``alert_rule``), an unusual_destination found by new ports."""
    alert = grown_alert(100, comments=0)
    alert.update(type="unusual_destination", rule="reverse_shell", description="d" * 50_000)
    fitted = fit_alert(alert, 1)  # nothing fits: all that may go has gone
    assert (fitted["type"], fitted["rule"]) == ("unusual_destination", "reverse_shell")
    assert {"source", "evidence", "mitre", "description"} <= set(fitted["cut"]["fields"])


def test_the_history_goes_first_and_alone_when_that_is_enough():
    alert = grown_alert(1000, comments=10)
    fitted = fit_alert(alert, len(alert_json(alert)) - 100)
    assert fitted["cut"] == {"fields": ["history"], "whole_bytes": len(alert_json(alert))}
    assert fitted["comments"] == alert["comments"] and fitted["history"] == []
