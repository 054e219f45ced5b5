"""Structure-aware batch messages: take a valid message apart, change one field, put it back together
with a correct CRC and a recompressed payload, so the mutation reaches the code after the checksum."""

from __future__ import annotations

import random
import struct
import zlib

import zstandard

from kubesonar.shared import batch as codec
from kubesonar.shared.columns import pack_text

HOSTILE_NAMES = ["team/prod", "a b", "oké", "x" * 300, "", "../../etc", "a\x00b", "-lead", "trail.", "ü" * 40,
                 "a" * 64, "\u202e", "n/../x", "%2F", "*"]
HOSTILE_U64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header bytes, inflated payload) of a valid message."""
    _, _, flags, head_len, _, _, _ = codec._PRELUDE.unpack_from(message)
    head = message[codec._PRELUDE.size : codec._PRELUDE.size + head_len]
    stored = message[codec._PRELUDE.size + head_len :]
    payload = zstandard.ZstdDecompressor().decompress(stored) if flags & codec.FLAG_ZSTD else stored
    return bytes(head), bytes(payload)


def frame(head: bytes, payload: bytes, level: int = 1) -> bytes:
    """A message around any header and payload bytes, CRC and lengths right."""
    stored = zstandard.ZstdCompressor(level=level).compress(payload)
    crc = zlib.crc32(stored, zlib.crc32(head))
    return codec._PRELUDE.pack(codec.MAGIC, codec.FORMAT_VERSION, codec.FLAG_ZSTD, len(head), len(stored),
                               len(payload), crc) + head + stored


def header_bytes(cluster: str = "c", node: str = "n", sensor: str = "n/1", sequence: int = 1, part: int = 0,
                 parts: int = 1, rows: int = 0, window_rows: int | None = None, schema: int = codec.FLOW_SCHEMA_VERSION,
                 counters: dict[str, int] | None = None) -> bytes:
    """A header with every field given, valid or not (the encoder would refuse a bad name)."""
    fixed = codec._FIXED_HEADER.pack(schema, sequence, part, parts, 0, 1, rows,
                                     rows if window_rows is None else window_rows)
    names = b"".join(pack_text(v) for v in (cluster, node, sensor))
    items = sorted((counters or {}).items())
    return fixed + names + struct.pack("<H", len(items)) + b"".join(pack_text(k) + struct.pack("<Q", v)
                                                                     for k, v in items)


def mutate(message: bytes, rng: random.Random) -> bytes:
    """One structure-aware mutation of a valid message."""
    head, payload = split(message)
    choice = rng.randrange(6)
    if choice == 0:  # a hostile name in a header that is otherwise right
        rows = struct.unpack_from("<I", head, 38)[0]
        fields = {"cluster": "c", "node": "n", "sensor": "n/1"}
        fields[rng.choice(list(fields))] = rng.choice(HOSTILE_NAMES)
        return frame(header_bytes(rows=rows, **fields), payload)
    if choice == 1:  # a hostile fixed-header integer
        at, width = rng.choice([(2, 8), (10, 4), (14, 4), (34, 4), (38, 4)])
        value = rng.choice(HOSTILE_U64) % (1 << (8 * width))
        head = head[:at] + value.to_bytes(width, "little") + head[at + width :]
        return frame(head, payload)
    if choice == 2 and payload:  # flip bytes of the payload (then recompress)
        buf = bytearray(payload)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        return frame(head, bytes(buf))
    if choice == 3 and len(payload) > 8:  # a hostile 32-bit count somewhere in the payload
        at = rng.randrange(len(payload) - 4)
        value = rng.choice(HOSTILE_U64) & 0xFFFFFFFF
        return frame(head, payload[:at] + value.to_bytes(4, "little") + payload[at + 4 :])
    if choice == 4:  # cut or pad the payload
        cut = rng.randrange(len(payload) + 1)
        return frame(head, payload[:cut] + bytes(rng.randrange(8)))
    return frame(head[: rng.randrange(len(head) + 1)], payload)  # a cut header


def hostile_flows(rng: random.Random, rows: int = 30):
    """Flow records whose every integer column holds extreme values (the dtype's limits, 0, bit
    patterns) and whose text columns hold hostile strings: valid on the wire, hostile in meaning."""
    import numpy as np

    from kubesonar.shared.flow import FLOW_COLUMNS, FlowRecords

    records = FlowRecords.empty(rows)
    for col in FLOW_COLUMNS:
        if rng.random() < 0.5:
            continue
        if col.dtype == "O":
            records.columns[col.name] = np.array([rng.choice(HOSTILE_NAMES) for _ in range(rows)], dtype=object)
        elif col.dtype == "V16":
            raw = [bytes(rng.randrange(256) for _ in range(16)) for _ in range(rows)]
            records.columns[col.name] = np.array(raw, dtype="V16")
        else:
            info = np.iinfo(np.dtype(col.dtype))
            choices = [info.min, info.max, 0, 1, info.max // 2 + 1, -1 if info.min < 0 else info.max - 1]
            values = [rng.choice(choices) if rng.random() < 0.7 else rng.randint(int(info.min), int(info.max))
                      for _ in range(rows)]
            records.columns[col.name] = np.array(values, dtype=col.dtype)
    return records
