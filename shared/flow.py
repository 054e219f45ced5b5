"""The flow record schema (after Hubble's flow.proto and Zeek's conn.log), held column-wise.

A flow is one bidirectional conversation between an initiator and a responder. Counters are split by
direction: ``out`` is what the initiator sent, ``in`` what the responder sent. Bytes are IP-layer bytes
(IP header and payload, as in IPFIX octetDeltaCount), so one packet counts the same whatever link it was
captured on. Timestamps are integer nanoseconds since the Unix epoch.

Records live in :class:`FlowRecords`, a set of equal-length numpy columns, so that the sensor builds them
vectorised and the batch codec encodes them column by column. See docs/flow-format.md for the mapping of
TCP flags to :class:`ConnState`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import numpy as np

FLOW_SCHEMA_VERSION = 7  # 2 added src_images / dst_images; 3 rpc_method and the dns table; 4 TLS, gaps, ICMP; 5 opening
# and http_host; 6 the burst timer (beat_*); 7 executable (a flag per side: an ELF or PE header was sent)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132

NO_ICMP = -1  # icmp_type / icmp_code when the flow carried no ICMP message


class ConnState(IntEnum):
    """How a connection went; enums start at UNKNOWN = 0 so a missing value is never a real state."""

    UNKNOWN = 0
    ATTEMPTED = 1  # the initiator sent, the responder never answered (Zeek S0)
    REJECTED = 2  # answered with RST without a handshake, or with ICMP unreachable (Zeek REJ)
    ESTABLISHED = 3  # handshake seen (TCP) or replies seen (UDP, ICMP, other), not closed
    CLOSED = 4  # handshake then FIN from both sides (Zeek SF)
    RESET = 5  # handshake then RST from either side (Zeek RSTO/RSTR)
    OTHER = 6  # TCP seen mid-stream: replies but no handshake in view


# the responder answered: a handshake, or replies to a connection seen mid-stream (not a SYN-ACK seen: a
# capture or a tap that lost it lost no session)
ANSWERED_STATES = (int(ConnState.ESTABLISHED), int(ConnState.CLOSED), int(ConnState.RESET), int(ConnState.OTHER))


def answered(flows: FlowRecords) -> np.ndarray:
    """Per flow, whether its responder answered (:data:`ANSWERED_STATES`)."""
    return np.isin(flows["state"], ANSWERED_STATES)


class EndReason(IntEnum):
    """Why a record was emitted. ACTIVE_TIMEOUT marks an interim record: the flow goes on."""

    UNKNOWN = 0
    ACTIVE_TIMEOUT = 1
    IDLE_TIMEOUT = 2
    END_OF_INPUT = 3
    EVICTED = 4
    NEW_CONNECTION = 5  # a new TCP connection (SYN) reused the 5-tuple of a closed one


class Opening(IntEnum):
    """How a TCP connection opened: what its initiator's first payload starts with, or that the responder
    spoke first. What a port's service expects (HTTP on 80, TLS on 443), never the payload itself."""

    UNKNOWN = 0  # no payload yet, not TCP, or the connection was joined mid-stream (its handshake unseen)
    HTTP = 1  # an HTTP request line (a method of 3-7 capitals and a space, or a response line)
    TLS = 2  # a TLS record (a ClientHello, or any record of content type 20-23 and version 3.x)
    OTHER = 3  # anything else: a binary or text protocol of its own, JSON-RPC, SSH
    RESPONDER_FIRST = 4  # the responder sent before the initiator: a server-first protocol (SMTP, FTP, MySQL)


class Executable(IntEnum):
    """What executable header a side of a flow sent at the start of a TCP segment or of an HTTP response's
    body (sensor/executables.py). The ``executable`` column holds the initiator's in bits 0-1 and the
    responder's in bits 2-3: a flag, never the bytes."""

    NONE = 0
    ELF = 1
    PE = 2


def executable_sent(flows: FlowRecords, side: str) -> np.ndarray:
    """Per record, the :class:`Executable` the initiator (``out``) or the responder (``in``) sent."""
    return (flows["executable"] >> (0 if side == "out" else 2)) & 3


