"""Classic BPF programs for capture sockets: a filter expression compiled by libpcap, or accept-all.

Both end in ``ret #snaplen``, so the kernel copies no more than ``snaplen`` bytes of a packet into the
ring: headers are all the flow engine reads, and payload beyond them is never captured. Two kinds of
packet are kept longer (:func:`keep_client_hellos`), because today's ClientHellos (a post-quantum key
share makes them 1.5-2 KB) outgrow the snap length and would give no fingerprint: a TCP segment that
starts a TLS ClientHello, up to the end of that record and no further, and a UDP datagram that opens
with a QUIC Initial packet (RFC 9000 17.2.2: at least 1,200 bytes, sealed with keys anyone can derive),
whole. A hello is the client's offer (ciphers, extensions, the server's name), never application data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import socket
import struct
from dataclasses import dataclass

from kubesonar.sensor.quic_initial import INITIAL_FIRST, MIN_DATAGRAM, V1, V2
from kubesonar.shared.errors import ConfigError

log = logging.getLogger(__name__)

_BPF_RET_K = 0x06
_SO_ATTACH_FILTER = 26
_DLT_EN10MB, _DLT_RAW = 1, 12
_PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


@dataclass(frozen=True)
class BpfProgram:
    instructions: tuple[tuple[int, int, int, int], ...]  # (code, jt, jf, k)
    expression: str = ""

    def attach(self, sock: socket.socket) -> None:
        """SO_ATTACH_FILTER with a ``struct sock_fprog``; the kernel copies the instructions at once."""
        insns = (_Insn * len(self.instructions))(*(_Insn(*i) for i in self.instructions))
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER,
                        struct.pack("HL", len(self.instructions), ctypes.addressof(insns)))


def accept_all(snaplen: int) -> BpfProgram:
    return BpfProgram(((_BPF_RET_K, 0, 0, snaplen),))


def capture_program(expression: str, linktype_raw: bool, snaplen: int) -> BpfProgram:
    """The program a capture socket runs: the filter, with ClientHellos kept whole (see the module).
    A filter over the kernel's 4,096 instructions is refused; one that the test would take past them
    runs alone, with a warning: its hellos are cut at the snap length as before."""
    program = compile_filter(expression, linktype_raw, snaplen)
    if len(program.instructions) > BPF_MAXINSNS:
        raise ConfigError(f"the capture filter {expression!r} compiles to {len(program.instructions)} BPF "
                          f"instructions, over the kernel's {BPF_MAXINSNS}: simplify it")
    kept = keep_client_hellos(program, linktype_raw, snaplen)
    if len(kept.instructions) <= BPF_MAXINSNS:
        return kept
    log.warning("the capture filter takes %d of the kernel's %d BPF instructions: ClientHellos longer than the "
                "snap length are cut, and go unfingerprinted", len(program.instructions), BPF_MAXINSNS)
    return program


# classic BPF opcodes (linux/filter.h)
_LD_W_LEN, _LD_H_ABS, _LD_B_ABS, _LD_W_IND, _LD_H_IND, _LD_B_IND, _LD_MEM = 0x80, 0x28, 0x30, 0x40, 0x48, 0x50, 0x60
_LDX_IMM, _LDX_MSH, _LDX_MEM, _ST, _STX = 0x01, 0xB1, 0x61, 0x02, 0x03
_ADD_K, _ADD_X, _AND_K, _LSH_K, _RSH_K = 0x04, 0x0C, 0x54, 0x64, 0x74
_JA, _JEQ_K, _JGE_K, _JGE_X, _JSET_K = 0x05, 0x15, 0x35, 0x3D, 0x45
_TAX, _TXA, _RET_A = 0x07, 0x87, 0x16
_KEEP, _NEXT = "keep", None
BPF_MAXINSNS = 4096  # the kernel's limit on a classic program
MAX_KEPT = 14 + 60 + 60 + 5 + (1 << 14)  # Ethernet, the largest IPv4 and TCP headers, a record of 2^14 bytes
QUIC_MAX_KEPT = 14 + 60 + 8 + 1500  # an Initial's datagram fits an Ethernet MTU: clients do not probe larger


def keep_client_hellos(program: BpfProgram, linktype_raw: bool, snaplen: int) -> BpfProgram:
    """``program`` with each accepting ``ret #snaplen`` sent on to a test, over IPv4 or IPv6 with no
    extension header: a TCP segment whose payload starts a TLS handshake record holding a ClientHello
    is kept to the record's end (when that is past ``snaplen``); a UDP datagram of 1,200 bytes or more
    opening with a QUIC version 1 or 2 Initial packet, whole; any other packet, ``snaplen`` as
    before. What a hello's packet keeps is bounded: at most MAX_KEPT bytes (TLS's largest record after
    the largest headers), a QUIC datagram at most QUIC_MAX_KEPT, so a flood of packets dressed as hellos
    cannot fill the ring faster than ordinary large packets by more than that factor. Every load is
    guarded by the packet's length first: an out-of-range load ends a classic BPF program with 0,
    which would drop the packet."""
    tail = _hello_test(0 if linktype_raw else 14, snaplen)
    head = [(_JA, 0, 0, len(program.instructions) - i - 1) if insn == (_BPF_RET_K, 0, 0, snaplen) else insn
            for i, insn in enumerate(program.instructions)]
    return BpfProgram(tuple(head) + tail, program.expression)


def _hello_test(link: int, snaplen: int) -> tuple[tuple[int, int, int, int], ...]:
    """The test :func:`keep_client_hellos` appends, for a link header of ``link`` bytes."""
    code: list[tuple] = [(_LD_W_LEN, _NEXT, _NEXT, 0), (_ST, _NEXT, _NEXT, 0),  # M[0] = the packet's length
                         (_JGE_K, _NEXT, _KEEP, link + 49)]  # room for IP, TCP and a record header at least
    if link:  # Ethernet: the EtherType says IPv4 or IPv6
        code += [(_LD_H_ABS, _NEXT, _NEXT, 12), (_JEQ_K, "v4", _NEXT, 0x0800), (_JEQ_K, "v6", _KEEP, 0x86DD)]
    else:  # raw IP: the version nibble does
        code += [(_LD_B_ABS, _NEXT, _NEXT, 0), (_AND_K, _NEXT, _NEXT, 0xF0), (_JEQ_K, "v4", _NEXT, 0x40),
                 (_JEQ_K, "v6", _KEEP, 0x60)]
    # X = the IP header's length, M[1] = it too; then on to TCP or UDP
    code += [("v4", _LD_H_ABS, _NEXT, _NEXT, link + 6), (_JSET_K, _KEEP, _NEXT, 0x1FFF),  # not a later fragment
             (_LDX_MSH, _NEXT, _NEXT, link), (_LD_B_ABS, _NEXT, _NEXT, link + 9), (_JA, "transport", _NEXT, 0),
             ("v6", _LDX_IMM, _NEXT, _NEXT, 40), (_LD_B_ABS, _NEXT, _NEXT, link + 6),  # no extension header
             ("transport", _STX, _NEXT, _NEXT, 1), (_JEQ_K, "tcp", _NEXT, 6), (_JEQ_K, "udp", _KEEP, 17),
             # TCP: its header is whole (length >= link + X + 20)
             ("tcp", _TXA, _NEXT, _NEXT, 0), (_ADD_K, _NEXT, _NEXT, link + 20),
             (_TAX, _NEXT, _NEXT, 0), (_LD_MEM, _NEXT, _NEXT, 0), (_JGE_X, _NEXT, _KEEP, 0),
             # X = the IP and TCP headers' length; then the record header is whole: length >= link + X + 9
             (_LDX_MEM, _NEXT, _NEXT, 1), (_LD_B_IND, _NEXT, _NEXT, link + 12), (_RSH_K, _NEXT, _NEXT, 4),
             (_LSH_K, _NEXT, _NEXT, 2), (_ADD_X, _NEXT, _NEXT, 0), (_TAX, _NEXT, _NEXT, 0), (_ST, _NEXT, _NEXT, 1),
             (_ADD_K, _NEXT, _NEXT, link + 9), (_TAX, _NEXT, _NEXT, 0), (_LD_MEM, _NEXT, _NEXT, 0),
             (_JGE_X, _NEXT, _KEEP, 0), (_LDX_MEM, _NEXT, _NEXT, 1),
             # content type 22 (handshake), version 3.x, handshake type 1 (ClientHello)
             (_LD_B_IND, _NEXT, _NEXT, link), (_JEQ_K, _NEXT, _KEEP, 0x16),
             (_LD_B_IND, _NEXT, _NEXT, link + 1), (_JEQ_K, _NEXT, _KEEP, 3),
             (_LD_B_IND, _NEXT, _NEXT, link + 5), (_JEQ_K, _NEXT, _KEEP, 1),
             (_LD_B_IND, _NEXT, _NEXT, link + 6), (_JEQ_K, _NEXT, _KEEP, 0),  # a hello is under 64 KiB
             # keep through the record's end: link + headers + 5 + its length, when past the snap length
             (_LD_H_IND, _NEXT, _NEXT, link + 3), (_ADD_K, _NEXT, _NEXT, link + 5), (_ADD_X, _NEXT, _NEXT, 0),
             (_JGE_K, _NEXT, _KEEP, snaplen + 1), (_JGE_K, "most", _NEXT, MAX_KEPT + 1), (_RET_A, _NEXT, _NEXT, 0),
             ("most", _BPF_RET_K, _NEXT, _NEXT, MAX_KEPT),
             # UDP: a datagram of QUIC's least Initial size (length >= link + X + 8 + 1200) ...
             ("udp", _TXA, _NEXT, _NEXT, 0), (_ADD_K, _NEXT, _NEXT, link + 8 + MIN_DATAGRAM),
             (_TAX, _NEXT, _NEXT, 0), (_LD_MEM, _NEXT, _NEXT, 0), (_JGE_X, _NEXT, _KEEP, 0),
             (_LDX_MEM, _NEXT, _NEXT, 1),
             # ... opening with an Initial packet's long header: version 1 (type bits 00) or 2 (type bits 01)
             (_LD_B_IND, _NEXT, _NEXT, link + 8), (_AND_K, _NEXT, _NEXT, 0xF0), (_ST, _NEXT, _NEXT, 2),
             (_LD_W_IND, _NEXT, _NEXT, link + 9), (_JEQ_K, "quic1", _NEXT, V1),
             (_JEQ_K, "quic2", _KEEP, V2),
             ("quic1", _LD_MEM, _NEXT, _NEXT, 2), (_JEQ_K, "whole", _KEEP, INITIAL_FIRST[V1]),
             ("quic2", _LD_MEM, _NEXT, _NEXT, 2), (_JEQ_K, "whole", _KEEP, INITIAL_FIRST[V2]),
             ("whole", _BPF_RET_K, _NEXT, _NEXT, QUIC_MAX_KEPT),  # the datagram (the kernel keeps what it holds)
             (_KEEP, _BPF_RET_K, _NEXT, _NEXT, snaplen)]
    return _assemble(code)


def _assemble(code: list[tuple]) -> tuple[tuple[int, int, int, int], ...]:
    """Instructions whose jump targets are labels (``_NEXT``: the next one) into relative offsets; an
    instruction of five fields carries its own label first."""
    labels = {insn[0]: at for at, insn in enumerate(code) if len(insn) == 5}
    out = []
    for at, insn in enumerate(code):
        op, jt, jf, k = insn[-4:]
        if op == _JA and jt is not _NEXT:  # an unconditional jump: its offset is k
            op, jt, jf, k = _JA, _NEXT, _NEXT, labels[jt] - at - 1
        out.append((op, 0 if jt is _NEXT else labels[jt] - at - 1, 0 if jf is _NEXT else labels[jf] - at - 1, k))
    return tuple(out)


def compile_filter(expression: str, raw_ip: bool, snaplen: int) -> BpfProgram:
    """Compile a tcpdump-style filter with libpcap (``apt-get install libpcap0.8``)."""
    if not expression.strip():
        return accept_all(snaplen)
    name = ctypes.util.find_library("pcap")
    if not name:
        raise ConfigError("a capture filter needs libpcap (Debian: libpcap0.8); run without --filter or install it")
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p, ctypes.c_int,
                                 ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    handle = lib.pcap_open_dead(_DLT_RAW if raw_ip else _DLT_EN10MB, snaplen)
    program = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, _PCAP_NETMASK_UNKNOWN) != 0:
            raise ConfigError(f"bad capture filter {expression!r}: {lib.pcap_geterr(handle).decode()}")
        insns = tuple((program.bf_insns[i].code, program.bf_insns[i].jt, program.bf_insns[i].jf, program.bf_insns[i].k)
                      for i in range(program.bf_len))
        lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)
    return BpfProgram(insns, expression)
