"""gzip-compressed captures (``.pcap.gz``, ``.pcapng.gz``) are read as Wireshark reads them, streamed;
a cut or corrupt one keeps every whole record before the fault; other compressions are named."""

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


@pytest.mark.parametrize("content", [gzip.compress(b""), gzip.compress(b"not a capture at all"),
                                     gzip.compress(gzip.compress(b"x" * 100)), b"\x1f\x8b\x08"])
def test_gzip_of_no_capture_is_a_clear_error(tmp_path, content):
    path = tmp_path / "c.gz"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=rf"^{path}: "):
        list(read_capture(path))
