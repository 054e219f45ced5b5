"""Compiled dissection: one pass over a batch's packets, the rules of :mod:`kubesonar.sensor.dissect`.

Each packet is read once, header by header (link layer, VLAN/QinQ, PPPoE session, IPv4/IPv6 with
extension headers, TCP/UDP/SCTP/ICMP, the packet an ICMP error quotes, VXLAN/Geneve inner packet),
into the :class:`~kubesonar.sensor.dissect.PacketFields` arrays. A field past the captured length reads
as 0 and marks the packet truncated, as the vectorised reader does; the two are checked against each
other in the tests.
"""

from __future__ import annotations

import numpy as np

from kubesonar.sensor.jit import njit
from kubesonar.sensor.payload_kinds import (
    EXECUTABLE_LEAST,
    EXECUTABLE_START,
    HTTP,
    HTTP_REQUEST,
    ICMP,
    JSON,
    NONE,
    TLS_CLIENT_HELLO,
    TLS_RECORD,
)

_MAPPED = np.uint64(0xFFFF << 32)


@njit(cache=True, nogil=True, inline="always")
def _rd(data, base, caplen, pos, size) -> int:
    if pos < 0 or pos + size > caplen:
        return 0
    at = np.uint64(base + pos)  # unsigned: numba checks a signed index for counting from the end
    if size == 1:
        return np.int64(data[at])
    if size == 2:
        return (np.int64(data[at]) << 8) | np.int64(data[at + np.uint64(1)])
    return ((np.int64(data[at]) << 24) | (np.int64(data[at + np.uint64(1)]) << 16)
            | (np.int64(data[at + np.uint64(2)]) << 8) | np.int64(data[at + np.uint64(3)]))


@njit(cache=True, nogil=True, inline="always")
def _rd64(data, base, caplen, pos) -> np.uint64:
    if pos < 0 or pos + 8 > caplen:
        return np.uint64(0)
    at = np.uint64(base + pos)
    v = np.uint64(0)
    for k in range(8):
        v = (v << np.uint64(8)) | np.uint64(data[at + np.uint64(k)])
    return v


@njit(cache=True, nogil=True, inline="always")
def _link(data, base, caplen, linktype, p) -> tuple[int, int]:
    """Position of the network header and its EtherType (0 where unknown)."""
    l3, et = p, 0
    if linktype == 1:  # Ethernet
        l3, et = p + 14, _rd(data, base, caplen, p + 12, 2)
    elif linktype == 113:  # Linux cooked
        l3, et = p + 16, _rd(data, base, caplen, p + 14, 2)
    elif linktype == 276:  # Linux cooked v2
        l3, et = p + 20, _rd(data, base, caplen, p, 2)
    elif linktype == 12 or linktype == 14 or linktype == 101:  # raw IP
        version = _rd(data, base, caplen, p, 1) >> 4
        et = 0x0800 if version == 4 else (0x86DD if version == 6 else 0)
    elif linktype == 228:
        et = 0x0800
    elif linktype == 229:
        et = 0x86DD
    elif linktype == 0 or linktype == 108:  # BSD loopback: AF_ value in host byte order
        family = _rd(data, base, caplen, p, 1) | _rd(data, base, caplen, p + 3, 1)
        l3 = p + 4
        if family == 2:
            et = 0x0800
        elif family == 10 or family == 24 or family == 28 or family == 30:
            et = 0x86DD
    for _ in range(3):  # 802.1Q, QinQ
        if et == 0x8100 or et == 0x88A8 or et == 0x9100:
            et = _rd(data, base, caplen, l3 + 2, 2)
            l3 += 4
        else:
            break
    if et == 0x8864:  # PPPoE session: 6-byte header, then the PPP protocol
        ppp = _rd(data, base, caplen, l3 + 6, 2)
        l3 += 8
        et = 0x0800 if ppp == 0x0021 else (0x86DD if ppp == 0x0057 else 0)
    return l3, et


