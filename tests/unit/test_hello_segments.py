"""ClientHellos longer than one TCP segment (sensor/hello_segments.py), through the real offline path:
OpenSSL's own ClientHello, written to a capture as a client's TCP stack would send it."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from scapy.all import IP, TCP, Ether, Raw, wrpcap

from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.sensor.tls_hello import parse_client_hello
from kubesonar.shared.flow import FlowRecords

from conftest import require_tool

SERVER_NAME = "beacon.example.org"


def _openssl_hello(protocols: int = 40) -> bytes:
    """The ClientHello the machine's OpenSSL sends; many ALPN values make it longer than a segment, as
    a post-quantum key share does for today's browsers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols([f"proto-{i:03d}-" + "x" * 24 for i in range(protocols)])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def _connection(segments: list[bytes], order: list[int] | None = None, snap: int = 0) -> list:
    """A TCP handshake, the client's segments (in ``order``), the server's answer; ``snap`` > 0 cuts
    every frame to that many bytes, as a capture's snap length does."""
    c, s = dict(src="10.0.0.5", dst="93.184.216.34"), dict(src="93.184.216.34", dst="10.0.0.5")
    frames = [Ether() / IP(**c) / TCP(sport=40000, dport=443, flags="S", seq=1000),
              Ether() / IP(**s) / TCP(sport=443, dport=40000, flags="SA", seq=5000, ack=1001),
              Ether() / IP(**c) / TCP(sport=40000, dport=443, flags="A", seq=1001, ack=5001)]
    seq, sent = 1001, []
    for part in segments:
        sent.append(Ether() / IP(**c) / TCP(sport=40000, dport=443, flags="PA", seq=seq, ack=5001) / Raw(part))
        seq += len(part)
    frames += [sent[k] for k in (order or range(len(sent)))]
    frames.append(Ether() / IP(**s) / TCP(sport=443, dport=40000, flags="PA", seq=5001, ack=seq) / Raw(b"\x16\x03\x03" + bytes(80)))
    for k, f in enumerate(frames):
        f.time = 1_700_000_000 + k * 0.01
    if snap:
        frames = [Ether(bytes(f)[:snap]) if len(f) > snap else f for f in frames]
        for k, f in enumerate(frames):
            f.time = 1_700_000_000 + k * 0.01
    return frames


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[k : k + size] for k in range(0, len(data), size)]


def _client_flow(tmp_path: Path, frames: list, snaplen: int = 65535) -> tuple[dict, CaptureStats]:
    path = tmp_path / "hello.pcap"
    wrpcap(str(path), frames, snaplen=snaplen)
    stats = CaptureStats()
    records = FlowRecords.concat(list(flows_from_captures([path], stats=stats)))
    (row,) = [r for r in records.iter_dicts() if r["proto"] == 6]
    return row, stats


@pytest.mark.parametrize("mss", [1448, 600, 100])
def test_a_hello_over_several_segments_is_fingerprinted_as_if_whole(tmp_path, mss):
    hello = _openssl_hello()
    assert len(hello) > 1448, "longer than one segment at the usual MSS"
    expected = parse_client_hello(hello)
    row, stats = _client_flow(tmp_path, _connection(_split(hello, mss)))
    assert (row["tls_sni"], row["tls_ja4"], row["tls_ja3"]) == (SERVER_NAME, expected.ja4(), expected.ja3())
    assert row["tls_alpn"] == expected.alpn_text() and row["tls_alpn"].startswith("proto-000-")
    assert (stats.tls_client_hellos, stats.tls_unreadable) == (1, 0)


def test_the_joined_hello_equals_tsharks_reassembly(tmp_path):
    hello = _openssl_hello()
    frames = _connection(_split(hello, 1448))
    row, _ = _client_flow(tmp_path, frames)
    out = subprocess.run([require_tool("tshark"), "-n", "-r", str(tmp_path / "hello.pcap"), "-Y", "tls.handshake.type == 1",
                          "-T", "fields", "-e", "tls.handshake.ja3", "-e", "tls.handshake.extensions_server_name"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [row["tls_ja3"], SERVER_NAME]


@pytest.mark.parametrize("case", ["second segment lost", "reordered", "continuation cut by the snap length"])
def test_a_hello_that_cannot_be_made_whole_is_counted_never_misread(tmp_path, case):
    parts = _split(_openssl_hello(), 800)
    snaplen = 65535
    if case == "second segment lost":
        frames = _connection([parts[0], parts[2]])
    elif case == "reordered":
        frames = _connection(parts, order=[0, 2, 1])
    else:
        frames, snaplen = _connection(parts, snap=54 + 700), 54 + 700
        frames[3] = _connection(parts)[3]  # the first segment kept whole, as the sensor's filter keeps it
    row, stats = _client_flow(tmp_path, frames, snaplen)
    assert (row["tls_sni"], row["tls_ja4"]) == ("", "")
    assert (stats.tls_client_hellos, stats.tls_unreadable) == (0, 1)
