"""The flow batch message: what a sensor publishes and a cloud function decodes.

A fixed 24-byte prelude, an uncompressed header (who sent it, which window, health counters), and a
zstd-compressed columnar payload. The encoder splits a window into as many messages as a queue's size
limit needs and never returns one over it; the decoder checks every length against what is really there
and never inflates more than its cap, so a compression bomb costs at most the cap. Byte layout:
docs/flow-format.md.
"""

from __future__ import annotations

import math
import numbers
import struct
import zlib
from dataclasses import dataclass, field, replace

import numpy as np
import zstandard

from kubesonar.shared.columns import (
    Encoding,
    IntTransform,
    Reader,
    decode_addresses,
    decode_int,
    decode_strings,
    encode_addresses,
    encode_int,
    encode_strings,
    pack_text,
)
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.errors import BatchFormatError
from kubesonar.shared.flow import FLOW_COLUMNS, FLOW_SCHEMA_VERSION, SCHEMA_COLUMNS, Column, FlowRecords
from kubesonar.shared.names import header_name_faults
from kubesonar.shared.pod_events import PodEvents, PodEventType
from kubesonar.shared.signing import unwrap_unverified
from kubesonar.shared.table import Table

MAGIC = b"KSFB"
FORMAT_VERSION = 1
FLAG_ZSTD = 0x0001
_PRELUDE = struct.Struct("<4sHHIIII")  # magic, version, flags, header len, stored len, decoded len, crc32
_FIXED_HEADER = struct.Struct("<HQIIqqII")  # schema, sequence, part, parts, start, end, rows, window rows

SQS_LIMIT = 256 * 1024
# Event Grid takes 1 MB per event and per publish request; the event carries the batch base64-encoded
# with its envelope (sensor/queues/eventgrid.py), so the batch itself is at most 3/4 of 1,000,000 bytes
# less 2 KiB of envelope (ids and names of up to 253 characters each).
EVENT_GRID_LIMIT = (1_000_000 - 2048) // 4 * 3
PUBSUB_LIMIT = 10 * 1000 * 1000
# A sensor's Pub/Sub message must also fit a push or Eventarc delivery: an event is at most 512 KB
# (Eventarc quotas) and a push body carries the data base64-encoded in a JSON envelope (docs/gcp.md).
PUBSUB_PUSH_LIMIT = (512_000 - 4096) * 3 // 4
DEFAULT_DECODED_CAP = 64 << 20
MIN_LIMIT = 4096
# Rows of any one table in one message. The encoder never writes more, the decoder refuses more: a
# message of identical rows compresses to almost nothing (1.7 M flows in 3 KB), so the byte caps alone
# do not bound what decoding and scoring it costs. At this bound decoding a message peaks at 41 MB
# (tracemalloc) and the whole core adds 34 MB of RSS for it (docs/hardening.md).
MAX_ROWS_PER_MESSAGE = 131_072
ZSTD_LEVEL = 19  # ~6 us a flow to encode, decoding is as fast as at any level; see docs/flow-format.md

# How each integer column is best stored (everything else: frame of reference).
_INT_PLAN: dict[str, tuple[IntTransform, str | None]] = {
    "first_ts": (IntTransform.DELTA, None),
    "last_ts": (IntTransform.MINUS_COLUMN, "first_ts"),
    "conn_start": (IntTransform.MINUS_COLUMN, "first_ts"),
}
_FLOWS_TABLE = "flows"


@dataclass
class BatchHeader:
    """Who sent a batch, for which window, and how the sensor was doing."""

    cluster: str
    node: str
    sensor_id: str
    sequence: int
    window_start_ns: int
    window_end_ns: int
    part: int = 0
    parts: int = 1
    flow_count: int = 0  # records in this message
    window_flow_count: int = 0  # records in the whole window, over all its parts
    schema_version: int = FLOW_SCHEMA_VERSION
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class Batch:
    header: BatchHeader
    flows: FlowRecords
    pods: PodEvents = field(default_factory=PodEvents.empty)  # pod events, in a window's first part only
    dns: DnsMessages = field(default_factory=DnsMessages.empty)  # DNS messages the sensor parsed