class TcpFlag(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # numpy dtype string; "V16" is an IPv6 (or IPv4-mapped) address, "O" a string
    doc: str


# Schema 4: what a flow says about its software and its timing, never its payload (README privacy table).
# Cumulative over the connection: interim records carry the figures so far (docs/flow-format.md).
SCHEMA_4_COLUMNS: tuple[Column, ...] = (
    Column("tls_ja3", "O", "JA3 hash (MD5 hex) of the connection's first whole TLS ClientHello, '' if none seen"),
    Column("tls_ja4", "O", "JA4 fingerprint of that ClientHello, '' if none"),
    Column("tls_sni", "O", "server_name of that ClientHello, '' if none"),
    Column("tls_alpn", "O", "its ALPN protocols, comma-separated, '' if none"),
) + tuple(
    column
    for side, who in (("out", "initiator"), ("in", "responder"))
    for column in (
        Column(f"gaps_{side}", "u4", f"gaps measured between the {who}'s bursts of small packets (1-300 "
                                     "payload bytes, under 1 s apart; persistence in a session), cumulative "
                                     "over the connection"),
        Column(f"gap_mean_us_{side}", "u8", "mean of those gaps, microseconds; 0 if none"),
        Column(f"gap_cv_milli_{side}", "u4", "their coefficient of variation (std / mean) x 1000; 0 if under 2"),
    )
) + (
    Column("icmp_sizes", "u1", "distinct ICMP data sizes in the flow (as sizes mod 127, so at most 127)"),
    Column("icmp_odd", "u4", "ICMP messages whose payload is not a ping pattern, or non-echo ones with data"),
)
SCHEMA_4_NAMES = frozenset(c.name for c in SCHEMA_4_COLUMNS)
# Schema 5: how the connection opened, so a port's service can be checked against what was spoken on it,
# and the host a plain-HTTP client named, as tls_sni is for TLS.
SCHEMA_5_COLUMNS: tuple[Column, ...] = (
    Column("opening", "u1", "Opening: what the initiator's first TCP payload starts with (HTTP request, TLS "
                            "record, other) or that the responder spoke first; 0 unknown"),
    Column("http_host", "O", "host named by the Host header of the initiator's first payload when that is an "
                             "HTTP request (lower case, port stripped), '' if none"),
)
SCHEMA_5_NAMES = frozenset(c.name for c in SCHEMA_5_COLUMNS)
# Schema 6: the timer behind a side's bursts, followed through the other bursts between its beats
# (sensor/flow_kernel.py _track_beat): a keep-alive inside a session that also carries commands.
SCHEMA_6_COLUMNS: tuple[Column, ...] = tuple(
    column
    for side, who in (("out", "initiator"), ("in", "responder"))
    for column in (
        Column(f"beat_period_us_{side}", "u4", f"period of the latest run of the {who}'s burst timer (the gap "
                                               "that started it), microseconds; 0 if none"),
        Column(f"beats_{side}", "u4", "bursts that came on that period (within 5%) after the run started"),
        Column(f"beat_between_{side}", "u4", "bursts between those beats in the run (commands, replies)"),
    )
)
SCHEMA_6_NAMES = frozenset(c.name for c in SCHEMA_6_COLUMNS)
# Schema 7: whether either side sent an executable (ingress tool transfer): a flag, never the file.
SCHEMA_7_COLUMNS: tuple[Column, ...] = (
    Column("executable", "u1", "Executable header each side sent at a TCP segment's start or an HTTP response "
                               "body's (initiator bits 0-1, responder bits 2-3), in this record; 0 none"),
)
SCHEMA_7_NAMES = frozenset(c.name for c in SCHEMA_7_COLUMNS)

ENDPOINT_FIELDS = ("namespace", "pod", "workload_kind", "workload_name", "node", "labels", "images")

FLOW_COLUMNS: tuple[Column, ...] = (
    Column("first_ts", "i8", "first packet of this record, ns since the epoch"),
    Column("conn_start", "i8", "first packet of the connection (before first_ts in later interim records)"),
    Column("last_ts", "i8", "last packet of this record, ns since the epoch"),
    Column("src_addr", "V16", "initiator address (IPv4 as ::ffff:a.b.c.d)"),
    Column("dst_addr", "V16", "responder address"),
    Column("src_port", "u2", "initiator port; ICMP echo identifier for ICMP echo"),
    Column("dst_port", "u2", "responder port"),
    Column("proto", "u1", "IP protocol number"),
    Column("packets_out", "u8", "packets from the initiator"),
    Column("packets_in", "u8", "packets from the responder (ICMP errors quoting the flow included)"),
    Column("bytes_out", "u8", "IP bytes from the initiator"),
    Column("bytes_in", "u8", "IP bytes from the responder"),
    Column("flags_out", "u1", "OR of the initiator's TCP flags"),
    Column("flags_in", "u1", "OR of the responder's TCP flags"),
    Column("state", "u1", "ConnState"),
    Column("icmp_type", "i2", "ICMP type of an ICMP flow, or of the ICMP error a flow received; -1 none"),
    Column("icmp_code", "i2", "ICMP code to go with icmp_type; -1 none"),
    Column("end_reason", "u1", "EndReason"),
    Column("tunnel_src", "V16", "outer source of a VXLAN/Geneve packet of this flow; zero if none"),
    Column("tunnel_dst", "V16", "outer destination of the tunnel; zero if none"),
    Column("tunnel_id", "u4", "VXLAN VNI or Geneve VNI"),
    Column("rpc_method", "O", "mining JSON-RPC method seen in the flow's payload (shared/mining.py), '' if none"),
) + SCHEMA_4_COLUMNS + SCHEMA_5_COLUMNS + SCHEMA_6_COLUMNS + SCHEMA_7_COLUMNS + tuple(
    Column(f"{side}_{field}", "O", f"{'initiator' if side == 'src' else 'responder'} {field}, '' if unknown")
    for side in ("src", "dst")
    for field in ENDPOINT_FIELDS
)

COLUMN_NAMES = tuple(c.name for c in FLOW_COLUMNS)
# the columns each flow schema version carries, in wire order; a reader fills the missing ones with ''
SCHEMA_COLUMNS: dict[int, tuple[Column, ...]] = {
    1: tuple(c for c in FLOW_COLUMNS if not c.name.endswith("_images") and c.name != "rpc_method"
             and c.name not in SCHEMA_4_NAMES | SCHEMA_5_NAMES | SCHEMA_6_NAMES | SCHEMA_7_NAMES),
    2: tuple(c for c in FLOW_COLUMNS if c.name != "rpc_method" and c.name not in SCHEMA_4_NAMES | SCHEMA_5_NAMES
             | SCHEMA_6_NAMES | SCHEMA_7_NAMES),
    3: tuple(c for c in FLOW_COLUMNS
             if c.name not in SCHEMA_4_NAMES | SCHEMA_5_NAMES | SCHEMA_6_NAMES | SCHEMA_7_NAMES),
    4: tuple(c for c in FLOW_COLUMNS if c.name not in SCHEMA_5_NAMES | SCHEMA_6_NAMES | SCHEMA_7_NAMES),
    5: tuple(c for c in FLOW_COLUMNS if c.name not in SCHEMA_6_NAMES | SCHEMA_7_NAMES),
    6: tuple(c for c in FLOW_COLUMNS if c.name not in SCHEMA_7_NAMES),
    7: FLOW_COLUMNS,
}
_DTYPES = {c.name: np.dtype(c.dtype) for c in FLOW_COLUMNS}
_EMPTY_ADDR = bytes(16)


def checked_columns(columns: dict[str, np.ndarray], dtypes: dict[str, np.dtype], what: str) -> dict[str, np.ndarray]:
    """A table's columns, each of its schema's dtype, all present and all of one length."""
    missing = [n for n in dtypes if n not in columns]
    if missing:
        raise ValueError(f"{what}s lack columns {missing}")
    lengths = {len(columns[n]) for n in dtypes}
    if len(lengths) > 1:
        raise ValueError(f"{what} columns differ in length: {sorted(lengths)}")
    return {n: np.asarray(columns[n], dtype=dtype) for n, dtype in dtypes.items()}


_NO_RECORDS: dict[str, np.ndarray] | None = None


class FlowRecords:
    """A batch of flow records as equal-length numpy columns, one per :data:`FLOW_COLUMNS` entry."""

    __slots__ = ("columns",)

    def __init__(self, columns: dict[str, np.ndarray]):
        self.columns = checked_columns(columns, _DTYPES, "flow record")

    @classmethod
    def empty(cls, n: int = 0) -> FlowRecords:
        if n == 0:  # asked for at every live read that ends no flow: ~60 columns built and checked once
            global _NO_RECORDS
            if _NO_RECORDS is None:
                _NO_RECORDS = cls._blank(0).columns
            records = cls.__new__(cls)
            records.columns = dict(_NO_RECORDS)  # zero-length arrays: nothing in them to share
            return records
        return cls._blank(n)

    @classmethod
    def _blank(cls, n: int) -> FlowRecords:
        cols: dict[str, np.ndarray] = {}
        for c in FLOW_COLUMNS:
            if c.dtype == "O":
                arr = np.empty(n, dtype=object)
                arr[:] = ""
            elif c.name in ("icmp_type", "icmp_code"):
                arr = np.full(n, NO_ICMP, dtype=c.dtype)
            else:
                arr = np.zeros(n, dtype=c.dtype)
            cols[c.name] = arr
        return cls(cols)

    @classmethod
    def concat(cls, parts: list[FlowRecords]) -> FlowRecords:
        if not parts:
            return cls.empty()
        return cls({n: np.concatenate([p.columns[n] for p in parts]) for n in COLUMN_NAMES})

    def __len__(self) -> int:
        return len(self.columns["first_ts"])

    @property
    def flow_id(self) -> np.ndarray:
        """Stable id of each record's connection, shared by all its interim records (derived, not stored)."""
        return flow_ids(self.columns)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, index: np.ndarray | slice) -> FlowRecords:
        return FlowRecords({n: a[index] for n, a in self.columns.items()})

    def equals(self, other: FlowRecords) -> bool:
        return len(self) == len(other) and all(
            np.array_equal(self.columns[n], other.columns[n]) for n in COLUMN_NAMES
        )

    def iter_dicts(self) -> Iterator[dict[str, Any]]:
        """Records as plain dicts with readable values (addresses as strings, enums by name).

        Built column by column (each column converted once), then zipped into rows: a per-cell loop
        cost more than the whole flow engine on a large capture.
        """
        columns = self.readable_columns()
        keys = list(columns)
        for values in zip(*columns.values(), strict=True):
            yield dict(zip(keys, values, strict=True))

    def readable_columns(self) -> dict[str, list[Any]]:
        """The values of :meth:`iter_dicts`, column by column, under the same names and in that order."""
        return {key: self._readable_column(name) for name, key in DICT_FIELDS}

    def _readable_column(self, name: str) -> list[Any]:
        if name == "flow_id":
            return [f"{i:016x}" for i in self.flow_id.tolist()]
        column = self.columns[name]
        if name in _ADDRESS_COLUMNS:
            distinct, which = np.unique(column, return_inverse=True)
            addr_text = _AddressFormatter()
            texts = [addr_text(raw) for raw in distinct.tolist()]
            return [texts[k] for k in which.ravel().tolist()]
        if name in _TIME_COLUMNS:
            return (column / 1e9).tolist()
        if name in ("state", "end_reason"):
            enum = ConnState if name == "state" else EndReason
            names = {int(v): enum(v).name.lower() for v in np.unique(column).tolist()}
            return [names[v] for v in column.tolist()]
        return column.tolist()


