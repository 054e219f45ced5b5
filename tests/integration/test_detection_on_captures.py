"""The real captures through the real pipeline (offline sensor, batch messages, core, local store)."""

from __future__ import annotations

import csv

import pytest

from kubesonar.compose import analyze

from conftest import DATA, PCAPS

MORE = DATA / "more"


def _labels(root=PCAPS):
    with open(root / "labels.csv") as f:
        return list(csv.DictReader(f))


SCANS = [r for r in _labels() if r["category"] == "portscan"]
BENIGN = [r for r in _labels() if r["category"] == "benign"]
# the second set (more/): DNS tunnels of seven tools, and benign traffic that looks like new signals
MORE_TUNNELS = [r for r in _labels(MORE) if r["category"] == "dns_tunnel"]
MORE_BENIGN = [r for r in _labels(MORE) if r["category"] == "benign"]


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


def _tiny_scan_capture(path) -> None:
    """A client that keeps opening HTTPS connections to new servers (handshake, data, FIN), and over one
    minute tries seven ports of one host, each refused with RST: a connect scan amid normal work."""
    from scapy.all import IP, TCP, Ether, wrpcap

    client, victim, packets, t = "10.1.1.5", "10.1.3.9", [], 1_700_000_000.0

    def at(packet, ts):
        packet.time = ts
        packets.append(packet)

    def session(server: str, sport: int, ts: float) -> None:
        at(Ether() / IP(src=client, dst=server) / TCP(sport=sport, dport=443, flags="S", seq=1), ts)
        at(Ether() / IP(src=server, dst=client) / TCP(sport=443, dport=sport, flags="SA", seq=9, ack=2), ts + .01)
        at(Ether() / IP(src=client, dst=server) / TCP(sport=sport, dport=443, flags="A", seq=2, ack=10), ts + .02)
        at(Ether() / IP(src=client, dst=server) / TCP(sport=sport, dport=443, flags="FA", seq=2, ack=10), ts + .1)
        at(Ether() / IP(src=server, dst=client) / TCP(sport=443, dport=sport, flags="FA", seq=10, ack=3), ts + .11)
        at(Ether() / IP(src=client, dst=server) / TCP(sport=sport, dport=443, flags="A", seq=3, ack=11), ts + .12)

    for i in range(30):  # browsing first: the source's walk sits at its floor
        session(f"10.1.2.{i + 1}", 40000 + i, t + i)
    for i, port in enumerate((21, 22, 23, 25, 110, 139, 445)):
        ts = t + 60 + 10 * i
        at(Ether() / IP(src=client, dst=victim) / TCP(sport=41000 + i, dport=port, flags="S", seq=1), ts)
        at(Ether() / IP(src=victim, dst=client) / TCP(sport=port, dport=41000 + i, flags="RA", ack=2), ts + .001)
        session(f"10.1.4.{i + 1}", 42000 + i, ts + 5)  # and browsing on between the probes
    wrpcap(str(path), sorted(packets, key=lambda p: p.time))


def test_seven_refused_ports_in_a_minute_from_a_busy_client_are_a_scan(tmp_path):
    _tiny_scan_capture(tmp_path / "tiny.pcap")
    result = analyze([str(tmp_path / "tiny.pcap")])
    (scan,) = [a for a in result.alerts if a["type"] == "port_scan"]
    assert scan["source"]["ip"] == "10.1.1.5" and "10.1.3.9" in scan["evidence"]["targets"]
    assert {a["type"] for a in result.alerts} == {"port_scan"}


@pytest.mark.parametrize("label", MORE_TUNNELS, ids=lambda r: r["path"])
def test_every_dns_tunnel_of_the_second_set_is_seen_cold_from_its_client(label):
    result = analyze([str(MORE / label["path"])])  # the default learning period: tunnels need none
    tunnels = [a for a in result.alerts if a["type"] == "dns_tunneling"]
    assert [a["source"]["ip"] for a in tunnels] == [label["actor_ip"]]


@pytest.mark.parametrize("label", MORE_BENIGN, ids=lambda r: r["path"])
def test_no_benign_capture_of_the_second_set_raises_any_alert(label):
    result = analyze([str(MORE / label["path"])], learning_period_s=0, internal_networks=())
    assert result.flows > 0 and result.alerts == []


def _direct_dns_capture(path) -> None:
    """dnscat2 without a domain: 40 CNAME questions of hex labels, no real top-level domain, sent straight
    to the attacker's server, each answered; and beside it a host browsing through its resolver."""
    import secrets

    from scapy.all import DNS, DNSQR, DNSRR, IP, UDP, Ether, wrpcap

    packets, t = [], 1_700_000_000.0

    def ask(client: str, server: str, name: str, qtype: str, answer: str, ts: float, sport: int) -> None:
        query = Ether() / IP(src=client, dst=server) / UDP(sport=sport, dport=53) / DNS(
            id=sport, rd=1, qd=DNSQR(qname=name, qtype=qtype))
        reply = Ether() / IP(src=server, dst=client) / UDP(sport=53, dport=sport) / DNS(
            id=sport, qr=1, aa=1, qd=DNSQR(qname=name, qtype=qtype), an=DNSRR(rrname=name, type=qtype, rdata=answer))
        query.time, reply.time = ts, ts + 0.02
        packets.extend([query, reply])

    for i in range(40):
        name = f"dnscat.{secrets.token_hex(24)}.{secrets.token_hex(8)}"
        ask("10.1.1.5", "203.0.113.53", name, "CNAME", f"{secrets.token_hex(20)}.x", t + 2 * i, 30000 + i)
    for i, host in enumerate(["www.example.com", "cdn.example.net", "api.example.org"] * 5):
        ask("10.1.1.6", "10.1.1.1", host, "A", "192.0.2.10", t + i, 31000 + i)
    wrpcap(str(path), sorted(packets, key=lambda p: p.time))


def test_a_tunnel_with_no_real_top_level_domain_sent_straight_to_its_server_is_seen(tmp_path):
    _direct_dns_capture(tmp_path / "direct.pcap")
    result = analyze([str(tmp_path / "direct.pcap")])
    (tunnel,) = [a for a in result.alerts if a["type"] == "dns_tunneling"]
    assert tunnel["source"]["ip"] == "10.1.1.5" and tunnel["evidence"]["server"] == "203.0.113.53"
    assert "encoded_data_types" in tunnel["evidence"]["reasons"]
    assert [a for a in result.alerts if a["source"]["ip"] == "10.1.1.6"] == []