# -- encoding -----------------------------------------------------------------------------------------


def _encode_header(h: BatchHeader) -> bytes:
    faults = header_name_faults(h.cluster, h.node, h.sensor_id)
    if faults:
        raise BatchFormatError(faults[0])
    fixed = _FIXED_HEADER.pack(
        h.schema_version, h.sequence, h.part, h.parts, h.window_start_ns, h.window_end_ns,
        h.flow_count, h.window_flow_count,
    )
    names = [pack_text(h.cluster), pack_text(h.node), pack_text(h.sensor_id)]
    counters = [struct.pack("<H", len(h.counters))]
    for name, value in sorted(h.counters.items()):
        if not isinstance(value, numbers.Integral) or not 0 <= value < 1 << 64:  # numpy's integers too
            raise BatchFormatError(f"health counter {name!r} = {value!r} is not a 64-bit unsigned integer")
        counters.append(pack_text(name) + struct.pack("<Q", value))
    return fixed + b"".join(names) + b"".join(counters)


def _encode_payload(flows: FlowRecords, schema: tuple[Column, ...], side: list[Table]) -> bytes:
    tables = [_encode_table(_FLOWS_TABLE, flows.columns, len(flows), schema, _INT_PLAN)]
    for table in side:
        if len(table):
            tables.append(_encode_table(table.NAME, table.columns, len(table), table.COLUMNS, {}))
    return struct.pack("<H", len(tables)) + b"".join(tables)


def _encode_table(name: str, table: dict[str, np.ndarray], rows: int, schema: tuple[Column, ...],
                  plan: dict[str, tuple[IntTransform, str | None]]) -> bytes:
    parts = [pack_text(name), struct.pack("<IH", rows, len(schema))]
    for col in schema:
        values = table[col.name]
        if col.dtype == "O":
            kind, body = Encoding.STRING_DICT, encode_strings(values)
        elif col.dtype == "V16":
            kind, body = Encoding.ADDR_DICT, encode_addresses(values)
        else:
            transform, ref = plan.get(col.name, (IntTransform.FRAME_OF_REFERENCE, None))
            kind = Encoding.INT
            body = pack_text(ref or "") + encode_int(values, transform, table[ref] if ref else None)
        parts.append(pack_text(col.name) + struct.pack("<BI", kind, len(body)) + body)
    return b"".join(parts)


def _frame(header: BatchHeader, payload: bytes, compressed: bytes) -> bytes:
    head = _encode_header(header)
    crc = zlib.crc32(compressed, zlib.crc32(head))
    prelude = _PRELUDE.pack(MAGIC, FORMAT_VERSION, FLAG_ZSTD, len(head), len(compressed), len(payload), crc)
    return prelude + head + compressed


def _compression_params(level: int) -> zstandard.ZstdCompressionParameters:
    """``level``'s search with a 1 MiB window and small match tables: a message is at most a few MiB
    of payload, so the ratio is the same (12.05 bytes a flow on the benchmark either way) while the
    compressor needs 2 MiB instead of 18-90 MiB, which is what bounds the sensor's memory."""
    return zstandard.ZstdCompressionParameters.from_level(level, window_log=20, chain_log=16, hash_log=16)


