"""The compiled per-packet step of the flow table: an open-addressing hash table over numpy arrays.

Packets are accounted one at a time, in time order, with numba; only records that end (idle gap, new
connection on a closed 5-tuple, active timeout) are copied out, into arrays Python turns into
:class:`~kubesonar.shared.flow.FlowRecords`. The rules are those of :mod:`kubesonar.sensor.flow_table`.

Layout: ``key`` (capacity, 5) uint64 (a high, a low, b high, b low, ports+proto), ``tun`` (capacity, 5)
uint64 (tunnel src, dst, id), ``num`` (capacity, N_COLS) int64 with the columns below, and ``index``, a
power-of-two array of slot + 1 (0: empty) probed linearly from the key's hash.
"""

from __future__ import annotations

import numpy as np

from kubesonar.sensor.flow_layout import (
    BATCH_SYN_SEQ,
    BEAT_A,
    BEAT_AT_A,
    BURST_TS_A,
    BYTES_A,
    BYTES_B,
    CLOSED_BITS,
    CONN_START,
    DECIDED,
    EXEC,
    FIRST_SPEAKER,
    FIRST_TS,
    FLAGS_A,
    FLAGS_B,
    GAP_N_A,
    GAP_SQ_A,
    GAP_SUM_A,
    HOST_A,
    ICMP_CODE,
    ICMP_ERROR,
    ICMP_ODD,
    ICMP_SIZES_HI,
    ICMP_SIZES_LO,
    ICMP_TYPE,
    INIT_IS_A,
    ISN_A,
    LAST_TS,
    LIVE,
    META_FREE_TOP,
    META_LIVE,
    META_NEXT_SLOT,
    OPEN_A,
    PKTS_A,
    PKTS_B,
    REC_START,
    RPC,
    SEG_BATCH,
    SENT_A,
    SMALL_TS_A,
    STAMP,
    SYN_SEQ,
    TLS,
)
from kubesonar.sensor.jit import njit
from kubesonar.shared.flow import EndReason

NO_ICMP = -1
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_CLOSED_RST, _CLOSED_FIN_A, _CLOSED_FIN_B = 1, 2, 4
_IDLE, _ACTIVE = int(EndReason.IDLE_TIMEOUT), int(EndReason.ACTIVE_TIMEOUT)
_NEW_CONNECTION = int(EndReason.NEW_CONNECTION)
_ICMP, _ICMPV6 = 1, 58
# Gaps are measured between a side's bursts of small packets: keep-alives, heartbeats, check-ins and
# keystrokes are small, bulk transfer is not. Small: 1 to 300 payload bytes (a bare ACK carries none),
# or an ICMP message with at most 300 data bytes. A small packet within BURST_NS of the side's previous
# one belongs to the same burst (one check-in is a request and its follow-ups, one TLS keep-alive two
# records), so the gaps are a timer's period, not a mix of it and the milliseconds inside an exchange.
SMALL_PAYLOAD = 300
BURST_NS = 1_000_000_000
# A timer keeps its period to within scheduling and network delay; a burst within BEAT_TOLERANCE of one
# period after the last beat is the next beat (5%: 50 ms at 1 s, 1.5 s at 30 s).
BEAT_TOLERANCE = 0.05
_COUNT_MAX = 0xFFFF
# ICMP messages that tell who asked, by [ICMPv6?, type]: a request's sender initiated, a reply's receiver
# did, so a record that starts with a reply (a capture or a sensor started mid-exchange, a request lost)
# still names the asker. ICMPv4: echo 8/0, router discovery 10/9, timestamp 13/14, information 15/16,
# address mask 17/18, the deprecated mobile (33/34, 35/36) and domain name (37/38) pairs, extended echo
# (RFC 8335) 42/43. ICMPv6: echo 128/129, router 133/134 and neighbour 135/136 discovery, node information
# 139/140, inverse neighbour discovery 141/142, home agent 144/145, mobile prefix 146/147, certification
# path 148/149, duplicate address 157/158, extended echo 160/161. Errors (sensor/dissect.py's types) are
# keyed by the packet they quote and decide nothing here; their role marks a flow's type taken from one.
_REQUEST, _REPLY, _ERROR = 1, 2, 3
_ICMP4_PAIRS = ((8, 0), (10, 9), (13, 14), (15, 16), (17, 18), (33, 34), (35, 36), (37, 38), (42, 43))
_ICMP6_PAIRS = ((128, 129), (133, 134), (135, 136), (139, 140), (141, 142), (144, 145), (146, 147), (148, 149),
                (157, 158), (160, 161))
