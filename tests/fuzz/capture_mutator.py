"""Structure-aware capture mutation: pcap records and pcapng blocks are taken apart, and one field or
block is changed, duplicated, dropped or moved, so mutations reach past the framing checks."""

from __future__ import annotations

import gzip
import random
import struct

T0 = 1_700_000_000
HOSTILE_U32 = [0, 1, 11, 12, 15, 16, 27, 28, 31, 32, 0xFFFF, 262_144, 262_145, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
HOSTILE_TSRESOL = [0, 6, 9, 18, 19, 0x3F, 0x7F, 0x80, 0x80 | 62, 0xC0, 0xFF]
HOSTILE_OFFSETS = [0, 10**10, -(10**10), 1 << 62, -(1 << 63), (1 << 63) - 1]
LINKTYPES = [0, 1, 101, 108, 113, 147, 228, 229, 276, 0xFFFF]


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(i: int, proto: int = 17) -> bytes:
    """An Ethernet/IPv4 frame carrying UDP or TCP, distinct per ``i``."""
    l4 = struct.pack("!HHHH", 1000 + i, 53, 16, 0) + b"q" * 8 if proto == 17 else \
        struct.pack("!HHIIBBHHH", 1000 + i, 80, i, 0, 5 << 4, 0x02, 1024, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), i & 0xFFFF, 0, 64, proto, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 1, i % 250]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def pcap(frames: list[bytes], order: str = "<", linktype: int = 1) -> bytes:
    out = [struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        out.append(struct.pack(order + "IIII", T0 + i, i, len(f), len(f)) + f)
    return b"".join(out)


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", btype, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


def pcapng(frames: list[bytes], order: str = "<", options: bytes = b"") -> bytes:
    out = [block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(order, 1, struct.pack(order + "HHI", 1, 0, 65535) + options)]
    for i, f in enumerate(frames):
        units = (T0 + i) * 1_000_000
        hi, lo = units >> 32, units & 0xFFFFFFFF
        if i % 5 == 3:
            out.append(block(order, 3, struct.pack(order + "I", len(f)) + f))
        elif i % 5 == 4:
            out.append(block(order, 2, struct.pack(order + "HHIIII", 0, 0, hi, lo, len(f), len(f)) + f))
        else:
            out.append(block(order, 6, struct.pack(order + "IIIII", 0, hi, lo, len(f), len(f)) + f))
    return b"".join(out)


def seeds() -> list[bytes]:
    frames = [frame(i, 17 if i % 2 else 6) for i in range(24)]
    hellos = hello_frames()
    return [pcap(frames), pcap(frames, ">"), pcapng(frames), pcapng(frames, ">"),
            pcapng(frames[:12]) + pcapng(frames[12:], ">"), pcap(hellos), pcapng(hellos, ">")]


def hello_frames() -> list[bytes]:
    """Frames whose payloads the sensor joins and decrypts (sensor/hello_segments.py, quic_initial.py):
    OpenSSL's ClientHello over three TCP segments, and a QUIC client Initial carrying it."""
    import ssl

    from quic_packets import crypto_frame, seal_initial

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols([f"p{i:03d}" + "x" * 28 for i in range(40)])  # past one segment
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="fuzz.example")
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    out = [_tcp_frame(7_000 + k, hello[k : k + 700]) for k in range(0, len(hello), 700)]
    return out + [_udp_frame(seal_initial(b"\x0f" * 8, crypto_frame(0, hello[5:])))]


def _tcp_frame(seq: int, payload: bytes) -> bytes:
    l4 = struct.pack("!HHIIBBHHH", 40_000, 443, seq, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
    return _ip_frame(6, l4)


def _udp_frame(payload: bytes) -> bytes:
    return _ip_frame(17, struct.pack("!HHHH", 40_001, 443, 8 + len(payload), 0) + payload)


def _ip_frame(proto: int, l4: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 1, 9]))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + l4


def _pcapng_blocks(data: bytes) -> list[bytes] | None:
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    blocks, pos = [], 0
    while pos + 12 <= len(data):
        if data[pos : pos + 4] == b"\x0a\x0d\x0d\x0a":
            order = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        (length,) = struct.unpack_from(order + "I", data, pos + 4)
        if length < 12 or pos + length > len(data):
            return None
        blocks.append(data[pos : pos + length])
        pos += length
    return blocks


def _order_of(blk: bytes) -> str:
    return "<" if struct.unpack_from("<I", blk, 4)[0] == len(blk) else ">"


