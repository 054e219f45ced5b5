"""Flow schema 5's ``http_host`` as the sensor fills it on real captures, checked against tshark's HTTP
dissector: the Host header of the request an initiator opens its TCP connection with."""

from __future__ import annotations

import subprocess
from collections import defaultdict

import numpy as np
import pytest

from kubesonar.sensor.http_request import request_host
from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.batch import BatchHeader, decode_batch, encode_batch
from kubesonar.shared.flow import FlowRecords

from conftest import DATA, PCAPS, require_tool

MORE = DATA / "more"
# a browser's page load (61 requests to many names), a stealer posting to its named gate, a miner's
# getwork with a port in its Host, Cobalt Strike's HTTP beacon to an address with a port
CAPTURES = [PCAPS / "benign/chrissanders_http_espn.pcapng", MORE / "exfil/spiderlabs_predator_stealer_14July2019.pcap",
            MORE / "mining/jsiwek_bitcoin-mining.pcap",
            MORE / "c2_beacon/spiderlabs_cobaltstrike_2021-05-24_jquery_8443.pcap"]


def _host(value: str) -> str:
    """tshark's http.host as the sensor keeps it: lower case, without the port."""
    host = value.lower()
    return host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") and "]:" in host else host


def _tshark_hosts(path) -> dict[frozenset, str]:
    """Per TCP stream whose handshake is in the capture (its two endpoints): the host of the request
    the initiator's first payload holds, '' when that payload is no request or names none. Segments
    are dissected one by one, as the sensor reads them (no reassembly)."""
    out = subprocess.run(
        [require_tool("tshark"), "-n", "-r", str(path), "-o", "tcp.desegment_tcp_streams:FALSE", "-Y", "tcp && ip",
         "-T", "fields", "-E", "separator=\t", "-e", "tcp.stream", "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst",
         "-e", "tcp.dstport", "-e", "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "tcp.len", "-e", "http.request",
         "-e", "http.host"],
        capture_output=True, text=True, check=True).stdout
    streams: dict[str, dict] = defaultdict(dict)
    for line in out.splitlines():
        stream, src, sport, dst, dport, syn, ack, size, request, host = line.split("\t")
        s = streams[stream]
        s.setdefault("ends", frozenset({(src, int(sport)), (dst, int(dport))}))
        if syn in ("1", "True") and ack in ("0", "False") and "initiator" not in s:
            s["initiator"] = (src, int(sport))
        if int(size or 0) > 0 and s.get("initiator") == (src, int(sport)) and "host" not in s:
            s["host"] = _host(host) if request in ("1", "True") else ""
    return {s["ends"]: s.get("host", "") for s in streams.values() if "initiator" in s}


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_http_host_equals_what_tshark_reads_in_each_streams_first_request(path):
    flows = FlowRecords.concat(list(flows_from_captures([path])))
    got: dict[frozenset, set[str]] = defaultdict(set)
    for r in flows.iter_dicts():
        if r["proto"] == 6:
            got[frozenset({(r["src_ip"], r["src_port"]), (r["dst_ip"], r["dst_port"])})].add(r["http_host"])
    expected = _tshark_hosts(path)
    single = {ends for ends, values in got.items() if len(values) == 1 and ends in expected}  # 5-tuples reused
    assert any(expected[e] for e in single)
    assert {e: got[e].pop() for e in single} == {e: expected[e] for e in single}


@pytest.mark.parametrize("payload, host", [
    (b"GET / HTTP/1.1\r\nHost: Status.Example.COM:8080\r\nAccept: */*\r\n\r\n", "status.example.com"),
    (b"POST /gate HTTP/1.1\r\nContent-Length: 2\r\nhost:gate.example\r\n\r\n{}", "gate.example"),
    (b"GET / HTTP/1.1\r\nHost:  203.0.113.7:80 \r\n\r\n", "203.0.113.7"),
    (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n", "[2001:db8::1]"),
    (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", ""),  # HTTP/1.0 needs no Host
    (b"GET / HTTP/1.1\r\nHost: status.exam", ""),  # cut by the snap length: not a whole name
    (b"GET / HTTP/1.1\r\nX-Forwarded-Host: a.example\r\n\r\n", ""),
    (b"GET / HTTP/1.1\r\n\r\nHost: in.the.body\r\n", ""),
    (b"GET / HTTP/1.1\r\nHost: <script>\r\n\r\n", ""),  # only what a host is written with leaves the node
    (b"GET / HTTP/1.1\r\nHost: " + b"a" * 254 + b"\r\n\r\n", ""),
    (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n", ""),
])
def test_the_host_is_the_host_headers_name_or_nothing(payload, host):
    assert request_host(payload) == host


def test_a_schema_4_message_decodes_with_no_http_host():
    flows = FlowRecords.concat(list(flows_from_captures([CAPTURES[0]])))
    assert (flows["http_host"] != "").any()
    (message,) = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1, schema_version=4), flows)
    assert (decode_batch(message).flows["http_host"] == "").all()
    (message,) = encode_batch(BatchHeader("c", "n", "s", 1, 0, 1), flows)
    assert np.array_equal(decode_batch(message).flows["http_host"], flows["http_host"])
