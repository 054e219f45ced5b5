"""QUIC clients' ClientHellos from their Initial packets (sensor/quic_initial.py), through the real offline
path, against tshark's own QUIC decryption on the shared captures; hostile datagrams never crash it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quic_packets import crypto_frame, seal_initial

from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.observe import observe
from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.quic_initial import QuicHellos, _open_initial, client_initial_frames, crypto_data
from kubesonar.shared.flow import FlowRecords

from conftest import DATA, require_tool

QUIC_CAPTURES = [DATA / "more/benign/zeek_quic_win11_firefox_google.pcap", DATA / "more/c2_beacon/zeek_merlinc2_quic.pcapng"]


def _client_hellos(path: Path) -> dict[tuple[str, int], tuple[str, str, str, str]]:
    records = FlowRecords.concat(list(flows_from_captures([path])))
    return {(r["src_ip"], r["src_port"]): (r["tls_ja3"], r["tls_sni"], r["tls_alpn"], r["tls_ja4"])
            for r in records.iter_dicts() if r["proto"] == 17 and r["tls_ja4"]}


@pytest.mark.parametrize("path", QUIC_CAPTURES, ids=lambda p: p.name)
def test_quic_hellos_equal_tsharks_decryption(path):
    out = subprocess.run([require_tool("tshark"), "-n", "-r", str(path), "-Y", "tls.handshake.type == 1", "-T", "fields",
                          "-E", "separator=\t", "-e", "ip.src", "-e", "udp.srcport", "-e", "tls.handshake.ja3",
                          "-e", "tls.handshake.extensions_server_name", "-e", "tls.handshake.extensions_alpn_str"],
                         capture_output=True, text=True, check=True).stdout
    expected = {(src, int(port)): (ja3, sni.lower(), alpn) for src, port, ja3, sni, alpn in
                (line.split("\t") for line in out.splitlines())}
    got = _client_hellos(path)
    assert expected and {k: v[:3] for k, v in got.items()} == expected
    assert all(ja4.startswith("q13") for *_, ja4 in got.values())


def test_merlins_quic_go_client_has_quic_gos_published_extension_hash():
    """Merlin's agent speaks QUIC through quic-go; its JA4's cipher and extension hashes are those a
    quic-go HTTP/3 client is published with (q13d0312h3_55b375c5d22e_c183556c78e2, with SNI); this
    agent dials an address, so no SNI (``i``) and one extension fewer."""
    (ja4,) = [v[3] for v in _client_hellos(QUIC_CAPTURES[1]).values()]
    assert ja4 == "q13i0311h3_55b375c5d22e_c183556c78e2"


def _datagrams(path: Path) -> list[bytes]:
    out = subprocess.run([require_tool("tshark"), "-n", "-r", str(path), "-Y", "quic && udp.length >= 1208", "-T",
                          "fields", "-e", "udp.payload"], capture_output=True, text=True, check=True).stdout
    return [bytes.fromhex(line) for line in out.split()]


def test_a_client_initial_cut_or_altered_anywhere_gives_no_hello_and_no_error():
    """Authentication refuses any change: a flipped byte or a cut datagram yields nothing, never a
    misread hello."""
    datagram = _datagrams(QUIC_CAPTURES[0])[0]
    (dcid, frames), = client_initial_frames(datagram)
    assert crypto_data(frames)
    end = _open_initial(datagram, 0)[2]  # the Initial packet's end: padding may follow it in the datagram
    for at in range(0, end, 7):  # the header is authenticated too (as associated data)
        altered = bytearray(datagram)
        altered[at] ^= 0x40
        assert client_initial_frames(bytes(altered)) == [], at
    for cut in range(0, end, 11):
        assert client_initial_frames(datagram[:cut]) == []


def test_crypto_frames_out_of_order_and_over_two_packets_make_one_hello():
    datagram = _datagrams(QUIC_CAPTURES[0])[0]
    (dcid, frames), = client_initial_frames(datagram)
    stream = b"".join(data for _, data in sorted(crypto_data(frames)))
    pieces = [(k, stream[k : k + 100]) for k in range(0, len(stream), 100)][::-1]  # last first, as Chromium may
    hellos = QuicHellos()
    key = bytes(40)
    assert hellos.add(key, 0, dcid, pieces[:3]) is None and len(hellos) == 1
    record = hellos.add(key, 1, dcid, pieces[3:])
    assert record is not None and record[0] == 1 and len(record) == len(stream) and len(hellos) == 0


def _udp_batch(payloads: list[bytes]) -> PacketBatch:
    frames = []
    for body in payloads:
        udp = (40000).to_bytes(2, "big") + (443).to_bytes(2, "big") + (8 + len(body)).to_bytes(2, "big") + bytes(2) + body
        ip = b"\x45\x00" + (20 + len(udp)).to_bytes(2, "big") + bytes(4) + bytes((64, 17)) + bytes(2)
        frames.append(bytes(12) + b"\x08\x00" + ip + bytes((10, 0, 0, 1, 10, 0, 0, 2)) + udp)
    data = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
    lengths = np.array([len(f) for f in frames], dtype=np.int64)
    return PacketBatch(data=data, offset=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
                       caplen=lengths, wirelen=lengths, ts=np.arange(len(frames), dtype=np.int64) + 10**18,
                       linktype=np.ones(len(frames), dtype=np.int64))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0xC0, 0xC3, 0xD1, 0xE0, 0x40]), st.sampled_from([1, 0x6B3343CF, 0xFF00001D]),
                          st.binary(min_size=1195, max_size=1400)), min_size=1, max_size=6))
def test_hostile_datagrams_that_look_like_initials_are_never_fatal(datagrams):
    table = FlowTable()
    batch = _udp_batch([bytes((first,)) + version.to_bytes(4, "big") + body for first, version, body in datagrams])
    observed, _ = observe(batch, table, DnsParser())
    records = FlowRecords.concat([observed.flows, table.flush()])
    assert (records["tls_ja4"] == "").all() and table.tls.parsed == 0


def test_quic_hellos_are_counted_with_tls_ones():
    stats = CaptureStats()
    list(flows_from_captures([QUIC_CAPTURES[0]], stats=stats))
    assert stats.tls_client_hellos == 1 and stats.tls_unreadable == 0


def test_a_sealed_initial_made_here_is_read_as_the_captures_are():
    hello = _datagrams(QUIC_CAPTURES[0])[0]
    (dcid, frames), = client_initial_frames(hello)
    stream = b"".join(data for _, data in sorted(crypto_data(frames)))
    ((got_dcid, got_frames),) = client_initial_frames(seal_initial(b"\x01" * 8, crypto_frame(0, stream)))
    assert got_dcid == b"\x01" * 8 and crypto_data(got_frames)[0] == (0, stream)


def test_hostile_sealed_initials_are_bounded_and_never_fatal():
    """A hello announcing 64 KiB (it once overflowed the record it was wrapped in), frames past a gap
    by the thousand, and Initials sent again: none raises, memory stays bounded, none is read twice."""
    stream = b"\x01\x00\xff\xfc" + bytes(65_532)  # a ClientHello of exactly 64 KiB
    datagrams = [seal_initial(b"\x02" * 8, crypto_frame(k, stream[k : k + 1000]), pn=n)
                 for n, k in enumerate(range(0, len(stream), 1000))]
    datagrams += [seal_initial(b"\x03" * 8, crypto_frame(100 + k, b"x"), pn=k) for k in range(2000)]  # past a gap
    table = FlowTable()
    for lo in range(0, len(datagrams), 200):
        observe(_udp_batch(datagrams[lo : lo + 200]), table, DnsParser())
    assert table.tls.parsed == 1 and len(table.tls.quic) == 1  # the 64 KiB one is whole (and empty)
    assert all(len(s.parts) <= 64 for s in table.tls.quic._pending.values())  # the other waits, bounded
    table.tls.finish()
    assert table.tls.unreadable == 1

    real = _datagrams(QUIC_CAPTURES[0])[0]
    table = FlowTable()
    observe(_udp_batch([real, real, real]), table, DnsParser())  # the client sent its Initial again
    assert (table.tls.parsed, table.tls.unreadable, table.tls.quic.repeated) == (1, 0, 2)
