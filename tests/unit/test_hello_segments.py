"""ClientHellos longer than one TCP segment (sensor/hello_segments.py), through the real offline path:
OpenSSL's own ClientHello, written to a capture as a client's TCP stack would send it."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scapy.all import IP, TCP, Ether, Raw, wrpcap

from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.observe import observe
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


def _batch(frames: list, snap: int = 65535):
    """The frames as one packet batch, as a capture reader hands them over."""
    from kubesonar.sensor.packets import PacketBatch

    raw = [bytes(f) for f in frames]
    data = np.frombuffer(b"".join(r[:snap] for r in raw), dtype=np.uint8).copy()
    caplen = np.array([min(len(r), snap) for r in raw], dtype=np.int64)
    return PacketBatch(data=data, offset=np.concatenate([[0], np.cumsum(caplen)[:-1]]).astype(np.int64), caplen=caplen,
                       wirelen=np.array([len(r) for r in raw], dtype=np.int64),
                       ts=1_700_000_000 * 10**9 + np.arange(len(raw), dtype=np.int64) * 10_000,
                       linktype=np.ones(len(raw), dtype=np.int64))


def _observed(frames: list, cuts: list[int], snap: int = 65535) -> tuple[list[tuple], tuple[int, int]]:
    """The client flows' TLS columns and (parsed, unreadable) when the frames are read in batches cut at ``cuts``."""
    table, parts = FlowTable(), []
    bounds = [0, *cuts, len(frames)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if hi > lo:
            parts.append(observe(_batch(frames[lo:hi], snap), table, DnsParser())[0].flows)
    parts.append(table.flush())
    table.tls.finish()
    rows = [(r["src_port"], r["tls_sni"], r["tls_ja4"]) for r in FlowRecords.concat(parts).iter_dicts()
            if r["proto"] == 6 and r["src_port"] >= 40000]
    return sorted(rows), (table.tls.parsed, table.tls.unreadable)


def _tcp(seq: int, payload: bytes = b"", flags: str = "PA", sport: int = 40000):
    return Ether() / IP(src="10.0.0.5", dst="93.184.216.34") / TCP(sport=sport, dport=443, flags=flags, seq=seq) / Raw(
        payload)


def test_how_a_capture_is_cut_into_batches_changes_nothing():
    """A retransmitted first segment after the second, and a second hello on the same side: read in one
    batch or cut anywhere, the same clients (the review found the first segment again discarded the hello)."""
    hello = _openssl_hello()
    a, b = hello[:1000], hello[1000:]
    other = _openssl_hello(41)
    frames = [_tcp(1000, a), _tcp(2000, b), _tcp(1000, a), _tcp(5000, other[:1000]), _tcp(6000, other[1000:])]
    whole = _observed(frames, [])
    assert whole[1] == (2, 0) and {sni for _, sni, _ in whole[0]} == {SERVER_NAME}
    for cut in range(1, len(frames)):
        assert _observed(frames, [cut]) == whole


def test_overlapping_retransmissions_tcp_fast_open_and_bytes_past_the_record():
    hello = _openssl_hello()
    expected = parse_client_hello(hello).ja4()
    cases = {
        "overlap": [_tcp(1000, hello[:1000]), _tcp(1900, hello[900:])],  # the second repeats 100 bytes
        "fast open": [_tcp(1000, hello[:1000], flags="S"), _tcp(2001, hello[1000:])],  # data after a SYN: ISN + 1
        "early data cut": [_tcp(1000, hello[:1000]), _tcp(2000, hello[1000:] + bytes(900))],
    }
    for name, frames in cases.items():
        snap = 54 + (len(hello) - 1000) + 10 if name == "early data cut" else 65535
        if name == "early data cut":  # the first segment whole (as the sensor's filter keeps it), the rest cut
            rows, counts = _observed_mixed(frames, snap)
        else:
            rows, counts = _observed(frames, [])
        assert [(sni, ja4) for _, sni, ja4 in rows] == [(SERVER_NAME, expected)] and counts == (1, 0), name


def _observed_mixed(frames: list, snap: int) -> tuple[list[tuple], tuple[int, int]]:
    table = FlowTable()
    parts = [observe(_batch(frames[:1]), table, DnsParser())[0].flows,
             observe(_batch(frames[1:], snap), table, DnsParser())[0].flows, table.flush()]
    rows = [(r["src_port"], r["tls_sni"], r["tls_ja4"]) for r in FlowRecords.concat(parts).iter_dicts() if r["proto"] == 6]
    return rows, (table.tls.parsed, table.tls.unreadable)


def test_a_flood_of_first_segments_gives_way_to_a_real_hello():
    """Past 512 held hellos the oldest gives way: fake first segments never end, a real hello still reads."""
    fake = b"\x16\x03\x01\x10\x00\x01\x00\x0f\xfc" + bytes(60)  # announces 4 KiB, carries 69 bytes
    hello = _openssl_hello()
    frames = [_tcp(7, fake, sport=50000 + k % 15000) for k in range(700)]
    frames += [_tcp(1000, hello[:1000]), _tcp(2000, hello[1000:])]
    rows, (parsed, unreadable) = _observed(frames, [350])
    assert [sni for _, sni, _ in rows if sni] == [SERVER_NAME]
    assert parsed == 1 and unreadable == 700  # every fake counted once: given way, or at the end


@pytest.mark.slow
def test_a_flood_of_segments_on_a_held_connection_is_bounded_and_the_hello_still_reads():
    hello = _openssl_hello()
    frames = [_tcp(1000, hello[:1000])] + [_tcp(1000 + k % 900, b"x" * 50) for k in range(5000)]
    frames.append(_tcp(2000, hello[1000:]))
    table = FlowTable()
    batch = _batch(frames)
    fields = observe(batch, table, DnsParser())[1]
    assert table.tls.parsed == 1
    segments = table.tls.segments
    assert len(segments._continuations(batch, fields, np.zeros(0, dtype=np.int64))) <= segments.max_rows


def test_a_record_announcing_more_than_its_whole_message_is_read_at_once():
    hello = _openssl_hello(2)
    padded = hello[:3] + (int.from_bytes(hello[3:5], "big") + 300).to_bytes(2, "big") + hello[5:]
    rows, counts = _observed([_tcp(1000, padded)], [])
    assert [sni for _, sni, _ in rows] == [SERVER_NAME] and counts == (1, 0)


def _timed_batch(frames: list, times_s: list[float]):
    batch = _batch(frames)
    batch.ts[:] = (1_700_000_000 + np.array(times_s)) * 1e9
    return batch


def test_a_hellos_timeout_is_judged_at_each_packet_wherever_the_batches_end():
    """The second segment 2 s after the first is in time even with a packet 11 s later in the same
    read; one 12 s after is too late, whatever the cut."""
    hello = _openssl_hello()
    for gap, read in ((2.0, 1), (12.0, 0)):
        frames = [_tcp(1000, hello[:1000]), _tcp(2000, hello[1000:]), _tcp(9, b"x", sport=41000)]
        times = [0.0, gap, gap + 11.0]
        for cut in (None, 1, 2):
            table = FlowTable()
            pieces = [(0, 3)] if cut is None else [(0, cut), (cut, 3)]
            for lo, hi in pieces:
                batch = _timed_batch(frames[lo:hi], times[lo:hi])
                observe(batch, table, DnsParser())
            assert table.tls.parsed == read, (gap, cut)


def test_thousands_of_hellos_in_one_read_are_all_joined():
    hellos = [_openssl_hello(40 + k % 3) for k in range(3)]
    frames = []
    for k in range(1500):
        hello = hellos[k % 3]
        frames += [_tcp(1000, hello[:1000], sport=20000 + k), _tcp(2000, hello[1000:], sport=20000 + k)]
    table = FlowTable()
    observe(_batch(frames), table, DnsParser())
    assert (table.tls.parsed, table.tls.unreadable) == (1500, 0)


def test_a_hello_across_the_sequence_wrap_with_a_flood_of_retransmissions():
    hello = _openssl_hello()
    isn = (1 << 32) - 100
    frames = [_tcp(isn, hello[:1000])] + [_tcp(isn + 10, hello[10:60]) for _ in range(3000)]
    frames.append(_tcp((isn + 1000) % (1 << 32), hello[1000:]))
    table = FlowTable()
    observe(_batch(frames), table, DnsParser())
    assert (table.tls.parsed, table.tls.unreadable) == (1, 0)
