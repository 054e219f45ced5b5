"""DNS over TCP (RFC 1035 4.2.2: each message behind a two-byte length) read as UDP's is: a tunnel that
picks TCP is judged by the same rule, on the same names."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

import dpkt
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from kubesonar.compose import analyze
from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.dissect import dissect
from kubesonar.sensor.offline import CaptureStats, read_captures
from kubesonar.shared.dns import DnsMessages

CLIENT, SERVER = "10.0.0.7", "198.51.100.53"
T0 = 1_700_000_000.0


def _query(name: str, ident: int, qtype: int = dpkt.dns.DNS_TXT) -> dpkt.dns.DNS:
    return dpkt.dns.DNS(id=ident, rd=0, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])


def _answer(query: dpkt.dns.DNS, text: bytes) -> bytes:
    answer = dpkt.dns.DNS(id=query.id, qr=1, aa=1, qd=query.qd, an=[dpkt.dns.DNS.RR(
        name=query.qd[0].name, type=dpkt.dns.DNS_TXT, ttl=0, rdata=bytes([len(text)]) + text)])
    return bytes(answer)


def _framed(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def _tunnel_names(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    return [base64.b32encode(rng.bytes(30)).decode().rstrip("=").lower() + ".t.lab-tunnel.example" for _ in range(n)]


def _tcp_session(segments: list[tuple[bool, bytes]]) -> list:
    """One TCP connection to the server on 53: handshake, then each (from_client, payload) in order."""
    c, s = (CLIENT, 41000), (SERVER, 53)
    seq = {True: 1000, False: 5000}
    packets = [Ether() / IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="S", seq=999),
               Ether() / IP(src=s[0], dst=c[0]) / TCP(sport=s[1], dport=c[1], flags="SA", seq=4999, ack=1000),
               Ether() / IP(src=c[0], dst=s[0]) / TCP(sport=c[1], dport=s[1], flags="A", seq=1000, ack=5000)]
    for from_client, payload in segments:
        src, dst = (c, s) if from_client else (s, c)
        packets.append(Ether() / IP(src=src[0], dst=dst[0]) / TCP(
            sport=src[1], dport=dst[1], flags="PA", seq=seq[from_client], ack=seq[not from_client]) / Raw(payload))
        seq[from_client] += len(payload)
    for k, p in enumerate(packets):
        p.time = T0 + k * 0.25
    return packets


def _dns(path: Path, stats: CaptureStats | None = None) -> DnsMessages:
    return DnsMessages.concat([o.dns for o in read_captures([path], stats=stats)])


def test_a_tunnel_over_dns_tcp_reads_as_over_udp_and_is_reported(tmp_path):
    queries = [_query(name, k) for k, name in enumerate(_tunnel_names(30))]
    rng = np.random.default_rng(1)
    answers = [_answer(q, base64.b64encode(rng.bytes(90))) for q in queries]
    tcp = [seg for q, a in zip(queries, answers, strict=True) for seg in ((True, _framed(bytes(q))), (False, _framed(a)))]
    wrpcap(str(tmp_path / "tcp.pcap"), _tcp_session(tcp))
    udp = []
    for k, (q, a) in enumerate(zip(queries, answers, strict=True)):
        udp += [Ether() / IP(src=CLIENT, dst=SERVER) / UDP(sport=41000, dport=53) / Raw(bytes(q)),
                Ether() / IP(src=SERVER, dst=CLIENT) / UDP(sport=53, dport=41000) / Raw(a)]
        udp[-2].time, udp[-1].time = T0 + k, T0 + k + 0.1
    wrpcap(str(tmp_path / "udp.pcap"), udp)
    stats = CaptureStats()
    over_tcp, over_udp = _dns(tmp_path / "tcp.pcap", stats), _dns(tmp_path / "udp.pcap")
    fields = ("client", "server", "response", "qname", "qtype", "rcode", "answers", "size")
    assert len(over_tcp) == 60 and stats.dns_malformed == 0
    assert [tuple(r[f] for f in fields) for r in over_tcp.iter_dicts()] == [
        tuple(r[f] for f in fields) for r in over_udp.iter_dicts()]
    alerts = analyze([str(tmp_path / "tcp.pcap")]).alerts
    assert {(a["type"], a["source"]["ip"]) for a in alerts} >= {("dns_tunneling", CLIENT)}


def test_two_messages_in_a_segment_and_an_answer_split_over_two(tmp_path):
    first, second = _query("www.example.com", 1, dpkt.dns.DNS_A), _query("api.example.com", 2, dpkt.dns.DNS_A)
    long_answer = _framed(_answer(first, b"x" * 200))
    wrpcap(str(tmp_path / "s.pcap"), _tcp_session([
        (True, _framed(bytes(first)) + _framed(bytes(second))),  # pipelined (RFC 7766 6.2.1.1)
        (False, long_answer[:60]), (False, long_answer[60:]),  # the answer over two segments
    ]))
    stats = CaptureStats()
    dns = _dns(tmp_path / "s.pcap", stats)
    assert [(r["qname"], r["response"], r["answers"], r["size"]) for r in dns.iter_dicts()] == [
        ("www.example.com", 0, 0, len(bytes(first))), ("api.example.com", 0, 0, len(bytes(second))),
        ("www.example.com", 1, 1, len(long_answer) - 2)]  # the cut answer: its question and header counts
    assert stats.dns_malformed <= 1  # the continuation read as a prefix is refused, never parsed


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6))
def test_any_bytes_on_tcp_port_53_parse_or_count_never_raise(payloads):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pcap"
        wrpcap(str(path), _tcp_session([(k % 2 == 0, p) for k, p in enumerate(payloads)]))
        parser = DnsParser()
        for batch in read_capture(path):
            parsed = parser.parse(batch, dissect(batch), batch.ts)
            assert len(parsed) == parser.parsed