def encode_batch(header: BatchHeader, flows: FlowRecords, limit: int = SQS_LIMIT, level: int = ZSTD_LEVEL,
                 pods: PodEvents | None = None, dns: DnsMessages | None = None) -> list[bytes]:
    """Encode one window as messages of at most ``limit`` bytes each: its flows in record order (the pod
    events ride in the first part), then its DNS messages in parts of their own if they do not fit."""
    if limit < MIN_LIMIT:
        raise BatchFormatError(f"message size limit {limit} is below the minimum of {MIN_LIMIT} bytes")
    if header.schema_version not in SCHEMA_COLUMNS:
        raise BatchFormatError(f"flow schema version {header.schema_version} is not known")
    schema = SCHEMA_COLUMNS[header.schema_version]  # older versions only for tests of mixed fleets
    pods = pods if pods is not None and len(pods) else None
    dns = dns if dns is not None and len(dns) else None
    for table, version in ((pods, 2), (dns, 3)):
        if table is not None and header.schema_version < version:
            raise BatchFormatError(f"{table.NAME} rows need flow schema {version}")
    compressor = zstandard.ZstdCompressor(compression_params=_compression_params(level))
    head_size = _PRELUDE.size + len(_encode_header(replace(header, parts=0, part=0)))
    payloads: list[tuple[bytes, bytes, int]] = []  # (payload, compressed, flow rows)

    def fit(rows: int, payload_of, what: str) -> None:
        """Append the payloads of rows 0..rows in order, split by measured size, halving what still does
        not fit. A worklist, not recursion: a closure that calls itself is a reference cycle, which kept
        every call's compressor (C memory tracemalloc does not see) and payloads until a full collection
        (a 1,000,000-tuple flood: 100-170 MiB of them at times)."""
        todo = [(0, rows)]  # row ranges still to place, the next one last
        while todo:
            lo, hi = todo.pop()
            if hi - lo > MAX_ROWS_PER_MESSAGE:
                todo += reversed([(a, min(a + MAX_ROWS_PER_MESSAGE, hi)) for a in range(lo, hi, MAX_ROWS_PER_MESSAGE)])
                continue
            payload, flow_rows = payload_of(lo, hi)
            compressed = compressor.compress(payload)
            if head_size + len(compressed) <= limit:
                payloads.append((payload, compressed, flow_rows))
                continue
            if hi - lo <= 1:
                raise BatchFormatError(f"one {what} does not fit in {limit} bytes with a {head_size}-byte header")
            pieces = max(2, math.ceil((head_size + len(compressed)) * 1.1 / limit))
            bounds = np.linspace(lo, hi, pieces + 1).astype(int)
            todo += reversed([(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])

    def flow_part(lo: int, hi: int):
        side = [pods] if lo == 0 and pods is not None else []
        part = flows.take(slice(lo, hi))
        return _encode_payload(part, schema, side), len(part)

    small = max(len(flows), len(pods or ()), len(dns or ())) <= MAX_ROWS_PER_MESSAGE
    if dns is not None and small:  # the usual window: flows, pod events and DNS in one message
        together = _encode_payload(flows, schema, [t for t in (pods, dns) if t is not None])
        compressed = compressor.compress(together)
        if head_size + len(compressed) <= limit:
            payloads.append((together, compressed, len(flows)))
            dns = None
    if not payloads and (len(flows) or pods is not None or dns is None):
        fit(max(len(flows), 1) if pods is not None else len(flows), flow_part,
            "flow record" + (" with the pod events" if pods is not None else ""))
    if dns is not None:
        no_flows = flows.take(slice(0, 0))
        fit(len(dns), lambda lo, hi: (_encode_payload(no_flows, schema, [dns.take(slice(lo, hi))]), 0),
            "DNS message")
    messages = []
    for i, (payload, compressed, rows) in enumerate(payloads):
        h = replace(header, part=i, parts=len(payloads), flow_count=rows, window_flow_count=len(flows))
        messages.append(_frame(h, payload, compressed))
    return messages


# -- decoding -----------------------------------------------------------------------------------------


def decode_batch(message: bytes, decoded_cap: int = DEFAULT_DECODED_CAP) -> Batch:
    """Decode and validate one message; any fault raises BatchFormatError saying what was wrong."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise BatchFormatError(f"a batch message is bytes, not {type(message).__name__}")
    if len(message) < _PRELUDE.size:
        raise BatchFormatError(f"message of {len(message)} bytes is shorter than the {_PRELUDE.size}-byte prelude")
    magic, version, flags, head_len, stored_len, decoded_len, crc = _PRELUDE.unpack_from(message)
    if magic != MAGIC:
        raise BatchFormatError(f"not a KubeSonar flow batch (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise BatchFormatError(f"batch format version {version} is not supported (this reader: {FORMAT_VERSION})")
    if flags & ~FLAG_ZSTD:
        raise BatchFormatError(f"unknown flags {flags:#06x}")
    expected = _PRELUDE.size + head_len + stored_len
    if len(message) != expected:
        raise BatchFormatError(
            f"message is {len(message)} bytes but its lengths add up to {expected} (truncated or padded)"
        )
    if decoded_len > decoded_cap:
        raise BatchFormatError(f"declared payload of {decoded_len} bytes exceeds the {decoded_cap}-byte cap")
    view = memoryview(message)
    head = view[_PRELUDE.size : _PRELUDE.size + head_len]
    stored = view[_PRELUDE.size + head_len :]
    if zlib.crc32(stored, zlib.crc32(head)) != crc:
        raise BatchFormatError("checksum mismatch: the message was corrupted")
    header = _decode_header(Reader(head, "batch header"))
    payload = _inflate(stored, decoded_len) if flags & FLAG_ZSTD else bytes(stored)
    if len(payload) != decoded_len:
        raise BatchFormatError(f"payload is {len(payload)} bytes, header declares {decoded_len}")
    flows, side = _decode_payload(Reader(payload, "batch payload"), header.schema_version)
    if len(flows) != header.flow_count:
        raise BatchFormatError(f"header counts {header.flow_count} flows, payload holds {len(flows)}")
    return Batch(header, flows, side.get(PodEvents.NAME, PodEvents.empty()),
                 side.get(DnsMessages.NAME, DnsMessages.empty()))


def read_header(message: bytes) -> BatchHeader:
    """A message's header alone (who sent it, which window), without inflating its payload: for a
    publisher's envelope (a signed message's too). The full checks are decode_batch's, on the receiving side."""
    message = unwrap_unverified(message)
    if len(message) < _PRELUDE.size or _PRELUDE.unpack_from(message)[0] != MAGIC:
        raise BatchFormatError("not a KubeSonar flow batch")
    head_len = _PRELUDE.unpack_from(message)[3]
    return _decode_header(Reader(memoryview(message)[_PRELUDE.size : _PRELUDE.size + head_len], "batch header"))