def mutate_pcapng(data: bytes, rng: random.Random) -> bytes:
    blocks = _pcapng_blocks(data)
    if not blocks:
        return _flip(data, rng)
    i = rng.randrange(len(blocks))
    blk = bytearray(blocks[i])
    order = _order_of(bytes(blk))
    choice = rng.randrange(9)
    if choice == 0:  # a hostile length, type or field inside the block
        at = rng.choice([4, 8, 12, 16, 20, 24])
        if at + 4 <= len(blk):
            struct.pack_into(order + "I", blk, at, rng.choice(HOSTILE_U32))
        blocks[i] = bytes(blk)
    elif choice == 1:  # an interface with hostile options
        opts = struct.pack(order + "HH", 9, 1) + bytes([rng.choice(HOSTILE_TSRESOL)]) + b"\0\0\0"
        opts += struct.pack(order + "HHq", 14, 8, rng.choice(HOSTILE_OFFSETS))
        blocks.insert(i, block(order, 1, struct.pack(order + "HHI", rng.choice(LINKTYPES), 0, 65535) + opts))
    elif choice == 2:  # a block cut to a minimum size
        size = rng.choice([12, 16, 20, 28])
        blocks.insert(i, struct.pack(order + "II", rng.choice([1, 2, 3, 6, 0x0A0D0D0A]), size)
                      + b"\0" * (size - 12) + struct.pack(order + "I", size))
    elif choice == 3:  # duplicate or drop a block
        if rng.random() < 0.5:
            blocks.insert(rng.randrange(len(blocks) + 1), blocks[i])
        else:
            del blocks[i]
    elif choice == 4:  # a new section of the other byte order, empty or not
        other = ">" if order == "<" else "<"
        blocks.insert(i, pcapng([frame(90 + k) for k in range(rng.randrange(3))], other))
    elif choice == 5:  # a timestamp with high bits
        if len(blk) >= 20:
            struct.pack_into(order + "I", blk, 12, rng.choice([0x80000000, 0xFFFFFFFF, 1 << 30]))
        blocks[i] = bytes(blk)
    elif choice == 6:  # truncate the file
        return b"".join(blocks)[: rng.randrange(len(data))]
    elif choice == 7:  # packet bytes
        blocks[i] = _flip(bytes(blk), rng, start=min(28, len(blk)))
    else:  # swap two blocks
        j = rng.randrange(len(blocks))
        blocks[i], blocks[j] = blocks[j], blocks[i]
    return b"".join(blocks)


def mutate_pcap(data: bytes, rng: random.Random) -> bytes:
    order = "<" if data[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    records, pos = [], 24
    while pos + 16 <= len(data):
        (caplen,) = struct.unpack_from(order + "I", data, pos + 8)
        records.append(data[pos : pos + 16 + caplen])
        pos += 16 + caplen
    head = bytearray(data[:24])
    choice = rng.randrange(6)
    if choice == 0:  # header snaplen or link type
        struct.pack_into(order + "I", head, rng.choice([16, 20]), rng.choice(HOSTILE_U32 + LINKTYPES))
    elif choice == 1 and records:  # a record's caplen or wirelen
        i = rng.randrange(len(records))
        rec = bytearray(records[i])
        struct.pack_into(order + "I", rec, rng.choice([8, 12]), rng.choice(HOSTILE_U32))
        records[i] = bytes(rec)
    elif choice == 2 and records:  # duplicate, drop
        i = rng.randrange(len(records))
        records.insert(i, records[i]) if rng.random() < 0.5 else records.pop(i)
    elif choice == 3:
        return data[: rng.randrange(len(data))]
    elif choice == 4 and records:
        i = rng.randrange(len(records))
        records[i] = _flip(records[i], rng, start=16)
    else:  # the magic of the other resolution or order
        head[:4] = rng.choice([b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"])
    return bytes(head) + b"".join(records)


def mutate(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 3)):
        if len(data) < 24:
            break
        data = mutate_pcapng(data, rng) if data[:4] == b"\x0a\x0d\x0d\x0a" else mutate_pcap(data, rng)
    if rng.random() < 0.2:  # a .pcap.gz: the decompressing reader, its stream cut or damaged at times
        data = gzip.compress(data, mtime=0)
        data = rng.choice([data, data[: rng.randrange(len(data))], _flip(data, rng, 10)])
    return data


def _flip(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    if len(data) <= start:
        return data
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        buf[rng.randrange(start, len(buf))] = rng.randrange(256)
    return bytes(buf)
