"""Aggregate dissected packets into bidirectional flow records, vectorised batch by batch.

Each batch is sorted by (flow key, time) and cut into *pieces*: a new piece starts where a flow's key
first appears, after an idle gap longer than the idle timeout, at a new TCP connection on a closed
5-tuple (port reuse), and every active timeout since the record began. Pieces are summed with numpy
``reduceat``; the last piece of each flow stays in the live table and earlier ones become records. Only
the per-flow dictionary lookup is a Python loop, one step per distinct flow in the batch.

Who initiated: the sender of a SYN without ACK (or an ICMP echo request); the receiver of a SYN+ACK (or
an echo reply); failing those, for flows seen mid-stream, the side whose port is not a well-known port
(< 1024) when the other is, then the side whose port is ephemeral (>= 32768) when the other is not, and
last the sender of the first packet seen (an ICMP error counts as sent by the responder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kubesonar.sensor.dissect import ICMP_ECHO_REPLIES, ICMP_ECHO_REQUESTS, PacketFields
from kubesonar.shared.flow import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    NO_ICMP,
    EndReason,
    FlowRecords,
    TcpFlag,
    connection_state,
    lexicographic_le,
)
from kubesonar.shared.mining import RPC_METHODS

SECOND = 1_000_000_000
_FIN, _SYN, _RST, _ACK = int(TcpFlag.FIN), int(TcpFlag.SYN), int(TcpFlag.RST), int(TcpFlag.ACK)
_NEVER = np.iinfo(np.int64).max


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


class _Columns:
    """The live table: one row (slot) per open flow, canonical side a < side b."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.key = np.zeros((capacity, 5), dtype=np.uint64)  # a high, a low, b high, b low, ports+proto
        self.first_ts = np.zeros(capacity, dtype=np.int64)
        self.last_ts = np.zeros(capacity, dtype=np.int64)
        self.conn_start = np.zeros(capacity, dtype=np.int64)
        self.rec_start = np.zeros(capacity, dtype=np.int64)
        self.pkts = np.zeros((capacity, 2), dtype=np.int64)  # [from a, from b]
        self.bytes = np.zeros((capacity, 2), dtype=np.int64)
        self.flags = np.zeros((capacity, 2), dtype=np.int64)
        self.init_is_a = np.zeros(capacity, dtype=bool)
        self.icmp = np.full((capacity, 2), NO_ICMP, dtype=np.int64)  # type, code
        self.icmp_error = np.zeros(capacity, dtype=bool)
        self.syn_seq = np.full(capacity, -1, dtype=np.int64)  # sequence number of the latest SYN
        self.tunnel = np.zeros((capacity, 5), dtype=np.uint64)  # src high, low, dst high, low, id
        self.rpc = np.zeros(capacity, dtype=np.int64)  # mining JSON-RPC method code seen (shared/mining.py)
        self.live = np.zeros(capacity, dtype=bool)

    def grow(self, capacity: int) -> None:
        for name, arr in vars(self).items():
            if isinstance(arr, np.ndarray):
                bigger = np.zeros((capacity,) + arr.shape[1:], dtype=arr.dtype)
                if name in ("icmp", "syn_seq"):
                    bigger[:] = -1
                bigger[: self.capacity] = arr
                setattr(self, name, bigger)
        self.capacity = capacity


@dataclass
class _Pieces:
    """Per-piece sums of one batch (see module docstring)."""

    group: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    pkts: np.ndarray
    bytes: np.ndarray
    flags: np.ndarray
    icmp: np.ndarray
    icmp_error: np.ndarray
    syn_seq: np.ndarray
    tunnel: np.ndarray
    rpc: np.ndarray
    init_is_a: np.ndarray
    conn_start: np.ndarray
    rec_start: np.ndarray