_ADDRESS_COLUMNS = frozenset(c.name for c in FLOW_COLUMNS if c.dtype == "V16")
TIME_COLUMNS = frozenset(("first_ts", "last_ts", "conn_start"))  # readable as seconds (float)
_TIME_COLUMNS = TIME_COLUMNS
_RENAMED = {"src_addr": "src_ip", "dst_addr": "dst_ip"}
_DICT_ORDER = ("flow_id", "src_addr", "src_port", "dst_addr", "dst_port") + tuple(
    n for n in COLUMN_NAMES if n not in ("src_addr", "src_port", "dst_addr", "dst_port")
)
# (column, key) of each readable field in :meth:`FlowRecords.iter_dicts` order; "flow_id" is derived
DICT_FIELDS: tuple[tuple[str, str], ...] = tuple((name, _RENAMED.get(name, name)) for name in _DICT_ORDER)


class _AddressFormatter:
    """Formats 16-byte addresses, caching: a batch holds few distinct addresses."""

    def __init__(self) -> None:
        self._cache: dict[bytes, str] = {_EMPTY_ADDR: ""}

    def __call__(self, raw: bytes) -> str:
        raw = bytes(raw).ljust(16, b"\0")
        text = self._cache.get(raw)
        if text is None:
            text = self._cache[raw] = address_text(raw)
        return text


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def address_text(raw: bytes) -> str:
    """The 16 bytes flow records store, as text (IPv4-mapped addresses as IPv4)."""
    raw = bytes(raw)
    if raw[:12] == _V4_MAPPED:  # the common case, ten times faster than ipaddress
        return f"{raw[12]}.{raw[13]}.{raw[14]}.{raw[15]}"
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


