"""TLS ClientHellos longer than one TCP segment, joined from the segments that carry them.

Mainstream clients now offer a post-quantum key share (X25519MLKEM768, 1,216 bytes of key): the
ClientHellos of Chrome and Firefox, of Go 1.24 and of OpenSSL 3.5 run to 1.5-2 KB, more than one
segment at the usual MSS of 1,448 bytes. Read from its first segment alone, such a hello gave no
JA3, JA4, server name or ALPN, and the rules that read them saw a client without a name.

The first segment gives the record's length, and its sequence number where the next segment must
start (one past a SYN's: TCP Fast Open carries the hello in the SYN). A segment of the same side
that starts there adds its bytes; one that repeats bytes already held adds only what is new (a
retransmission may overlap). Only the record's bytes are held, never past its end, and only until it
is whole; then it is parsed like a hello that came in one segment. The packets of a batch are taken
in capture order, so how a capture is cut into batches changes nothing. A segment lost, reordered
(one that starts past the bytes held) or cut by the snap length before the record's end leaves the
hello unread (counted), as does a record not whole within ``timeout_s`` or at the end of a capture.

Bounded against floods: at most ``max_pending`` hellos are held (the oldest give way to new ones),
each at most TLS's record limit (RFC 8446 5.1), and only segments at a held hello's next sequence
number are read one by one, so a flood of segments on a held connection costs vectorised work only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from kubesonar.sensor.dissect import PacketFields, captured_payload
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.tls_hello import CLIENT_HELLO, HANDSHAKE
from kubesonar.shared.flow import IPPROTO_TCP

RECORD_HEADER = 5
MAX_RECORD = (1 << 14) + 256  # a TLSPlaintext fragment holds at most 2^14 bytes (RFC 8446 5.1); some slack
SECOND = 1_000_000_000
_SYN = 0x02
_WRAP = 1 << 32
_ADDED, _OLD, _DROPPED = "added", "old", "dropped"


@dataclass
class _Partial:
    data: bytearray
    need: int  # the record's bytes, header included
    start_seq: int  # the first segment's (a retransmission of it is no new hello)
    end_seq: int  # one past the record's last byte: segments between the two may continue it
    next_seq: int  # the sequence number the next segment must start at
    started_ns: int


@dataclass
class HelloSegments:
    """The ClientHellos begun but not yet whole, per flow side."""

    max_pending: int = 512
    timeout_s: float = 10.0
    max_rows: int = 1024  # segments read one by one per batch past four a hello, at most
    joined: int = 0  # hellos made whole from two or more segments
    abandoned: int = 0  # begun, never made whole: a segment lost or cut, too many pending, too slow
    repeated: int = 0  # segments that look like a first one but repeat or continue a hello held or joined
    _pending: dict[bytes, _Partial] = field(default_factory=dict)
    _joined_starts: dict[bytes, int] = field(default_factory=dict)  # side -> first segment's seq, recent joins

    def hellos(self, batch: PacketBatch, pf: PacketFields, starts: np.ndarray) -> Iterator[tuple[int, bytes]]:
        """(row, bytes to parse) for each hello of the batch, in capture order: the payload of each row
        of ``starts`` (segments starting with a ClientHello's record header) that is not the start of
        a longer hello, and each longer hello once a segment makes its record whole (its last row)."""
        if len(batch):
            self._expire(int(batch.ts.min()))
        continuations = self._continuations(batch, pf, starts)
        if len(continuations):
            rows = _sorted_union(starts, continuations)
            is_start = np.isin(rows, starts)
        else:  # the usual batch: the starts alone, already in order (np.union1d's first call imports numpy.ma)
            rows, is_start = starts, np.ones(len(starts), dtype=bool)
        for i, start in zip(rows.tolist(), is_start.tolist(), strict=True):
            key = side_key(pf, i)
            partial = self._pending.get(key)
            if partial is not None and abs(int(batch.ts[i]) - partial.started_ns) > self.timeout_s * SECOND:
                del self._pending[key]  # too late: judged at this packet's time, wherever the batch ends
                self.abandoned += 1
                partial = None
            if partial is not None:
                step = self._continue(partial, batch, pf, i)
                if step != _DROPPED:
                    self.repeated += start  # a segment of the held hello that looks like a first one
                    if step == _ADDED and len(partial.data) >= partial.need:
                        del self._pending[key]
                        self._remember(key, partial.start_seq)
                        self.joined += 1
                        yield i, bytes(partial.data)
                    continue
                del self._pending[key]  # dropped: a gap before it, or the snap length cut what the hello needs
                self.abandoned += 1
                partial = None
            if not start:
                continue
            seq = int(pf.tcp_seq[i])
            if (partial is not None and partial.start_seq == seq) or self._joined_starts.get(key) == seq:
                self.repeated += 1  # the first segment again: a retransmission of a hello held or already read
                continue
            payload = captured_payload(batch, pf, i)
            if partial is not None:  # a new hello on this side: the held one will never end
                del self._pending[key]
                self.abandoned += 1
            if not self._begin(key, batch, pf, i, payload):
                yield i, payload

    def abandon_all(self) -> None:
        """The end of the input: a hello still waiting for segments never gets them."""
        self.abandoned += len(self._pending)
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)

    def _begin(self, key: bytes, batch: PacketBatch, pf: PacketFields, row: int, payload: bytes) -> bool:
        """Hold the start of a ClientHello that continues in later segments; False when ``payload`` is
        not one (a whole hello, a malformed one, or a segment the snap length cut)."""
        if len(payload) < RECORD_HEADER + 4 or payload[0] != HANDSHAKE or payload[1] != 3 or payload[5] != CLIENT_HELLO:
            return False
        need = RECORD_HEADER + int.from_bytes(payload[3:5], "big")
        message_end = RECORD_HEADER + 4 + int.from_bytes(payload[6:9], "big")
        cut_by_capture = batch.caplen[row] < pf.payload_pos[row] + pf.payload_len[row]
        if need <= len(payload) or message_end <= len(payload) or need > MAX_RECORD or cut_by_capture:
            return False  # parsed as it is (whole, or refused and counted there)
        if len(self._pending) >= self.max_pending:  # the oldest gives way
            del self._pending[next(iter(self._pending))]
            self.abandoned += 1
        seq = int(pf.tcp_seq[row])
        syn = 1 if int(pf.tcp_flags[row]) & _SYN else 0
        self._pending[key] = _Partial(bytearray(payload), need, seq, seq + syn + need,
                                      (seq + syn + len(payload)) % _WRAP, int(batch.ts[row]))
        return True

    def _continue(self, partial: _Partial, batch: PacketBatch, pf: PacketFields, i: int) -> str:
        """Add what segment ``i`` brings at the held hello's next sequence number: _ADDED; _OLD when it
        holds only bytes already held (a retransmission); _DROPPED when the hello cannot go on (the
        segment starts past the bytes held, or the snap length cut bytes the record needs)."""
        behind = (partial.next_seq - int(pf.tcp_seq[i])) % _WRAP  # bytes of it the hello already holds
        size = int(pf.payload_len[i])
        if behind >= 1 << 31:
            return _DROPPED
        if behind >= size:
            return _OLD
        wanted = min(size - behind, partial.need - len(partial.data))
        start = int(pf.payload_pos[i]) + behind
        if batch.caplen[i] < start + wanted:
            return _DROPPED
        at = int(batch.offset[i]) + start
        partial.data += batch.data[at : at + wanted].tobytes()
        partial.next_seq = (partial.next_seq + size - behind) % _WRAP
        return _ADDED

    def _continuations(self, batch: PacketBatch, pf: PacketFields, starts: np.ndarray) -> np.ndarray:
        """Rows that may continue a held hello or one begun in this batch: TCP payload on the same ports
        that brings bytes past those held and before the record's end, at most ``max_rows`` of them.
        Vectorised, so a flood of retransmissions on a held connection is never read one by one; a
        hello whose segments fall past ``max_rows`` goes unread (counted)."""
        ranges = [(p.next_seq, p.next_seq + (p.end_seq - p.next_seq) % _WRAP) for p in self._pending.values()]
        if len(starts):
            at = batch.offset[starts] + pf.payload_pos[starts]
            whole_header = batch.caplen[starts] >= pf.payload_pos[starts] + RECORD_HEADER
            last = len(batch.data) - 1
            record = batch.data[np.minimum(at + 3, last)].astype(np.int64) << 8 | batch.data[np.minimum(at + 4, last)]
            first = pf.tcp_seq[starts].astype(np.int64) + ((pf.tcp_flags[starts] & _SYN) != 0)  # past 2^32
            ends = first + np.where(whole_header, RECORD_HEADER + record, 0)
            ranges += list(zip((first + pf.payload_len[starts]).tolist(), ends.tolist(), strict=True))
        if not ranges:
            return np.zeros(0, dtype=np.int64)
        ports = {_ports(key) for key in self._pending}
        ports.update(_port_pairs(pf, starts).tolist())
        rows = np.flatnonzero((pf.proto == IPPROTO_TCP) & (pf.payload_len > 0)
                              & np.isin(_port_pairs(pf, slice(None)), np.array(sorted(ports), dtype=np.int64)))
        if not len(rows):
            return rows
        ranges += [(lo - _WRAP, hi - _WRAP) for lo, hi in ranges if hi > _WRAP]  # a range across 2^32
        ranges.sort()
        lo = np.array([r[0] for r in ranges], dtype=np.int64)
        hi = np.maximum.accumulate(np.array([r[1] for r in ranges], dtype=np.int64))
        seq = pf.tcp_seq[rows].astype(np.int64)
        end = seq + pf.payload_len[rows]
        k = np.searchsorted(lo, end, side="left") - 1  # the ranges whose next byte the segment may bring
        # a few segments per hello are the work: the bound grows with the hellos, a flood's rows do not
        return rows[(k >= 0) & (seq < hi[np.maximum(k, 0)])][: self.max_rows + 4 * len(ranges)]

    def _remember(self, key: bytes, start_seq: int) -> None:
        if len(self._joined_starts) >= self.max_pending:
            del self._joined_starts[next(iter(self._joined_starts))]
        self._joined_starts[key] = start_seq

    def _expire(self, now_ns: int) -> None:
        """Hellos begun ``timeout_s`` before the batch's first packet (or after it: a clock stepped
        back) never end. The same test at each packet that touches a hello makes the result the same
        wherever a capture is cut into batches; this one frees what no packet touches again."""
        late = [key for key, p in self._pending.items() if abs(now_ns - p.started_ns) > self.timeout_s * SECOND]
        for key in late:
            del self._pending[key]
        self.abandoned += len(late)


def _sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.union1d's values, without np.unique: in numpy 2 its first call imports numpy.ma, 10 ms."""
    both = np.concatenate((a, b))
    both.sort()
    return both[np.concatenate(([True], both[1:] != both[:-1]))]


def _port_pairs(pf: PacketFields, rows) -> np.ndarray:
    """Source port << 16 | destination port, widened first: the columns are 16-bit."""
    return pf.sport[rows].astype(np.int64) << 16 | pf.dport[rows]


def side_key(pf: PacketFields, i: int) -> bytes:
    """One side of one flow: source, destination, ports and tunnel (both addresses are 16 bytes)."""
    addresses = np.ascontiguousarray(np.concatenate([pf.src[i], pf.dst[i]]), dtype=">u8").tobytes()
    ports = (int(pf.sport[i]) << 16 | int(pf.dport[i])).to_bytes(4, "big")
    return addresses + ports + (int(pf.tunnel_id[i]) & 0xFFFFFFFF).to_bytes(4, "big")


def _ports(key: bytes) -> int:
    return int.from_bytes(key[32:36], "big")