_ICMP4_ERRORS, _ICMP6_ERRORS = (3, 4, 5, 11, 12), (1, 2, 3, 4)


def _role_table() -> np.ndarray:
    table = np.zeros((2, 256), dtype=np.int8)  # a constant of the compiled step: one look-up a packet
    for v6, pairs in enumerate((_ICMP4_PAIRS, _ICMP6_PAIRS)):
        for ask, answer in pairs:
            table[v6, ask], table[v6, answer] = _REQUEST, _REPLY
    for v6, errors in enumerate((_ICMP4_ERRORS, _ICMP6_ERRORS)):
        table[v6, list(errors)] = _ERROR
    return table


_ICMP_ROLE = _role_table()
_V4_MAPPED = np.uint64(0xFFFF << 32)
_V4_BROADCAST = np.uint64(0xFFFF_FFFF_FFFF)
_ICMP_SIZE_BUCKETS = 127  # a prime: sizes that collide differ by a multiple of it
_SEQ_MASK = (1 << 32) - 1
_SEQ_AHEAD = 1 << 31  # serial number arithmetic (RFC 1982): less than 2^31 past a sequence number is after it
# the largest window TCP can advertise (65535 << 14): an acknowledgement further behind what was sent is
# accepted by no stack (RFC 5961's MAX.SND.WND), so the span allowed never grows past it
_MAX_WINDOW = 1 << 30


@njit(cache=True, nogil=True, inline="always")
def _hash(k0, k1, k2, k3, k4) -> np.uint64:
    h = np.uint64(0x9E3779B97F4A7C15)
    for k in (k0, k1, k2, k3, k4):
        h ^= k
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(29)
    return h


@njit(cache=True, nogil=True, inline="always")
def find(index, key, k0, k1, k2, k3, k4) -> tuple[int, int]:
    """(slot or -1, index position where the key is or would go)."""
    mask = len(index) - 1
    at = np.int64(_hash(k0, k1, k2, k3, k4) & np.uint64(mask))
    while True:
        s = index[at] - 1
        if s < 0:
            return -1, at
        if key[s, 4] == k4 and key[s, 1] == k1 and key[s, 3] == k3 and key[s, 0] == k0 and key[s, 2] == k2:
            return s, at
        at = (at + 1) & mask


@njit(cache=True, nogil=True)
def release(index, key, num, free, meta, slots) -> None:
    """Take ``slots`` out of the table (backward-shift deletion keeps probe chains whole)."""
    mask = len(index) - 1
    for s in slots:
        _, at = find(index, key, key[s, 0], key[s, 1], key[s, 2], key[s, 3], key[s, 4])
        index[at] = 0
        nxt = (at + 1) & mask
        while index[nxt] != 0:
            t = index[nxt] - 1
            home = np.int64(_hash(key[t, 0], key[t, 1], key[t, 2], key[t, 3], key[t, 4]) & np.uint64(mask))
            # move t back into the hole unless its home lies cyclically in (hole, nxt]
            if (nxt > at and (home <= at or home > nxt)) or (nxt < at and (home <= at and home > nxt)):
                index[at] = index[nxt]
                index[nxt] = 0
                at = nxt
            nxt = (nxt + 1) & mask
        num[s, LIVE] = 0
        free[meta[META_FREE_TOP]] = s
        meta[META_FREE_TOP] += 1
        meta[META_LIVE] -= 1


