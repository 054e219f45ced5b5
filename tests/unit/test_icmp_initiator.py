"""Who asked, in ICMP flows read from crafted captures through the real sensor: request and reply types
name the asker even when a record starts with the reply; advertisements to a group and errors do not
turn the ends round."""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, PcapWriter, Raw
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NIQueryNOOP,
    ICMPv6NIReplyNOOP,
    ICMPv6Unknown,
    IPv6,
)

from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.detectors import batch_of
from kubesonar.shared.detectors.icmp_tunneling import IcmpTunnelingDetector
from kubesonar.shared.flow import FlowRecords

from helpers import flows_of

T0 = 1_780_000_000.0
ASKER4, PEER4 = "10.0.0.1", "10.0.0.2"
ASKER6, PEER6 = "fd00::1", "fd00::2"


def _write(path, packets, every_s=0.5):
    w = PcapWriter(str(path), sync=True, linktype=1)
    for k, p in enumerate(packets):
        p = Ether() / p
        p.time = T0 + k * every_s
        w.write(p)
    w.close()
    return path


def _v4(ask, answer):
    return (lambda s, d: IP(src=s, dst=d) / ICMP(type=ask, id=7), lambda s, d: IP(src=s, dst=d) / ICMP(type=answer, id=7))


def _v6(ask, answer):
    return lambda s, d: IPv6(src=s, dst=d) / ask(), lambda s, d: IPv6(src=s, dst=d) / answer()


def _v6_type(ask, answer):
    return _v6(lambda: ICMPv6Unknown(type=ask, msgbody=b"\x00" * 8), lambda: ICMPv6Unknown(type=answer, msgbody=b"\x00" * 8))


PAIRS = {
    "echo": _v4(8, 0), "timestamp": _v4(13, 14), "information": _v4(15, 16), "address mask": _v4(17, 18),
    "router discovery": _v4(10, 9), "extended echo": _v4(42, 43),
    "echo6": _v6(ICMPv6EchoRequest, ICMPv6EchoReply), "router discovery6": _v6(ICMPv6ND_RS, ICMPv6ND_RA),
    "neighbour discovery6": _v6(lambda: ICMPv6ND_NS(tgt=PEER6), lambda: ICMPv6ND_NA(tgt=PEER6, S=1)),
    "node information6": _v6(ICMPv6NIQueryNOOP, ICMPv6NIReplyNOOP), "extended echo6": _v6_type(160, 161),
}


@pytest.mark.parametrize("name", PAIRS)
def test_a_record_that_starts_with_a_reply_names_the_asker(tmp_path, name):
    """A capture (or a sensor) that starts between a request and its reply: the replier only answers."""
    request, reply = PAIRS[name]
    asker, peer = (ASKER6, PEER6) if name.endswith("6") else (ASKER4, PEER4)
    exchange = [reply(peer, asker)] + [m for _ in range(3) for m in (request(asker, peer), reply(peer, asker))]
    (flow,) = flows_of(_write(tmp_path / "r.pcap", exchange))
    assert (flow["src_ip"], flow["dst_ip"], flow["packets_out"], flow["packets_in"]) == (asker, peer, 3, 4)


@pytest.mark.parametrize("advertisement, group", [
    (IPv6(src="fe80::1", dst="ff02::1") / ICMPv6ND_RA(), "ff02::1"),
    (IPv6(src="fe80::2", dst="ff02::1") / ICMPv6ND_NA(tgt="fe80::2", O=1), "ff02::1"),
    (IP(src="10.0.0.254", dst="224.0.0.1") / ICMP(type=9) / Raw(bytes(8)), "224.0.0.1"),
    (IP(src="10.0.0.254", dst="255.255.255.255") / ICMP(type=9) / Raw(bytes(8)), "255.255.255.255"),
])
def test_an_advertisement_to_a_group_answers_no_one(tmp_path, advertisement, group):
    """Routers and neighbours advertise unasked, to all nodes: the advertiser started it, not the group."""
    (flow,) = flows_of(_write(tmp_path / "a.pcap", [advertisement] * 3))
    assert flow["dst_ip"] == group and flow["packets_out"] == 3


@pytest.mark.parametrize("first, then, icmp_type", [
    # port unreachable for a UDP probe, seen before the probe
    (IP(src=PEER4, dst=ASKER4) / ICMP(type=3, code=3)
     / bytes(IP(src=ASKER4, dst=PEER4) / UDP(sport=40000, dport=33434))[:28],
     IP(src=ASKER4, dst=PEER4) / UDP(sport=40000, dport=33434), 3),
    # a router's time exceeded for an echo request, seen before the request
    (IP(src="10.0.0.254", dst=ASKER4) / ICMP(type=11)
     / bytes(IP(src=ASKER4, dst=PEER4, ttl=1) / ICMP(type=8, id=9) / Raw(bytes(56)))[:28],
     IP(src=ASKER4, dst=PEER4) / ICMP(type=8, id=9) / Raw(bytes(56)), 8),
    # administratively prohibited for a SYN, and unreachable for a timestamp request
    (IP(src=PEER4, dst=ASKER4) / ICMP(type=3, code=13)
     / bytes(IP(src=ASKER4, dst=PEER4) / TCP(sport=51000, dport=80, flags="S"))[:28],
     IP(src=ASKER4, dst=PEER4) / TCP(sport=51000, dport=80, flags="S"), 3),
    (IP(src=PEER4, dst=ASKER4) / ICMP(type=3, code=13) / bytes(IP(src=ASKER4, dst=PEER4) / ICMP(type=13)),
     IP(src=ASKER4, dst=PEER4) / ICMP(type=13), 13),
    (IPv6(src=PEER6, dst=ASKER6) / ICMPv6DestUnreach(code=4)
     / bytes(IPv6(src=ASKER6, dst=PEER6) / UDP(sport=40001, dport=33435)),
     IPv6(src=ASKER6, dst=PEER6) / UDP(sport=40001, dport=33435), 1),
], ids=["udp port unreachable", "echo time exceeded", "tcp prohibited", "timestamp unreachable", "udp6 unreachable"])
def test_an_error_seen_first_counts_for_the_end_it_answers(tmp_path, first, then, icmp_type):
    """An ICMP flow's type stays its own message's; any other flow's is the error it received."""
    (flow,) = flows_of(_write(tmp_path / "e.pcap", [first, then]))
    assert flow["src_ip"] in (ASKER4, ASKER6) and (flow["packets_out"], flow["packets_in"]) == (1, 1)
    assert flow["icmp_type"] == icmp_type


