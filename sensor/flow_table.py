"""Aggregate dissected packets into bidirectional flow records, vectorised batch by batch.

Each batch is sorted by (flow key, time) and cut into *pieces*: a new piece starts where a flow's key
first appears, after an idle gap longer than the idle timeout, at a new TCP connection on a closed
5-tuple (port reuse), and every active timeout since the record began. Pieces are summed with numpy
``reduceat``; the last piece of each flow stays in the live table and earlier ones become records. Only
the per-flow dictionary lookup is a Python loop, one step per distinct flow in the batch.

Who initiated: the sender of a SYN without ACK (or of an ICMP request: echo, timestamp, router or neighbour
solicitation and the other pairs of sensor/flow_kernel.py); the receiver of a SYN+ACK (or of the matching
ICMP reply, unless sent to a group); failing those, for flows seen mid-stream, the side whose port is not a
well-known port (< 1024) when the other is, then the side whose port is ephemeral (>= 32768) when the other
is not, and last the sender of the first packet seen (an ICMP error counts as sent by the responder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubesonar.sensor import flow_layout as layout
from kubesonar.sensor import payload_kinds
from kubesonar.sensor import record_walk as kernel
from kubesonar.sensor.app_layer import HttpHosts, TlsClients
from kubesonar.sensor.dissect import PacketFields
from kubesonar.sensor.executables import Executables
from kubesonar.shared.flow import (
    ConnState,
    EndReason,
    FlowRecords,
    Opening,
    TcpFlag,
    connection_state,
)
from kubesonar.shared.mining import RPC_METHODS

SECOND = 1_000_000_000
# a flow with no answer this long after its connection's first packet was not answered: TCP's initial retransmission
# timeout (RFC 6298), the time a sender itself waits before it takes a segment for lost; sooner, the
# answer may still be on its way
ANSWER_DUE_S = 1.0
_FIN, _RST = int(TcpFlag.FIN), int(TcpFlag.RST)


@dataclass(frozen=True)
class FlowTimeouts:
    """When records are cut: ``active`` for interim records of long flows, ``idle`` to end quiet ones.

    A live sensor also ends, sooner, flows that are over (``ended``: a RST, a FIN from each side, or an
    ICMP error received) and flows nobody answered (``unanswered``), so a scan's probes reach the
    backend within a window or two instead of an idle timeout later. Offline reading leaves them unset,
    which keeps records identical to a conversation-level view of the capture (tshark's).
    """

    active_s: float = 300.0
    idle_s: float = 60.0
    ended_s: float | None = None
    unanswered_s: float | None = None

    @property
    def active_ns(self) -> int:
        return int(self.active_s * SECOND)

    @property
    def idle_ns(self) -> int:
        return int(self.idle_s * SECOND)


class _Table:
    """The live table's arrays (layout in :mod:`kubesonar.sensor.flow_kernel`) and its free-slot stack."""

    def __init__(self, capacity: int):
        self.key = np.zeros((capacity, 5), dtype=np.uint64)
        self.tun = np.zeros((capacity, 5), dtype=np.uint64)
        self.num = np.zeros((capacity, layout.N_COLS), dtype=np.int64)
        self.index = np.zeros(_index_size(capacity), dtype=np.int64)
        self.free = np.zeros(capacity, dtype=np.int64)
        self.meta = np.zeros(3, dtype=np.int64)  # next slot, free stack top, live flows

    @property
    def capacity(self) -> int:
        return len(self.num)

    @property
    def used(self) -> int:
        return int(self.meta[layout.META_NEXT_SLOT])

    def make_room(self) -> None:
        """Called when the kernel stopped for want of a slot or of index space."""
        if self.used == self.capacity and self.meta[layout.META_FREE_TOP] == 0:
            capacity = self.capacity * 2
            for name in ("key", "tun", "num", "free"):
                arr = getattr(self, name)
                bigger = np.zeros((capacity,) + arr.shape[1:], dtype=arr.dtype)
                bigger[: len(arr)] = arr
                setattr(self, name, bigger)
        if (self.meta[layout.META_LIVE] + 1) * 2 > len(self.index) or len(self.index) < _index_size(self.capacity):
            self.index = np.zeros(max(_index_size(self.capacity), len(self.index) * 2), dtype=np.int64)
            kernel.rehash(self.index, self.key, self.num, self.used)

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.num[: self.used, layout.LIVE])

    def release(self, slots: np.ndarray) -> None:
        kernel.release(self.index, self.key, self.num, self.free, self.meta, slots.astype(np.int64))


