"""Classic BPF programs for capture sockets: a filter expression compiled by libpcap, or accept-all.

Both end in ``ret #snaplen``, so the kernel copies no more than ``snaplen`` bytes of a packet into the
ring: headers are all the flow engine reads, and payload beyond them is never captured.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
from dataclasses import dataclass

from kubesonar.shared.errors import ConfigError

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
