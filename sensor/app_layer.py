"""The little the sensor reads beyond headers: DNS questions and answers, the name of a mining
protocol's JSON-RPC method, a TLS ClientHello's fingerprints, and whether ICMP data looks like ping's.

Privacy posture: the capture keeps at most ``snaplen`` bytes of a packet (928 by default). Payload is
read only on packets a vectorised test picked out: UDP port 53 messages, and TCP port 53 segments that
start with DNS's two-byte length prefix (RFC 1035 4.2.2: zone transfers, truncated answers retried, and
tunnels that pick TCP), parsed into names, types and codes (the ``dns`` table of the batch); TCP
payloads that are JSON (``{``, ``[``) or an HTTP message
whose body is, searched for a ``"method"`` from the fixed list in :mod:`kubesonar.shared.mining`; TCP
payloads that start with a TLS ClientHello (:mod:`kubesonar.sensor.tls_hello`); TCP payloads that
start with an HTTP request, for the host its Host header names (:mod:`kubesonar.sensor.http_request`);
TCP payloads that start with ``\\x7fE`` or ``MZ`` (the dissection marks them), and HTTP responses'
bodies, for an ELF or PE header (:mod:`kubesonar.sensor.executables`); and ICMP messages, whose data
is compared with ping's fill patterns. What leaves the node is the DNS fields and, per flow, the
method's name, the JA3/JA4 fingerprints, server name and ALPN list, the initiator's HTTP Host, two ICMP
counts, and a flag per side saying it sent an executable (ELF or PE, never the file); never payload bytes.
"""

from __future__ import annotations

import re

import numpy as np

from kubesonar.sensor import payload_kinds
from kubesonar.sensor.dissect import PacketFields, captured_payload
from kubesonar.sensor.hello_segments import HelloSegments, side_key
from kubesonar.sensor.http_request import request_host
from kubesonar.sensor.packets import PacketBatch
from kubesonar.sensor.ping_fill import CLOCK_SKEW_S, MAX_PERIOD, MICROSECONDS, PATTERN_WINDOW, WINDOWS_PING
from kubesonar.sensor.quic_initial import (
    INITIAL_FIRST,
    MIN_DATAGRAM,
    NotAnInitial,
    QuicHellos,
    client_initial_frames,
    crypto_data,
)
from kubesonar.sensor.record_walk import ping_data
from kubesonar.sensor.tls_hello import NotAClientHello, parse_client_hello, parse_handshake
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from kubesonar.shared.mining import MONERO_KEYS, RPC_CODES

DNS_PORT = 53
_METHOD = re.compile(rb'"method"\s*:\s*"([A-Za-z_.]{1,40})"')
_JSON_STARTS = frozenset(b"{[")
# an HTTP request that may carry a body, or any response (sensor/payload_kinds.py HTTP): JSON-RPC
# over HTTP, as getwork and a node's RPC speak it
_HTTP_STARTS = (b"POST ", b"PUT ", b"HTTP/")
_HEADERS_END = b"\r\n\r\n"