# ended records as table rows: key, tun, num, end reason (sensor/flow_kernel.py's layout)
_Rows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _index_size(capacity: int) -> int:
    return 1 << max(4, (2 * capacity - 1).bit_length())


@dataclass
class _Batch:
    """One batch's IP packets, the arrays the compiled step reads, in time order."""

    order: np.ndarray
    fields: PacketFields
    ts: np.ndarray
    latest_ns: int

    @classmethod
    def of(cls, pf: PacketFields, ts: np.ndarray, rows: np.ndarray) -> _Batch:
        # the times are gathered once, and not at all when every packet is an IP packet (the usual
        # batch): gathered twice, a capture batch's 30,000 cost 50 us, 1.6 ms a million packets
        t = ts if len(rows) == len(ts) else ts[rows]
        if len(t) > 1 and not (t[1:] >= t[:-1]).all():
            return cls(rows[np.argsort(t, kind="stable")], pf, ts, int(t.max()))
        return cls(rows.astype(np.int64, copy=False), pf, ts, int(t[-1]))


class FlowTable:
    """Turns packet batches into flow records with active and idle timeouts; memory is one row per open flow."""

    def __init__(self, timeouts: FlowTimeouts | None = None, initial_capacity: int = 1 << 14,
                 max_flows: int | None = None, expire_every_s: float = 0.0, held_rows: int = 0):
        """``expire_every_s``: look for quiet flows at most this often (packet time): each look reads the
        whole table, which a live ring's many small batches cannot afford each time; 0: every batch.
        ``held_rows``: ended rows kept back until this many, then made into records at once (a reader
        with no one waiting for each batch's records); 0: each batch's records at once."""
        self.timeouts = timeouts or FlowTimeouts()
        self._expire_every_ns = int(expire_every_s * SECOND)
        self._expired_at_ns = 0
        # memory bound: past max_flows the least recently active flows are ended early (EVICTED) and
        # sent on as records, so a flood costs records, not memory, and its evidence is kept
        self.max_flows = max_flows
        self.evicted = 0
        self._t = _Table(initial_capacity)
        self._batches = 0
        self._out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.watermark_ns = 0  # the latest packet time seen
        self.tls = TlsClients()  # the ClientHello fingerprints open flows refer to by code
        self.hosts = HttpHosts()  # the HTTP request hosts open flows refer to by code
        self.executables = Executables()  # the executable headers packets carry
        self.tls_prune_at = 4096  # entries kept (of either registry) before those of ended flows are forgotten
        # records cost some 60 numpy calls whatever their number: a capture's 4 MiB batches end a few
        # hundred flows each, and built per batch they cost twice what they cost a few thousand at a time
        self.held_rows = held_rows
        self._held: list[_Rows] = []
        self._held_count = 0

    def __len__(self) -> int:
        return int(self._t.meta[layout.META_LIVE])

    # -- public --------------------------------------------------------------------------------------

    def add(self, pf: PacketFields, ts: np.ndarray) -> FlowRecords:
        """Account a batch of packets; return records it completed (idle, active, new connection)."""
        rows = np.flatnonzero(pf.is_ip)
        if not len(rows):
            return FlowRecords.empty()
        batch = _Batch.of(pf, ts, rows)
        parts: list[_Rows | FlowRecords] = [self._account(batch)]
        self.watermark_ns = max(self.watermark_ns, batch.latest_ns)
        if self.watermark_ns - self._expired_at_ns >= self._expire_every_ns:
            self._expired_at_ns = self.watermark_ns
            parts.append(self._ended(self._quiet_slots(self.watermark_ns), EndReason.IDLE_TIMEOUT))
        parts.append(self._ended(self._evicted_slots(), EndReason.EVICTED))  # after the quiet ones left
        records = self._joined(parts)
        if self._held and self._forgetting_due():  # held rows' codes are read before the registries forget
            records = self._held_records()  # nothing was built this batch while rows were held
        self._forget_ended_clients()
        return records

    def _ended(self, slots: np.ndarray, reason) -> _Rows | FlowRecords:
        """The rows of ``slots``, out of the table; a mass end's records instead (made a chunk at a time)."""
        return self._end_slots(slots, reason) if len(slots) > _END_CHUNK else self._take_slots(slots, reason)

    def _joined(self, parts: list[_Rows | FlowRecords]) -> FlowRecords:
        """One set of records for a batch's ended rows: built for each part and joined, they cost twice.
        Held rows come first; they stay held while fewer than ``held_rows``."""
        if any(isinstance(p, FlowRecords) for p in parts):  # a mass end among them
            parts = [*self._take_held(), *parts]
            built = [p if isinstance(p, FlowRecords) else _records(*p, self.tls, self.hosts) for p in parts
                     if len(p if isinstance(p, FlowRecords) else p[0])]
            return FlowRecords.concat(built)
        parts = [p for p in parts if len(p[0])]  # most small batches end nothing: no records built then
        if self.held_rows:
            self._held += parts
            self._held_count += sum(len(p[0]) for p in parts)
            if self._held_count < self.held_rows:
                return FlowRecords.empty()
            parts = self._take_held()
        if not parts:
            return FlowRecords.empty()
        return self._joined_rows(parts)

    def _take_held(self) -> list[_Rows]:
        held, self._held, self._held_count = self._held, [], 0
        return held

    def _held_records(self) -> FlowRecords:
        """The records of the held rows, which leave the hold."""
        return self._joined_rows(self._take_held())

    def _joined_rows(self, parts: list[_Rows]) -> FlowRecords:
        if not parts:
            return FlowRecords.empty()
        key, tun, num, reason = (np.concatenate(a) for a in zip(*parts)) if len(parts) > 1 else parts[0]
        return _records(key, tun, num, reason, self.tls, self.hosts)

    def _forgetting_due(self) -> bool:
        bound = max(self.tls_prune_at, 2 * len(self))
        return len(self.tls) > bound or len(self.hosts) > bound

    def _forget_ended_clients(self) -> None:
        """Keep the ClientHello strings and HTTP hosts only of open flows, so a long-running sensor's
        memory stays bounded by its open flows; checked when a registry outgrows them."""
        bound = max(self.tls_prune_at, 2 * len(self))
        if len(self.tls) > bound:
            live = self._t.live_slots()
            remap = self.tls.keep_only(self._t.num[live, layout.TLS])
            self._t.num[live, layout.TLS] = remap[self._t.num[live, layout.TLS]]
        if len(self.hosts) > bound:
            live = self._t.live_slots()
            sides = slice(layout.HOST_A, layout.HOST_B + 1)
            remap = self.hosts.keep_only(self._t.num[live, sides].ravel())
            self._t.num[live, sides] = remap[self._t.num[live, sides]]

    def _evicted_slots(self) -> np.ndarray:
        if self.max_flows is None or len(self) <= self.max_flows:
            return np.zeros(0, dtype=np.int64)
        live = self._t.live_slots()
        excess = len(live) - self.max_flows * 9 // 10  # room for the next batch's new flows
        last_ts = self._t.num[live, layout.LAST_TS]
        oldest = live[np.argpartition(last_ts, excess - 1)[:excess]]
        self.evicted += len(oldest)
        return oldest

    def expire(self, now_ns: int, most: int | None = None) -> FlowRecords:
        """End flows quiet for longer than their timeout at time ``now_ns``, at most ``most`` of them
        (call again for the rest: a mass expiry handed on in parts is never all in memory at once)."""
        return self._after_held(self._end_slots(self._quiet_slots(now_ns)[:most], EndReason.IDLE_TIMEOUT))

    def _quiet_slots(self, now_ns: int) -> np.ndarray:
        t = self.timeouts
        # the few columns read, straight from the table: gathering every column of each live flow at
        # each batch cost more than the flows that end
        num = self._t.num[: self._t.used]
        quiet_ns = now_ns - num[:, layout.LAST_TS]
        due = quiet_ns > t.idle_ns
        if t.ended_s is not None:
            fa, fb = num[:, layout.FLAGS_A], num[:, layout.FLAGS_B]
            over = (((fa | fb) & _RST) != 0) | ((fa & fb & _FIN) != 0) | (num[:, layout.ICMP_ERROR] != 0)
            due |= over & (quiet_ns > int(t.ended_s * SECOND))
        if t.unanswered_s is not None:
            from_responder = np.where(num[:, layout.INIT_IS_A] != 0, num[:, layout.PKTS_B], num[:, layout.PKTS_A])
            due |= (from_responder == 0) & (quiet_ns > int(t.unanswered_s * SECOND))
        due &= num[:, layout.LIVE] != 0
        return np.flatnonzero(due)

    def flush(self, reason: EndReason = EndReason.END_OF_INPUT, most: int | None = None,
              now_ns: int | None = None) -> FlowRecords:
        """End every open flow (end of a capture, or shutdown), at most ``most`` a call. ``now_ns``: when
        a live sensor stopped watching (a capture's input ends with its last packet)."""
        end_ns = self.watermark_ns if now_ns is None else max(self.watermark_ns, now_ns)
        return self._after_held(self._answer_not_due(self._end_slots(self._t.live_slots()[:most], reason), end_ns))

    def _answer_not_due(self, records: FlowRecords, end_ns: int) -> FlowRecords:
        """Flows nobody answered whose input ended less than ANSWER_DUE_S after their connection's first
        packet: their state is UNKNOWN, not ATTEMPTED. A capture cut right after a client's requests (one
        stopped at a packet count or a file size, one half of a longer recording) never showed the answers,
        which a port scan's walk would otherwise count as failures. The first packet, not the last: a SYN
        retransmitted until the end, or a flow whose interim records already said ATTEMPTED, was due an
        answer long before."""
        if len(records):
            state = records["state"]
            due = end_ns - records["conn_start"] >= int(ANSWER_DUE_S * SECOND)
            state[(state == ConnState.ATTEMPTED) & ~due] = ConnState.UNKNOWN
        return records

    def _after_held(self, records: FlowRecords) -> FlowRecords:
        """``records``, after those of the rows still held."""
        if not self._held:
            return records
        held = self._held_records()
        return FlowRecords.concat([held, records]) if len(records) else held

    # -- batch accounting ----------------------------------------------------------------------------

    def _account(self, b: _Batch) -> _Rows:
        """Run the compiled per-packet step over the batch, growing the table when it asks; return the
        rows of the records it ended."""
        self._batches += 1
        n = len(b.order)
        out_key, out_tun, out_num, out_reason = self._out_buffers(n)
        pf, t, done, n_out = b.fields, self._t, 0, 0
        while True:
            done, n_out = kernel.add_packets(
                b.order, pf.src, pf.dst, pf.sport, pf.dport, pf.proto, pf.ip_len, pf.tcp_flags, pf.tcp_seq,
                pf.tcp_ack, pf.icmp_type, pf.icmp_code, pf.icmp_error, pf.tunnel_src, pf.tunnel_dst, pf.tunnel_id,
                pf.rpc_code, pf.payload_len, pf.payload_kind, pf.tls_code, pf.host_code, pf.icmp_size, pf.icmp_odd,
                pf.exec_code, b.ts, done, self._batches, self.timeouts.idle_ns, self.timeouts.active_ns, t.key, t.tun,
                t.num, t.num.view(np.float64), t.index, t.free, t.meta, out_key, out_tun, out_num, out_reason, n_out,
            )
            if done == n:
                break
            t.make_room()  # the table stopped for want of room; go on where it stopped
        # copies: the records must not share the buffers the next batch writes
        return out_key[:n_out].copy(), out_tun[:n_out].copy(), out_num[:n_out].copy(), out_reason[:n_out].copy()

    def _out_buffers(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Room for as many records as the batch has packets, kept from batch to batch: a fresh
        allocation of several MiB per batch cost more than the compiled step filling it."""
        if self._out is None or len(self._out[0]) < n:
            self._out = (np.empty((n, 5), dtype=np.uint64), np.empty((n, 5), dtype=np.uint64),
                         np.empty((n, layout.N_COLS), dtype=np.int64), np.empty(n, dtype=np.uint8))
        return self._out

    def _end_slots(self, slots: np.ndarray, reason) -> FlowRecords:
        if not len(slots):
            return FlowRecords.empty()
        if len(slots) <= _END_CHUNK:
            return _records(*self._take_slots(slots, reason), self.tls, self.hosts)
        # a mass end (a window's expiry or the shutdown after a flood: the whole table) gathers the
        # table rows a chunk at a time into the records, not all of them at once beside the records
        records = FlowRecords.empty(len(slots))
        for lo in range(0, len(slots), _END_CHUNK):
            part = _records(*self._take_slots(slots[lo : lo + _END_CHUNK], reason), self.tls, self.hosts)
            for name, column in records.columns.items():
                column[lo : lo + len(part)] = part.columns[name]
        return records

    def _take_slots(self, slots: np.ndarray, reason) -> _Rows:
        """The table rows of ``slots`` (copies), which leave the table."""
        t = self._t
        rows = t.key[slots], t.tun[slots], t.num[slots], np.full(len(slots), reason, dtype=np.uint8)
        if len(slots):
            t.release(slots)
        return rows


_END_CHUNK = 8_192  # table rows gathered at a time when many flows end at once


_RPC_NAMES = np.array(RPC_METHODS, dtype=object)

def _unpack_ports(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    packed = packed.astype(np.int64)
    return (packed >> 24) & 0xFFFF, (packed >> 8) & 0xFFFF, packed & 0xFF


def _addr(halves: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(halves, dtype=">u8").view("V16").ravel()


def _records(key: np.ndarray, tun: np.ndarray, num: np.ndarray, reason, tls: TlsClients,
             hosts: HttpHosts) -> FlowRecords:
    """Records from table rows (see :mod:`kubesonar.sensor.flow_kernel` for the layout)."""
    n = len(key)
    init_is_a = num[:, layout.INIT_IS_A] != 0
    ia = init_is_a[:, None]
    pkts = num[:, layout.PKTS_A : layout.PKTS_B + 1]
    byts = num[:, layout.BYTES_A : layout.BYTES_B + 1]
    flags = num[:, layout.FLAGS_A : layout.FLAGS_B + 1]
    out_col = np.where(init_is_a, 0, 1)
    rows = np.arange(n)
    port_a, port_b, proto = _unpack_ports(key[:, 4])
    rec = FlowRecords.empty(n)
    cols = rec.columns
    cols["src_addr"] = _addr(np.where(ia, key[:, 0:2], key[:, 2:4]))
    cols["dst_addr"] = _addr(np.where(ia, key[:, 2:4], key[:, 0:2]))
    cols["src_port"] = np.where(init_is_a, port_a, port_b).astype(np.uint16)
    cols["dst_port"] = np.where(init_is_a, port_b, port_a).astype(np.uint16)
    cols["proto"] = proto.astype(np.uint8)
    # copies, not views: a view of one column keeps all of ``num`` (N_COLS columns a row) alive with the records
    cols["first_ts"] = num[:, layout.FIRST_TS].copy()
    cols["last_ts"] = num[:, layout.LAST_TS].copy()
    cols["packets_out"] = pkts[rows, out_col].astype(np.uint64)
    cols["packets_in"] = pkts[rows, 1 - out_col].astype(np.uint64)
    cols["bytes_out"] = byts[rows, out_col].astype(np.uint64)
    cols["bytes_in"] = byts[rows, 1 - out_col].astype(np.uint64)
    cols["flags_out"] = flags[rows, out_col].astype(np.uint8)
    cols["flags_in"] = flags[rows, 1 - out_col].astype(np.uint8)
    cols["state"] = connection_state(proto, cols["flags_out"], cols["flags_in"], cols["packets_in"],
                                     num[:, layout.ICMP_ERROR] != 0)
    cols["icmp_type"] = num[:, layout.ICMP_TYPE].astype(np.int16)
    cols["icmp_code"] = num[:, layout.ICMP_CODE].astype(np.int16)
    cols["end_reason"] = np.broadcast_to(np.asarray(reason, dtype=np.uint8), (n,)).copy()
    cols["tunnel_src"] = _addr(tun[:, 0:2])
    cols["tunnel_dst"] = _addr(tun[:, 2:4])
    cols["tunnel_id"] = tun[:, 4].astype(np.uint32)
    cols["conn_start"] = num[:, layout.CONN_START].copy()
    rpc = num[:, layout.RPC]
    if rpc.any():
        cols["rpc_method"] = _RPC_NAMES[rpc]
    sent = num[:, layout.EXEC]
    if sent.any():  # the initiator's in bits 0-1, the responder's in bits 2-3 (shared/flow.py Executable)
        side_a, side_b = sent & 3, (sent >> 2) & 3
        cols["executable"] = np.where(init_is_a, side_a | side_b << 2, side_b | side_a << 2).astype(np.uint8)
    _connection_figures(cols, num, out_col, tls)
    host = num[rows, layout.HOST_A + out_col]  # the initiator's: a responder's request names no server
    if host.any():
        cols["http_host"] = hosts.column(host)
    return rec


def _connection_figures(cols: dict[str, np.ndarray], num: np.ndarray, out_col: np.ndarray, tls: TlsClients) -> None:
    """The schema 4 and 6 columns, cumulative over the connection (docs/flow-format.md)."""
    codes = num[:, layout.TLS]
    if codes.any():
        cols["tls_ja3"], cols["tls_ja4"], cols["tls_sni"], cols["tls_alpn"] = tls.columns(codes)
    rows = np.arange(len(num))
    for side, col in (("out", out_col), ("in", 1 - out_col)):
        gaps = num[rows, layout.GAP_N_A + col]
        total = num[rows, layout.GAP_SUM_A + col].astype(np.float64)
        squares = np.ascontiguousarray(num[:, layout.GAP_SQ_A : layout.GAP_SQ_A + 2]).view(np.float64)[rows, col]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(gaps > 0, total / gaps, 0.0)
            spread = np.sqrt(np.maximum(squares / gaps - mean * mean, 0.0))
            cv = np.where((gaps >= 2) & (mean > 0), spread / mean, 0.0)
        cols[f"gaps_{side}"] = np.minimum(gaps, 0xFFFFFFFF).astype(np.uint32)
        cols[f"gap_mean_us_{side}"] = np.round(mean / 1000).astype(np.uint64)
        cols[f"gap_cv_milli_{side}"] = np.minimum(np.round(cv * 1000), 0xFFFFFFFF).astype(np.uint32)
        beat = num[rows, layout.BEAT_A + col]
        cols[f"beat_period_us_{side}"] = (beat >> 32).astype(np.uint32)
        cols[f"beats_{side}"] = ((beat >> 16) & 0xFFFF).astype(np.uint32)
        cols[f"beat_between_{side}"] = (beat & 0xFFFF).astype(np.uint32)
    sizes = np.bitwise_count(num[:, layout.ICMP_SIZES_LO].view(np.uint64)) + np.bitwise_count(
        num[:, layout.ICMP_SIZES_HI].view(np.uint64))
    cols["icmp_sizes"] = np.minimum(sizes, 255).astype(np.uint8)
    cols["icmp_odd"] = np.minimum(num[:, layout.ICMP_ODD], 0xFFFFFFFF).astype(np.uint32)
    cols["opening"] = _opening(num, out_col)


# sensor/payload_kinds.py's kind of an initiator's first payload -> Opening (anything unnamed is OTHER)
_OPENING_BY_KIND = np.full(max(v for k, v in vars(payload_kinds).items() if k.isupper()) + 1, Opening.OTHER,
                           dtype=np.uint8)
_OPENING_BY_KIND[[payload_kinds.HTTP, payload_kinds.HTTP_REQUEST]] = Opening.HTTP
_OPENING_BY_KIND[[payload_kinds.TLS_CLIENT_HELLO, payload_kinds.TLS_RECORD]] = Opening.TLS


def _opening(num: np.ndarray, out_col: np.ndarray) -> np.ndarray:
    """Opening per record, from who spoke first and the initiator's first payload kind."""
    rows = np.arange(len(num))
    speaker = num[:, layout.FIRST_SPEAKER]
    first_kind = np.maximum(num[rows, layout.OPEN_A + out_col] - 1, 0)
    opening = np.where(speaker - 1 == out_col, _OPENING_BY_KIND[first_kind], np.uint8(Opening.RESPONDER_FIRST))
    return np.where((speaker == 0) | (speaker >= 3), np.uint8(Opening.UNKNOWN), opening).astype(np.uint8)
