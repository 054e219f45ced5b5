"""Regression tests of the pcap/pcapng corners found by the hostile-input campaign (issue 19).

Every input is crafted here, block by block: each must give its flows, or a CaptureError that names the
fault, never a wrong reading, an OverflowError, struct.error or IndexError.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw

from kubesonar.sensor.capture_file import MAX_SNAPLEN, read_capture
from kubesonar.sensor.offline import CaptureStats, read_captures
from kubesonar.shared.errors import CaptureError

from helpers import cyclic_garbage_after, flows_of

T0 = 1_700_000_000


def _frames(n: int, base_port: int = 1000) -> list[bytes]:
    """n one-packet UDP flows (distinct source ports), as Ethernet frames."""
    return [bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=base_port + i, dport=53) / Raw(b"x" * 8))
            for i in range(n)]


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def shb(order: str = "<") -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str = "<", linktype: int = 1, options: bytes = b"") -> bytes:
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, 65535) + options)


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def epb(order: str, frame: bytes, units: int, iface: int = 0, caplen: int | None = None) -> bytes:
    caplen = len(frame) if caplen is None else caplen
    return block(order, 6, struct.pack(order + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, caplen, len(frame))
                 + frame)


def opb(order: str, frame: bytes, units: int, caplen: int | None = None) -> bytes:
    caplen = len(frame) if caplen is None else caplen
    return block(order, 2, struct.pack(order + "HHIIII", 0, 0, units >> 32, units & 0xFFFFFFFF, caplen, len(frame))
                 + frame)


def spb(order: str, frame: bytes) -> bytes:
    return block(order, 3, struct.pack(order + "I", len(frame)) + frame)


def section(order: str, frames: list[bytes], t0: int = T0) -> bytes:
    return shb(order) + idb(order) + b"".join(epb(order, f, (t0 + i) * 1_000_000) for i, f in enumerate(frames))


def _read(path: Path) -> tuple[list[dict], CaptureStats]:
    stats = CaptureStats()
    return flows_of(path, stats=stats), stats


def _write(tmp_path: Path, data: bytes, name: str = "c.pcapng") -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


# -- several sections ----------------------------------------------------------------------------------


@pytest.mark.parametrize("orders", [("<", ">"), (">", "<"), (">", ">")])
def test_each_section_keeps_its_own_byte_order_and_interfaces(tmp_path, orders):
    first, second = orders
    path = _write(tmp_path, section(first, _frames(30)) + section(second, _frames(20, base_port=5000), T0 + 100))
    flows, stats = _read(path)
    assert stats.errors == []
    assert len(flows) == 50
    assert sorted(f["src_port"] for f in flows) == list(range(1000, 1030)) + list(range(5000, 5020))
    assert min(f["first_ts"] for f in flows) == pytest.approx(T0)
    assert max(f["first_ts"] for f in flows) == pytest.approx(T0 + 119)


def test_an_empty_big_endian_section_after_a_capture_changes_nothing(tmp_path):
    path = _write(tmp_path, section("<", _frames(30)) + shb(">"))
    flows, stats = _read(path)
    assert len(flows) == 30 and stats.errors == []


def test_a_second_sections_interfaces_do_not_leak_into_the_first(tmp_path):
    # the second section declares a nanosecond interface; the first's microsecond times must stay
    ns = option("<", 9, bytes([9]))
    data = section("<", _frames(3)) + shb("<") + idb("<", options=ns) + epb("<", _frames(1, 9000)[0], (T0 + 50) * 10**9)
    flows, stats = _read(_write(tmp_path, data))
    assert stats.errors == []
    assert sorted(round(f["first_ts"]) for f in flows) == [T0, T0 + 1, T0 + 2, T0 + 50]


# -- block corners ---------------------------------------------------------------------------------------


def test_an_option_packet_block_whose_caplen_runs_past_it_is_refused(tmp_path):
    frame = _frames(1)[0]
    data = shb() + idb() + opb("<", frame, T0 * 10**6, caplen=len(frame) + 400)
    _, stats = _read(_write(tmp_path, data))
    assert stats.capture_errors == 1 and "runs past its block" in stats.errors[0]


def test_an_enhanced_packet_overrun_among_simple_and_option_blocks_is_refused(tmp_path):
    f = _frames(3)
    overrun = epb("<", f[2], T0 * 10**6, caplen=len(f[2]) + 64)
    data = shb() + idb() + spb("<", f[0]) + opb("<", f[1], T0 * 10**6) + overrun
    _, stats = _read(_write(tmp_path, data))
    assert stats.capture_errors == 1 and "runs past its block" in stats.errors[0]


def test_a_mixed_capture_of_simple_option_and_enhanced_blocks_reads_in_order(tmp_path):
    f = _frames(3)
    data = shb() + idb() + epb("<", f[0], T0 * 10**6) + spb("<", f[1]) + opb("<", f[2], (T0 + 2) * 10**6)
    flows, stats = _read(_write(tmp_path, data))
    assert stats.errors == [] and len(flows) == 3
    assert sorted(round(f["first_ts"]) for f in flows) == [T0, T0, T0 + 2]  # the SPB takes the previous time


@pytest.mark.parametrize("btype, name", [(1, "IDB"), (2, "OPB"), (3, "SPB"), (0x0A0D0D0A, "SHB")])
def test_a_block_too_short_for_its_fixed_fields_is_corrupt(tmp_path, btype, name):
    frames = _frames(4)
    short = struct.pack("<III", btype, 12, 12)
    data = section("<", frames[:2]) + short + b"".join(epb("<", f, T0 * 10**6) for f in frames[2:])
    flows, stats = _read(_write(tmp_path, data))
    assert stats.capture_errors == 1, name
    assert "corrupt pcapng block" in stats.errors[0] or "byte-order magic" in stats.errors[0]
    assert len(flows) == 2  # the packets before it are kept


@pytest.mark.parametrize("size", [12, 16])
@pytest.mark.parametrize("btype", [1, 2, 3])
def test_a_short_block_at_the_end_of_the_file_is_a_clear_error(tmp_path, btype, size):
    tail = struct.pack("<II", btype, size) + b"\0" * (size - 12) + struct.pack("<I", size)
    _, stats = _read(_write(tmp_path, section("<", _frames(2)) + tail))
    if (btype, size) == (3, 16):  # the smallest valid SPB: an empty packet
        assert stats.errors == []
    else:
        assert stats.capture_errors == 1 and "corrupt pcapng block" in stats.errors[0]


@pytest.mark.parametrize("cut", [4, 9, 13, 17])
def test_a_block_cut_short_by_the_end_of_file(tmp_path, cut):
    whole = section("<", _frames(2)) + idb()
    _, stats = _read(_write(tmp_path, whole[: len(whole) - 20 + cut]))
    assert stats.capture_errors == 1 and ("truncated" in stats.errors[0] or "corrupt" in stats.errors[0])


def test_a_timestamp_with_bit_63_is_out_of_range_not_missing(tmp_path):
    data = shb() + idb() + epb("<", _frames(1)[0], T0 * 10**6) + epb("<", _frames(1, 2000)[0], 1 << 63)
    flows, stats = _read(_write(tmp_path, data))
    assert len(flows) == 1 and stats.capture_errors == 1 and "timestamp out of range" in stats.errors[0]


@pytest.mark.parametrize("code, ok", [(0, True), (9, True), (18, True), (0x80 | 62, True),
                                      (0x3F, False), (0x7F, False), (0xC0, False), (0xFF, False)])
def test_every_time_resolution_reads_or_is_refused_cleanly(tmp_path, code, ok):
    data = shb() + idb(options=option("<", 9, bytes([code]))) + epb("<", _frames(1)[0], 12345)
    flows, stats = _read(_write(tmp_path, data))
    if ok:
        assert stats.errors == [] and len(flows) == 1
    else:
        assert stats.capture_errors == 1 and "time resolution" in stats.errors[0]


def test_a_resolution_of_whole_seconds_never_wraps(tmp_path):
    """if_tsresol 0 (units of a second) with a huge count: refused, not wrapped into some other time."""
    resol = option("<", 9, bytes([0]))
    data = shb() + idb(options=resol) + epb("<", _frames(1)[0], T0) + epb("<", _frames(1, 2000)[0], (1 << 62) + 5)
    flows, stats = _read(_write(tmp_path, data))
    assert [round(f["first_ts"]) for f in flows] == [T0]
    assert stats.capture_errors == 1 and "timestamp out of range" in stats.errors[0]


@pytest.mark.parametrize("offset", [10**10, -(10**10), 1 << 62, -(1 << 63), (1 << 63) - 1])
def test_extreme_time_offsets_are_refused_cleanly(tmp_path, offset):
    data = shb() + idb(options=option("<", 14, struct.pack("<q", offset))) + epb("<", _frames(1)[0], T0 * 10**6)
    _, stats = _read(_write(tmp_path, data))
    assert stats.capture_errors == 1 and ("offset" in stats.errors[0] or "out of range" in stats.errors[0])


def test_a_time_offset_is_applied(tmp_path):
    data = shb() + idb(options=option("<", 14, struct.pack("<q", 3600))) + epb("<", _frames(1)[0], T0 * 10**6)
    (flow,), _ = _read(_write(tmp_path, data))
    assert flow["first_ts"] == pytest.approx(T0 + 3600)


def test_packets_on_an_unknown_link_type_are_reported_not_silently_dropped(tmp_path):
    data = shb() + idb(linktype=1) + idb(linktype=147) + epb("<", _frames(1)[0], T0 * 10**6) + b"".join(
        epb("<", f, T0 * 10**6, iface=1) for f in _frames(3, 3000))
    flows, stats = _read(_write(tmp_path, data))
    assert len(flows) == 1
    assert stats.capture_errors == 1 and "3 on link type 147" in stats.errors[0]


def test_a_classic_pcap_of_an_unknown_link_type_is_refused(tmp_path):
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)
    rec = struct.pack("<IIII", T0, 0, 10, 10) + b"\0" * 10
    _, stats = _read(_write(tmp_path, header + rec, "u.pcap"))
    assert stats.capture_errors == 1 and "link type 147 is not supported" in stats.errors[0]


# -- snaplen -----------------------------------------------------------------------------------------------


def test_a_huge_snaplen_and_caplen_are_refused_without_allocating_them(tmp_path):
    import resource

    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0x7FFFFFF0, 1)
    good = _frames(1)[0]
    body = struct.pack("<IIII", T0, 0, len(good), len(good)) + good
    body += struct.pack("<IIII", T0, 0, 0x7FFFFF00, 0x7FFFFF00) + b"\0" * 5000
    path = _write(tmp_path, header + body, "big.pcap")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flows, stats = _read(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(flows) == 1 and stats.capture_errors == 1
    assert f"over the {MAX_SNAPLEN}-byte maximum" in stats.errors[0]
    assert grown_mb < 200


def test_a_record_at_the_snaplen_cap_is_read(tmp_path):
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 0x7FFFFFF0, 1)
    frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))
    frame += b"\0" * (MAX_SNAPLEN - len(frame))
    path = _write(tmp_path, header + struct.pack("<IIII", T0, 0, len(frame), len(frame)) + frame, "cap.pcap")
    flows, stats = _read(path)
    assert stats.errors == [] and len(flows) == 1



@pytest.mark.parametrize("fault", ["corrupt record", "cut gzip stream"])
def test_a_capture_error_holds_no_flow_table_in_a_reference_cycle(tmp_path, fault):
    """A fault the reader held until its packets were out was raised from where the reader kept it: the
    error's traceback held the reader and the flow table's frames, and they it, so each faulty capture's
    table (tens of MB) lived on until the cyclic collector ran; a fuzzing run grew past 1 GB so."""
    import gzip

    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    good = b"".join(struct.pack("<IIII", T0 + i, 0, len(f), len(f)) + f for i, f in enumerate(_frames(500)))
    if fault == "corrupt record":
        path = _write(tmp_path, header + good + struct.pack("<IIII", T0, 0, 0x7FFFFF00, 60) + bytes(60), "c.pcap")
    else:
        packed = gzip.compress(header + good)
        path = _write(tmp_path, packed[: len(packed) // 2], "c.pcap.gz")
    stats = CaptureStats()

    def read() -> None:
        for _ in read_captures([path], stats=stats):
            pass

    assert cyclic_garbage_after(read) == []
    assert stats.capture_errors == 1 and stats.packets >= 5


# -- pipes, FIFOs and standard input ------------------------------------------------------------------------


def _capture_bytes() -> bytes:
    return section("<", _frames(25))


def test_a_fifo_is_read(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = _capture_bytes()

    def feed() -> None:
        with open(fifo, "wb") as out:
            for i in range(0, len(data), 97):  # small writes: the reader sees short reads
                out.write(data[i : i + 97])
                out.flush()

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    packets = sum(len(b) for b in read_capture(fifo))
    writer.join(timeout=10)
    assert packets == 25


@pytest.mark.parametrize("argument", ["-", "/dev/stdin"])
def test_the_flows_command_reads_standard_input(tmp_path, argument):
    kubesonar = Path(sys.executable).with_name("kubesonar")
    done = subprocess.run([str(kubesonar), "flows", "--format", "jsonl", argument], input=_capture_bytes(),
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout.splitlines()) == 25


def test_process_substitution_is_read(tmp_path):
    (tmp_path / "c.pcapng").write_bytes(_capture_bytes())
    kubesonar = Path(sys.executable).with_name("kubesonar")
    done = subprocess.run(["bash", "-c", f"{kubesonar} flows --format jsonl <(cat {tmp_path / 'c.pcapng'})"],
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout.splitlines()) == 25


def test_a_truncated_stream_is_a_one_line_error(tmp_path):
    kubesonar = Path(sys.executable).with_name("kubesonar")
    done = subprocess.run([str(kubesonar), "flows", "-"], input=_capture_bytes()[:-30], capture_output=True,
                          check=False, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kubesonar: error: <stdin>: truncated")


def test_an_unreadable_capture_raises_capture_error(tmp_path):
    with pytest.raises(CaptureError):
        list(read_capture(tmp_path / "missing.pcap"))
