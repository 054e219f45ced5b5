"""Corrupt, truncated and random captures: a clear CaptureError, the good packets before it kept."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Ether, PcapNgWriter, PcapWriter, Raw

from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.dissect import dissect
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.shared.errors import CaptureError
from kubesonar.shared.flow import FlowRecords


def _packets(n=40):
    pkts = []
    for i in range(n):
        p = Ether() / IP(src="10.0.0.1", dst=f"10.0.1.{i % 7}") / (TCP(sport=1000 + i, dport=80, flags="S") if i % 2 else UDP(sport=1000 + i, dport=53) / Raw(b"q" * i))
        p.time = 1_700_000_000 + i
        pkts.append(p)
    return pkts


@pytest.fixture(scope="module")
def pcap_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "ok.pcap"
    w = PcapWriter(str(path), linktype=1, sync=True)
    for p in _packets():
        w.write(p)
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def pcapng_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "ok.pcapng"
    w = PcapNgWriter(str(path))
    for p in _packets():
        w.write(p)
    w.close()
    return path.read_bytes()


def _run(path):
    stats = CaptureStats()
    records = FlowRecords.concat(list(flows_from_captures([path], stats=stats)))
    return records, stats


def test_a_corrupt_record_length_stops_with_the_flows_before_it(tmp_path, pcap_bytes):
    data = bytearray(pcap_bytes)
    # the 11th record's captured length becomes absurd
    pos, n = 24, 0
    while n < 10:
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
        n += 1
    struct.pack_into("<I", data, pos + 8, 0x7FFFFFFF)
    (tmp_path / "bad.pcap").write_bytes(bytes(data))
    records, stats = _run(tmp_path / "bad.pcap")
    assert stats.capture_errors == 1 and "corrupt record header" in stats.errors[0]
    assert f"at byte {pos}" in stats.errors[0]
    assert int(records["packets_out"].sum() + records["packets_in"].sum()) == 10


def test_a_corrupt_pcapng_block_is_named(tmp_path, pcapng_bytes):
    data = bytearray(pcapng_bytes)
    data[-4:] = b"\xfc\xff\x00\x00"  # the last block's trailing length
    (tmp_path / "bad.pcapng").write_bytes(bytes(data))
    records, stats = _run(tmp_path / "bad.pcapng")
    assert stats.capture_errors == 1 and "pcapng block" in stats.errors[0]


@pytest.mark.parametrize("cut", [10, 30, 100, -1])
def test_truncated_files(tmp_path, pcap_bytes, cut):
    (tmp_path / "t.pcap").write_bytes(pcap_bytes[:cut])
    records, stats = _run(tmp_path / "t.pcap")
    assert stats.capture_errors == 1 and "truncated" in stats.errors[0]


def test_an_empty_file_and_a_directory(tmp_path):
    (tmp_path / "empty.pcap").write_bytes(b"")
    for path in (tmp_path / "empty.pcap", tmp_path):
        with pytest.raises(CaptureError):
            list(read_capture(path))


def _consume(path) -> None:
    table = FlowTable()
    try:
        for batch in read_capture(path):
            table.add(dissect(batch), batch.ts)
    except CaptureError:
        pass
    table.flush()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["pcap", "pcapng"]))
def test_mutated_captures_never_crash(tmp_path, pcap_bytes, pcapng_bytes, data, kind):
    """Flipped bytes anywhere (headers, lengths, packet bytes): only CaptureError may come out."""
    buf = bytearray(pcap_bytes if kind == "pcap" else pcapng_bytes)
    for _ in range(data.draw(st.integers(1, 12))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / f"m.{kind}"
    path.write_bytes(bytes(buf))
    _consume(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packets=st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=30),
       linktype=st.sampled_from([0, 1, 101, 113, 228, 229, 276, 147]))
def test_random_packet_bytes_never_crash_the_dissector(tmp_path, packets, linktype):
    """Well-framed records whose packet bytes are anything at all, under every link type."""
    body = b"".join(struct.pack("<IIII", 1_700_000_000 + i, 0, len(p), len(p)) + p for i, p in enumerate(packets))
    path = tmp_path / "r.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype) + body)
    _consume(path)


def test_a_header_only_capture_is_valid_and_empty(tmp_path, pcap_bytes):
    (tmp_path / "h.pcap").write_bytes(pcap_bytes[:24])
    records, stats = _run(tmp_path / "h.pcap")
    assert len(records) == 0 and stats.errors == []