@njit(cache=True, nogil=True)
def rehash(index, key, num, used) -> None:
    for s in range(used):
        if num[s, LIVE]:
            _, at = find(index, key, key[s, 0], key[s, 1], key[s, 2], key[s, 3], key[s, 4])
            index[at] = s + 1


@njit(cache=True, nogil=True, inline="always")
def _emit(s, reason, key, tun, num, out_key, out_tun, out_num, out_reason, n_out) -> int:
    for c in range(5):  # element by element: a row assignment may copy, which needs numba's allocator
        out_key[n_out, c] = key[s, c]
        out_tun[n_out, c] = tun[s, c]
    for c in range(num.shape[1]):
        out_num[n_out, c] = num[s, c]
    out_reason[n_out] = reason
    return n_out + 1


@njit(cache=True, nogil=True, inline="always")
def _by_ports(port_a, port_b, proto, first_sender_is_a) -> int:
    if proto == _ICMP or proto == _ICMPV6 or (port_a == 0 and port_b == 0):
        return first_sender_is_a
    well_a, well_b = port_a < 1024, port_b < 1024
    if well_b and not well_a:
        return 1
    if well_a and not well_b:
        return 0
    eph_a, eph_b = port_a >= 32768, port_b >= 32768
    if eph_a and not eph_b:
        return 1
    if eph_b and not eph_a:
        return 0
    return first_sender_is_a


@njit(cache=True, nogil=True, inline="always")
def _icmp_role(proto, icmp_type, d0, d1) -> int:
    """_REQUEST, _REPLY or 0 for an ICMP message that is no error (``icmp_type`` >= 0; _ERROR: an error's type
    whose quoted packet was unreadable). A reply sent to a group (multicast, IPv4's broadcast) answers no one:
    routers and neighbours advertise unasked."""
    role = _ICMP_ROLE[1 if proto == _ICMPV6 else 0, icmp_type & 0xFF]
    if role == _REPLY:
        if d0 == 0 and (d1 & _V4_MAPPED) == _V4_MAPPED:
            if (d1 & np.uint64(0xF000_0000)) == np.uint64(0xE000_0000) or d1 == _V4_BROADCAST:
                return 0
        elif (d0 >> np.uint64(56)) == np.uint64(0xFF):
            return 0
    return role


@njit(cache=True, nogil=True, inline="always")
def _start_record(s, ts, rec_start, conn_start, num, tun) -> None:
    num[s, FIRST_TS] = ts
    num[s, REC_START] = rec_start
    num[s, CONN_START] = conn_start
    for c in (PKTS_A, PKTS_B, BYTES_A, BYTES_B, FLAGS_A, FLAGS_B, ICMP_ERROR, RPC, EXEC):
        num[s, c] = 0
    num[s, ICMP_TYPE] = NO_ICMP
    num[s, ICMP_CODE] = NO_ICMP
    num[s, SYN_SEQ] = -1
    for c in range(5):
        tun[s, c] = 0


@njit(cache=True, nogil=True, inline="always")
def _start_connection(s, num, numf) -> None:
    """Reset what a connection accumulates over all its records (interim ones carry it on)."""
    for c in (TLS, GAP_N_A, GAP_N_A + 1, GAP_SUM_A, GAP_SUM_A + 1, ICMP_SIZES_LO, ICMP_SIZES_HI, ICMP_ODD,
              OPEN_A, OPEN_A + 1, FIRST_SPEAKER, HOST_A, HOST_A + 1, BEAT_A, BEAT_A + 1, BEAT_AT_A, BEAT_AT_A + 1):
        num[s, c] = 0
    numf[s, GAP_SQ_A] = 0.0
    numf[s, GAP_SQ_A + 1] = 0.0
    for c in (SMALL_TS_A, SMALL_TS_A + 1, BURST_TS_A, BURST_TS_A + 1, ISN_A, ISN_A + 1):
        num[s, c] = -1
    num[s, SENT_A] = 0
    num[s, SENT_A + 1] = 0


