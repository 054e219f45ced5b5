"""Flow schema 5's ``opening`` as the sensor fills it on real captures, checked against tshark's view of
each TCP stream: who sent the SYN, who sent the first payload and what its first bytes are."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict

import numpy as np
import pytest
from scapy.all import IP, TCP, Ether, Raw, wrpcap

from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.dissect import dissect, dissect_vectorised
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.batch import BatchHeader, decode_batch, encode_batch
from kubesonar.shared.flow import FlowRecords, Opening

from conftest import DATA, PCAPS, require_tool

MORE = DATA / "more"
# TLS on port 80 (Empire), HTTP on 80 and TLS on 443 (browsers), SMTP (server first), SSH, HTTP on 7080
CAPTURES = [MORE / "c2_beacon/spiderlabs_ps-empire.pcap", MORE / "benign/ja4_latest.pcapng",
            PCAPS / "benign/chrissanders_http_espn.pcapng", MORE / "exfil/corelight_agenttesla_smtp_a30789ce.pcap",
            PCAPS / "benign/ndpi_ssh.pcap", PCAPS / "c2_beacon/ndpi_trickbot.pcap"]
# RFC 9110: a request line starts with a method token and a space; a response with the protocol version
_HTTP = re.compile(rb"[A-Z]{3,7} |HTTP/")


def _by_bytes(payload: bytes) -> Opening:
    if _HTTP.match(payload):
        return Opening.HTTP
    if len(payload) >= 5 and 20 <= payload[0] <= 23 and payload[1] == 3:
        return Opening.TLS
    return Opening.OTHER


def _tshark_openings(path) -> dict[frozenset, Opening]:
    """Per TCP stream (its two endpoints): how it opened, read from tshark's frames."""
    out = subprocess.run(
        [require_tool("tshark"), "-n", "-r", str(path), "-Y", "tcp", "-T", "fields", "-E", "separator=\t",
         "-e", "tcp.stream", "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "tcp.dstport",
         "-e", "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "tcp.len", "-e", "tcp.payload"],
        capture_output=True, text=True, check=True).stdout
    streams: dict[str, dict] = defaultdict(dict)
    for line in out.splitlines():
        stream, src, sport, dst, dport, syn, ack, size, payload = line.split("\t")
        s = streams[stream]
        s.setdefault("ends", frozenset({(src, int(sport)), (dst, int(dport))}))
        if syn in ("1", "True") and ack in ("0", "False") and "initiator" not in s and "opening" not in s:
            s["initiator"] = (src, int(sport))
        if int(size or 0) > 0 and "opening" not in s:
            if "initiator" not in s:
                s["opening"] = Opening.UNKNOWN  # joined mid-stream
            elif (src, int(sport)) != s["initiator"]:
                s["opening"] = Opening.RESPONDER_FIRST
            else:
                s["opening"] = _by_bytes(bytes.fromhex(payload.replace(":", "")))
    return {s["ends"]: s.get("opening", Opening.UNKNOWN) for s in streams.values()}


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_opening_equals_what_tshark_shows_of_each_streams_first_payload(path):
    flows = FlowRecords.concat(list(flows_from_captures([path])))
    got: dict[frozenset, set[int]] = defaultdict(set)
    for r in flows.iter_dicts():
        if r["proto"] == 6:
            got[frozenset({(r["src_ip"], r["src_port"]), (r["dst_ip"], r["dst_port"])})].add(r["opening"])
    expected = _tshark_openings(path)
    single = {ends for ends, values in got.items() if len(values) == 1}  # a 5-tuple reused holds two streams
    assert single and {e: got[e].pop() for e in single} == {e: int(expected[e]) for e in single}


def test_empire_speaks_tls_on_port_80_and_browsers_their_ports_protocol():
    empire = FlowRecords.concat(list(flows_from_captures([CAPTURES[0]])))
    assert set(empire["opening"][empire["dst_port"] == 80].tolist()) == {Opening.TLS}
    browser = FlowRecords.concat(list(flows_from_captures([CAPTURES[1]])))
    for port, opening in ((80, Opening.HTTP), (443, Opening.TLS)):  # those whose handshake is in the capture
        seen = browser["opening"][browser["dst_port"] == port]
        assert set(seen[seen != Opening.UNKNOWN].tolist()) == {opening}


@pytest.mark.parametrize("payload, expected", [
    (b"GET / HTTP/1.1\r\n\r\n", Opening.HTTP), (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Opening.HTTP),
    (b"OPTIONS * HTTP/1.1\r\n", Opening.HTTP), (b"\x17\x03\x03\x00\x20" + bytes(32), Opening.TLS),
    (b"\x00\x00\x00\x2a\x01\x02", Opening.OTHER), (b"get / HTTP/1.1\r\n", Opening.OTHER),
    (b"GETTINGS x", Opening.OTHER), (b"SSH-2.0-OpenSSH_9.2\r\n", Opening.OTHER),
])
def test_a_connection_opens_with_its_clients_first_payload(tmp_path, payload, expected):
    a, b = ("10.0.0.1", 40000), ("203.0.113.7", 80)
    syn = Ether() / IP(src=a[0], dst=b[0]) / TCP(sport=a[1], dport=b[1], flags="S", seq=1)
    synack = Ether() / IP(src=b[0], dst=a[0]) / TCP(sport=b[1], dport=a[1], flags="SA", seq=9, ack=2)
    data = Ether() / IP(src=a[0], dst=b[0]) / TCP(sport=a[1], dport=b[1], flags="PA", seq=2, ack=10) / Raw(payload)
    reply = Ether() / IP(src=b[0], dst=a[0]) / TCP(sport=b[1], dport=a[1], flags="PA", seq=10, ack=2) / Raw(b"x")

    def opening(*packets) -> int:
        for k, p in enumerate(packets):
            p.time = 1_700_000_000 + k * 0.01
        wrpcap(str(tmp_path / "c.pcap"), list(packets))
        for batch in read_capture(tmp_path / "c.pcap"):  # the compiled pass and the numpy reference agree
            assert np.array_equal(dissect(batch).payload_kind, dissect_vectorised(batch).payload_kind)
        (flow,) = FlowRecords.concat(list(flows_from_captures([tmp_path / "c.pcap"]))).iter_dicts()
        return flow["opening"]

    assert opening(syn, synack, data, reply) == expected
    # the server speaking first (SMTP's greeting), or a stream joined after its handshake
    assert opening(syn, synack, reply, data) == Opening.RESPONDER_FIRST
    assert opening(data, reply) == Opening.UNKNOWN
    # the client's request lost by the capture: the server's reply acknowledges it, so the server did not
    # speak first; what the client said is not known
    answer = Ether() / IP(src=b[0], dst=a[0]) / TCP(sport=b[1], dport=a[1], flags="PA", seq=10,
                                                    ack=2 + len(payload)) / Raw(b"x")
    assert opening(syn, synack, answer) == Opening.UNKNOWN
    assert opening(synack, answer) == Opening.UNKNOWN  # the SYN lost too: the SYN-ACK's number tells it
    # its request's first segment lost: the next one starts past the stream's first byte
    rest = Ether() / IP(src=a[0], dst=b[0]) / TCP(sport=a[1], dport=b[1], flags="PA", seq=2 + 1368, ack=10) / Raw(payload)
    assert opening(syn, synack, rest, reply) == Opening.UNKNOWN


def test_a_schema_4_message_decodes_with_the_opening_unknown():
    flows = FlowRecords.concat(list(flows_from_captures([CAPTURES[1]])))
    assert flows["opening"].any()
    (message,) = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=4), flows)
    old = decode_batch(message).flows
    assert not old["opening"].any() and np.array_equal(old["tls_ja3"], flows["tls_ja3"])
    (message,) = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), flows)
    assert decode_batch(message).flows.equals(flows)
