"""TLS ClientHellos longer than one TCP segment, joined from the segments that carry them.

Mainstream clients now offer a post-quantum key share (X25519MLKEM768, 1,216 bytes of key): the
ClientHellos of Chrome and Firefox, of Go 1.24 and of OpenSSL 3.5 run to 1.5-2 KB, more than one
segment at the usual MSS of 1,448 bytes. Read from its first segment alone, such a hello gave no
JA3, JA4, server name or ALPN, and the rules that read them saw a client without a name.

The first segment gives the record's length, and its sequence number where the next segment must
start. Segments that follow it on the same side at exactly that number add their bytes; one that
repeats bytes already held (a retransmission) adds nothing. Only the record's bytes are held, never
past its end, and only until it is whole; then it is parsed like a hello that came in one segment.
A segment lost, reordered (one that starts past the bytes held) or cut by the snap length leaves the
hello unread (counted), as does a record not whole within ``timeout_s`` or at the end of a capture.
The pending hellos are bounded in number, and each by TLS's record limit (RFC 8446 5.1), so a flood
of first segments costs at most ``max_pending`` times 16 KiB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kubesonar.sensor.dissect import PacketFields
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.tls_hello import CLIENT_HELLO, HANDSHAKE
from kubesonar.shared.flow import IPPROTO_TCP

RECORD_HEADER = 5
MAX_RECORD = (1 << 14) + 256  # a TLSPlaintext fragment holds at most 2^14 bytes (RFC 8446 5.1); some slack
SECOND = 1_000_000_000


@dataclass
class _Partial:
    data: bytearray
    need: int  # the record's bytes, header included
    next_seq: int  # the sequence number the next segment must start at
    started_ns: int
    after_row: int  # rows of this batch up to this one cannot continue it (-1: begun in an earlier batch)


@dataclass
class HelloSegments:
    """The ClientHellos begun but not yet whole, per flow side."""

    max_pending: int = 512
    timeout_s: float = 10.0
    joined: int = 0  # hellos made whole from two or more segments
    abandoned: int = 0  # begun, never made whole: a segment lost or cut, too many pending, too slow
    _pending: dict[bytes, _Partial] = field(default_factory=dict)

    def begin(self, batch: PacketBatch, pf: PacketFields, row: int, payload: bytes) -> bool:
        """Hold the start of a ClientHello that continues in later segments; False when ``payload`` is
        not such a start (a whole hello, a malformed one, or a segment the snap length cut)."""
        if len(payload) < RECORD_HEADER + 4 or payload[0] != HANDSHAKE or payload[1] != 3 or payload[5] != CLIENT_HELLO:
            return False
        need = RECORD_HEADER + int.from_bytes(payload[3:5], "big")
        cut_by_capture = batch.caplen[row] < pf.payload_pos[row] + pf.payload_len[row]
        if need <= len(payload) or need > MAX_RECORD or cut_by_capture:
            return False
        key = _side_key(pf, row)
        if key in self._pending:  # the first segment again (retransmitted), or a new hello: start over
            del self._pending[key]
            self.abandoned += 1
        if len(self._pending) >= self.max_pending:
            self.abandoned += 1
            return True  # held no more: counted here, not again as unreadable
        next_seq = (int(pf.tcp_seq[row]) + len(payload)) & 0xFFFFFFFF
        self._pending[key] = _Partial(bytearray(payload), need, next_seq, int(batch.ts[row]), row)
        return True

    def continue_(self, batch: PacketBatch, pf: PacketFields) -> list[tuple[int, bytes]]:
        """The hellos this batch's segments make whole: (the row of the last segment, the record)."""
        if not self._pending:
            return []
        self._expire(int(batch.ts.max(initial=0)))
        if not self._pending:
            return []
        ports = np.array(sorted({_ports(key) for key in self._pending}), dtype=np.int64)
        rows = np.flatnonzero((pf.proto == IPPROTO_TCP) & (pf.payload_len > 0)
                              & np.isin(pf.sport << 16 | pf.dport, ports))
        whole = []
        for i in rows.tolist():
            key = _side_key(pf, i)
            partial = self._pending.get(key)
            if partial is None or i <= partial.after_row:
                continue
            ahead = (int(pf.tcp_seq[i]) - partial.next_seq) & 0xFFFFFFFF  # modulo 2^32: sequence numbers wrap
            if ahead >= 1 << 31:  # starts before the bytes held end: a retransmission, nothing new
                continue
            end = int(pf.payload_pos[i] + pf.payload_len[i])
            if ahead or batch.caplen[i] < end:  # a segment missing before it, or cut by the snap length
                del self._pending[key]
                self.abandoned += 1
                continue
            start = int(batch.offset[i] + pf.payload_pos[i])
            size = min(int(pf.payload_len[i]), partial.need - len(partial.data))  # never past the record
            partial.data += batch.data[start : start + size].tobytes()
            partial.next_seq = (partial.next_seq + int(pf.payload_len[i])) & 0xFFFFFFFF
            if len(partial.data) >= partial.need:
                del self._pending[key]
                self.joined += 1
                whole.append((i, bytes(partial.data)))
        for partial in self._pending.values():
            partial.after_row = -1  # the next batch's rows all come after this one's
        return whole

    def abandon_all(self) -> None:
        """The end of the input: a hello still waiting for segments never gets them."""
        self.abandoned += len(self._pending)
        self._pending.clear()

    def _expire(self, now_ns: int) -> None:
        late = [key for key, p in self._pending.items() if now_ns - p.started_ns > self.timeout_s * SECOND]
        for key in late:
            del self._pending[key]
        self.abandoned += len(late)

    def __len__(self) -> int:
        return len(self._pending)


def _side_key(pf: PacketFields, i: int) -> bytes:
    """One side of one flow: source, destination, ports and tunnel (both addresses are 16 bytes)."""
    addresses = np.ascontiguousarray(np.concatenate([pf.src[i], pf.dst[i]]), dtype=">u8").tobytes()
    ports = int(pf.sport[i] << 16 | pf.dport[i]).to_bytes(4, "big")
    return addresses + ports + (int(pf.tunnel_id[i]) & 0xFFFFFFFF).to_bytes(4, "big")


def _ports(key: bytes) -> int:
    return int.from_bytes(key[32:36], "big")