def _leading_bytes(batch: PacketBatch, pf: PacketFields, rows: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` captured payload bytes of each row, -1 past the capture or the payload."""
    k = np.arange(count)
    pos = pf.payload_pos[rows, None] + k
    inside = (pos < batch.caplen[rows, None]) & (k < pf.payload_len[rows, None])
    at = np.minimum(batch.offset[rows, None] + pos, len(batch.data) - 1)
    return np.where(inside, batch.data[at].astype(np.int64), -1)


def _json_body(payload: bytes) -> bytes:
    """The JSON text a TCP payload holds: itself, or an HTTP message's body; b'' when there is none."""
    if payload.startswith(_HTTP_STARTS):
        _, found, payload = payload.partition(_HEADERS_END)
        if not found:
            return b""
    payload = payload.lstrip()
    return payload if payload[:1] and payload[0] in _JSON_STARTS else b""


def rpc_method_codes(batch: PacketBatch, pf: PacketFields) -> np.ndarray:
    """Per packet, the code of the mining JSON-RPC method its payload carries (0: none): a JSON
    payload, or the JSON body of an HTTP request or response, on any port. Only a ``"method"`` member
    of that JSON counts, never the word elsewhere."""
    codes = np.zeros(len(batch), dtype=pf.rpc_code.dtype)
    for i in np.flatnonzero((pf.payload_kind == payload_kinds.JSON) | (pf.payload_kind == payload_kinds.HTTP)).tolist():
        payload = _json_body(captured_payload(batch, pf, i))
        match = _METHOD.search(payload)
        if not match:
            continue
        name = match.group(1).decode()
        code = RPC_CODES.get(name, 0)
        if code and name in MONERO_KEYS and not any(k in payload for k in MONERO_KEYS[name]):
            code = 0
        codes[i] = code
    return codes


class CodeBook:
    """Distinct values under small codes, which the compiled flow table keeps per flow (0: none; the
    ``empty`` value); records turn codes back into values. Pruned to the open flows' codes."""

    def __init__(self, empty):
        self._codes: dict = {}
        self._names: list = [empty]

    def __len__(self) -> int:
        return len(self._names) - 1

    def code(self, value) -> int:
        found = self._codes.get(value)
        if found is None:
            found = self._codes[value] = len(self._names)
            self._names.append(value)
        return found

    def keep_only(self, codes: np.ndarray) -> np.ndarray:
        """Forget every entry but ``codes`` (those of open flows); return old code -> new code."""
        remap = np.zeros(len(self._names), dtype=np.int64)
        kept = np.unique(codes[codes > 0])
        remap[kept] = np.arange(1, len(kept) + 1)
        self._names = [self._names[0]] + [self._names[c] for c in kept.tolist()]
        self._codes = {value: k for k, value in enumerate(self._names) if k}
        return remap


class TlsClients(CodeBook):
    """The distinct ClientHello fingerprints (JA3, JA4, SNI, ALPN) of the open flows. Cut or malformed
    hellos are counted, never fatal."""

    def __init__(self, max_per_call: int = 8192):
        super().__init__(("", "", "", ""))
        self.max_per_call = max_per_call  # bounds the Python work a flood of crafted hellos can cause
        self.max_quic_per_call = 256  # each QUIC datagram read costs up to 4 key derivations and decryptions
        self.parsed = 0
        self.malformed = 0  # read whole, or cut by the snap length, and refused by the parser
        self.dropped = 0  # past max_per_call in one read (QUIC: datagrams past max_quic_per_call): not read
        self.segments = HelloSegments()  # hellos longer than a segment, until their record is whole
        self.quic = QuicHellos()  # QUIC clients' CRYPTO streams, until their hello is whole

    def columns(self, codes: np.ndarray) -> tuple[np.ndarray, ...]:
        """tls_ja3, tls_ja4, tls_sni, tls_alpn for each code."""
        table = np.empty((len(self._names), 4), dtype=object)
        table[:] = self._names
        rows = table[codes]
        return tuple(rows[:, k] for k in range(4))

    def hello_codes(self, batch: PacketBatch, pf: PacketFields) -> np.ndarray:
        """Per packet, the code of the TLS ClientHello its TCP payload starts with, or, for a hello
        longer than one segment, that the segment completes (0: none)."""
        codes = np.zeros(len(batch), dtype=pf.tls_code.dtype)
        rows = np.flatnonzero(pf.payload_kind == payload_kinds.TLS_CLIENT_HELLO)
        if len(rows) > self.max_per_call:
            self.dropped += len(rows) - self.max_per_call
            rows = rows[: self.max_per_call]
        for i, record in self.segments.hellos(batch, pf, rows):
            self._read(record, codes, i)
        for i in self._quic_initials(batch, pf).tolist():
            try:
                datagram = captured_payload(batch, pf, i)
                packets = [(dcid, crypto_data(frames)) for dcid, frames in client_initial_frames(datagram)]
            except NotAnInitial:
                continue  # frames that do not parse: what the packet held is not read
            for dcid, parts in packets:
                if message := self.quic.add(side_key(pf, i), int(batch.ts[i]), dcid, parts):
                    self._read(message, codes, i, transport="q")
        return codes

    @property
    def unreadable(self) -> int:
        """Hellos refused by the parser, and those begun and never made whole (over TCP or QUIC)."""
        return self.malformed + self.segments.abandoned + self.quic.abandoned

    def _quic_initials(self, batch: PacketBatch, pf: PacketFields) -> np.ndarray:
        """Rows that may carry a QUIC client's Initial packets: a whole UDP datagram of at least 1,200
        bytes starting with a long header (version and type are read by sensor/quic_initial.py)."""
        rows = np.flatnonzero(pf.proto == IPPROTO_UDP)  # the other tests on those rows alone
        size = pf.payload_len[rows]
        rows = rows[(size >= MIN_DATAGRAM) & (batch.caplen[rows] >= pf.payload_pos[rows] + size)]
        if not len(rows):
            return rows
        head = _leading_bytes(batch, pf, rows, 5)  # the long header's first byte and version
        version = (head[:, 1] << 24) | (head[:, 2] << 16) | (head[:, 3] << 8) | head[:, 4]
        initial = np.zeros(len(rows), dtype=bool)
        for number, first in INITIAL_FIRST.items():
            initial |= ((head[:, 0] & 0xF0) == first) & (version == number)
        rows = rows[initial]
        if len(rows) > self.max_quic_per_call:
            self.dropped += len(rows) - self.max_quic_per_call
            rows = rows[: self.max_quic_per_call]
        return rows

    def finish(self) -> None:
        """The end of the input: hellos still waiting for their segments are unreadable."""
        self.segments.abandon_all()
        self.quic.abandon_all()

    def _read(self, hello_bytes: bytes, codes: np.ndarray, row: int, transport: str = "t") -> None:
        """A TCP hello comes with its record header; a QUIC one is the handshake message alone."""
        try:
            hello = parse_client_hello(hello_bytes) if transport == "t" else parse_handshake(hello_bytes)
        except NotAClientHello:
            self.malformed += 1
            return
        self.parsed += 1
        codes[row] = self.code((hello.ja3(), hello.ja4(transport), hello.server_name, hello.alpn_text()))


class HttpHosts(CodeBook):
    """The distinct hosts named in the HTTP requests of open flows, kept per flow and side."""

    def __init__(self, max_per_call: int = 8192):
        super().__init__("")
        self.max_per_call = max_per_call  # bounds the Python work a flood of requests can cause
        self.read = 0
        self.dropped = 0  # past max_per_call in one read: not read

    def column(self, codes: np.ndarray) -> np.ndarray:
        """http_host for each code."""
        return np.array(self._names, dtype=object)[codes]

    def host_codes(self, batch: PacketBatch, pf: PacketFields) -> np.ndarray:
        """Per packet, the code of the host named by the HTTP request its TCP payload starts with (0: no
        request, no Host header in the captured bytes, or a value that is not a host). Every request
        packet is read; the flow table keeps the host of each side's first payload only."""
        codes = np.zeros(len(batch), dtype=pf.host_code.dtype)
        rows = np.flatnonzero((pf.payload_kind == payload_kinds.HTTP_REQUEST) | (pf.payload_kind == payload_kinds.HTTP))
        if len(rows) > self.max_per_call:
            self.dropped += len(rows) - self.max_per_call
            rows = rows[: self.max_per_call]
        for i in rows.tolist():
            payload = captured_payload(batch, pf, i)
            if payload.startswith(b"HTTP/"):  # a response names no host
                continue
            self.read += 1
            host = request_host(payload)
            if host:
                codes[i] = self.code(host)
        return codes


# How many data bytes after the 8-byte header a message of each ICMP type carries as protocol; more is
# data of the sender's own. Errors quote a packet, router advertisements list addresses, and router and
# neighbour discovery and MLD carry options: a body of any length. Timestamp (12: three clocks),
# address mask (4) and information and router solicitation (none) have a fixed one (RFC 792, 950, 1256),
# so a timestamp request carrying 200 bytes is a channel. Other types define no data.
_ANY_BODY = np.iinfo(np.int32).max
_ICMP4_BODIES = {3: _ANY_BODY, 4: _ANY_BODY, 5: _ANY_BODY, 9: _ANY_BODY, 11: _ANY_BODY, 12: _ANY_BODY,
                 10: 0, 13: 12, 14: 12, 15: 0, 16: 0, 17: 4, 18: 4}
_ICMP6_BODIES = dict.fromkeys((1, 2, 3, 4, *range(130, 154)), _ANY_BODY)
# by type (one byte; 255, and whatever an index past it reads, defines none): a look-up, where np.isin
# sorted the batch's ICMP types twice a batch, 5 ms a million packets
_BODY4, _BODY6 = np.zeros(256, dtype=np.int32), np.zeros(256, dtype=np.int32)
_BODY4[list(_ICMP4_BODIES)] = list(_ICMP4_BODIES.values())
_BODY6[list(_ICMP6_BODIES)] = list(_ICMP6_BODIES.values())
_JUDGED_BYTES = 16  # shorter echo data holds too little to tell a pattern from a payload


def icmp_shapes(batch: PacketBatch, pf: PacketFields) -> tuple[np.ndarray, np.ndarray]:
    """Per packet, (data bytes of an ICMP message that is not an error, else -1; 1 when it is odd).

    Echo data is ping's when it follows a fill pattern from its first byte (Windows' ``abc...w``
    cycle, a count up byte by byte, a pattern of at most 16 bytes repeated: ``ping -p``, zero fill), or
    when it starts with the sender's clock (a struct timeval: 16 bytes little-endian, as iputils on
    64-bit Linux writes it, or 8 bytes either way round, as BSD, macOS and 32-bit systems do) within a
    year of the capture's time and the pattern follows. Anything else in an echo is odd, and so is data
    in a message beyond what its type defines (none for most types, the three clocks of a timestamp,
    the mask of an address mask reply; errors and discovery messages carry a body of any length).
    Only the captured bytes are compared; echo data of 16 bytes or fewer is never odd.
    """
    size = np.full(len(batch), -1, dtype=pf.icmp_size.dtype)
    odd = np.zeros(len(batch), dtype=pf.icmp_odd.dtype)
    rows = np.flatnonzero(pf.payload_kind == payload_kinds.ICMP)
    if not len(rows):
        return size, odd
    size[rows] = pf.payload_len[rows]
    kind, v6 = pf.icmp_type[rows], pf.proto[rows] == IPPROTO_ICMPV6
    echo = np.where(v6, (kind == 128) | (kind == 129), (kind == 0) | (kind == 8))
    by_type = np.minimum(kind, 255)
    body = np.where(v6, _BODY6[by_type], _BODY4[by_type])
    odd[rows] = ~echo & (pf.payload_len[rows] > body)
    echoes = rows[echo & (pf.payload_len[rows] > _JUDGED_BYTES)]
    if len(echoes):
        data = _leading_bytes(batch, pf, echoes, PATTERN_WINDOW)
        judged = data[:, _JUDGED_BYTES - 1] >= 0  # the capture holds what a timestamp would be
        ping = np.empty(len(echoes), dtype=bool)
        ping_data(data, batch.ts[echoes] // 1_000_000_000, ping)  # compiled: sensor/ping_kernel.py
        odd[echoes] = judged & ~ping
    return size, odd


def ping_data_vectorised(data: np.ndarray, now_s: np.ndarray) -> np.ndarray:
    """Rows of echo data bytes (-1 past what was captured) that ping would have sent: the numpy
    reference the compiled judge is tested against."""
    def word(at: int, size: int, little: bool) -> np.ndarray:
        part = np.maximum(data[:, at : at + size], 0).astype(np.float64)  # exact below 2^53: any clock
        weights = 256.0 ** (np.arange(size) if little else np.arange(size)[::-1])
        return (part * weights).sum(axis=1)

    def clock(seconds: np.ndarray) -> np.ndarray:
        return np.abs(seconds - now_s) <= CLOCK_SKEW_S

    timeval_64 = clock(word(0, 8, True)) & (word(8, 8, True) < MICROSECONDS)
    timeval_32 = (clock(word(0, 4, True)) & (word(4, 4, True) < MICROSECONDS)) | (
        clock(word(0, 4, False)) & (word(4, 4, False) < MICROSECONDS))
    ping = np.zeros(len(data), dtype=bool)
    for after_clock, start in ((timeval_64, 16), (timeval_32, 8), (np.ones(len(data), dtype=bool), 0)):
        rows = np.flatnonzero(after_clock & ~ping)  # each row is compared once or twice, not three times
        if len(rows):
            ping[rows] = _fill_pattern(data[rows], start)
    return ping


def _fill_pattern(data: np.ndarray, start: int) -> np.ndarray:
    """Rows whose bytes from ``start`` on follow one of ping's fill patterns."""
    tail = data[:, start:]
    seen = tail >= 0
    k = np.arange(tail.shape[1])
    counting = ((tail == (tail[:, :1] + k) % 256) | ~seen).all(axis=1)
    windows = ((tail == WINDOWS_PING[(k + start) % len(WINDOWS_PING)]) | ~seen).all(axis=1)
    # every period at once: byte k against byte k - period, where both exist
    periods = np.arange(1, MAX_PERIOD + 1)[:, None]
    earlier = k[None, :] - periods
    compared = earlier >= 0
    same = (tail[:, None, :] == tail[:, np.maximum(earlier, 0)]) | ~seen[:, None, :] | ~compared
    captured = seen.sum(axis=1)
    repeating = (same.all(axis=2) & (captured[:, None] >= 2 * periods.T)).any(axis=1)  # a period must repeat
    return counting | windows | repeating


class DnsParser:
    """DNS on port 53 into :class:`DnsMessages`: UDP payloads, and TCP segments that start with a
    message's length prefix (every message a segment holds whole, and the question of one it holds
    only the start of: a long answer split over segments). Unparseable ones are counted, never fatal."""

    def __init__(self, max_messages: int = 65_536):
        self.max_messages = max_messages  # per call: bounds the memory of a DNS flood
        self.parsed = 0
        self.malformed = 0
        self.dropped = 0

    def parse(self, batch: PacketBatch, pf: PacketFields, ts: np.ndarray) -> DnsMessages:
        # port 53 first, over the whole batch; the other tests on those few packets only
        port53 = np.flatnonzero((pf.sport == DNS_PORT) | (pf.dport == DNS_PORT))
        ip, proto, size = pf.is_ip[port53], pf.proto[port53], pf.payload_len[port53]
        room = batch.caplen[port53] - pf.payload_pos[port53]  # captured payload bytes
        rows = port53[ip & (proto == IPPROTO_UDP) & (size >= 12) & ~pf.icmp_error[port53] & (room >= 12)]
        if len(rows):  # a message asks one question (RFC 9619); anything else is not worth a parse
            at = batch.offset[rows] + pf.payload_pos[rows] + 4
            questions = batch.data[at].astype(np.int64) << 8 | batch.data[at + 1]
            self.malformed += int((questions != 1).sum())
            rows = rows[questions == 1]
        if len(rows) > self.max_messages:
            self.dropped += len(rows) - self.max_messages
            rows = rows[: self.max_messages]
        out: list[dict] = []
        for i in rows.tolist():
            self._message(captured_payload(batch, pf, i), int(min(pf.payload_len[i], 0xFFFF)), pf, i, ts, out, False)
        for i in port53[ip & (proto == IPPROTO_TCP) & (size >= 14) & (room >= 14)].tolist():
            for message, size in _tcp_messages(captured_payload(batch, pf, i)):
                if len(out) >= self.max_messages:
                    self.dropped += 1
                elif int.from_bytes(message[4:6], "big") != 1:  # one question, as for UDP
                    self.malformed += 1
                else:
                    self._message(message, size, pf, i, ts, out, len(message) < size)
        self.parsed += len(out)
        return DnsMessages.from_rows(out) if out else DnsMessages.empty()

    def _message(self, payload: bytes, size: int, pf: PacketFields, i: int, ts: np.ndarray, out: list[dict],
                 cut: bool) -> None:
        """One message's fields into ``out``; one ``cut`` short (a TCP segment holding only its start)
        gives its question and header counts."""
        import dpkt  # here, not at the top: its 50 ms of import are paid only where DNS is seen

        try:
            if cut:
                raise dpkt.NeedData("the rest of the message is in later segments")
            msg = dpkt.dns.DNS(payload)
            qname, qtype, answers = msg.qd[0].name, int(msg.qd[0].type), len(msg.an)
        except (UnicodeDecodeError, dpkt.NeedData) as exc:  # binary labels (iodine's base128): dpkt insists on UTF-8
            question = _binary_question(payload) if cut or isinstance(exc, UnicodeDecodeError) else None
            if question is None:
                self.malformed += 1
                return
            (qname, qtype), answers = question, int.from_bytes(payload[6:8], "big")
        except (dpkt.UnpackError, IndexError, ValueError):
            self.malformed += 1
            return
        response, rcode = bool(payload[2] & 0x80), payload[3] & 0x0F  # QR bit, RCODE (RFC 1035 4.1.1)
        client, server = (pf.dst[i], pf.src[i]) if response else (pf.src[i], pf.dst[i])
        out.append({
            "ts": int(ts[i]), "client": _address(client), "server": _address(server),
            "client_port": int(pf.dport[i] if response else pf.sport[i]), "response": int(response),
            "qname": qname.lower().rstrip("."), "qtype": qtype,
            "rcode": rcode if response else 0, "answers": answers, "size": size,
        })


def _tcp_messages(payload: bytes) -> list[tuple[bytes, int]]:
    """The DNS messages a TCP segment starting at a length prefix holds, each with its declared size:
    every whole one, and the start of the last when the segment ends inside it (at least its header).
    A segment continuing a message begins with no prefix; what it yields fails the parse and is counted."""
    messages, pos = [], 0
    while pos + 14 <= len(payload):
        size = int.from_bytes(payload[pos : pos + 2], "big")
        if size < 12:
            break
        messages.append((payload[pos + 2 : pos + 2 + size], size))
        pos += 2 + size
    return messages


def _binary_question(payload: bytes) -> tuple[str, int] | None:
    """The first question of a message whose labels are not text, each byte kept as one character
    (latin-1): a tunnel's name, with its entropy intact. None when the question is cut or compressed."""
    if len(payload) < 12 or int.from_bytes(payload[4:6], "big") < 1:
        return None
    pos, labels = 12, []
    while pos < len(payload):
        size = payload[pos]
        if size == 0:
            if pos + 5 > len(payload):
                return None
            return ".".join(labels), int.from_bytes(payload[pos + 1 : pos + 3], "big")
        if size > 63 or pos + 1 + size > len(payload):
            return None
        labels.append(payload[pos + 1 : pos + 1 + size].decode("latin-1"))
        pos += 1 + size
    return None


def _address(halves: np.ndarray) -> bytes:
    return np.ascontiguousarray(halves, dtype=">u8").tobytes()
