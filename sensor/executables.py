"""Whether a TCP payload starts with an executable file: an ELF or a PE header, checked field by field, at
the segment's start or at the start of an HTTP response's body (ingress tool transfer, MITRE T1105).

A downloaded tool's first segment starts with its header: ``curl http://IP/kinsing`` gets the response
headers, then (in the same segment or the next) the ELF; Metasploit's stagers read a 4-byte length, then
a segment that starts with the stage DLL's ``MZ``. The first two bytes are tested by the compiled
dissection (sensor/payload_kinds.py EXECUTABLE_START); only the rare segments that pass, and HTTP
responses, are read here, in Python.
Archives (gzip, a .deb's ``!<arch>``, zip) and anything over TLS are not executables here. Nor is data in
a SYN that is not a SYN-ACK: its sender has no connection yet, and its address may be spoofed (the pod's
SYN-ACK goes to whoever the address belongs to), so it says nothing anyone sent to the pod; a TCP Fast
Open server's SYN-ACK data comes from a host the pod did reach.
The codes here are per packet; the flow table keeps one for its side only when the segment's
acknowledgement number acknowledges the other side's SYN and no more than the other side sent
(sensor/flow_kernel.py _acknowledges), as the receiving TCP requires before it takes the data: a blind
sender, its address spoofed, never sees the SYN-ACK whose sequence number it would have to acknowledge,
and its guess is reset. When the other side's SYN was not seen (a capture or sensor started
mid-connection) any acknowledgement counts; when the sensor lost the segments being acknowledged, the
executable is missed.
"""

from __future__ import annotations

import numpy as np

from kubesonar.sensor import payload_kinds
from kubesonar.sensor.dissect import PacketFields, captured_payload
from kubesonar.sensor.packets import PacketBatch
from kubesonar.shared.flow import Executable

ELF_MAGIC, PE_MAGIC = b"\x7fELF", b"MZ"
_ELF_HEADER_START = payload_kinds.EXECUTABLE_LEAST  # e_ident (16), e_type (2), e_machine (2): what is checked
# i386, ARM, x86-64, AArch64, RISC-V: what containers run
ELF_MACHINES = frozenset((0x03, 0x28, 0x3E, 0xB7, 0xF3))
_ELF_TYPES = (2, 3)  # ET_EXEC, ET_DYN (a PIE, or a shared object)
_E_LFANEW = 0x3C  # where the DOS header keeps the PE header's offset (u32, little-endian)
_HTTP_RESPONSE = b"HTTP/"
_HEADERS_END = b"\r\n\r\n"
_SYN, _ACK = 0x02, 0x10


def executable_kind(data: bytes) -> Executable:
    """The :class:`Executable` whose header ``data`` starts with, checked within ``data`` alone."""
    if data.startswith(ELF_MAGIC):
        return Executable.ELF if _elf_header(data) else Executable.NONE
    if data.startswith(PE_MAGIC) and len(data) >= _E_LFANEW + 4:
        at = int.from_bytes(data[_E_LFANEW : _E_LFANEW + 4], "little")
        return Executable.PE if data[at : at + 4] == b"PE\0\0" else Executable.NONE
    return Executable.NONE


def _elf_header(data: bytes) -> bool:
    """ELFCLASS32/64, either byte order, EV_CURRENT, an executable or a shared object for a known machine."""
    if len(data) < _ELF_HEADER_START or data[4] not in (1, 2) or data[5] not in (1, 2) or data[6] != 1:
        return False
    order = "little" if data[5] == 1 else "big"
    return (int.from_bytes(data[16:18], order) in _ELF_TYPES
            and int.from_bytes(data[18:20], order) in ELF_MACHINES)


def payload_executable(payload: bytes) -> Executable:
    """The executable a TCP payload starts with, or that the body of the HTTP response it starts with does
    (the body's start within the captured bytes)."""
    if payload.startswith(_HTTP_RESPONSE):
        _, found, body = payload.partition(_HEADERS_END)
        return executable_kind(body) if found else Executable.NONE
    return executable_kind(payload)


def candidate_rows(batch: PacketBatch, pf: PacketFields) -> np.ndarray:
    """Rows whose TCP payload may start an executable: those the dissection found start ``\\x7fE`` or ``MZ``
    (sensor/payload_kinds.py EXECUTABLE_START), then HTTP responses (whose body is looked for). First the
    rare starts: a busy web node's many responses never crowd them out of a read's bound."""
    opening = (pf.tcp_flags & (_SYN | _ACK)) == _SYN  # a SYN's data: no connection yet, maybe a spoofed sender
    starts = np.flatnonzero((pf.payload_kind == payload_kinds.EXECUTABLE_START) & ~opening)
    http = np.flatnonzero((pf.payload_kind == payload_kinds.HTTP) & ~opening)  # POST, PUT or HTTP/: a response's H
    http = http[batch.data[batch.offset[http] + pf.payload_pos[http]] == _HTTP_RESPONSE[0]]
    return np.concatenate([starts, http])


class Executables:
    """Per packet, the executable its TCP payload carries (sensor/flow_kernel.py keeps it per flow and side)."""

    def __init__(self, max_per_call: int = 4096):
        self.max_per_call = max_per_call  # bounds the Python work a flood of crafted segments can cause
        self.read = 0
        self.found = 0
        self.dropped = 0  # candidates past max_per_call in one read: not read

    def codes(self, batch: PacketBatch, pf: PacketFields) -> np.ndarray:
        codes = np.zeros(len(batch), dtype=pf.exec_code.dtype)
        rows = candidate_rows(batch, pf)
        if len(rows) > self.max_per_call:
            self.dropped += len(rows) - self.max_per_call
            rows = rows[: self.max_per_call]
        self.read += len(rows)
        for i in rows.tolist():
            codes[i] = payload_executable(captured_payload(batch, pf, i))
        self.found += int(np.count_nonzero(codes))
        return codes
