"""The sensor's executable flag (sensor/executables.py, flow schema 7's ``executable``) on real files: the
machine's /bin/true, pip's Windows launcher, gzip and .deb archives, a TLS session, in captures written
with the sensor's default snap length and read by the offline sensor."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, Raw
from transfer_traffic import (
    T0,
    deb_bytes,
    elf_bytes,
    gzip_bytes,
    http_download,
    http_response,
    pe_bytes,
    pushed,
    staged,
    tls_download,
    write,
)

from kubesonar.sensor import payload_kinds
from kubesonar.sensor.capture_file import read_capture
from kubesonar.sensor.dissect import dissect, dissect_vectorised
from kubesonar.sensor.executables import Executables, executable_kind, payload_executable
from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.shared.flow import Executable, FlowRecords, executable_sent


def _elf_with(offset: int, fmt: str, value: int) -> bytes:
    data = bytearray(elf_bytes()[:64])
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


def test_real_files_are_told_apart():
    assert executable_kind(elf_bytes()[:928]) == Executable.ELF
    assert executable_kind(pe_bytes()[:928]) == Executable.PE
    assert executable_kind(gzip_bytes()) == executable_kind(deb_bytes()) == Executable.NONE


def test_each_elf_field_is_checked():
    assert executable_kind(_elf_with(18, "<H", 0x28)) == Executable.ELF  # ARM
    assert executable_kind(_elf_with(18, "<H", 0xB7)) == Executable.ELF  # AArch64
    assert executable_kind(_elf_with(18, "<H", 0x08)) == Executable.NONE  # MIPS: no container runs it here
    assert executable_kind(_elf_with(16, "<H", 1)) == Executable.NONE  # a relocatable object, not a program
    assert executable_kind(_elf_with(4, "B", 3)) == Executable.NONE  # no such class
    assert executable_kind(_elf_with(6, "B", 0)) == Executable.NONE  # version
    big = bytearray(_elf_with(5, "B", 2))
    struct.pack_into(">HH", big, 16, 2, 0x28)
    assert executable_kind(bytes(big)) == Executable.ELF  # big-endian fields read big-endian
    assert executable_kind(elf_bytes()[:19]) == Executable.NONE  # e_machine cut by the capture


def test_a_pe_needs_its_pe_header_inside_the_captured_bytes():
    pe = pe_bytes()
    at = int.from_bytes(pe[0x3C:0x40], "little")
    assert executable_kind(pe[: at + 4]) == Executable.PE
    assert executable_kind(pe[: at + 3]) == Executable.NONE
    assert executable_kind(b"MZ is a text that starts like a DOS header" + bytes(40)) == Executable.NONE


def test_an_http_response_body_is_read_after_its_headers():
    assert payload_executable(http_response(elf_bytes())[:928]) == Executable.ELF
    assert payload_executable(http_response(pe_bytes())[:928]) == Executable.PE
    assert payload_executable(http_response(gzip_bytes())[:928]) == Executable.NONE
    assert payload_executable(http_response(elf_bytes())[:100]) == Executable.NONE  # headers cut: no body seen
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + elf_bytes()[:200]
    assert payload_executable(request) == Executable.NONE  # only a response's body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", b"\x7fELF", b"MZ", b"HTTP/1.1 200 OK\r\n\r\n\x7fELF"]))
def test_any_bytes_give_a_kind_and_never_raise(data, prefix):
    assert payload_executable(prefix + data) in tuple(Executable)


def _records(tmp_path, frames) -> FlowRecords:
    stats = CaptureStats()
    frames = sorted(frames, key=lambda f: f.time)
    records = FlowRecords.concat(list(flows_from_captures([write(tmp_path / "t.pcap", frames)], stats=stats)))
    assert stats.executables_dropped == 0
    return records.take(np.argsort(records["first_ts"], kind="stable"))


def test_each_side_of_a_flow_is_flagged_with_what_it_sent(tmp_path):
    records = _records(tmp_path, [
        *http_download("10.0.0.5", "203.0.113.10", elf_bytes(), T0),  # headers and ELF in one segment
        *staged("10.0.0.6", "203.0.113.20", pe_bytes(), T0 + 1),  # a 4-byte length, then the PE's own segment
        *pushed("203.0.113.30", "10.0.0.7", elf_bytes(), T0 + 2),  # the initiator sends
        *http_download("10.0.0.5", "203.0.113.10", gzip_bytes(), T0 + 3, sport=41001),
        *http_download("10.0.0.5", "203.0.113.10", deb_bytes(), T0 + 4, sport=41002),
        *tls_download("10.0.0.5", "203.0.113.11", elf_bytes(), T0 + 5),
    ])
    got = [(int(p), int(o), int(i)) for p, o, i in
           zip(records["dst_port"], executable_sent(records, "out"), executable_sent(records, "in"), strict=True)]
    assert got == [(80, 0, Executable.ELF), (4444, 0, Executable.PE), (9000, Executable.ELF, 0), (80, 0, 0), (80, 0, 0),
                   (443, 0, 0)]
    assert records["tls_sni"][-1] == "downloads.example"  # the TLS session was read as one


def test_the_python_reads_are_bounded_and_the_rest_counted(tmp_path):
    frames = sorted((f for k in range(6) for f in pushed("203.0.113.30", "10.0.0.7", elf_bytes()[:900], T0 + k,
                                                         port=9000 + k)), key=lambda f: f.time)
    (batch,) = list(read_capture(write(tmp_path / "flood.pcap", frames)))
    reader = Executables(max_per_call=4)
    pf = dissect(batch)
    codes = reader.codes(batch, pf)
    assert (reader.read, reader.dropped, int(np.count_nonzero(codes))) == (4, 2, 4)


def test_the_rare_starts_are_read_before_the_http_responses(tmp_path):
    frames = [f for k in range(5) for f in http_download("10.0.0.5", "203.0.113.10", gzip_bytes(), T0 + k,
                                                         sport=41000 + k)]
    frames += pushed("203.0.113.30", "10.0.0.7", elf_bytes()[:900], T0 + 9)
    (batch,) = list(read_capture(write(tmp_path / "busy.pcap", sorted(frames, key=lambda f: f.time))))
    reader = Executables(max_per_call=1)
    codes = reader.codes(batch, dissect(batch))
    assert (reader.read, reader.dropped, codes.max()) == (1, 5, Executable.ELF)  # the GETs are not read at all


def test_the_compiled_and_the_vectorised_dissection_mark_the_same_starts(tmp_path):
    """Payloads starting like an executable, one byte short of the least, at it, past it, cut by the capture
    inside the two bytes, and look-alikes (a request line of capitals, the other magic's second byte)."""
    starts = [b"\x7fE", b"MZ", b"\x7fZ", b"ME", b"MZA ", b"MZAR ", b"\x7fELF"]
    frames = [Ether() / IP(src="203.0.113.1", dst="10.0.0.5") / TCP(sport=80, dport=41000 + k, flags="PA") /
              Raw(start + bytes(size - len(start)))
              for k, (start, size) in enumerate((s, n) for s in starts for n in (19, 20, 21, 900))]
    frames.append(Ether(bytes(frames[1])[:55]))  # the capture ends after the payload's first byte
    for k, f in enumerate(frames):
        f.time = T0 + k
    (batch,) = list(read_capture(write(tmp_path / "starts.pcap", frames)))
    compiled, reference = dissect(batch), dissect_vectorised(batch)
    assert np.array_equal(compiled.payload_kind, reference.payload_kind)
    expected = [s.startswith((b"\x7fE", b"MZ")) and n >= 20 for s in starts for n in (19, 20, 21, 900)] + [False]
    assert (compiled.payload_kind == payload_kinds.EXECUTABLE_START).tolist() == expected  # MZ first, not a method


def test_a_syns_data_is_never_read_and_a_syn_acks_is(tmp_path):
    """The file in a SYN (a spoofed sender's, or a TCP Fast Open client's push) is not read, with or
    without other flags beside the SYN; in a SYN-ACK (a Fast Open server's first data, from a host the pod
    reached) and in the segments after a handshake it is."""
    flags = ["S", "SP", "SF", "SE", "SA", "PA", "A"]
    frames = [Ether() / IP(src="203.0.113.1", dst="10.0.0.5") / TCP(sport=9000, dport=41000 + k, flags=f) /
              Raw(elf_bytes()[:900]) for k, f in enumerate(flags)]
    for k, f in enumerate(frames):
        f.time = T0 + k
    (batch,) = list(read_capture(write(tmp_path / "syns.pcap", frames)))
    codes = Executables().codes(batch, dissect(batch))
    assert codes.tolist() == [Executable.NONE] * 4 + [Executable.ELF] * 3
