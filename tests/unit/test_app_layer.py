"""What the sensor reads beyond headers: DNS messages and mining JSON-RPC methods, from real captures
and from hostile bytes."""

from __future__ import annotations

import numpy as np

from kubesonar.sensor.app_layer import DnsParser, rpc_method_codes
from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.dissect import dissect
from kubesonar.sensor.offline import CaptureStats, read_captures
from kubesonar.sensor.synthetic import dns_message, tcp_sessions, write_traffic
from kubesonar.shared.dns import DnsMessages, registered_domain
from kubesonar.shared.mining import RPC_METHODS

from conftest import PCAPS


def _dns(path) -> DnsMessages:
    return DnsMessages.concat([o.dns for o in read_captures([path])])


def test_iodine_binary_labels_are_kept_byte_for_byte_and_nothing_is_malformed():
    stats = CaptureStats()
    dns = DnsMessages.concat([o.dns for o in read_captures([PCAPS / "dns_tunnel/ndpi_dns-tunnel-iodine.pcap"],
                                                           stats=stats)])
    assert stats.dns_malformed == 0 and stats.dns_messages == len(dns) > 400
    assert set(dns["qtype"].tolist()) == {10}  # NULL
    assert {registered_domain(n) for n in dns["qname"]} == {"pirate.sea"}
    assert any(any(ord(ch) > 127 for ch in n) for n in dns["qname"]), "base128 labels survive as latin-1"
    queries = dns.take(dns["response"] == 0)
    assert {q["client"] for q in queries.iter_dicts()} == {"10.0.2.30"}


def test_ordinary_lookups_parse_with_their_answers():
    dns = _dns(PCAPS / "benign/ppa1_dns.cap")
    answers = dns.take(dns["response"] == 1)
    assert len(answers) and (answers["answers"] > 0).any() and "chrissanders.org" in set(dns["qname"])


def test_truncated_and_garbage_dns_payloads_are_counted_never_fatal(tmp_path):
    rng = np.random.default_rng(3)
    good = dns_message("www.example.com", 1)
    payloads = [good, good[:7], good[:12] + b"\xff" * 5, b"\x00" * 12, rng.bytes(40)]
    from kubesonar.sensor.synthetic import _concat, _packets

    parts = [_packets(0x0A000001, 0x0A60000A, 40000 + i, 53, 17, 0, 0, [float(i)], [p]) for i, p in enumerate(payloads)]
    write_traffic(tmp_path / "dns.pcap", [_concat(parts)], 1.7e9)
    parser = DnsParser()
    (batch,) = list(read_capture(tmp_path / "dns.pcap"))
    parsed = parser.parse(batch, dissect(batch), batch.ts)
    assert list(parsed["qname"]) == ["www.example.com"]
    assert parser.malformed == 3  # cut inside the header is no DNS message at all (under 12 bytes): skipped


def test_mining_methods_are_named_and_generic_names_need_their_protocol_keys(tmp_path):
    rng = np.random.default_rng(4)
    client, pool = np.array([0x0A000001]), np.array([0xCB00714D])
    requests = [
        b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n',
        b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4...","pass":"x","agent":"XMRig/6"}}\n',
        b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"user":"alice"}}\n',  # a web app's login: no
        b'{"id":7,"method":"eth_submitLogin","params":["0xabc"]}\n',
        b'POST / HTTP/1.1\r\n\r\n{"method":"mining.subscribe"}',  # JSON-RPC in an HTTP body: found
        b'POST /q HTTP/1.1\r\n\r\nq="method":"mining.subscribe"',  # the words, but not JSON: no
        b'GET /?"method":"mining.subscribe" HTTP/1.1\r\n\r\n',  # in a URL, not a body: no
    ]
    parts = [tcp_sessions(rng, client, pool, np.array([3333 + i]), 1, 4, 1.0, i * 2.0, first_request=r)
             for i, r in enumerate(requests)]
    write_traffic(tmp_path / "rpc.pcap", parts, 1.7e9)
    names = set()
    for batch in read_capture(tmp_path / "rpc.pcap"):
        names |= {RPC_METHODS[c] for c in rpc_method_codes(batch, dissect(batch)) if c}
    assert names == {"mining.subscribe", "login", "eth_submitLogin"}
    flows = read_captures([tmp_path / "rpc.pcap"])
    methods = sorted(m for o in flows for m in o.flows["rpc_method"] if m)
    assert methods == ["eth_submitLogin", "login", "mining.subscribe", "mining.subscribe"]  # one per flow


def test_bitcoin_p2p_is_not_json_rpc():
    for batch in read_capture(PCAPS / "crypto_p2p/ndpi_bitcoin.pcap"):
        assert not rpc_method_codes(batch, dissect(batch)).any()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8))
def test_any_bytes_on_port_53_parse_or_count_never_raise(payloads):
    import tempfile
    from pathlib import Path

    from kubesonar.sensor.synthetic import _concat, _packets

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pcap"
        parts = [_packets(0x0A000001, 0x0A60000A, 40000 + i, 53, 17, 0, 0, [float(i)], [p or b"\0"])
                 for i, p in enumerate(payloads)]
        write_traffic(path, [_concat(parts)], 1.7e9)
        parser = DnsParser()
        for batch in read_capture(path):
            parsed = parser.parse(batch, dissect(batch), batch.ts)
            assert len(parsed) == parser.parsed
        assert parser.parsed + parser.malformed <= len(payloads)