@njit(cache=True, nogil=True, inline="always")
def _track_sequence(s, side, flags, seq, payload_len, num) -> None:
    """Follow a side's sequence space: the initial sequence number of its SYN (or SYN-ACK), then how far
    past it its segments reached. A reset's sequence number is no data sent: a pod answers a segment
    whose acknowledgement number it rejects with a reset carrying that number as its sequence number,
    which would otherwise make the guess right for the sender's next segment."""
    if flags & _RST:
        return
    if flags & _SYN and seq != num[s, ISN_A + side]:  # a retransmitted SYN keeps what followed it
        num[s, ISN_A + side] = seq
        num[s, SENT_A + side] = 0
    isn = num[s, ISN_A + side]
    if isn < 0:
        return
    end = seq + payload_len + (1 if flags & _SYN else 0) + (1 if flags & _FIN else 0)
    ahead = (end - isn - 1 - num[s, SENT_A + side]) & _SEQ_MASK
    if ahead < _SEQ_AHEAD:  # else a retransmission, or a segment out of order: behind, not ahead
        num[s, SENT_A + side] += ahead


@njit(cache=True, nogil=True, inline="always")
def _acknowledges(s, other, flags, ack, num) -> bool:
    """Whether a segment's acknowledgement number acknowledges the other side's SYN and no more than the
    other side sent, as the receiving TCP requires before it takes the data (RFC 793's acceptable ACK).
    A blind sender, whose address is spoofed, never sees the SYN-ACK it would have to acknowledge. Any
    number when neither the other side's SYN nor the SYN-ACK answering it was seen (a capture or a sensor
    that started mid-connection, a record after an idle gap)."""
    isn = num[s, ISN_A + other]
    if isn < 0:
        return True
    sent = num[s, SENT_A + other]
    behind = (sent - (ack - isn - 1)) & _SEQ_MASK  # how far behind the furthest the other side reached
    return (flags & _ACK) != 0 and behind <= min(sent, _MAX_WINDOW)


@njit(cache=True, nogil=True, inline="always")
def _unseen_first_speaker(s, side, flags, seq, ack, num) -> int:
    """For a connection's first payload seen: the side whose first bytes the capture lacks, -1 if none.
    A capture drops segments the hosts exchanged (a tap or kernel buffer that overflowed, a capture cut
    short): a segment acknowledging more of the other side's sequence space than the capture showed it
    sending means the other side spoke first; one starting past its own side's first byte means its
    side did, in bytes not seen. Neither is known when the side's SYN was not seen."""
    other = 1 - side
    isn = num[s, ISN_A + other]
    if isn >= 0 and (flags & _ACK) != 0 and 0 < ((ack - isn - 1 - num[s, SENT_A + other]) & _SEQ_MASK) < _SEQ_AHEAD:
        return other
    isn = num[s, ISN_A + side]
    if isn >= 0 and 0 < ((seq - isn - 1) & _SEQ_MASK) < _SEQ_AHEAD:
        return side
    return -1


@njit(cache=True, nogil=True, inline="always")
def _track_beat(s, side, ts, gap, num) -> None:
    """Follow the timer that may start a side's bursts, through the other bursts between its beats.

    A RAT's keep-alive or an implant's heartbeat fires every P seconds while commands, their output and
    replies to the other side make bursts of their own in between, so the gaps between bursts are a mix
    and their CV says nothing. Here a candidate period P (the gap that started the run) is kept with the
    time of the last beat: a burst about P after it (within BEAT_TOLERANCE) is the next beat; one sooner
    is a burst between beats, counted; one later means no timer runs at P, and the latest gap becomes
    the candidate. Bounded: one packed word and one time per side."""
    word = num[s, BEAT_A + side]
    period = (word >> 32) * 1000
    beats, between = (word >> 16) & _COUNT_MAX, word & _COUNT_MAX
    if period > 0:
        since = ts - num[s, BEAT_AT_A + side]
        slack = np.int64(period * BEAT_TOLERANCE)
        if since < period - slack:
            num[s, BEAT_A + side] = word - between + min(between + 1, _COUNT_MAX)
            return
        if since <= period + slack:
            num[s, BEAT_A + side] = word - (beats << 16) + (min(beats + 1, _COUNT_MAX) << 16)
            num[s, BEAT_AT_A + side] = ts
            return
    micros = gap // 1000
    # no timer on a gap past 35 minutes, or on time running backwards (records out of order in a capture)
    num[s, BEAT_A + side] = (micros << 32) if 0 < micros < (1 << 31) else 0
    num[s, BEAT_AT_A + side] = ts