class FlowTable:
    """Turns packet batches into flow records with active and idle timeouts; memory is one row per open flow."""

    def __init__(self, timeouts: FlowTimeouts | None = None, initial_capacity: int = 1 << 14,
                 max_flows: int | None = None):
        self.timeouts = timeouts or FlowTimeouts()
        # memory bound: past max_flows the least recently active flows are ended early (EVICTED) and
        # sent on as records, so a flood costs records, not memory, and its evidence is kept
        self.max_flows = max_flows
        self.evicted = 0
        self._slot_of: dict[bytes, int] = {}
        self._free: list[int] = []
        self._cols = _Columns(initial_capacity)
        self._next_slot = 0
        self.watermark_ns = 0  # the latest packet time seen

    def __len__(self) -> int:
        return len(self._slot_of)

    # -- public --------------------------------------------------------------------------------------

    def add(self, pf: PacketFields, ts: np.ndarray) -> FlowRecords:
        """Account a batch of packets; return records it completed (idle, active, new connection)."""
        rows = np.flatnonzero(pf.is_ip)
        if not len(rows):
            return FlowRecords.empty()
        out = self._add(pf, ts, rows)
        self.watermark_ns = max(self.watermark_ns, int(ts[rows].max()))
        return FlowRecords.concat([out, self.expire(self.watermark_ns), self._evict()])

    def _evict(self) -> FlowRecords:
        if self.max_flows is None or len(self) <= self.max_flows:
            return FlowRecords.empty()
        c = self._cols
        live = np.flatnonzero(c.live[: self._next_slot])
        excess = len(live) - self.max_flows * 9 // 10  # room for the next batch's new flows
        oldest = live[np.argpartition(c.last_ts[live], excess - 1)[:excess]]
        self.evicted += len(oldest)
        return self._emit_slots(oldest, EndReason.EVICTED, release=True)

    def expire(self, now_ns: int) -> FlowRecords:
        """End flows quiet for longer than their timeout at time ``now_ns``."""
        c, t = self._cols, self.timeouts
        n = self._next_slot
        quiet_ns = now_ns - c.last_ts[:n]
        due = quiet_ns > t.idle_ns
        if t.ended_s is not None:
            flags = c.flags[:n, 0] | c.flags[:n, 1]
            both_fin = (c.flags[:n, 0] & c.flags[:n, 1] & _FIN) != 0
            over = ((flags & _RST) != 0) | both_fin | c.icmp_error[:n]
            due |= over & (quiet_ns > int(t.ended_s * SECOND))
        if t.unanswered_s is not None:
            from_responder = np.where(c.init_is_a[:n], c.pkts[:n, 1], c.pkts[:n, 0])
            due |= (from_responder == 0) & (quiet_ns > int(t.unanswered_s * SECOND))
        return self._emit_slots(np.flatnonzero(c.live[:n] & due), EndReason.IDLE_TIMEOUT, release=True)

    def flush(self, reason: EndReason = EndReason.END_OF_INPUT) -> FlowRecords:
        """End every open flow (end of a capture, or shutdown)."""
        return self._emit_slots(np.flatnonzero(self._cols.live[: self._next_slot]), reason, release=True)

    # -- batch accounting ----------------------------------------------------------------------------

    def _add(self, pf: PacketFields, ts_all: np.ndarray, rows: np.ndarray) -> FlowRecords:
        key, from_b = _canonical(pf, rows)
        ts = ts_all[rows]
        # Group by a cheap hash; the exact key is checked below, so a collision costs time, never accuracy.
        with np.errstate(over="ignore"):
            group_hash = key @ _GROUP_MULTIPLIERS
        if len(ts) < 2 or (ts[1:] >= ts[:-1]).all():
            order = np.argsort(group_hash, kind="stable")  # already in time order within each flow
        else:
            order = np.lexsort((ts, group_hash))
        key, ts, from_b, group_hash = key[order], ts[order], from_b[order], group_hash[order]
        sel = rows[order]
        n = len(sel)

        group_start = np.empty(n, dtype=bool)
        group_start[0] = True
        np.not_equal(group_hash[1:], group_hash[:-1], out=group_start[1:])
        group_id = np.cumsum(group_start) - 1
        starts = np.flatnonzero(group_start)
        if not (key == key[starts[group_id]]).all():  # two flows share a hash in this batch
            _, group_id = np.unique(key, axis=0, return_inverse=True)
            order2 = np.lexsort((ts, group_id.ravel()))
            key, ts, from_b, sel = key[order2], ts[order2], from_b[order2], sel[order2]
            group_id = group_id.ravel()[order2]
            group_start = np.r_[True, group_id[1:] != group_id[:-1]]
            starts = np.flatnonzero(group_start)
            group_id = np.cumsum(group_start) - 1

        group_keys = key[starts]
        key_bytes = group_keys.tobytes()
        width = group_keys.shape[1] * 8
        slot_of = self._slot_of
        slots = np.fromiter(
            (slot_of.get(key_bytes[i : i + width], -1) for i in range(0, len(key_bytes), width)),
            dtype=np.int64, count=len(starts),
        )
        flags = pf.tcp_flags[sel]
        c = self._cols
        slot_pkt = slots[group_id]
        has_slot = slot_pkt >= 0

        # Segments: breaks at idle gaps and at a new SYN on a closed connection.
        prev_ts = np.r_[0, ts[:-1]]
        prev_ts = np.where(group_start, np.where(has_slot, c.last_ts[slot_pkt], ts), prev_ts)
        idle_break = (ts - prev_ts) > self.timeouts.idle_ns
        syn_only = (flags & (_SYN | _ACK)) == _SYN
        seq = pf.tcp_seq[sel]
        position = np.arange(n)
        prev_syn = np.maximum.accumulate(np.where(syn_only, position, -1))
        prev_syn = np.r_[-1, prev_syn[:-1]]
        prev_syn_seq = np.where(
            prev_syn >= starts[group_id], seq[np.maximum(prev_syn, 0)],
            np.where(has_slot, c.syn_seq[slot_pkt], -1),
        )
        # A SYN on a closed connection starts a new one, unless it retransmits the last SYN.
        reuse_break = syn_only & (seq != prev_syn_seq)
        reuse_break &= self._closed_before(flags, from_b, starts, group_id, slots)
        reuse_break &= ~(group_start & ~has_slot)
        seg_start = group_start | idle_break | reuse_break
        seg_id = np.cumsum(seg_start) - 1
        seg_first = np.flatnonzero(seg_start)
        seg_continues = group_start[seg_first] & has_slot[seg_first] & ~idle_break[seg_first] & ~reuse_break[seg_first]
        seg_slot = slot_pkt[seg_first]
        seg_rec_start = np.where(seg_continues, c.rec_start[np.maximum(seg_slot, 0)], ts[seg_first])
        seg_conn_start = np.where(seg_continues, c.conn_start[np.maximum(seg_slot, 0)], ts[seg_first])

        # Pieces: segments cut every active timeout since their record began.
        epoch = (ts - seg_rec_start[seg_id]) // self.timeouts.active_ns
        piece_start = seg_start | np.r_[False, epoch[1:] != epoch[:-1]]
        piece_first = np.flatnonzero(piece_start)
        pieces = self._sum_pieces(pf, sel, ts, from_b, flags, syn_only, piece_first, group_id, seg_id, epoch,
                                  seg_first, seg_continues, seg_slot, seg_rec_start, seg_conn_start, key)

        # What ends each piece (and the live record a group had): the start of the next one.
        n_pieces = len(piece_first)
        piece_group = pieces.group
        last_of_group = np.r_[piece_group[1:] != piece_group[:-1], True]
        next_first = np.r_[piece_first[1:], n]
        next_reason = np.full(n_pieces, EndReason.ACTIVE_TIMEOUT, dtype=np.uint8)
        nf = np.minimum(next_first, n - 1)
        next_reason = np.where(idle_break[nf], EndReason.IDLE_TIMEOUT, next_reason)
        next_reason = np.where(reuse_break[nf], EndReason.NEW_CONNECTION, next_reason)

        first_of_group = np.r_[True, piece_group[1:] != piece_group[:-1]]
        p_slot = slots[piece_group]
        merges = first_of_group & (p_slot >= 0) & seg_continues[seg_id[piece_first]] & (
            epoch[piece_first] == 0
        )
        out: list[FlowRecords] = []

        # Live records that end before this batch's first piece of their flow.
        ended = first_of_group & (p_slot >= 0) & ~merges
        first_reason = np.where(idle_break[piece_first], EndReason.IDLE_TIMEOUT,
                                np.where(reuse_break[piece_first], EndReason.NEW_CONNECTION,
                                         EndReason.ACTIVE_TIMEOUT))
        out.append(self._emit_slots(p_slot[ended], first_reason[ended], release=False))

        # Pieces that continue the live record merge into it.
        m = np.flatnonzero(merges)
        ms = p_slot[m]
        c.pkts[ms] += pieces.pkts[m]
        c.bytes[ms] += pieces.bytes[m]
        c.flags[ms] |= pieces.flags[m]
        c.last_ts[ms] = pieces.last_ts[m]
        c.icmp_error[ms] |= pieces.icmp_error[m]
        c.syn_seq[ms] = np.where(pieces.syn_seq[m] >= 0, pieces.syn_seq[m], c.syn_seq[ms])
        no_icmp = c.icmp[ms, 0] == NO_ICMP
        c.icmp[ms] = np.where(no_icmp[:, None], pieces.icmp[m], c.icmp[ms])
        no_tunnel = ~c.tunnel[ms, :4].any(axis=1)
        c.tunnel[ms] = np.where(no_tunnel[:, None], pieces.tunnel[m], c.tunnel[ms])
        c.rpc[ms] = np.maximum(c.rpc[ms], pieces.rpc[m])

        # A merged live record that is followed by more pieces ends here.
        merged_then_more = merges & ~last_of_group
        out.append(self._emit_slots(p_slot[merged_then_more], next_reason[merged_then_more], release=False))

        # Pieces that are neither merged nor last are complete records of their own.
        middle = ~merges & ~last_of_group
        out.append(self._records_from_pieces(pieces, np.flatnonzero(middle), group_keys, next_reason[middle]))

        # The last piece of every flow becomes (or stays) its live record.
        fresh = last_of_group & ~(merges & last_of_group)
        self._store_pieces(pieces, np.flatnonzero(fresh), group_keys, slots, key_bytes, width)
        return FlowRecords.concat([r for r in out if len(r)])

    def _closed_before(self, flags, from_b, starts, group_id, slots) -> np.ndarray:
        """Whether the connection had closed (RST, or FIN both ways) before each packet."""
        rst = (flags & _RST) != 0
        fin_a = ((flags & _FIN) != 0) & ~from_b
        fin_b = ((flags & _FIN) != 0) & from_b
        c = self._cols
        s = np.maximum(slots, 0)
        known = slots >= 0
        prior = [
            known & ((c.flags[s, 0] | c.flags[s, 1]) & _RST != 0),
            known & (c.flags[s, 0] & _FIN != 0),
            known & (c.flags[s, 1] & _FIN != 0),
        ]
        counts = []
        for ind, table_prior in zip((rst, fin_a, fin_b), prior):
            cum = np.cumsum(ind) - ind  # strictly before each packet
            counts.append(cum - cum[starts][group_id] + table_prior[group_id])
        return (counts[0] > 0) | ((counts[1] > 0) & (counts[2] > 0))

    def _sum_pieces(self, pf, sel, ts, from_b, flags, syn_only, piece_first, group_id, seg_id, epoch,
                    seg_first, seg_continues, seg_slot, seg_rec_start, seg_conn_start, key) -> _Pieces:
        n = len(ts)
        b = pf.ip_len[sel]
        pkts = np.column_stack([np.add.reduceat(~from_b, piece_first), np.add.reduceat(from_b, piece_first)])
        byts = np.column_stack([
            np.add.reduceat(np.where(from_b, 0, b), piece_first),
            np.add.reduceat(np.where(from_b, b, 0), piece_first),
        ])
        fl = np.column_stack([
            np.bitwise_or.reduceat(np.where(from_b, 0, flags), piece_first),
            np.bitwise_or.reduceat(np.where(from_b, flags, 0), piece_first),
        ])
        piece_last = np.r_[piece_first[1:], n] - 1
        icmp_err = pf.icmp_error[sel]
        position = np.arange(n)
        icmp_type = pf.icmp_type[sel]
        first_icmp = np.minimum.reduceat(np.where(icmp_type >= 0, position, n), piece_first)
        has_icmp = first_icmp < n
        fi = np.minimum(first_icmp, n - 1)
        icmp = np.column_stack([
            np.where(has_icmp, icmp_type[fi], NO_ICMP), np.where(has_icmp, pf.icmp_code[sel][fi], NO_ICMP)
        ])
        tunnel = np.zeros((len(piece_first), 5), dtype=np.uint64)
        tun_src = pf.tunnel_src[sel]
        tunnelled = tun_src.any(axis=1)
        if tunnelled.any():
            first_tun = np.minimum.reduceat(np.where(tunnelled, position, n), piece_first)
            ft = np.minimum(first_tun, n - 1)
            found = np.column_stack([tun_src[ft], pf.tunnel_dst[sel][ft], pf.tunnel_id[sel][ft].astype(np.uint64)])
            tunnel = np.where((first_tun < n)[:, None], found, tunnel)

        last_syn = np.maximum.reduceat(np.where(syn_only, position, -1), piece_first)
        syn_seq = np.where(last_syn >= 0, pf.tcp_seq[sel][np.maximum(last_syn, 0)], -1)
        p_seg = seg_id[piece_first]
        init_is_a = self._initiators(pf, sel, from_b, flags, seg_first, key)
        table_init = self._cols.init_is_a[np.maximum(seg_slot, 0)]
        init_is_a = np.where(seg_continues, table_init, init_is_a)
        active = self.timeouts.active_ns
        return _Pieces(
            group=group_id[piece_first], first_ts=ts[piece_first], last_ts=ts[piece_last], pkts=pkts,
            bytes=byts, flags=fl, icmp=icmp, icmp_error=np.logical_or.reduceat(icmp_err, piece_first),
            syn_seq=syn_seq,
            tunnel=tunnel, rpc=np.maximum.reduceat(pf.rpc_code[sel], piece_first), init_is_a=init_is_a[p_seg],
            conn_start=seg_conn_start[p_seg],
            rec_start=seg_rec_start[p_seg] + epoch[piece_first] * active,
        )

    @staticmethod
    def _initiators(pf, sel, from_b, flags, seg_first, key) -> np.ndarray:
        """Per segment: is canonical side a the initiator? (rules in the module docstring)."""
        n = len(sel)
        position = np.arange(n)
        icmp_type = pf.icmp_type[sel]
        icmp_err = pf.icmp_error[sel]
        opener = ((flags & (_SYN | _ACK)) == _SYN) | (~icmp_err & np.isin(icmp_type, ICMP_ECHO_REQUESTS))
        answer = ((flags & (_SYN | _ACK)) == (_SYN | _ACK)) | (~icmp_err & np.isin(icmp_type, ICMP_ECHO_REPLIES))
        decided = opener | answer
        first = np.minimum.reduceat(np.where(decided, position, n), seg_first)
        has = first < n
        f = np.minimum(first, n - 1)
        # the opener's side initiates; an answer's receiver does
        by_handshake = np.where(opener[f], ~from_b[f], from_b[f])

        port_a, port_b, proto = _unpack_ports(key[seg_first, 4])
        portless = np.isin(proto, (IPPROTO_ICMP, IPPROTO_ICMPV6)) | ((port_a == 0) & (port_b == 0))
        well_a, well_b = port_a < 1024, port_b < 1024
        eph_a, eph_b = port_a >= 32768, port_b >= 32768
        first_sender_is_a = ~from_b[seg_first] ^ icmp_err[seg_first]
        by_ports = np.select(
            [~portless & well_b & ~well_a, ~portless & well_a & ~well_b,
             ~portless & eph_a & ~eph_b, ~portless & eph_b & ~eph_a],
            [True, False, True, False],
            first_sender_is_a,
        )
        return np.where(has, by_handshake, by_ports)

    # -- records ---------------------------------------------------------------------------------------

    def _store_pieces(self, p: _Pieces, idx: np.ndarray, group_keys, slots, key_bytes, width) -> None:
        c = self._cols
        groups = p.group[idx]
        target = slots[groups].copy()
        need = np.flatnonzero(target < 0)
        if len(need):
            target[need] = self._allocate(len(need))
            slot_of = self._slot_of
            for g, s in zip(groups[need].tolist(), target[need].tolist()):
                slot_of[key_bytes[g * width : (g + 1) * width]] = s
        c.key[target] = group_keys[groups]
        c.first_ts[target] = p.first_ts[idx]
        c.last_ts[target] = p.last_ts[idx]
        c.conn_start[target] = p.conn_start[idx]
        c.rec_start[target] = p.rec_start[idx]
        c.pkts[target] = p.pkts[idx]
        c.bytes[target] = p.bytes[idx]
        c.flags[target] = p.flags[idx]
        c.init_is_a[target] = p.init_is_a[idx]
        c.icmp[target] = p.icmp[idx]
        c.icmp_error[target] = p.icmp_error[idx]
        c.syn_seq[target] = p.syn_seq[idx]
        c.tunnel[target] = p.tunnel[idx]
        c.rpc[target] = p.rpc[idx]
        c.live[target] = True

    def _allocate(self, count: int) -> np.ndarray:
        reuse = min(count, len(self._free))
        taken = [self._free.pop() for _ in range(reuse)]
        fresh = count - reuse
        if self._next_slot + fresh > self._cols.capacity:
            self._cols.grow(max(self._cols.capacity * 2, self._next_slot + fresh))
        taken.extend(range(self._next_slot, self._next_slot + fresh))
        self._next_slot += fresh
        return np.asarray(taken, dtype=np.int64)

    def _emit_slots(self, slots: np.ndarray, reason, release: bool) -> FlowRecords:
        if not len(slots):
            return FlowRecords.empty()
        c = self._cols
        records = _records(
            key=c.key[slots], first_ts=c.first_ts[slots], last_ts=c.last_ts[slots], pkts=c.pkts[slots],
            byts=c.bytes[slots], flags=c.flags[slots], init_is_a=c.init_is_a[slots], icmp=c.icmp[slots],
            icmp_error=c.icmp_error[slots], tunnel=c.tunnel[slots], conn_start=c.conn_start[slots],
            rpc=c.rpc[slots], reason=reason,
        )
        if release:
            c.live[slots] = False
            key_bytes = c.key[slots].tobytes()
            width = c.key.shape[1] * 8
            for i in range(len(slots)):
                del self._slot_of[key_bytes[i * width : (i + 1) * width]]
            self._free.extend(slots.tolist())
        return records

    def _records_from_pieces(self, p: _Pieces, idx: np.ndarray, group_keys, reason) -> FlowRecords:
        if not len(idx):
            return FlowRecords.empty()
        return _records(
            key=group_keys[p.group[idx]], first_ts=p.first_ts[idx], last_ts=p.last_ts[idx], pkts=p.pkts[idx],
            byts=p.bytes[idx], flags=p.flags[idx], init_is_a=p.init_is_a[idx], icmp=p.icmp[idx],
            icmp_error=p.icmp_error[idx], tunnel=p.tunnel[idx], conn_start=p.conn_start[idx], rpc=p.rpc[idx],
            reason=reason,
        )


