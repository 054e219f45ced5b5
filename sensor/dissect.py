"""Packet dissection: link layer (VLAN, QinQ, PPPoE session), IPv4/IPv6 (extension headers, fragments),
TCP/UDP/SCTP/ICMP, ICMP errors attributed to the flow they quote, and VXLAN/Geneve decapsulation.

Every step reads one field for all packets of a batch at once with numpy fancy indexing; a field past a
packet's captured length reads as 0 and the packet is marked truncated, never read out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from kubesonar.sensor import payload_kinds
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.record_walk import dissect_batch
from kubesonar.shared.flow import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = (12, 14, LINKTYPE_RAW)  # DLT_RAW differs between BSDs
SUPPORTED_LINKTYPES = (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4,
                       LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2) + _RAW_ALIASES

ETH_IPV4, ETH_IPV6, ETH_TEB = 0x0800, 0x86DD, 0x6558
ETH_PPPOE_SESSION, PPP_IPV4, PPP_IPV6 = 0x8864, 0x0021, 0x0057
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
VXLAN_PORTS = (4789, 8472)  # IANA, and the Linux kernel's default used by flannel
GENEVE_PORT = 6081
_IPV6_EXT_HEADERS = (0, 43, 60, 135, 139, 140)  # hop-by-hop, routing, dst opts, mobility, HIP, shim6
_IPV6_FRAGMENT, _IPV6_AH = 44, 51
ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_ERRORS = (1, 2, 3, 4)
ICMP_ECHO_REQUESTS = (8, 128)
ICMP_ECHO_REPLIES = (0, 129)
_PORTED = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)

# Each column in the narrowest type its values take: the compiled dissection writes a batch's columns
# and the compiled flow step reads them back, some 30,000 packets a batch, and at 8 bytes a number they
# were ~230 bytes a packet, past what the core's cache holds (issue 18). Readers widen before arithmetic
# that can leave the type (a sequence number plus a length, a port shifted into a pair).
_DTYPES = {
    "is_ip": bool, "sport": np.uint16, "dport": np.uint16, "proto": np.uint8,
    "ip_len": np.uint32,  # an IPv4 total length of 0 (segmentation offload) takes the 32-bit wire length
    "tcp_flags": np.uint8, "tcp_seq": np.uint32, "tcp_ack": np.uint32, "icmp_type": np.int16, "icmp_code": np.int16,
    "icmp_error": bool, "fragment": bool, "truncated": bool, "tunnel_id": np.uint32,
    "payload_pos": np.int32,  # within the captured bytes, or a few KiB past them
    "payload_len": np.uint32, "payload_kind": np.uint8, "rpc_code": np.uint8, "tls_code": np.int32,
    "host_code": np.int32, "icmp_size": np.int64, "icmp_odd": np.uint8, "exec_code": np.uint8,
}
_ADDRESSES = ("src", "dst", "tunnel_src", "tunnel_dst")  # (n, 2) uint64
_ABSENT = {"icmp_type": -1, "icmp_code": -1, "icmp_size": -1}  # what a packet without the field holds; else 0
_APP_LAYER = ("rpc_code", "tls_code", "host_code", "icmp_size", "icmp_odd", "exec_code")  # filled after dissection


def _blank_column(name: str, n: int, wide: bool = False) -> np.ndarray:
    """A column of ``n`` packets holding nothing (0, or the field's marker of absence)."""
    if name in _ADDRESSES:
        return np.zeros((n, 2), dtype=np.uint64)
    dtype = _DTYPES[name]
    return np.full(n, _ABSENT.get(name, 0), dtype=np.int64 if wide and dtype is not bool else dtype)


@dataclass
class PacketFields:
    """Per-packet header fields; an address is two 64-bit halves, [high, low], of its 16 bytes read
    big-endian (IPv4 mapped into IPv6: high 0, low 0xFFFF_xxxxxxxx)."""

    is_ip: np.ndarray  # bool: an IP header was parsed; the packet makes or joins a flow
    src: np.ndarray  # (n, 2) uint64
    dst: np.ndarray  # (n, 2) uint64
    sport: np.ndarray  # uint16
    dport: np.ndarray  # uint16
    proto: np.ndarray  # uint8
    ip_len: np.ndarray  # uint32 IP bytes
    tcp_flags: np.ndarray  # uint8
    tcp_seq: np.ndarray  # uint32: a SYN's tells a retransmission from a new connection; hello segments join by it
    tcp_ack: np.ndarray  # uint32 acknowledgement number: an executable counts only if it acknowledges the peer's SYN
    icmp_type: np.ndarray  # int16, -1 when not ICMP
    icmp_code: np.ndarray  # int16
    icmp_error: np.ndarray  # bool: an ICMP error, keyed by (and sent toward the initiator of) the flow it quotes
    fragment: np.ndarray  # bool: a non-first fragment, counted without L4
    truncated: np.ndarray  # bool: the capture cut a header this packet needed
    tunnel_src: np.ndarray  # (n, 2) uint64, zero unless decapsulated
    tunnel_dst: np.ndarray  # (n, 2) uint64
    tunnel_id: np.ndarray  # uint32 VNI
    payload_pos: np.ndarray  # int32 where the TCP/UDP payload (ICMP: the data after the 8-byte header) starts
    payload_len: np.ndarray  # uint32 payload bytes on the wire (the capture may hold fewer)
    payload_kind: np.ndarray  # uint8 what the payload starts with (sensor/payload_kinds.py)
    # what sensor/app_layer.py reads from the few packets whose payload matters
    rpc_code: np.ndarray  # uint8 mining JSON-RPC method recognised in the payload, 0 none
    tls_code: np.ndarray  # int32 the ClientHello's fingerprints in the flow table's TlsClients, 0 none
    host_code: np.ndarray  # int32 the host an HTTP request's Host header names, in the table's HttpHosts; 0 none
    icmp_size: np.ndarray  # int64 data bytes of an ICMP message that is not an error, -1 otherwise
    icmp_odd: np.ndarray  # uint8 1: that data is not a ping pattern, or a message type carrying none does
    exec_code: np.ndarray  # uint8 the Executable (shared/flow.py) the TCP payload or its HTTP response body starts

    @classmethod
    def blank(cls, n: int, wide: bool = False) -> PacketFields:
        """Fields of ``n`` packets holding nothing; ``wide``: every number int64, as the vectorised
        reference computes them (:meth:`narrowed` checks they fit)."""
        return cls(**{f.name: _blank_column(f.name, n, wide) for f in fields(cls)})

    @classmethod
    def for_kernel(cls, n: int) -> PacketFields:
        """Fields for dissect_batch, which writes every header field of every packet: those are left
        uninitialised (zeroing them first cost more than a tenth of the pass), the application
        layer's are blank."""
        def column(name: str) -> np.ndarray:
            if name in _APP_LAYER:
                return _blank_column(name, n)
            return np.empty((n, 2) if name in _ADDRESSES else n, dtype=_DTYPES.get(name, np.uint64))

        return cls(**{f.name: column(f.name) for f in fields(cls)})

    def narrowed(self) -> PacketFields:
        """These fields in the columns' own types; a value the type cannot hold raises, never wraps."""
        out = {}
        for f in fields(self):
            wide = getattr(self, f.name)
            narrow = wide.astype(_DTYPES.get(f.name, wide.dtype))
            if not np.array_equal(narrow, wide):
                raise OverflowError(f"{f.name} holds values past {narrow.dtype}")
            out[f.name] = narrow
        return PacketFields(**out)

    def assign(self, rows: np.ndarray, other: PacketFields, keep: np.ndarray) -> None:
        """Overwrite ``rows[keep]`` with ``other[keep]`` field by field."""
        target = rows[keep]
        for f in fields(self):
            getattr(self, f.name)[target] = getattr(other, f.name)[keep]


def captured_payload(batch: PacketBatch, pf: PacketFields, i: int) -> bytes:
    """The payload bytes of packet ``i`` that the capture holds (the snap length may have cut the rest)."""
    pos, size = int(pf.payload_pos[i]), int(pf.payload_len[i])  # Python ints: the columns are narrow
    start = int(batch.offset[i]) + pos
    end = int(batch.offset[i]) + min(int(batch.caplen[i]), pos + size)
    return batch.data[start:end].tobytes() if end > start else b""


class _View:
    """Packets of a batch addressed by per-row positions relative to each packet's start.

    The 16- and 32-bit readers are big-endian views of the same buffer with a one-byte stride, so any
    field at any offset is one gather.
    """

    __slots__ = ("_by_size", "base", "caplen", "data", "wirelen")

    def __init__(self, data: np.ndarray, base: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray,
                 by_size: dict[int, np.ndarray] | None = None):
        self.data, self.base, self.caplen, self.wirelen = data, base, caplen, wirelen
        if by_size is None:
            by_size = {1: data}
            for size, dtype in ((2, ">u2"), (4, ">u4"), (8, ">u8")):
                count = max(len(data) - size + 1, 0)
                by_size[size] = np.ndarray((count,), dtype=dtype, buffer=data, strides=(1,))
        self._by_size = by_size

    def take(self, rows: np.ndarray) -> _View:
        return _View(self.data, self.base[rows], self.caplen[rows], self.wirelen[rows], self._by_size)

    def has(self, pos: np.ndarray, size: int) -> np.ndarray:
        return pos + size <= self.caplen

    def _read(self, pos: np.ndarray, size: int) -> np.ndarray:
        source = self._by_size[size]
        if not len(source):
            return np.zeros(len(pos), dtype=np.int64)
        idx = np.minimum(self.base + pos, len(source) - 1)
        value = source[idx].astype(np.uint64 if size == 8 else np.int64)
        value[pos + size > self.caplen] = 0
        return value

    def read_where(self, mask: np.ndarray, pos: np.ndarray, size: int, default: int = 0) -> np.ndarray:
        """Read only the packets in ``mask`` (others get ``default``): most fields concern a few packets."""
        if mask.all():
            return self._read(pos, size)
        out = np.full(len(pos), default, dtype=np.uint64 if size == 8 else np.int64)
        rows = np.flatnonzero(mask)
        if len(rows):
            out[rows] = self.take(rows)._read(pos[rows], size)
        return out

    def u8(self, pos: np.ndarray) -> np.ndarray:
        return self._read(pos, 1)

    def u16(self, pos: np.ndarray) -> np.ndarray:
        return self._read(pos, 2)

    def u32(self, pos: np.ndarray) -> np.ndarray:
        return self._read(pos, 4)

    def u64(self, pos: np.ndarray) -> np.ndarray:
        return self._read(pos, 8)


def dissect(batch: PacketBatch) -> PacketFields:
    """Header fields of every packet of the batch, read by the compiled pass (sensor/dissect_kernel.py)."""
    out = PacketFields.for_kernel(len(batch))
    # the native kernels take contiguous arrays (sensor/build_native.py); a pcapng reader's columns
    # may be strided views of its header reads
    data, offset, caplen, wirelen, linktype = map(
        np.ascontiguousarray, (batch.data, batch.offset, batch.caplen, batch.wirelen, batch.linktype))
    dissect_batch(
        data, offset, caplen, wirelen, linktype, out.is_ip, out.src, out.dst,
        out.sport, out.dport, out.proto, out.ip_len, out.tcp_flags, out.tcp_seq, out.tcp_ack, out.icmp_type,
        out.icmp_code, out.icmp_error, out.fragment, out.truncated, out.tunnel_src, out.tunnel_dst, out.tunnel_id,
        out.payload_pos, out.payload_len, out.payload_kind,
    )
    return out


def dissect_vectorised(batch: PacketBatch) -> PacketFields:
    """The same fields read with numpy, field by field for all packets: the reference the compiled pass
    is tested against."""
    view = _View(batch.data, batch.offset, batch.caplen, batch.wirelen)
    out = _dissect(view, batch.linktype, np.zeros(len(batch), dtype=np.int64), tunnels=True)
    _payload_kinds(view, out)
    return out.narrowed()


def _payload_kinds(view: _View, out: PacketFields) -> None:
    """What each payload starts with (sensor/payload_kinds.py), bytes past the payload not counted."""
    icmp = (out.proto == IPPROTO_ICMP) | (out.proto == IPPROTO_ICMPV6)
    usable = out.is_ip & ~out.icmp_error
    out.payload_kind[:] = np.where(usable & icmp & (out.icmp_type >= 0), payload_kinds.ICMP, payload_kinds.NONE)
    rows = np.flatnonzero(usable & (out.proto == IPPROTO_TCP) & (out.payload_len > 0)
                          & (out.payload_pos < view.caplen))
    if not len(rows):
        return
    sub, pos, size = view.take(rows), out.payload_pos[rows], out.payload_len[rows]
    head = np.column_stack([sub.u8(pos + k) for k in range(8)])
    head[np.arange(8) >= size[:, None]] = -1  # not payload
    def starts(text: bytes) -> np.ndarray:
        return (head[:, : len(text)] == np.frombuffer(text, np.uint8)).all(axis=1)

    capitals = np.cumprod((head >= ord("A")) & (head <= ord("Z")), axis=1).sum(axis=1)  # leading capitals
    spaced = head[np.arange(len(head)), np.minimum(capitals, 7)] == ord(" ")
    kind = np.select(
        [(head[:, 0] == ord("{")) | (head[:, 0] == ord("[")), starts(b"POST ") | starts(b"PUT ") | starts(b"HTTP/"),
         (head[:, 0] == 0x16) & (head[:, 1] == 3) & (head[:, 5] == 1) & (size >= 9),
         (head[:, 0] >= 0x14) & (head[:, 0] <= 0x17) & (head[:, 1] == 3) & (size >= 5),
         (starts(b"\x7fE") | starts(b"MZ")) & (size >= payload_kinds.EXECUTABLE_LEAST),
         (capitals >= 3) & (capitals <= 7) & spaced],
        [payload_kinds.JSON, payload_kinds.HTTP, payload_kinds.TLS_CLIENT_HELLO, payload_kinds.TLS_RECORD,
         payload_kinds.EXECUTABLE_START, payload_kinds.HTTP_REQUEST], payload_kinds.NONE)
    out.payload_kind[rows] = kind


def _dissect(view: _View, linktype: np.ndarray, pos: np.ndarray, tunnels: bool) -> PacketFields:
    n = len(pos)
    out = PacketFields.blank(n, wide=True)
    l3, ethertype = _link_layer(view, linktype, pos)
    l4 = _ip_layer(view, l3, ethertype, out)
    _transport(view, l4, out)
    _attribute_icmp_errors(view, l4, out)
    if tunnels:
        _decapsulate(view, l4, out)
    return out


def _link_layer(view: _View, linktype: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of the network header and its EtherType (0 where unknown) per packet."""
    l3 = pos.copy()
    ethertype = np.zeros(len(pos), dtype=np.int64)
    if not len(pos):
        return l3, ethertype
    kinds = linktype[:1] if (linktype == linktype[0]).all() else np.unique(linktype)
    for kind in kinds.tolist():
        rows = slice(None) if len(kinds) == 1 else np.flatnonzero(linktype == kind)
        v, p = (view, pos) if len(kinds) == 1 else (view.take(rows), pos[rows])
        if kind == LINKTYPE_ETHERNET:
            l3[rows], ethertype[rows] = p + 14, v.u16(p + 12)
        elif kind == LINKTYPE_LINUX_SLL:
            l3[rows], ethertype[rows] = p + 16, v.u16(p + 14)
        elif kind == LINKTYPE_LINUX_SLL2:
            l3[rows], ethertype[rows] = p + 20, v.u16(p)
        elif kind in _RAW_ALIASES:
            version = v.u8(p) >> 4
            ethertype[rows] = np.select([version == 4, version == 6], [ETH_IPV4, ETH_IPV6], 0)
        elif kind in (LINKTYPE_IPV4, LINKTYPE_IPV6):
            ethertype[rows] = ETH_IPV4 if kind == LINKTYPE_IPV4 else ETH_IPV6
        elif kind in (LINKTYPE_NULL, LINKTYPE_LOOP):
            family = v.u8(p) | v.u8(p + 3)  # AF_ value in host byte order, either way round
            l3[rows] = p + 4
            ethertype[rows] = np.where(family == 2, ETH_IPV4, np.where(np.isin(family, (10, 24, 28, 30)), ETH_IPV6, 0))
    for _ in range(3):  # 802.1Q, QinQ
        tagged = np.isin(ethertype, _VLAN_TPIDS)
        if not tagged.any():
            break
        ethertype = np.where(tagged, view.u16(l3 + 2), ethertype)
        l3 = np.where(tagged, l3 + 4, l3)
    pppoe = ethertype == ETH_PPPOE_SESSION
    if pppoe.any():  # a 6-byte PPPoE header, then the 2-byte PPP protocol
        ppp = view.read_where(pppoe, l3 + 6, 2)
        ethertype = np.where(pppoe, np.select([ppp == PPP_IPV4, ppp == PPP_IPV6], [ETH_IPV4, ETH_IPV6], 0),
                             ethertype)
        l3 = np.where(pppoe, l3 + 8, l3)
    return l3, ethertype


def _ip_layer(view: _View, l3: np.ndarray, ethertype: np.ndarray, out: PacketFields) -> np.ndarray:
    """Fill addresses, protocol and lengths; return the transport header position."""
    b0 = view.u8(l3)
    v4 = (ethertype == ETH_IPV4) & ((b0 >> 4) == 4)
    v6 = (ethertype == ETH_IPV6) & ((b0 >> 4) == 6)
    ihl = (b0 & 0x0F) * 4
    v4_ok = v4 & (ihl >= 20) & view.has(l3, 20)
    v6_ok = v6 & view.has(l3, 40)
    out.truncated |= (v4 | v6) & ~(v4_ok | v6_ok)

    l4 = np.where(v4_ok, l3 + ihl, l3 + 40)
    proto = np.where(v6_ok, view.read_where(v6_ok, l3 + 6, 1), view.read_where(v4_ok, l3 + 9, 1))
    fragment = v4_ok & ((view.read_where(v4_ok, l3 + 6, 2) & 0x1FFF) != 0)
    total = np.where(v6_ok, 40 + view.read_where(v6_ok, l3 + 4, 2), view.read_where(v4_ok, l3 + 2, 2))
    total = np.where(v4_ok & (total == 0), view.wirelen - l3, total)  # 0 under TCP segmentation offload

    mapped = np.uint64(0xFFFF << 32)
    out.src[:, 1] = np.where(v4_ok, view.read_where(v4_ok, l3 + 12, 4).astype(np.uint64) | mapped, 0)
    out.dst[:, 1] = np.where(v4_ok, view.read_where(v4_ok, l3 + 16, 4).astype(np.uint64) | mapped, 0)
    if v6_ok.any():
        rows = np.flatnonzero(v6_ok)
        sub, at = view.take(rows), l3[rows]
        for k in range(2):
            out.src[rows, k] = sub.u64(at + 8 + 8 * k)
            out.dst[rows, k] = sub.u64(at + 24 + 8 * k)

    for _ in range(8):  # IPv6 extension header chain
        ext = v6_ok & np.isin(proto, _IPV6_EXT_HEADERS + (_IPV6_FRAGMENT, _IPV6_AH)) if v6_ok.any() else v6_ok
        if not ext.any():
            break
        is_frag = ext & (proto == _IPV6_FRAGMENT)
        fragment |= is_frag & ((view.u16(l4 + 2) >> 3) != 0)
        size = np.select(
            [is_frag, proto == _IPV6_AH], [8, (view.u8(l4 + 1) + 2) * 4], (view.u8(l4 + 1) + 1) * 8
        )
        out.truncated |= ext & ~view.has(l4, 2)
        proto = np.where(ext, view.u8(l4), proto)
        l4 = np.where(ext, l4 + size, l4)

    ok = v4_ok | v6_ok
    out.is_ip[:] = ok
    out.proto[:] = np.where(ok, proto, 0)
    out.ip_len[:] = np.where(ok, np.maximum(total, l4 - l3), 0)
    out.fragment[:] = fragment
    out.payload_len[:] = np.where(ok & ~fragment, np.maximum(total - (l4 - l3), 0), 0)  # L4 bytes; see _transport
    return l4


def _transport(view: _View, l4: np.ndarray, out: PacketFields) -> None:
    first = out.is_ip & ~out.fragment
    ip_payload = out.payload_len.copy()
    ported = first & np.isin(out.proto, _PORTED)
    ports_ok = ported & view.has(l4, 4)
    out.truncated |= ported & ~ports_ok
    out.sport[:] = view.read_where(ports_ok, l4, 2)
    out.dport[:] = view.read_where(ports_ok, l4 + 2, 2)
    tcp = first & (out.proto == IPPROTO_TCP) & view.has(l4, 14)
    out.tcp_flags[:] = view.read_where(tcp, l4 + 13, 1)
    out.tcp_seq[:] = view.read_where(tcp, l4 + 4, 4)
    out.tcp_ack[:] = view.read_where(tcp, l4 + 8, 4)
    udp = ports_ok & (out.proto == IPPROTO_UDP)
    header = np.where(tcp, (view.read_where(tcp, l4 + 12, 1) >> 4) * 4, np.where(udp, 8, 0))
    out.payload_pos[:] = np.where(tcp | udp, l4 + header, 0)
    out.payload_len[:] = np.where(tcp | udp, np.maximum(out.payload_len - header, 0), 0)

    icmp = first & ((out.proto == IPPROTO_ICMP) | (out.proto == IPPROTO_ICMPV6)) & view.has(l4, 2)
    if not icmp.any():
        return
    out.payload_pos[:] = np.where(icmp, l4 + 8, out.payload_pos)  # an ICMP message's data follows its header
    out.payload_len[:] = np.where(icmp, np.maximum(ip_payload - 8, 0), out.payload_len)
    out.icmp_type[:] = view.read_where(icmp, l4, 1, default=-1)
    out.icmp_code[:] = view.read_where(icmp, l4 + 1, 1, default=-1)
    echo = icmp & np.isin(out.icmp_type, ICMP_ECHO_REQUESTS + ICMP_ECHO_REPLIES) & view.has(l4, 8)
    ident = view.read_where(echo, l4 + 4, 2)
    out.sport[:] = np.where(echo, ident, out.sport)  # the echo identifier tells pings apart
    out.dport[:] = np.where(echo, ident, out.dport)


def _attribute_icmp_errors(view: _View, l4: np.ndarray, out: PacketFields) -> None:
    """Key an ICMP error by the packet it quotes, as a packet from that packet's destination."""
    errors = ((out.proto == IPPROTO_ICMP) & np.isin(out.icmp_type, ICMP4_ERRORS)) | (
        (out.proto == IPPROTO_ICMPV6) & np.isin(out.icmp_type, ICMP6_ERRORS)
    )
    rows = np.flatnonzero(errors)
    if not len(rows):
        return
    sub = view.take(rows)
    inner_l3 = l4[rows] + 8
    version = sub.u8(inner_l3) >> 4
    ethertype = np.select([version == 4, version == 6], [ETH_IPV4, ETH_IPV6], 0)
    inner = PacketFields.blank(len(rows), wide=True)
    inner_l4 = _ip_layer(sub, inner_l3, ethertype, inner)
    _transport(sub, inner_l4, inner)
    keep = inner.is_ip
    target = rows[keep]
    out.src[target], out.dst[target] = inner.dst[keep], inner.src[keep]
    out.sport[target], out.dport[target] = inner.dport[keep], inner.sport[keep]
    out.proto[target] = inner.proto[keep]
    out.tcp_flags[target] = 0
    out.icmp_error[target] = True
    out.payload_pos[target] = out.payload_len[target] = 0
    out.fragment[target] = False


def _decapsulate(view: _View, l4: np.ndarray, out: PacketFields) -> None:
    """Replace VXLAN/Geneve packets by their inner packet, keeping the tunnel endpoints."""
    udp = out.is_ip & ~out.fragment & (out.proto == IPPROTO_UDP) & ~out.icmp_error
    vxlan = udp & np.isin(out.dport, VXLAN_PORTS)
    geneve = udp & (out.dport == GENEVE_PORT)
    if not (vxlan.any() or geneve.any()):
        return
    first_byte = view.read_where(vxlan | geneve, l4 + 8, 1)
    vxlan &= (first_byte & 0x08) != 0
    geneve &= (first_byte >> 6) == 0
    rows = np.flatnonzero(vxlan | geneve)
    if not len(rows):
        return
    sub = view.take(rows)
    at = l4[rows]
    is_geneve = geneve[rows]
    opt_len = (sub.u8(at + 8) & 0x3F) * 4
    geneve_proto = sub.u16(at + 10)
    inner_pos = at + 16 + np.where(is_geneve, opt_len, 0)
    inner_link = np.where(
        ~is_geneve | (geneve_proto == ETH_TEB),
        LINKTYPE_ETHERNET,
        np.where(np.isin(geneve_proto, (ETH_IPV4, ETH_IPV6)), LINKTYPE_RAW, -1),
    )
    inner = _dissect(sub, inner_link, inner_pos, tunnels=False)
    keep = inner.is_ip
    inner.tunnel_src[:] = out.src[rows]
    inner.tunnel_dst[:] = out.dst[rows]
    inner.tunnel_id[:] = sub.u32(at + 12) >> 8  # the 24-bit VNI sits at the same place in both headers
    out.assign(rows, inner, keep)