@njit(cache=True, nogil=True, inline="always")
def _account_payload(s, side, ts, small, icmp_size, icmp_odd, tls_code, host_code, tcp_payload, kind,
                     unseen_speaker, num, numf) -> None:
    """The connection-level figures one packet adds: a gap, an ICMP size, the ClientHello's code, how a
    side opened (its first TCP payload's kind, and the host it named if that is an HTTP request) and who
    spoke first (``unseen_speaker``: _unseen_first_speaker)."""
    if tcp_payload and num[s, OPEN_A + side] == 0:
        num[s, OPEN_A + side] = 1 + kind
        num[s, HOST_A + side] = host_code
        if num[s, FIRST_SPEAKER] == 0:  # a connection whose handshake was not seen was joined mid-stream
            # a SYN or SYN-ACK of this connection: its sequence numbers, which interim records carry on (the
            # flags are a record's own, and a pooled connection's handshake may be in the record before)
            handshake = (((num[s, FLAGS_A] | num[s, FLAGS_B]) & _SYN) != 0 or num[s, ISN_A] >= 0
                         or num[s, ISN_A + 1] >= 0)
            if unseen_speaker >= 0:  # what was said first is not in the capture: the opening is not known
                num[s, FIRST_SPEAKER] = 3 + unseen_speaker
            else:
                num[s, FIRST_SPEAKER] = (1 if handshake else 3) + side
    if small:
        last = num[s, SMALL_TS_A + side]
        if last < 0 or ts - last > BURST_NS:  # a new burst: the gap runs from the previous burst's start
            start = num[s, BURST_TS_A + side]
            if start >= 0:
                gap = ts - start
                num[s, GAP_N_A + side] += 1
                num[s, GAP_SUM_A + side] += gap
                numf[s, GAP_SQ_A + side] += np.float64(gap) * np.float64(gap)
                _track_beat(s, side, ts, gap, num)
            num[s, BURST_TS_A + side] = ts
        num[s, SMALL_TS_A + side] = ts
    if icmp_size >= 0:
        bucket = icmp_size % _ICMP_SIZE_BUCKETS
        if bucket < 64:
            num[s, ICMP_SIZES_LO] |= np.int64(1) << np.int64(bucket)
        else:
            num[s, ICMP_SIZES_HI] |= np.int64(1) << np.int64(bucket - 64)
        num[s, ICMP_ODD] += icmp_odd
    if tls_code != 0 and num[s, TLS] == 0:  # the first ClientHello names the client
        num[s, TLS] = tls_code


