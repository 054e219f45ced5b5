"""Realistic cluster traffic written straight to a pcap file, vectorised (scapy builds a few thousand
packets a second; benchmarks and demos need a million).

Traffic: pod-to-service TCP sessions with handshakes, data both ways and FIN teardowns; DNS queries to
the cluster DNS service; ICMP echo; and a SYN scan of one pod by another (open ports answer SYN+ACK and
are reset, closed ports answer RST). Packets are Ethernet/IPv4 with valid IP checksums; the capture uses
a 128-byte snap length, the way a flow sensor captures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SNAPLEN = 128
DNS_IP = (10 << 24) | (96 << 16) | 10  # 10.96.0.10, the usual kube-dns service address
_SYN, _ACK, _FIN, _RST, _PSH = 0x02, 0x10, 0x01, 0x04, 0x08


@dataclass
class SyntheticTruth:
    packets: int
    tcp_sessions: int
    dns_queries: int
    pings: int
    scan_ports: int
    scanner_ip: str
    scan_target_ip: str

    @property
    def flows(self) -> int:
        return self.tcp_sessions + self.dns_queries + self.pings + self.scan_ports


def _ip_text(value: int) -> str:
    return ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))


def write_synthetic_capture(
    path: str | os.PathLike[str], packets: int = 1_000_000, flows: int = 20_000, seed: int = 7,
    scan_ports: int = 1000, duration_s: float = 600.0, start_s: float = 1_767_225_600.0,
) -> SyntheticTruth:
    """Write about ``packets`` packets in about ``flows`` flows to a pcap; return what was written."""
    rng = np.random.default_rng(seed)
    pods = (10 << 24) | (244 << 16) | rng.choice(np.arange(1 << 8, 1 << 12), 200, replace=False)
    services = (10 << 24) | (96 << 16) | rng.choice(np.arange(1 << 8, 1 << 14), 40, replace=False)
    service_ports = rng.choice(np.array([80, 443, 5432, 6379, 8080, 9090, 3306, 27017]), len(services))

    n_dns = flows // 5
    n_ping = flows // 100
    n_tcp = max(flows - n_dns - n_ping - scan_ports, 1)
    other = 4 * n_dns + 2 * n_ping + 2 * scan_ports
    data_per_session = max((packets - other) // n_tcp - 7, 2)
    parts = [
        tcp_sessions(rng, pods, services, service_ports, n_tcp, data_per_session, duration_s),
        dns_lookups(rng, pods, n_dns, duration_s),
        pings(rng, pods, n_ping, duration_s),
        syn_scan(rng, pods[0], pods[1], scan_ports, duration_s),
    ]
    count = write_traffic(path, parts, start_s)
    return SyntheticTruth(count, n_tcp, n_dns, n_ping, scan_ports, _ip_text(int(pods[0])), _ip_text(int(pods[1])))


def write_traffic(path: str | os.PathLike[str], parts: list[dict[str, np.ndarray]], start_s: float) -> int:
    """Write packets built by the generators below, in time order; return how many."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cols["ts"], kind="stable")
    _write_pcap(path, {k: v[order] for k, v in cols.items()}, start_s)
    return len(order)


def _packets(src, dst, sport, dport, proto, flags, payload, ts, content=None) -> dict[str, np.ndarray]:
    """Packet columns; ``content`` (bytes per packet, optional) is payload written in full, uncut by
    the snap length, for the few packets whose bytes matter (DNS questions, JSON-RPC)."""
    n = len(ts)
    b = lambda x, dt=np.int64: np.broadcast_to(np.asarray(x, dtype=dt), (n,)).copy()  # noqa: E731
    data = np.full(n, b"", dtype=object)
    sizes = np.zeros(n, dtype=np.int64)
    if content is not None:  # a few packets: a Python step each is fine
        data[:] = list(content)
        sizes[:] = [len(c) for c in data]
    return {"src": b(src), "dst": b(dst), "sport": b(sport), "dport": b(dport), "proto": b(proto),
            "flags": b(flags), "payload": np.where(sizes > 0, sizes, b(payload)), "ts": b(ts, np.float64),
            "content": data, "has_content": sizes > 0}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def tcp_sessions(rng, pods, services, ports, n, data, duration, offset=0.0, first_request: bytes | None = None,
                 starts=None, opening: bytes = b"") -> dict[str, np.ndarray]:
    """n TCP sessions from random ``pods`` to random ``services`` (with their ``ports``) in the window;
    ``first_request`` is the client's first data segment, ``starts`` the sessions' start times,
    ``opening`` what the first data segment starts with (its size unchanged: the rest is zeros)."""
    client = rng.choice(pods, n)
    svc = rng.integers(0, len(services), n)
    server, dport = services[svc], ports[svc]
    sport = rng.integers(32768, 61000, n)
    start = offset + (rng.uniform(0, duration, n) if starts is None else np.asarray(starts, dtype=np.float64))
    rtt = rng.uniform(0.0002, 0.002, n)
    # handshake, `data` segments alternating request/response, FIN exchange
    steps = 3 + data + 4
    k = np.arange(steps)
    t = start[:, None] + k[None, :] * rtt[:, None] / 2
    from_client = np.ones((n, steps), dtype=bool)
    from_client[:, 1] = False
    from_client[:, 3 : 3 + data] = (k[3 : 3 + data] % 2 == 1)
    from_client[:, 3 + data + 1] = False
    from_client[:, 3 + data + 2] = False
    flags = np.full((n, steps), _ACK)
    flags[:, 0], flags[:, 1] = _SYN, _SYN | _ACK
    flags[:, 3 : 3 + data] = _ACK | _PSH
    flags[:, 3 + data] = _FIN | _ACK
    flags[:, 3 + data + 2] = _FIN | _ACK
    payload = np.zeros((n, steps), dtype=np.int64)
    size = np.where(from_client[:, 3 : 3 + data], rng.integers(80, 600, (n, data)), rng.integers(200, 1448, (n, data)))
    payload[:, 3 : 3 + data] = size
    fc = from_client.ravel()
    rep = lambda x: np.repeat(x, steps)  # noqa: E731
    content = None
    if (first_request is not None or opening) and data >= 2:
        content = np.full((n, steps), b"", dtype=object)
        if opening:
            content[:, 3] = [opening.ljust(int(size), b"\0") for size in payload[:, 3]]
        if first_request is not None:
            content[:, 4] = first_request  # 3 + 1: the first data segment from the client
        content = content.ravel()
    return _packets(np.where(fc, rep(client), rep(server)), np.where(fc, rep(server), rep(client)),
                    np.where(fc, rep(sport), rep(dport)), np.where(fc, rep(dport), rep(sport)), 6,
                    flags.ravel(), payload.ravel(), t.ravel(), content)