def decode_header(message: bytes) -> BatchHeader:
    """The header of a message alone (no payload inflated): checks lengths and CRC like decode_batch."""
    if len(message) < _PRELUDE.size:
        raise BatchFormatError(f"message of {len(message)} bytes is shorter than the {_PRELUDE.size}-byte prelude")
    magic, version, _, head_len, stored_len, _, crc = _PRELUDE.unpack_from(message)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise BatchFormatError(f"not a KubeSonar flow batch of version {FORMAT_VERSION}")
    if len(message) != _PRELUDE.size + head_len + stored_len:
        raise BatchFormatError("message lengths do not add up (truncated or padded)")
    view = memoryview(message)
    head = view[_PRELUDE.size : _PRELUDE.size + head_len]
    if zlib.crc32(view[_PRELUDE.size + head_len :], zlib.crc32(head)) != crc:
        raise BatchFormatError("checksum mismatch: the message was corrupted")
    return _decode_header(Reader(head, "batch header"))


def _inflate(stored: memoryview, decoded_len: int) -> bytes:
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(bytes(stored), read_across_frames=False)
        out = reader.read(decoded_len + 1)  # never more than the declared size (itself under the cap)
    except zstandard.ZstdError as exc:
        raise BatchFormatError(f"payload does not decompress: {exc}") from None
    if len(out) > decoded_len:
        raise BatchFormatError(f"payload inflates past its declared {decoded_len} bytes")
    return out