def distinct_addresses(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As ``np.unique(addresses, return_index=True, return_inverse=True)`` on 16-byte addresses, in the
    same (byte) order, with the same first rows: sorted as two 64-bit words, five times as fast as
    sorting the 16-byte records (3-4 ms for 20,000 flows, twice a batch in edges and roles)."""
    words = np.ascontiguousarray(addresses).view(">u8").reshape(-1, 2)
    high, low = words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64)
    order = np.lexsort((low, high))
    high, low = high[order], low[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
    first = order[starts]
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return addresses[first], first, inverse


def names_a_host(names: np.ndarray) -> np.ndarray:
    """Per flow, whether ``names`` (an SNI column, or :func:`client_named`'s) names a host: neither empty
    nor an address written as a name (services are reached by name; implants and shells often by address)."""
    named = np.zeros(len(names), dtype=bool)
    rows = np.flatnonzero(names != "")
    if len(rows):
        values, which = np.unique(names[rows].astype(str), return_inverse=True)
        named[rows] = np.array([not _is_address(v.strip("[]")) for v in values])[which.ravel()]
    return named


def client_named(flows: FlowRecords) -> np.ndarray:
    """Per flow, what its client asked for by name: the ClientHello's SNI, else the Host of its first
    plain-HTTP request (schema 5), else ''. Pass it to :func:`names_a_host` to know whether that is a name."""
    sni = flows["tls_sni"]
    return np.where(sni != "", sni, flows["http_host"])


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def address_bytes(text: str) -> bytes:
    """An address as the 16 bytes flow records store (IPv4 mapped into IPv6)."""
    addr = ipaddress.ip_address(text)
    if addr.version == 4:
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def connection_state(
    proto: np.ndarray,
    flags_out: np.ndarray,
    flags_in: np.ndarray,
    packets_in: np.ndarray,
    icmp_rejected: np.ndarray,
) -> np.ndarray:
    """ConnState per flow from its direction-split TCP flags (mapping in docs/flow-format.md)."""
    syn, fin, rst = int(TcpFlag.SYN), int(TcpFlag.FIN), int(TcpFlag.RST)
    replied = packets_in > 0
    state = np.where(replied, ConnState.ESTABLISHED, ConnState.ATTEMPTED).astype(np.uint8)

    tcp = proto == IPPROTO_TCP
    handshake = ((flags_out & syn) != 0) & ((flags_in & syn) != 0)
    any_rst = ((flags_out | flags_in) & rst) != 0
    both_fin = ((flags_out & fin) != 0) & ((flags_in & fin) != 0)
    refused = ((flags_in & rst) != 0) & ((flags_in & syn) == 0)
    tcp_state = np.select(
        [~replied, refused, handshake & any_rst, handshake & both_fin, handshake],
        [ConnState.ATTEMPTED, ConnState.REJECTED, ConnState.RESET, ConnState.CLOSED, ConnState.ESTABLISHED],
        ConnState.OTHER,
    ).astype(np.uint8)
    state = np.where(tcp, tcp_state, state)
    return np.where(icmp_rejected, np.uint8(ConnState.REJECTED), state).astype(np.uint8)


_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)


def mix64(columns: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of integer columns (splitmix-style), for grouping and for flow ids."""
    h = np.full(len(columns[0]), 0x243F6A8885A308D3, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            h = (h ^ col.astype(np.int64).view(np.uint64)) * _M1
            h ^= h >> np.uint64(31)
            h *= _M2
            h ^= h >> np.uint64(29)
    return h


def lexicographic_le(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise ``tuple(left) <= tuple(right)`` for integer matrices."""
    le = np.ones(len(left), dtype=bool)
    for k in range(left.shape[1] - 1, -1, -1):
        le = (left[:, k] < right[:, k]) | ((left[:, k] == right[:, k]) & le)
    return le


def address_words(addresses: np.ndarray) -> np.ndarray:
    """16-byte addresses as an (n, 4) int64 matrix of big-endian 32-bit words."""
    return np.frombuffer(addresses.tobytes(), dtype=">u4").reshape(-1, 4).astype(np.int64)


def canonical_key(src: np.ndarray, sport: np.ndarray, dst: np.ndarray, dport: np.ndarray,
                  proto: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The direction-free key of a 5-tuple (lower endpoint first) and whether src is that lower one."""
    left = np.column_stack([src, sport])
    right = np.column_stack([dst, dport])
    src_first = lexicographic_le(left, right)
    key = np.column_stack([
        np.where(src_first[:, None], src, dst), np.where(src_first[:, None], dst, src),
        np.where(src_first, sport, dport), np.where(src_first, dport, sport), proto,
    ])
    return key, src_first


def flow_ids(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Hash of the canonical 5-tuple and the connection's first packet time."""
    if not len(columns["conn_start"]):
        return np.zeros(0, dtype=np.uint64)
    key, _ = canonical_key(
        address_words(columns["src_addr"]), columns["src_port"].astype(np.int64),
        address_words(columns["dst_addr"]), columns["dst_port"].astype(np.int64),
        columns["proto"].astype(np.int64),
    )
    return mix64([key[:, k] for k in range(key.shape[1])] + [columns["conn_start"]])