@njit(cache=True, nogil=True)
def _ip_transport(data, base, caplen, wirelen, l3, et):
    """(is_ip, s0, s1, d0, d1, sport, dport, proto, ip_len, flags, seq, icmp_type, icmp_code, fragment,
    truncated, payload_pos, payload_len, l4, ack) of the IP packet at ``l3``."""
    b0 = _rd(data, base, caplen, l3, 1)
    v4 = et == 0x0800 and (b0 >> 4) == 4
    v6 = et == 0x86DD and (b0 >> 4) == 6
    ihl = (b0 & 0x0F) * 4
    v4_ok = v4 and ihl >= 20 and l3 + 20 <= caplen
    v6_ok = v6 and l3 + 40 <= caplen
    truncated = (v4 or v6) and not (v4_ok or v6_ok)
    z = np.uint64(0)
    if not (v4_ok or v6_ok):
        return False, z, z, z, z, 0, 0, 0, 0, 0, 0, -1, -1, False, truncated, 0, 0, l3, 0
    fragment = False
    if v4_ok:
        l4 = l3 + ihl
        proto = _rd(data, base, caplen, l3 + 9, 1)
        fragment = (_rd(data, base, caplen, l3 + 6, 2) & 0x1FFF) != 0
        total = _rd(data, base, caplen, l3 + 2, 2)
        if total == 0:  # TCP segmentation offload
            total = wirelen - l3
        s0, d0 = z, z
        s1 = np.uint64(_rd(data, base, caplen, l3 + 12, 4)) | _MAPPED
        d1 = np.uint64(_rd(data, base, caplen, l3 + 16, 4)) | _MAPPED
    else:
        l4 = l3 + 40
        proto = _rd(data, base, caplen, l3 + 6, 1)
        total = 40 + _rd(data, base, caplen, l3 + 4, 2)
        s0, s1 = _rd64(data, base, caplen, l3 + 8), _rd64(data, base, caplen, l3 + 16)
        d0, d1 = _rd64(data, base, caplen, l3 + 24), _rd64(data, base, caplen, l3 + 32)
        for _ in range(8):  # extension header chain
            if not (proto == 0 or proto == 43 or proto == 60 or proto == 135 or proto == 139 or proto == 140
                    or proto == 44 or proto == 51):
                break
            if proto == 44:
                fragment = fragment or (_rd(data, base, caplen, l4 + 2, 2) >> 3) != 0
                size = 8
            elif proto == 51:
                size = (_rd(data, base, caplen, l4 + 1, 1) + 2) * 4
            else:
                size = (_rd(data, base, caplen, l4 + 1, 1) + 1) * 8
            if l4 + 2 > caplen:
                truncated = True
            proto = _rd(data, base, caplen, l4, 1)
            l4 += size
    ip_len = max(total, l4 - l3)
    payload_len = 0 if fragment else max(total - (l4 - l3), 0)

    sport = dport = flags = seq = ack = payload_pos = 0
    icmp_type = icmp_code = -1
    if not fragment:
        tcp = udp = False
        if proto == 6 or proto == 17 or proto == 132:
            if l4 + 4 <= caplen:
                sport = _rd(data, base, caplen, l4, 2)
                dport = _rd(data, base, caplen, l4 + 2, 2)
                udp = proto == 17
            else:
                truncated = True
        if proto == 6 and l4 + 14 <= caplen:
            tcp = True
            flags = _rd(data, base, caplen, l4 + 13, 1)
            seq = _rd(data, base, caplen, l4 + 4, 4)
            ack = _rd(data, base, caplen, l4 + 8, 4)
        icmp = (proto == 1 or proto == 58) and l4 + 2 <= caplen
        if tcp or udp or icmp:  # an ICMP message's data follows its 8-byte header
            header = (_rd(data, base, caplen, l4 + 12, 1) >> 4) * 4 if tcp else 8
            payload_pos = l4 + header
            payload_len = max(payload_len - header, 0)
        else:
            payload_len = 0
        if icmp:
            icmp_type = _rd(data, base, caplen, l4, 1)
            icmp_code = _rd(data, base, caplen, l4 + 1, 1)
            if (icmp_type == 8 or icmp_type == 128 or icmp_type == 0 or icmp_type == 129) and l4 + 8 <= caplen:
                sport = dport = _rd(data, base, caplen, l4 + 4, 2)  # the echo identifier tells pings apart
    return (True, s0, s1, d0, d1, sport, dport, proto, ip_len, flags, seq, icmp_type, icmp_code, fragment,
            truncated, payload_pos, payload_len, l4, ack)


@njit(cache=True, nogil=True, inline="always")
def _packet(data, base, caplen, wirelen, linktype, p):
    """Fields of the packet at ``p`` (tunnels not opened), with the ICMP error flag."""
    l3, et = _link(data, base, caplen, linktype, p)
    f = _ip_transport(data, base, caplen, wirelen, l3, et)
    proto, icmp_type, l4 = f[7], f[11], f[17]
    error = (proto == 1 and (icmp_type == 3 or icmp_type == 4 or icmp_type == 5 or icmp_type == 11
                             or icmp_type == 12)) or (proto == 58 and 1 <= icmp_type <= 4)
    if error:  # key the error by the packet it quotes, as sent from that packet's destination
        version = _rd(data, base, caplen, l4 + 8, 1) >> 4
        inner_et = 0x0800 if version == 4 else (0x86DD if version == 6 else 0)
        g = _ip_transport(data, base, caplen, wirelen, l4 + 8, inner_et)
        if g[0]:
            return (True, g[3], g[4], g[1], g[2], g[6], g[5], g[7], f[8], 0, f[10], f[11], f[12], False, f[14],
                    0, 0, l4, f[18], True)
    return f + (False,)


@njit(cache=True, nogil=True, inline="always")
def _starts(data, base, caplen, pos, size, text) -> bool:
    if size < len(text):
        return False
    for k in range(len(text)):
        if _rd(data, base, caplen, pos + k, 1) != text[k]:
            return False
    return True


