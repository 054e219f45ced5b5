"""The capture filter that keeps a ClientHello's packet to its record's end and a QUIC Initial's datagram
whole (sensor/bpf.py), run by the kernel: crafted frames sent over the lab bridge into packet sockets carrying the program, both with the
Ethernet header (SOCK_RAW) and without it (SOCK_DGRAM: the raw-IP devices' view). Every frame is
delivered (a load out of range would make the program drop it), hellos are kept through their record
and no further, and everything else is cut at the snap length as before."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw

from kubesonar.sensor.bpf import capture_program
from netns.node import namespace_node

SNAP = 928
ETH_P_ALL = 0x0003


def _hello(record: int, carried: int) -> bytes:
    """A TLS record header announcing ``record`` bytes of ClientHello, then ``carried`` bytes of it."""
    body = b"\x01" + (record - 4).to_bytes(3, "big") + bytes(max(0, carried - 4))
    return b"\x16\x03\x01" + record.to_bytes(2, "big") + body[:carried]


def _quic(first: int, version: int, size: int) -> bytes:
    """A datagram of ``size`` bytes opening with a QUIC long header's first byte and version."""
    return bytes((first,)) + version.to_bytes(4, "big") + bytes(size - 5)


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
        ("a QUIC v1 Initial", bytes(v4 / UDP(sport=40001, dport=443) / _quic(0xC3, 1, 1250)), 0xFFFF),
        ("a QUIC v2 Initial", bytes(v6 / UDP(sport=40001, dport=443) / _quic(0xD1, 0x6B3343CF, 1300)), 0xFFFF),
        ("a QUIC Handshake packet", bytes(v4 / UDP(sport=40001, dport=443) / _quic(0xE3, 1, 1250)), None),
        ("another QUIC version", bytes(v4 / UDP(sport=40001, dport=443) / _quic(0xC3, 0xFF00001D, 1250)), None),
        ("a QUIC Initial under 1,200 bytes", bytes(v4 / UDP(sport=40001, dport=443) / _quic(0xC3, 1, 1150)), None),
        ("a QUIC short header", bytes(v4 / UDP(sport=40001, dport=443) / _quic(0x43, 1, 1250)), None),
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
            s = socket.socket(socket.AF_PACKET, kind, 0)  # nothing until bound: other interfaces' frames stay out
            capture_program(expression, raw_ip, SNAP).attach(s)
            s.bind((node.bridge, ETH_P_ALL))
            s.settimeout(2)
            listeners[raw_ip] = s
        sender = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                  "s.bind((sys.argv[1], 0))\nfor frame in sys.stdin.read().split():\n    s.send(bytes.fromhex(frame))\n")
        _wait_until_forwarding(node.bridge)
        node.run("a", "python3", "-c", sender, node.interface("a"), input="\n".join(f.hex() for _, f, _ in cases),
                 text=True, check=True, capture_output=True)
        got = {raw_ip: [] for raw_ip in listeners}
        for raw_ip, s in listeners.items():
            try:
                while len(got[raw_ip]) < len(_kept(cases, raw_ip)):
                    data = s.recv(65536)
                    if _is_ours(data, raw_ip, cases):
                        got[raw_ip].append(len(data))
            except TimeoutError:
                pass
            s.close()
    assert got[False] == _kept(cases, raw_ip=False)
    assert got[True] == _kept(cases, raw_ip=True)


def _wait_until_forwarding(bridge: str) -> None:
    """Every port of the bridge forwarding (state 3): a frame a port receives before that is dropped,
    and the test flaked on it."""
    deadline = time.monotonic() + 10
    ports = list(Path(f"/sys/class/net/{bridge}/brif").iterdir())
    while not ports or any((p / "state").read_text().strip() != "3" for p in ports):
        assert time.monotonic() < deadline, f"{bridge}'s ports never forwarded"
        time.sleep(0.05)
        ports = list(Path(f"/sys/class/net/{bridge}/brif").iterdir())


def _is_ours(data: bytes, raw_ip: bool, cases) -> bool:
    """A frame the test sent (the bridge also carries IPv6 router solicitations and the like)."""
    frames = [f[14:] if raw_ip else f for _, f, _ in cases if not raw_ip or f[12:14] in _IP_TYPES]
    return any(f.startswith(data) and len(data) >= min(len(f), 16) for f in frames)


_ON_LOOPBACK = """
import socket, sys
from kubesonar.sensor.bpf import capture_program
capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
capture_program("", False, 928).attach(capture)
capture.bind(("lo", 3))
capture.settimeout(2)
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
for header in sys.argv[1:]:  # each in a large segment of its own: loopback's MTU is 64 KiB
    client.sendall(bytes.fromhex(header) + bytes(60_000))
    got = 0
    while got < 60_000:
        got += len(peer.recv(65536))
port, lengths = server.getsockname()[1], []
try:
    while True:
        frame, address = capture.recvfrom(70000)
        if address[2] == socket.PACKET_OUTGOING:  # loopback shows each packet leaving and arriving
            continue
        tcp = 14 + (frame[14] & 15) * 4
        payload = tcp + (frame[tcp + 12] >> 4) * 4
        if int.from_bytes(frame[tcp + 2 : tcp + 4], "big") == port and len(frame) > payload and frame[payload] == 0x16:
            lengths.append(len(frame))
except TimeoutError:
    pass
print(" ".join(map(str, lengths)))
"""


def test_what_a_hello_keeps_is_bounded_on_a_64_kib_segment():
    """A segment dressed as a hello announcing the largest record is kept to TLS's record limit, not to
    its 60 KB; one whose handshake claims 64 KiB or more is no hello, and keeps the snap length."""
    from kubesonar.sensor.bpf import MAX_KEPT

    largest, too_long = "160301ffff01000000", "160301ffff01010000"
    with namespace_node(["a"]) as node:
        out = node.run("a", sys.executable, "-c", _ON_LOOPBACK, largest, too_long, check=True, capture_output=True,
                       text=True, timeout=60).stdout.split()
    assert [int(n) for n in out] == [MAX_KEPT, SNAP]