def _decode_header(r: Reader) -> BatchHeader:
    schema, sequence, part, parts, start, end, rows, window_rows = r.unpack(_FIXED_HEADER.format[1:], "fixed header")
    if schema not in SCHEMA_COLUMNS:
        raise BatchFormatError(f"flow schema version {schema} is not supported (this reader: "
                               f"{', '.join(map(str, SCHEMA_COLUMNS))})")
    if parts == 0 or part >= parts:
        raise BatchFormatError(f"part {part} of {parts} is not a valid part number")
    if rows > window_rows:
        raise BatchFormatError(f"message holds {rows} flows of a window of {window_rows}")
    cluster, node, sensor = r.text("cluster"), r.text("node"), r.text("sensor id")
    faults = header_name_faults(cluster, node, sensor)
    if faults:
        raise BatchFormatError(faults[0])
    (count,) = r.unpack("H", "counter count")
    counters = {}
    for _ in range(count):
        name = r.text("counter name")
        (counters[name],) = r.unpack("Q", "counter value")
    r.done()
    return BatchHeader(cluster, node, sensor, sequence, start, end, part, parts, rows, window_rows, schema, counters)


_SIDE_TABLES: dict[str, tuple[type[Table], int]] = {  # name -> (table, first schema carrying it)
    PodEvents.NAME: (PodEvents, 2),
    DnsMessages.NAME: (DnsMessages, 3),
}


def _decode_payload(r: Reader, schema_version: int) -> tuple[FlowRecords, dict[str, Table]]:
    (tables,) = r.unpack("H", "table count")
    allowed = [name for name, (_, since) in _SIDE_TABLES.items() if schema_version >= since]
    if not 1 <= tables <= 1 + len(allowed):
        raise BatchFormatError(f"payload has {tables} tables; schema {schema_version} has 1 to {1 + len(allowed)}")
    columns = _decode_table(r, _FLOWS_TABLE, SCHEMA_COLUMNS[schema_version])
    blank = FlowRecords.empty(len(columns["first_ts"])).columns
    for col in FLOW_COLUMNS:
        if col.name not in columns:  # an older schema: the column it lacks is unknown ('' or 0)
            columns[col.name] = blank[col.name]
    side: dict[str, Table] = {}
    for _ in range(tables - 1):
        name = r.peek_text("table name")
        if name not in allowed or name in side:
            raise BatchFormatError(f"unexpected table {name!r} (schema {schema_version} allows {allowed} once each)")
        kind = _SIDE_TABLES[name][0]
        side[name] = kind(_decode_table(r, name, kind.COLUMNS))
    r.done()
    pods = side.get(PodEvents.NAME)
    if pods is not None:
        known = np.isin(pods.columns["event"], [e.value for e in PodEventType])
        if not known.all():
            raise BatchFormatError(f"pod event code {int(pods.columns['event'][~known][0])} is not known")
    return FlowRecords(columns), side


def _decode_table(r: Reader, expected: str, schema: tuple[Column, ...]) -> dict[str, np.ndarray]:
    name = r.text("table name")
    if name != expected:
        raise BatchFormatError(f"expected table {expected!r}, found {name!r}")
    rows, ncols = r.unpack("IH", "table shape")
    if rows > MAX_ROWS_PER_MESSAGE:
        raise BatchFormatError(f"{name} table has {rows} rows, over the {MAX_ROWS_PER_MESSAGE} a message may hold")
    if ncols != len(schema):
        raise BatchFormatError(f"{name} table has {ncols} columns, its schema has {len(schema)}")
    columns: dict[str, np.ndarray] = {}
    for col in schema:
        cname = r.text("column name")
        if cname != col.name:
            raise BatchFormatError(f"expected column {col.name!r}, found {cname!r}")
        kind, size = r.unpack("BI", f"column {cname} header")
        body = Reader(r.take(size, f"column {cname}"), f"column {cname}")
        if col.dtype == "O" and kind == Encoding.STRING_DICT:
            columns[cname] = decode_strings(body, rows)
        elif col.dtype == "V16" and kind == Encoding.ADDR_DICT:
            columns[cname] = decode_addresses(body, rows)
        elif kind == Encoding.INT and col.dtype not in ("O", "V16"):
            ref = body.text("reference column")
            if ref and ref not in columns:
                raise BatchFormatError(f"column {cname} refers to {ref!r}, which does not precede it")
            columns[cname] = decode_int(body, rows, col.dtype, columns[ref] if ref else None)
        else:
            raise BatchFormatError(f"column {cname} has encoding {kind}, which does not fit its type")
        body.done()
    return columns
