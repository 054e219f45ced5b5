"""The capture filter that keeps a ClientHello's packet to its record's end (sensor/bpf.py), run by the
kernel: crafted frames sent over the lab bridge into packet sockets carrying the program, both with the
Ethernet header (SOCK_RAW) and without it (SOCK_DGRAM: the raw-IP devices' view). Every frame is
delivered (a load out of range would make the program drop it), hellos are kept through their record
and no further, and everything else is cut at the snap length as before."""

from __future__ import annotations

import socket
import time

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw

from kubesonar.sensor.bpf import capture_program, keep_client_hellos
from netns.node import namespace_node

SNAP = 928
ETH_P_ALL = 0x0003


def _hello(record: int, carried: int) -> bytes:
    """A TLS record header announcing ``record`` bytes of ClientHello, then ``carried`` bytes of it."""
    body = b"\x01" + (record - 4).to_bytes(3, "big") + bytes(max(0, carried - 4))
    return b"\x16\x03\x01" + record.to_bytes(2, "big") + body[:carried]


def _cases(src: str, dst: str) -> list[tuple[str, bytes, int | None]]:
    """(what, frame, where a hello's record ends in it, Ethernet header included; None: no hello)."""
    tcp = dict(sport=40000, dport=443, flags="PA")
    eth = dict(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff")  # a bridge drops frames from no address
    v4, v6 = Ether(**eth) / IP(src=src, dst=dst), Ether(**eth) / IPv6(src="fd00::1", dst="fd00::2")
    frames = [
        ("a runt", bytes(Ether(**eth, type=0x88B5)) + b"\x45\x00", None),  # 0x88B5: local use, so no bridge filter drops it
        ("TCP with no payload", bytes(v4 / TCP(**tcp)), None),
        ("a hello's first segment", bytes(v4 / TCP(**tcp) / _hello(1900, 1400)), 14 + 40 + 5 + 1900),
        ("a short hello", bytes(v4 / TCP(**tcp) / _hello(300, 300)), None),
        ("a whole hello followed by other bytes", bytes(v4 / TCP(**tcp) / (_hello(1000, 1000) + bytes(300))),
         14 + 40 + 5 + 1000),
        ("IPv4 options", bytes(Ether(**eth) / IP(src=src, dst=dst, options=b"\x01" * 4) / TCP(**tcp) / _hello(1100, 1100)),
         14 + 44 + 20 + 5 + 1100),
        ("TCP options", bytes(v4 / TCP(**tcp, options=[("MSS", 1460), ("NOP", None), ("NOP", None)]) / _hello(1100, 1100)),
         14 + 20 + 28 + 5 + 1100),
        ("a later fragment", bytes(Ether(**eth) / IP(src=src, dst=dst, proto=6, frag=100) / Raw(bytes(20) + _hello(1100, 1000))),
         None),
        ("IPv6", bytes(v6 / TCP(**tcp) / _hello(1100, 1100)), 14 + 40 + 20 + 5 + 1100),
        ("UDP", bytes(v4 / UDP(sport=40000, dport=443) / _hello(1100, 1100)), None),
        ("an application data record", bytes(v4 / TCP(**tcp) / (b"\x17\x03\x03\x04\x4c" + bytes(1100))), None),
        ("a data offset past the packet", bytes(v4 / TCP(**tcp, dataofs=15) / Raw(b"\x16\x03\x01\x04")), None),
    ]
    return frames


def _kept(frames: list[tuple[str, bytes, int | None]], raw_ip: bool) -> list[int]:
    """The bytes the filter must keep of each frame: through the hello's record, else the snap length;
    a raw-IP view starts at the IP header, and shows IP packets only."""
    link = 0 if raw_ip else 14
    return [min(len(frame) - 14 + link, SNAP if end is None else end - 14 + link)
            for _, frame, end in frames if not raw_ip or frame[12:14] in _IP_TYPES]


_IP_TYPES = (b"\x08\x00", b"\x86\xdd")


@pytest.mark.parametrize("expression", ["", "tcp or udp or ip6 or not ip"], ids=["accept all", "a filter"])
def test_the_kernel_keeps_hellos_to_their_record_and_every_other_packet_as_before(expression):
    with namespace_node(["a", "b"]) as node:
        cases = _cases(node.pods["a"], node.pods["b"])
        listeners = {}
        for raw_ip, kind in ((False, socket.SOCK_RAW), (True, socket.SOCK_DGRAM)):
            s = socket.socket(socket.AF_PACKET, kind, socket.htons(ETH_P_ALL))
            program = capture_program(expression, raw_ip, SNAP) if expression else keep_client_hellos(
                capture_program("", raw_ip, SNAP), raw_ip, SNAP)
            program.attach(s)
            s.bind((node.bridge, 0))
            s.settimeout(2)
            listeners[raw_ip] = s
        sender = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                  "s.bind((sys.argv[1], 0))\nfor frame in sys.stdin.read().split():\n    s.send(bytes.fromhex(frame))\n")
        time.sleep(0.2)
        node.run("a", "python3", "-c", sender, node.interface("a"), input="\n".join(f.hex() for _, f, _ in cases),
                 text=True, check=True, capture_output=True)
        got = {raw_ip: [] for raw_ip in listeners}
        for raw_ip, s in listeners.items():
            try:
                while len(got[raw_ip]) < len(cases):
                    data = s.recv(65536)
                    if _is_ours(data, raw_ip, cases):
                        got[raw_ip].append(len(data))
            except TimeoutError:
                pass
            s.close()
    assert got[False] == _kept(cases, raw_ip=False)
    assert got[True] == _kept(cases, raw_ip=True)


def _is_ours(data: bytes, raw_ip: bool, cases) -> bool:
    """A frame the test sent (the bridge also carries IPv6 router solicitations and the like)."""
    frames = [f[14:] if raw_ip else f for _, f, _ in cases if not raw_ip or f[12:14] in _IP_TYPES]
    return any(f.startswith(data) and len(data) >= min(len(f), 16) for f in frames)