_POST = np.frombuffer(b"POST ", np.uint8)
_PUT = np.frombuffer(b"PUT ", np.uint8)
_HTTP = np.frombuffer(b"HTTP/", np.uint8)


@njit(cache=True, nogil=True, inline="always")
def _payload_kind(data, base, caplen, is_ip, proto, icmp_type, error, pos, size) -> int:
    """sensor/payload_kinds.py: what the payload at ``pos`` (``size`` bytes on the wire) starts with."""
    if not is_ip or error:
        return NONE
    if proto == 1 or proto == 58:
        return ICMP if icmp_type >= 0 else NONE
    if proto != 6 or size <= 0 or pos >= caplen:
        return NONE
    first = _rd(data, base, caplen, pos, 1)
    if first == 0x7B or first == 0x5B:  # { [
        return JSON
    if _starts(data, base, caplen, pos, size, _POST) or _starts(data, base, caplen, pos, size, _PUT) or _starts(
            data, base, caplen, pos, size, _HTTP):
        return HTTP
    if first == 0x16 and size >= 9 and _rd(data, base, caplen, pos + 1, 1) == 3 and _rd(
            data, base, caplen, pos + 5, 1) == 1:
        return TLS_CLIENT_HELLO
    if 0x14 <= first <= 0x17 and size >= 5 and _rd(data, base, caplen, pos + 1, 1) == 3:
        return TLS_RECORD
    if (first == 0x7F or first == 0x4D) and size >= EXECUTABLE_LEAST:
        second = _rd(data, base, caplen, pos + 1, 1)
        if (first == 0x7F and second == 0x45) or (first == 0x4D and second == 0x5A):  # \x7fE, MZ
            return EXECUTABLE_START
    if _request_line(data, base, caplen, pos, size):
        return HTTP_REQUEST
    return NONE


@njit(cache=True, nogil=True, inline="always")
def _request_line(data, base, caplen, pos, size) -> bool:
    """Whether the payload starts as an HTTP request line does: a method of 3 to 7 capital letters, a space."""
    for k in range(8):
        if k >= size:
            return False
        c = _rd(data, base, caplen, pos + k, 1)
        if c == 0x20:
            return k >= 3
        if c < 0x41 or c > 0x5A:
            return False
    return False


@njit(cache=True, nogil=True)
def dissect_batch(data, offset, caplen, wirelen, linktype, is_ip, src, dst, sport, dport, proto, ip_len,
                  tcp_flags, tcp_seq, tcp_ack, icmp_type, icmp_code, icmp_error, fragment, truncated, tunnel_src,
                  tunnel_dst, tunnel_id, payload_pos, payload_len, payload_kind) -> None:
    """Fill the PacketFields arrays of a batch, one packet at a time."""
    for i in range(len(offset)):
        base, cl, wl = offset[i], caplen[i], wirelen[i]
        f = _packet(data, base, cl, wl, linktype[i], 0)
        tunnelled = False
        if f[0] and not f[13] and f[7] == 17 and not f[19] and (f[6] == 4789 or f[6] == 8472 or f[6] == 6081):
            at = f[17]
            first = _rd(data, base, cl, at + 8, 1)
            geneve = f[6] == 6081
            if (not geneve and (first & 0x08) != 0) or (geneve and (first >> 6) == 0):
                inner_pos = at + 16
                inner_link = 1
                if geneve:
                    inner_pos += (first & 0x3F) * 4
                    gp = _rd(data, base, cl, at + 10, 2)
                    if gp != 0x6558:
                        inner_link = 101 if (gp == 0x0800 or gp == 0x86DD) else -1
                g = _packet(data, base, cl, wl, inner_link, inner_pos)
                if g[0]:
                    tunnel_src[i, 0], tunnel_src[i, 1] = f[1], f[2]
                    tunnel_dst[i, 0], tunnel_dst[i, 1] = f[3], f[4]
                    tunnel_id[i] = _rd(data, base, cl, at + 12, 4) >> 8  # the VNI, same place in both
                    f = g
                    tunnelled = True
        is_ip[i] = f[0]
        src[i, 0], src[i, 1], dst[i, 0], dst[i, 1] = f[1], f[2], f[3], f[4]
        sport[i], dport[i], proto[i], ip_len[i] = f[5], f[6], f[7], f[8]
        tcp_flags[i], tcp_seq[i], tcp_ack[i], icmp_type[i], icmp_code[i] = f[9], f[10], f[18], f[11], f[12]
        fragment[i], truncated[i], payload_pos[i], payload_len[i] = f[13], f[14], f[15], f[16]
        icmp_error[i] = f[19]
        payload_kind[i] = _payload_kind(data, base, cl, f[0], f[7], f[11], f[19], f[15], f[16])
        if not tunnelled:
            tunnel_src[i, 0] = tunnel_src[i, 1] = tunnel_dst[i, 0] = tunnel_dst[i, 1] = 0
            tunnel_id[i] = 0
