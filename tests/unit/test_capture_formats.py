"""File formats, link types, encapsulations and headers the engine must read, crafted with scapy."""

from __future__ import annotations

import struct

import pytest
from scapy.all import (
    ICMP,
    IP,
    TCP,
    UDP,
    VXLAN,
    CookedLinux,
    CookedLinuxV2,
    Dot1AD,
    Dot1Q,
    Ether,
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PcapNgWriter,
    PcapWriter,
    Raw,
    fragment,
)
from scapy.contrib.geneve import GENEVE

from kubesonar.sensor.offline import CaptureStats

from helpers import flows_of

T0 = 1_700_000_000.0


def _conversation(l3_src="10.0.0.1", l3_dst="10.0.0.2"):
    """A complete TCP connection: handshake, one request and answer, FIN both ways."""
    c, s = dict(src=l3_src, dst=l3_dst), dict(src=l3_dst, dst=l3_src)
    pkts = [
        IP(**c) / TCP(sport=40000, dport=80, flags="S"),
        IP(**s) / TCP(sport=80, dport=40000, flags="SA"),
        IP(**c) / TCP(sport=40000, dport=80, flags="A"),
        IP(**c) / TCP(sport=40000, dport=80, flags="PA") / Raw(b"GET / HTTP/1.1\r\n\r\n"),
        IP(**s) / TCP(sport=80, dport=40000, flags="PA") / Raw(b"x" * 300),
        IP(**c) / TCP(sport=40000, dport=80, flags="FA"),
        IP(**s) / TCP(sport=80, dport=40000, flags="FA"),
        IP(**c) / TCP(sport=40000, dport=80, flags="A"),
    ]
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.001
    return pkts


def _timed(pkts):
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.001
    return pkts


def _ip_bytes(pkts, sender):
    return sum(len(p[IP]) for p in pkts if p[IP].src == sender)


def _write(path, pkts, **kw):
    w = PcapWriter(str(path), sync=True, **kw)
    for p in pkts:
        w.write(p)
    w.close()


def _check_conversation(path, pkts):
    (flow,) = flows_of(path)
    assert (flow["src_ip"], flow["src_port"], flow["dst_ip"], flow["dst_port"]) == ("10.0.0.1", 40000, "10.0.0.2", 80)
    assert (flow["packets_out"], flow["packets_in"]) == (5, 3)
    assert flow["bytes_out"] == _ip_bytes(pkts, "10.0.0.1")
    assert flow["bytes_in"] == _ip_bytes(pkts, "10.0.0.2")
    assert flow["state"] == "closed"
    assert flow["first_ts"] == pytest.approx(T0) and flow["last_ts"] == pytest.approx(T0 + 0.007)
    return flow


@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
@pytest.mark.parametrize("endianness", ["<", ">"], ids=["little", "big"])
def test_classic_pcap_variants(tmp_path, nano, endianness):
    pkts = _timed([Ether() / p for p in _conversation()])
    _write(tmp_path / "c.pcap", pkts, nano=nano, endianness=endianness, linktype=1)
    _check_conversation(tmp_path / "c.pcap", [p[IP] for p in pkts])


def test_pcapng(tmp_path):
    pkts = _timed([Ether() / p for p in _conversation()])
    w = PcapNgWriter(str(tmp_path / "c.pcapng"))
    for p in pkts:
        w.write(p)
    w.close()
    _check_conversation(tmp_path / "c.pcapng", pkts)


def _pcapng_block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def test_pcapng_several_interfaces_and_simple_packet_blocks(tmp_path):
    """Two interfaces of different link types and time resolutions, EPBs and an SPB."""
    eth = [bytes(Ether() / p) for p in _conversation()]
    raw = [bytes(p) for p in _conversation("10.0.0.1", "10.0.0.2")]
    shb = _pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    tsresol_ns = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    idb_eth = _pcapng_block(1, struct.pack("<HHI", 1, 0, 65535))
    idb_raw = _pcapng_block(1, struct.pack("<HHI", 101, 0, 65535) + tsresol_ns)
    blocks = [shb, idb_eth, idb_raw]
    for i in range(8):  # alternate the two interfaces, same packets
        iface, data, unit = (0, eth[i], 10**6) if i % 2 == 0 else (1, raw[i], 10**9)
        ts = int((T0 + i * 0.001) * unit)
        blocks.append(_pcapng_block(6, struct.pack("<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data))
    blocks.append(_pcapng_block(3, struct.pack("<I", len(eth[7])) + eth[7]))  # SPB: interface 0, no time
    (tmp_path / "multi.pcapng").write_bytes(b"".join(blocks))
    (flow,) = flows_of(tmp_path / "multi.pcapng")
    assert flow["packets_out"] + flow["packets_in"] == 9
    assert flow["last_ts"] == pytest.approx(T0 + 0.007)


@pytest.mark.parametrize(
    "link, linktype",
    [
        (lambda p: Ether() / Dot1Q(vlan=7) / p, 1),
        (lambda p: Ether() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / p, 1),
        (lambda p: CookedLinux(proto=0x0800) / p, 113),
        (lambda p: CookedLinuxV2(proto=0x0800) / p, 276),
        (lambda p: p, 101),
    ],
    ids=["802.1Q", "QinQ", "SLL", "SLL2", "raw-IP"],
)
def test_link_types(tmp_path, link, linktype):
    conv = _conversation()
    pkts = [link(p) for p in conv]
    for p, c in zip(pkts, conv):
        p.time = c.time
    _write(tmp_path / "l.pcap", pkts, linktype=linktype)
    _check_conversation(tmp_path / "l.pcap", conv)


@pytest.mark.parametrize(
    "encap",
    [
        lambda p: Ether() / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=5555, dport=4789) / VXLAN(vni=42) / Ether() / p,
        lambda p: Ether() / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=5555, dport=8472) / VXLAN(vni=42) / Ether() / p,
        lambda p: Ether() / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=5555, dport=6081) / GENEVE(vni=42, proto=0x6558) / Ether() / p,
    ],
    ids=["vxlan-4789", "vxlan-8472-flannel", "geneve"],
)
def test_overlays_count_the_inner_flow_and_keep_the_tunnel(tmp_path, encap):
    conv = _conversation()
    pkts = [encap(p) for p in conv]
    for p, c in zip(pkts, conv):
        p.time = c.time
    _write(tmp_path / "o.pcap", pkts, linktype=1)
    flow = _check_conversation(tmp_path / "o.pcap", conv)
    assert (flow["tunnel_src"], flow["tunnel_dst"], flow["tunnel_id"]) == ("192.168.0.1", "192.168.0.2", 42)