@njit(cache=True, nogil=True)
def add_packets(order, src, dst, sport, dport, proto, ip_len, tcp_flags, tcp_seq, tcp_ack, icmp_type, icmp_code,
                icmp_error, tunnel_src, tunnel_dst, tunnel_id, rpc_code, payload_len, payload_kind, tls_code, host_code,
                icmp_size, icmp_odd, exec_code, ts_all, start, batch, idle_ns, active_ns, key, tun, num, numf, index,
                free, meta, out_key, out_tun, out_num, out_reason, n_out) -> tuple[int, int]:
    """Account packets ``order[start:]``; return (next packet to do, records written to out_*).

    Stops early when the table is full; Python grows it and calls again from there. ``numf`` is ``num``
    viewed as float64 (the same memory), for the sums of squares.
    """
    capacity = len(num)
    for j in range(start, len(order)):
        i = np.uint64(order[j])  # unsigned indices: numba checks a signed one for counting from the end
        ts = ts_all[i]
        s0, s1, d0, d1 = src[i, 0], src[i, 1], dst[i, 0], dst[i, 1]
        sp, dp = np.uint64(sport[i]), np.uint64(dport[i])
        src_first = s0 < d0 or (s0 == d0 and (s1 < d1 or (s1 == d1 and sp <= dp)))
        if src_first:
            k0, k1, k2, k3, pa, pb = s0, s1, d0, d1, sp, dp
        else:
            k0, k1, k2, k3, pa, pb = d0, d1, s0, s1, dp, sp
        pr = proto[i]
        k4 = (pa << np.uint64(24)) | (pb << np.uint64(8)) | np.uint64(pr)
        from_b = 0 if src_first else 1
        flags = tcp_flags[i]
        syn_only = (flags & (_SYN | _ACK)) == _SYN
        err = icmp_error[i]
        it = icmp_type[i]
        role = _icmp_role(pr, it, d0, d1) if it >= 0 and not err else 0
        opener = syn_only or role == _REQUEST
        answer = (flags & (_SYN | _ACK)) == (_SYN | _ACK) or role == _REPLY

        s, at = find(index, key, k0, k1, k2, k3, k4)
        if s < 0:
            if meta[META_FREE_TOP] > 0:
                meta[META_FREE_TOP] -= 1
                s = free[meta[META_FREE_TOP]]
            elif meta[META_NEXT_SLOT] < capacity and (meta[META_LIVE] + 1) * 2 <= len(index):
                s = meta[META_NEXT_SLOT]
                meta[META_NEXT_SLOT] += 1
            else:
                return j, n_out
            index[at] = s + 1
            meta[META_LIVE] += 1
            row = np.uint64(s)
            key[row, 0], key[row, 1], key[row, 2], key[row, 3], key[row, 4] = k0, k1, k2, k3, k4
            num[row, LIVE] = 1
            _start_record(row, ts, ts, ts, num, tun)
            _start_connection(row, num, numf)
            num[row, LAST_TS] = ts
            num[row, STAMP] = batch
            num[row, CLOSED_BITS] = 0
            num[row, BATCH_SYN_SEQ] = -1
            num[row, SEG_BATCH] = batch
            num[row, DECIDED] = 0
            num[row, INIT_IS_A] = _by_ports(pa, pb, pr, (1 - from_b) ^ (1 if err else 0))
        else:
            row = np.uint64(s)
            first_in_batch = num[row, STAMP] != batch
            if first_in_batch:  # what the 5-tuple saw before this batch is the live record's
                num[row, STAMP] = batch
                f = num[row, FLAGS_A] | num[row, FLAGS_B]
                bits = _CLOSED_RST if f & _RST else 0
                if num[row, FLAGS_A] & _FIN:
                    bits |= _CLOSED_FIN_A
                if num[row, FLAGS_B] & _FIN:
                    bits |= _CLOSED_FIN_B
                num[row, CLOSED_BITS] = bits
                num[row, BATCH_SYN_SEQ] = num[row, SYN_SEQ]
            idle_break = ts - num[row, LAST_TS] > idle_ns
            reuse_break = False
            if syn_only and tcp_seq[i] != num[row, BATCH_SYN_SEQ]:
                bits = num[row, CLOSED_BITS]
                reuse_break = (bits & _CLOSED_RST) != 0 or (bits & (_CLOSED_FIN_A | _CLOSED_FIN_B)) == (
                    _CLOSED_FIN_A | _CLOSED_FIN_B)
            if idle_break or reuse_break:
                if first_in_batch:
                    reason = _IDLE if idle_break else _NEW_CONNECTION
                else:
                    reason = _NEW_CONNECTION if reuse_break else _IDLE
                n_out = _emit(row, reason, key, tun, num, out_key, out_tun, out_num, out_reason, n_out)
                _start_record(row, ts, ts, ts, num, tun)
                _start_connection(row, num, numf)
                num[row, SEG_BATCH] = batch
                num[row, DECIDED] = 0
                num[row, INIT_IS_A] = _by_ports(pa, pb, pr, (1 - from_b) ^ (1 if err else 0))
            else:
                since = ts - num[row, REC_START]
                # past the active timeout (or before the record's start: time went back) the record ends; the
                # 64-bit division, some 6% of this step, only then: within it the epoch is 0
                if since < 0 or since >= active_ns:
                    epoch = since // active_ns
                    n_out = _emit(row, _ACTIVE, key, tun, num, out_key, out_tun, out_num, out_reason, n_out)
                    _start_record(row, ts, num[row, REC_START] + epoch * active_ns, num[row, CONN_START], num, tun)
        # the packet joins the record of slot s
        if not num[row, DECIDED] and num[row, SEG_BATCH] == batch and (opener or answer):
            num[row, DECIDED] = 1
            num[row, INIT_IS_A] = (1 - from_b) if opener else from_b
        num[row, LAST_TS] = ts
        num[row, PKTS_A + from_b] += 1
        num[row, BYTES_A + from_b] += ip_len[i]
        num[row, FLAGS_A + from_b] |= flags
        if flags & _RST:
            num[row, CLOSED_BITS] |= _CLOSED_RST
        if flags & _FIN:
            num[row, CLOSED_BITS] |= _CLOSED_FIN_B if from_b else _CLOSED_FIN_A
        if syn_only:
            num[row, SYN_SEQ] = tcp_seq[i]
            num[row, BATCH_SYN_SEQ] = tcp_seq[i]
        if err:
            num[row, ICMP_ERROR] = 1
        # an ICMP flow's type is its own first message's: an error that came first (a router's time exceeded
        # for a request the record did not see) stands only until one comes
        if it >= 0 and (num[row, ICMP_TYPE] == NO_ICMP or (not err and num[row, ICMP_ERROR] != 0 and _ICMP_ROLE[
                1 if pr == _ICMPV6 else 0, num[row, ICMP_TYPE] & 0xFF] == _ERROR)):
            num[row, ICMP_TYPE] = it
            num[row, ICMP_CODE] = icmp_code[i]
        if (tunnel_src[i, 0] | tunnel_src[i, 1]) != 0 and (tun[row, 0] | tun[row, 1] | tun[row, 2] | tun[row, 3]) == 0:
            tun[row, 0], tun[row, 1] = tunnel_src[i, 0], tunnel_src[i, 1]
            tun[row, 2], tun[row, 3] = tunnel_dst[i, 0], tunnel_dst[i, 1]
            tun[row, 4] = np.uint64(tunnel_id[i])
        num[row, RPC] = max(num[row, RPC], np.int64(rpc_code[i]))
        pl = np.int64(payload_len[i])
        code = exec_code[i]
        # an executable counts when the receiver's TCP takes the segment (sensor/executables.py)
        if code != 0 and _acknowledges(row, 1 - from_b, flags, np.int64(tcp_ack[i]), num):
            num[row, EXEC] |= np.int64(code) << (2 * from_b)
        if pr == 6:
            if (flags & (_SYN | _ACK)) == (_SYN | _ACK) and num[row, ISN_A + 1 - from_b] < 0:
                # a SYN the capture lacks: its number is one before what the SYN-ACK acknowledges
                num[row, ISN_A + 1 - from_b] = (np.int64(tcp_ack[i]) - 1) & _SEQ_MASK
                num[row, SENT_A + 1 - from_b] = 0
            _track_sequence(row, from_b, flags, np.int64(tcp_seq[i]), pl, num)
        small = (1 <= pl <= SMALL_PAYLOAD) or ((pr == _ICMP or pr == _ICMPV6) and not err and it >= 0
                                               and pl <= SMALL_PAYLOAD)
        tcp_payload = pr == 6 and pl > 0
        unseen_speaker = -1
        if tcp_payload and num[row, FIRST_SPEAKER] == 0:
            unseen_speaker = _unseen_first_speaker(row, from_b, flags, np.int64(tcp_seq[i]), np.int64(tcp_ack[i]), num)
        _account_payload(row, from_b, ts, small, icmp_size[i], icmp_odd[i], tls_code[i], host_code[i],
                         tcp_payload, payload_kind[i], unseen_speaker, num, numf)
    return len(order), n_out