def bulk_upload(client: int, server: int, port: int, size: int, start: float, duration: float,
                sport: int = 45_000, first_bytes: bytes = b"") -> dict[str, np.ndarray]:
    """One TCP session sending ``size`` bytes from client to server in full segments, acked every other;
    the first segment starts with ``first_bytes`` (what the protocol opens with)."""
    segments = max(1, size // 1448)
    n_acks = segments // 2
    t_data = start + 0.001 + np.linspace(0, duration, segments)
    parts = [
        _packets(client, server, sport, port, 6, _SYN, 0, [start]),
        _packets(server, client, port, sport, 6, _SYN | _ACK, 0, [start + 0.0005]),
        _packets(client, server, sport, port, 6, _ACK | _PSH, 1448, t_data[:1], [first_bytes.ljust(1448, b"\0")]),
        _packets(client, server, sport, port, 6, _ACK | _PSH, 1448, t_data[1:]),
        _packets(server, client, port, sport, 6, _ACK, 0, t_data[1::2][:n_acks] + 0.0002),
        _packets(client, server, sport, port, 6, _FIN | _ACK, 0, [start + duration + 0.01]),
        _packets(server, client, port, sport, 6, _FIN | _ACK, 0, [start + duration + 0.011]),
        _packets(client, server, sport, port, 6, _ACK, 0, [start + duration + 0.012]),
    ]
    return _concat(parts)


def dns_message(name: str, qtype: int = 1, response: bool = False, ident: int = 1) -> bytes:
    """A real DNS query (or its answer) for ``name``, as the sensor will parse it."""
    import dpkt

    msg = dpkt.dns.DNS(id=ident, qd=[dpkt.dns.DNS.Q(name=name, type=qtype)])
    if response:
        msg.op = 0x8180  # QR, RD, RA: a recursive answer
        if qtype == 1:
            msg.an = [dpkt.dns.DNS.RR(name=name, type=1, ttl=30, rdata=bytes([10, 96, 0, 1]))]
    return bytes(msg)


def dns_lookups(rng, pods, n, duration, offset=0.0, server=DNS_IP, names=None, qtype=1,
                both_types: bool = True) -> dict[str, np.ndarray]:
    """n lookups of ``names`` (random choices; without names, payloads are blank); each an A question
    and its answer, then (``both_types``) AAAA, on one source port: one flow per lookup."""
    client = rng.choice(pods, n)
    sport = rng.integers(32768, 61000, n)
    t = offset + rng.uniform(0, duration, n)
    reply = t + rng.uniform(0.0001, 0.001, n)
    asked = None if names is None else [names[i] for i in rng.integers(0, len(names), n)]

    def msgs(kind: int, response: bool):
        return None if asked is None else [dns_message(q, kind, response, i) for i, q in enumerate(asked)]

    q = _packets(client, server, sport, 53, 17, 0, rng.integers(30, 60, n), t, msgs(qtype, False))
    a = _packets(server, client, 53, sport, 17, 0, rng.integers(60, 200, n), reply, msgs(qtype, True))
    if not both_types:
        return _concat([q, a])
    q2 = _packets(client, server, sport, 53, 17, 0, rng.integers(30, 60, n), reply + 0.0001, msgs(28, False))
    a2 = _packets(server, client, 53, sport, 17, 0, rng.integers(60, 200, n), reply + 0.0005, msgs(28, True))
    return _concat([q, a, q2, a2])


def pings(rng, pods, n, duration) -> dict[str, np.ndarray]:
    src, dst = rng.choice(pods, n), rng.choice(pods, n)
    ident = rng.integers(1, 65535, n)
    t = rng.uniform(0, duration, n)
    req = _packets(src, dst, ident, 8, 1, 0, 56, t)  # sport carries the id, dport the ICMP type
    rep = _packets(dst, src, ident, 0, 1, 0, 56, t + 0.0003)
    return _concat([req, rep])


def syn_scan(rng, scanner, target, ports, duration, start=None) -> dict[str, np.ndarray]:
    dports = rng.permutation(np.arange(1, ports + 1))
    t = (duration / 2 if start is None else start) + np.arange(ports) * 0.0005
    opened = np.isin(dports, (22, 80, 443))
    probe = _packets(scanner, target, 40000, dports, 6, _SYN, 0, t)
    answer = _packets(target, scanner, dports, 40000, 6, np.where(opened, _SYN | _ACK, _RST | _ACK), 0, t + 0.0002)
    return _concat([probe, answer])


def syn_flood(rng, source, targets, n, duration, start=0.0) -> dict[str, np.ndarray]:
    """n SYNs from ``source``, each a distinct 5-tuple (random target, source port and port), unanswered."""
    combos = rng.choice(len(targets) * 64_512 * 16, size=n, replace=False)  # target x port x source port
    target = np.asarray(targets)[combos % len(targets)]
    dport = 1 + (combos // len(targets)) % 64_512
    sport = 40_000 + combos // (len(targets) * 64_512)
    t = start + np.sort(rng.uniform(0, duration, n))
    return _packets(source, target, sport, dport, 6, _SYN, 0, t)


def _write_pcap(path, c: dict[str, np.ndarray], start_s: float) -> None:
    n = len(c["ts"])
    tcp, udp = c["proto"] == 6, c["proto"] == 17
    l4_len = np.select([tcp, udp], [20, 8], 8)
    ip_len = 20 + l4_len + c["payload"]
    wire = 14 + ip_len
    with_content = np.flatnonzero(c["has_content"])
    caplen = np.minimum(wire, SNAPLEN)
    caplen[with_content] = wire[with_content]  # content is written whole
    width = int(max(SNAPLEN, caplen.max(initial=0)))
    rec = np.zeros((n, 16 + width), dtype=np.uint8)

    def put(col: int, value: np.ndarray, width: int, little: bool = False) -> None:
        for i in range(width):
            shift = 8 * (i if little else width - 1 - i)
            rec[:, col + i] = (value >> shift) & 0xFF

    ts = start_s + c["ts"]
    sec = np.floor(ts).astype(np.int64)
    put(0, sec, 4, little=True)
    put(4, ((ts - sec) * 1e6).astype(np.int64), 4, little=True)
    put(8, caplen, 4, little=True)
    put(12, wire, 4, little=True)
    e = 16
    put(e, np.full(n, 0x0A5800000001), 6)  # destination MAC
    put(e + 6, 0x0A5800000000 | (c["src"] & 0xFFFFFF), 6)
    put(e + 12, np.full(n, 0x0800), 2)
    ip = e + 14
    rec[:, ip] = 0x45
    put(ip + 2, ip_len, 2)
    put(ip + 4, np.arange(n) & 0xFFFF, 2)
    put(ip + 6, np.full(n, 0x4000), 2)  # don't fragment
    rec[:, ip + 8] = 64
    rec[:, ip + 9] = c["proto"]
    put(ip + 12, c["src"], 4)
    put(ip + 16, c["dst"], 4)
    words = rec[:, ip : ip + 20].astype(np.int64)
    total = (words[:, 0::2] << 8 | words[:, 1::2]).sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    put(ip + 10, ~total & 0xFFFF, 2)
    l4 = ip + 20
    icmp = c["proto"] == 1
    put(l4, np.where(icmp, c["dport"] << 8, c["sport"]), 2)  # ICMP: type, code 0
    put(l4 + 2, np.where(icmp, 0, c["dport"]), 2)
    put(l4 + 4, np.where(icmp, c["sport"] << 16 | 1, np.where(udp, (8 + c["payload"]) << 16, np.arange(n) * 1000)), 4)
    tcp_rows = np.flatnonzero(tcp)
    rec[tcp_rows, l4 + 12] = 0x50
    rec[tcp_rows, l4 + 13] = c["flags"][tcp_rows]
    rec[tcp_rows, l4 + 14] = 0xFF
    for row in with_content.tolist():
        at = 16 + 14 + 20 + int(l4_len[row])
        body = c["content"][row]
        rec[row, at : at + len(body)] = np.frombuffer(body, dtype=np.uint8)
    keep = np.arange(16 + width)[None, :] < (16 + caplen)[:, None]
    with open(path, "wb") as f:
        snaplen = SNAPLEN if width == SNAPLEN else 65535
        f.write(np.array([0xA1B2C3D4, 0x00040002, 0, 0, snaplen, 1], dtype="<u4").tobytes()[:24])
        f.write(rec[keep].tobytes())