def test_a_monitors_pings_after_an_error_are_no_tunnel_in_another_type(tmp_path):
    """A monitor's own fixed 24-byte payload is odd but no tunnel (test_icmp_tunneling.py); a record that a
    router's host-unreachable opens (the capture began after the request it answers) is still echo."""
    monitor, pod, data = ASKER4, PEER4, b"MONITOR-CHECK-PAYLOAD-01"
    request = IP(src=monitor, dst=pod) / ICMP(type=8, id=5, seq=99) / Raw(data)
    exchange = [IP(src="10.0.0.254", dst=monitor) / ICMP(type=3, code=1) / bytes(request)[:28]]
    for k in range(12):
        exchange += [IP(src=monitor, dst=pod) / ICMP(type=8, id=5, seq=k) / Raw(data),
                     IP(src=pod, dst=monitor) / ICMP(type=0, id=5, seq=k) / Raw(data)]
    flows = FlowRecords.concat(list(flows_from_captures([_write(tmp_path / "m.pcap", exchange, every_s=5.0)])))
    assert flows["icmp_type"].tolist() == [8] and flows["icmp_odd"].tolist() == [24]
    assert not IcmpTunnelingDetector().observe(batch_of(flows))


def test_interim_records_keep_the_asker(tmp_path):
    request, reply = PAIRS["timestamp"]
    exchange = [reply(PEER4, ASKER4)] + [m for _ in range(20) for m in (request(ASKER4, PEER4), reply(PEER4, ASKER4))]
    records = flows_of(_write(tmp_path / "i.pcap", exchange, every_s=1.0), FlowTimeouts(active_s=10, idle_s=60))
    assert len(records) == 5 and {r["src_ip"] for r in records} == {ASKER4}


def test_a_tunnel_in_another_request_type_names_its_client_when_the_capture_starts_with_a_reply(tmp_path):
    """Both ends on one side: icmp_tunneling names each end that asked, never one that only answers.
    The client's requests (extended echo, RFC 8335) carry its data; its server answers with data too."""
    client, server = "192.168.7.10", "192.168.7.20"
    exchange = []
    for k in range(15):
        exchange.append(IP(src=client, dst=server) / ICMP(type=42, id=3, seq=k) / Raw(b"put %03d " % k * (8 + k)))
        exchange.append(IP(src=server, dst=client) / ICMP(type=43, id=3, seq=k) / Raw(b"ok %03d " % k * (4 + k)))
    path = _write(tmp_path / "t.pcap", exchange[1:])  # the capture began after the first request
    flows = FlowRecords.concat(list(flows_from_captures([path])))
    (finding,) = IcmpTunnelingDetector().observe(batch_of(flows))
    assert (finding.source["ip"], finding.evidence["peer"]) == (client, server)
    assert finding.evidence["named_end"] == "initiator" and finding.evidence["odd_in_flows_it_started"] == 29


@pytest.mark.parametrize("ask, answer, body", [(13, 14, 12), (17, 18, 4), (15, 16, 0)],
                         ids=["timestamp", "address mask", "information"])
def test_data_past_a_fixed_body_is_a_tunnel_and_the_body_alone_is_not(tmp_path, ask, answer, body):
    """Timestamp (three clocks), address mask (a mask) and information (nothing) have a fixed body
    (RFC 792, 950), which scapy writes: a plain exchange carries no data of its own; 200 bytes more in
    each request and reply is a channel, found by the sensor (icmp_odd) and named by icmp_tunneling."""
    def message(src: str, dst: str, kind: int, k: int, extra: int):
        packet = IP(src=src, dst=dst) / ICMP(type=kind, id=4, seq=k)
        assert len(packet[ICMP]) == 8 + body
        return packet / Raw((b"exfil %03d " % k * 20)[:extra]) if extra else packet

    def exchange(extra: int) -> list:
        return [m for k in range(15) for m in (message(ASKER4, PEER4, ask, k, extra),
                                               message(PEER4, ASKER4, answer, k, extra))]

    def flows(name: str, extra: int) -> FlowRecords:
        return FlowRecords.concat(list(flows_from_captures([_write(tmp_path / name, exchange(extra))])))

    plain = flows("plain.pcap", 0)
    assert plain["icmp_odd"].tolist() == [0] and not IcmpTunnelingDetector().observe(batch_of(plain))
    tunnel = flows("tunnel.pcap", 200)
    assert tunnel["icmp_odd"].tolist() == [30]
    (finding,) = IcmpTunnelingDetector().observe(batch_of(tunnel))
    assert finding.source["ip"] == ASKER4 and "non_echo_data" in finding.evidence["reasons"]
