"""The real captures through the real pipeline (offline sensor, batch messages, core, local store)."""

from __future__ import annotations

import csv

import pytest

from kubesonar.compose import analyze

from conftest import PCAPS


def _labels():
    with open(PCAPS / "labels.csv") as f:
        return list(csv.DictReader(f))


SCANS = [r for r in _labels() if r["category"] == "portscan"]
BENIGN = [r for r in _labels() if r["category"] == "benign"]


def test_the_labels_name_scans_and_benign_captures():
    assert len(SCANS) >= 5 and len(BENIGN) >= 5


@pytest.mark.parametrize("label", SCANS, ids=lambda r: r["path"])
def test_every_port_scan_capture_raises_a_port_scan_from_the_labelled_scanner(label):
    result = analyze([str(PCAPS / label["path"])])
    scans = [a for a in result.alerts if a["type"] == "port_scan"]
    assert [a["source"]["ip"] for a in scans] == [label["actor_ip"]]
    evidence = scans[0]["evidence"]
    assert evidence["failed_first_contacts"] >= 100 and label["target_ip"] in evidence["targets"]


@pytest.mark.parametrize("label", BENIGN, ids=lambda r: r["path"])
def test_no_benign_capture_raises_any_alert(label):
    result = analyze([str(PCAPS / label["path"])])
    assert result.flows > 0 and result.alerts == []


def test_one_ongoing_scan_is_one_alert_updated(tmp_path):
    """The same scanner goes on with a UDP scan in a later run: its alert is updated, not doubled."""
    state = str(tmp_path / "state")
    first = analyze([str(PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap")], state_dir=state).alerts
    again = analyze([str(PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap")], state_dir=state).alerts
    assert len(first) == len(again) == 1
    assert again[0]["id"] == first[0]["id"] and again[0]["count"] == first[0]["count"] + 1
