"""gzip-compressed captures (``.pcap.gz``, ``.pcapng.gz``) are read as Wireshark reads them, streamed;
a cut one keeps every whole record before the cut, a corrupt one those before the last read's 64 KiB;
other compressions are named."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from kubesonar.sensor import capture_file
from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.offline import CaptureStats
from kubesonar.shared.errors import CaptureError

from conftest import DATA
from helpers import flows_of

# real captures, pcap and pcapng, of tens of flows: each crosses many of the small chunks set below
CAPTURES = [DATA / "pcaps" / "benign" / "ppa1_dns.cap", DATA / "pcaps" / "benign" / "chrissanders_http_espn.pcapng"]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """16 KiB chunks, so a capture's records and the gzip stream's pieces cross many chunk boundaries."""
    monkeypatch.setattr(capture_file, "CHUNK_BYTES", 16 << 10)


def _existing(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not in ../shared/data")
    return path


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_a_gzip_capture_gives_the_flows_of_the_plain_one(tmp_path, capture):
    plain = _existing(capture)
    packed = tmp_path / (plain.name + ".gz")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    want_stats, got_stats = CaptureStats(), CaptureStats()
    want, got = flows_of(plain, stats=want_stats), flows_of(packed, stats=got_stats)
    assert len(want) > 10 and got == want
    assert got_stats.counters() == want_stats.counters()


def test_a_gzip_capture_on_standard_input(tmp_path):
    plain = _existing(CAPTURES[0])
    kubesonar = Path(sys.executable).with_name("kubesonar")

    def lines(data: bytes) -> list[bytes]:
        done = subprocess.run([str(kubesonar), "flows", "--format", "jsonl", "-"], input=data,
                              capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.splitlines()

    assert lines(gzip.compress(plain.read_bytes())) == lines(plain.read_bytes())


def _decompressible_prefix(packed: bytes) -> bytes:
    """What a decompressor makes of a cut gzip stream, up to where the stream ends."""
    return zlib.decompressobj(wbits=31).decompress(packed)


def test_a_cut_gzip_capture_keeps_every_whole_record_before_the_cut(tmp_path):
    plain = _existing(CAPTURES[0]).read_bytes()
    packed = gzip.compress(plain)
    cut = tmp_path / "cut.pcap.gz"
    cut.write_bytes(packed[: len(packed) * 2 // 3])
    # the same bytes, uncompressed: what a plain capture cut there gives
    reference = tmp_path / "cut.pcap"
    reference.write_bytes(_decompressible_prefix(cut.read_bytes()))
    want_stats, got_stats = CaptureStats(), CaptureStats()
    want, got = flows_of(reference, stats=want_stats), flows_of(cut, stats=got_stats)
    assert want_stats.packets > 100 and got_stats.packets == want_stats.packets
    assert got == want
    assert got_stats.errors == [f"{cut}: read failed (Compressed file ended before the end-of-stream marker was "
                                "reached); flows up to there were kept"]


def test_corrupt_compressed_data_is_an_error_after_the_good_records(tmp_path):
    """The decompressor may refuse the damage or hand out garbage the record walk refuses: either way
    one error that names the file, and the packets before the damage are read."""
    plain = _existing(CAPTURES[0]).read_bytes()
    packed = bytearray(gzip.compress(plain, compresslevel=1))
    middle = len(packed) // 2
    packed[middle : middle + 64] = bytes(64)  # a run of zeros is no deflate stream
    bad = tmp_path / "bad.pcap.gz"
    bad.write_bytes(packed)
    stats = CaptureStats()
    flows_of(bad, stats=stats)
    assert stats.capture_errors == 1
    assert stats.errors[0].startswith(f"{bad}: ") and stats.errors[0].endswith("flows up to there were kept")
    assert 0 < stats.packets


def test_the_progress_of_a_gzip_capture_counts_compressed_bytes(tmp_path):
    plain = _existing(CAPTURES[0]).read_bytes()
    packed = tmp_path / "c.pcap.gz"
    packed.write_bytes(gzip.compress(plain))
    seen: list[int] = []
    for _ in read_capture(packed, progress=seen.append):
        pass
    assert len(seen) > 3 and seen == sorted(seen) and seen[-1] == packed.stat().st_size


@pytest.mark.parametrize(("start", "tool"), [(b"\x28\xb5\x2f\xfd", "zstd"), (b"\xfd7zXZ\x00", "xz"),
                                             (b"BZh9", "bzip2"), (b"\x04\x22\x4d\x18", "lz4")])
def test_other_compressions_are_named(tmp_path, start, tool):
    path = tmp_path / "c.pcap.z"
    path.write_bytes(start + bytes(64))
    with pytest.raises(CaptureError, match=rf"{tool}-compressed; decompress it first"):
        list(read_capture(path))


# mtime=0: the stream is the test's id, the same in every xdist worker (by default gzip stamps the time)
@pytest.mark.parametrize("content", [gzip.compress(b"", mtime=0), gzip.compress(b"not a capture at all", mtime=0),
                                     gzip.compress(gzip.compress(b"x" * 100, mtime=0), mtime=0), b"\x1f\x8b\x08"])
def test_gzip_of_no_capture_is_a_clear_error(tmp_path, content):
    path = tmp_path / "c.gz"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=rf"^{path}: "):
        list(read_capture(path))


def _pcap_of_exactly(size: int) -> bytes:
    """A classic pcap of exactly ``size`` bytes: UDP packets, the last one's padding making up the rest."""
    import struct

    from scapy.all import IP, UDP, Ether, Raw

    def record(i: int, padding: int) -> bytes:
        frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + i, dport=53) / Raw(b"x" * padding))
        return struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame

    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    i = 0
    while size - len(out) >= 2 * len(record(0, 100)):
        out += record(i, 100)
        i += 1
    out += record(i, size - len(out) - len(record(i, 0)))
    assert len(out) == size
    return out


@pytest.mark.parametrize("damage", ["trailer cut", "checksum zeroed"])
def test_damage_found_on_a_chunk_boundary_is_an_error(tmp_path, damage):
    """The capture ends exactly where a chunk does, so the damage shows on the next chunk's first read,
    which got no byte: that is a failed read, not the end of the input."""
    packed = bytearray(gzip.compress(_pcap_of_exactly(capture_file.CHUNK_BYTES)))
    if damage == "trailer cut":
        del packed[-4:]
    else:
        packed[-8:-4] = bytes(4)
    path = tmp_path / "c.pcap.gz"
    path.write_bytes(packed)
    stats = CaptureStats()
    flows = flows_of(path, stats=stats)
    assert len(flows) > 100 and stats.capture_errors == 1 and "read failed" in stats.errors[0]


def test_a_failed_read_inside_the_file_header_is_named_as_such(tmp_path):
    """A stored (level 0) gzip cut 12 bytes into its data: the pcap header is cut by the failed read."""
    packed = gzip.compress(_pcap_of_exactly(4096), compresslevel=0)
    path = tmp_path / "c.pcap.gz"
    path.write_bytes(packed[: 10 + 5 + 12])  # gzip header, stored block header, 12 bytes of the pcap
    with pytest.raises(CaptureError, match="read failed"):
        list(read_capture(path))