def test_ipv6_extension_headers_and_fragments(tmp_path):
    base = IPv6(src="fd00::1", dst="fd00::2")
    pkts = [
        Ether() / base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP(sport=1000, dport=53) / Raw(b"q" * 20),
        Ether() / IPv6(src="fd00::2", dst="fd00::1") / IPv6ExtHdrRouting() / UDP(sport=53, dport=1000) / Raw(b"a" * 40),
    ]
    big = base / IPv6ExtHdrFragment(id=9) / UDP(sport=2000, dport=9000) / Raw(b"z" * 3000)
    from scapy.all import fragment6

    frags = fragment6(big, 1280)
    pkts += [Ether() / f for f in frags]
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.001
    _write(tmp_path / "v6.pcap", pkts, linktype=1)
    stats = CaptureStats()
    flows = {(f["src_port"], f["dst_port"]): f for f in flows_of(tmp_path / "v6.pcap", stats=stats)}
    dns = flows[(1000, 53)]
    assert (dns["src_ip"], dns["dst_ip"], dns["packets_out"], dns["packets_in"]) == ("fd00::1", "fd00::2", 1, 1)
    assert flows[(2000, 9000)]["packets_out"] == 1  # the first fragment carries the ports
    assert flows[(0, 0)]["packets_out"] == len(frags) - 1  # later fragments: counted, no L4
    assert stats.fragments == len(frags) - 1


def test_ipv4_fragments(tmp_path):
    big = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3000, dport=4000) / Raw(b"z" * 4000)
    pkts = [Ether() / f for f in fragment(big, 1400)]
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.001
    _write(tmp_path / "f.pcap", pkts, linktype=1)
    flows = {(f["src_port"], f["dst_port"]): f for f in flows_of(tmp_path / "f.pcap")}
    assert flows[(3000, 4000)]["packets_out"] == 1
    assert flows[(0, 0)]["packets_out"] == len(pkts) - 1
    assert sum(f["bytes_out"] for f in flows.values()) == sum(len(p[IP]) for p in pkts)


def test_icmp_unreachable_rejects_the_flow_it_quotes(tmp_path):
    probe = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=161) / Raw(b"p")
    reply = IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=3, code=3) / bytes(probe)
    v6probe = IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5000, dport=162)
    v6reply = IPv6(src="fd00::2", dst="fd00::1") / ICMPv6DestUnreach(code=4) / bytes(v6probe)
    proto_probe = IP(src="10.0.0.1", dst="10.0.0.3", proto=99) / Raw(b"x")
    proto_reply = IP(src="10.0.0.3", dst="10.0.0.1") / ICMP(type=3, code=2) / bytes(proto_probe)
    pkts = [Ether() / p for p in (probe, reply, v6probe, v6reply, proto_probe, proto_reply)]
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.001
    _write(tmp_path / "u.pcap", pkts, linktype=1)
    flows = flows_of(tmp_path / "u.pcap")
    assert len(flows) == 3, "each ICMP error joins the flow it quotes"
    for f in flows:
        assert f["state"] == "rejected" and f["packets_out"] == 1 and f["packets_in"] == 1
        assert f["src_ip"] in ("10.0.0.1", "fd00::1")
    assert {(f["proto"], f["icmp_type"], f["icmp_code"]) for f in flows} == {(17, 3, 3), (17, 1, 4), (99, 3, 2)}


def test_snaplen_truncation_keeps_counting(tmp_path):
    pkts = _timed([Ether() / p for p in _conversation()])
    _write(tmp_path / "s.pcap", pkts, linktype=1, snaplen=40)  # cuts inside the TCP header
    stats = CaptureStats()
    (flow,) = flows_of(tmp_path / "s.pcap", stats=stats)
    assert flow["packets_out"] + flow["packets_in"] == 8
    assert flow["bytes_out"] + flow["bytes_in"] == sum(len(p[IP]) for p in pkts)