_RPC_NAMES = np.array(RPC_METHODS, dtype=object)

_GROUP_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


def _canonical(pf: PacketFields, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direction-free keys (lower endpoint first) of packets ``rows``, and whether each came from side b."""
    src, dst = pf.src[rows], pf.dst[rows]
    sport, dport = pf.sport[rows].astype(np.uint64), pf.dport[rows].astype(np.uint64)
    src_first = lexicographic_le(np.column_stack([src, sport]), np.column_stack([dst, dport]))
    sf = src_first[:, None]
    a, b = np.where(sf, src, dst), np.where(sf, dst, src)
    port_a, port_b = np.where(src_first, sport, dport), np.where(src_first, dport, sport)
    ports = (port_a << np.uint64(24)) | (port_b << np.uint64(8)) | pf.proto[rows].astype(np.uint64)
    return np.column_stack([a, b, ports]), ~src_first


def _unpack_ports(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    packed = packed.astype(np.int64)
    return (packed >> 24) & 0xFFFF, (packed >> 8) & 0xFFFF, packed & 0xFF


def _addr(halves: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(halves, dtype=">u8").view("V16").ravel()


def _records(*, key, first_ts, last_ts, pkts, byts, flags, init_is_a, icmp, icmp_error, tunnel, conn_start,
             rpc, reason) -> FlowRecords:
    n = len(key)
    ia = init_is_a[:, None]
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
    cols["first_ts"] = first_ts
    cols["last_ts"] = last_ts
    cols["packets_out"] = pkts[rows, out_col].astype(np.uint64)
    cols["packets_in"] = pkts[rows, 1 - out_col].astype(np.uint64)
    cols["bytes_out"] = byts[rows, out_col].astype(np.uint64)
    cols["bytes_in"] = byts[rows, 1 - out_col].astype(np.uint64)
    cols["flags_out"] = flags[rows, out_col].astype(np.uint8)
    cols["flags_in"] = flags[rows, 1 - out_col].astype(np.uint8)
    cols["state"] = connection_state(proto, cols["flags_out"], cols["flags_in"], cols["packets_in"],
                                     icmp_error)
    cols["icmp_type"] = icmp[:, 0].astype(np.int16)
    cols["icmp_code"] = icmp[:, 1].astype(np.int16)
    cols["end_reason"] = np.broadcast_to(np.asarray(reason, dtype=np.uint8), (n,)).copy()
    cols["tunnel_src"] = _addr(tunnel[:, 0:2])
    cols["tunnel_dst"] = _addr(tunnel[:, 2:4])
    cols["tunnel_id"] = tunnel[:, 4].astype(np.uint32)
    cols["conn_start"] = conn_start
    if rpc.any():
        cols["rpc_method"] = _RPC_NAMES[rpc]
    return rec
