"""unusual_destination's cold judgment: a web port reached with another protocol (T1571), on a real
capture through the whole pipeline, and its edges on flows built as the sensor writes them."""

from __future__ import annotations

import json

import pytest
from c2_flows import S, c2_flows

from kubesonar.compose import analyze
from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.unusual_destination import UnusualDestinationDetector
from kubesonar.shared.flow import Opening

from conftest import DATA

DAY_NS = 24 * 3600 * S
T = 1_767_225_600 * S


def _mismatches(findings) -> list:
    return [f for f in findings if f.evidence.get("kind") == "protocol_mismatch"]


def test_empires_tls_on_port_80_is_reported_cold_from_the_agent():
    outcome = analyze([str(DATA / "more/c2_beacon/spiderlabs_ps-empire.pcap")])
    found = [a for a in outcome.alerts if a["rule"] == "unusual_destination"]
    assert [(a["source"]["ip"], a["evidence"]["kind"], a["evidence"]["destination"], a["evidence"]["expected"],
             a["evidence"]["opened_with"]) for a in found] == [
        ("10.200.201.29", "protocol_mismatch", "18.220.208.40:80", "http", ["tls"])]


def test_http_requests_the_capture_lost_are_not_a_server_speaking_first(tmp_path):
    """A capture that dropped a client's request (a tap or kernel buffer overflowing) shows the web
    server's answer as the first payload: its acknowledgement number says the client spoke before it."""
    from scapy.all import TCP, PcapReader, wrpcap

    spoken: set[tuple] = set()
    kept, lost = [], 0
    with PcapReader(str(DATA / "pcaps/benign/chrissanders_http_espn.pcapng")) as packets:
        for p in packets:
            if TCP in p and p[TCP].dport == 80 and len(p[TCP].payload) and (p[TCP].sport, p[TCP].dport) not in spoken:
                spoken.add((p[TCP].sport, p[TCP].dport))  # each connection's first request
                lost += 1
                continue
            kept.append(p)
    wrpcap(str(tmp_path / "lossy.pcap"), kept)
    outcome = analyze([str(tmp_path / "lossy.pcap")])
    assert lost > 10 and outcome.flows
    assert [a["evidence"] for a in outcome.alerts if a["rule"] == "unusual_destination"] == []


def test_trickbots_http_to_an_address_on_7080_is_reported_cold_from_the_infected_host():
    outcome = analyze([str(DATA / "pcaps/c2_beacon/ndpi_trickbot.pcap")])
    found = [a for a in outcome.alerts if a["rule"] == "unusual_destination"]
    assert [(a["source"]["ip"], a["evidence"]["destination"], a["evidence"]["expected"],
             a["evidence"]["opened_with"]) for a in found] == [
        ("10.12.29.101", "82.118.225.196:7080", "http to a named host", ["http"])]


@pytest.mark.parametrize("port, host, reported", [
    (7080, "203.0.113.9", True), (8082, "198.51.100.7", True), (8080, "203.0.113.9", True), (449, "[2001:db8::9]", True),
    (7080, "api.example.com", False), (8081, "Api.Example.com", False),  # a service reached by name
    (80, "203.0.113.9", False),  # port 80's own protocol, by address or not
    (8080, "", False), (554, "", False),  # no Host seen (a request cut by the snap, RTSP): no evidence
])
def test_cleartext_http_off_port_80_pairs_with_a_host_name(port, host, reported):
    d = UnusualDestinationDetector(learning_period_ns=DAY_NS)
    flows = c2_flows([{"src": "10.0.0.5", "dst": "203.0.113.9", "t": T, "dport": port, "http_host": host,
                       "opening": Opening.HTTP}])
    assert bool(_mismatches(d.observe(batch_of(flows)))) == reported


@pytest.mark.parametrize("port, opening, reported", [
    (80, Opening.TLS, True), (80, Opening.OTHER, True), (80, Opening.RESPONDER_FIRST, True),
    (443, Opening.HTTP, True), (8443, Opening.HTTP, True), (443, Opening.OTHER, True),
    (80, Opening.HTTP, False), (443, Opening.TLS, False), (8443, Opening.TLS, False),
    (443, Opening.UNKNOWN, False),  # joined mid-stream, or no payload yet: nothing to judge
    (8080, Opening.TLS, False), (4444, Opening.OTHER, False),  # not a web port's service
])
def test_a_web_port_is_judged_by_how_its_connection_opened(port, opening, reported):
    d = UnusualDestinationDetector(learning_period_ns=DAY_NS)  # learning: only the cold judgment speaks
    flows = c2_flows([{"src": "10.0.0.5", "dst": "203.0.113.9", "t": T, "dport": port, "opening": opening}])
    assert bool(_mismatches(d.observe(batch_of(flows)))) == reported


def test_inside_the_cluster_is_not_judged_and_a_destination_is_reported_once():
    d = UnusualDestinationDetector(learning_period_ns=DAY_NS)
    inside = c2_flows([{"src": "10.0.0.5", "dst": "10.0.0.9", "t": T, "dport": 80, "opening": Opening.OTHER}])
    assert not _mismatches(d.observe(batch_of(inside)))
    rat = [{"src": "10.0.0.5", "dst": "203.0.113.9", "t": T + k * 60 * S, "dport": 80, "opening": Opening.OTHER}
           for k in range(3)]
    (first,) = _mismatches(d.observe(batch_of(c2_flows(rat[:2]))))
    assert first.evidence["connections"] == 2
    # the state goes through its JSON document; the same destination later is not reported again
    d = UnusualDestinationDetector(learning_period_ns=DAY_NS).from_state(json.loads(json.dumps(d.to_state())))
    assert not _mismatches(d.observe(batch_of(c2_flows(rat[2:]))))
    other = c2_flows([{"src": "10.0.0.5", "dst": "203.0.113.10", "t": T + DAY_NS, "dport": 443,
                       "opening": Opening.HTTP}])
    assert len(_mismatches(d.observe(batch_of(other)))) == 1


def test_a_state_written_before_the_cold_judgment_loads_with_nothing_reported():
    d = UnusualDestinationDetector(learning_period_ns=DAY_NS)
    document = d.to_state()
    del document["mismatches"]
    d = UnusualDestinationDetector(learning_period_ns=DAY_NS).from_state(document)
    flows = c2_flows([{"src": "10.0.0.5", "dst": "203.0.113.9", "t": T, "dport": 80, "opening": Opening.TLS}])
    assert len(_mismatches(d.observe(batch_of(flows)))) == 1
