"""The little the sensor reads beyond headers: DNS questions and answers, and the name of a mining
protocol's JSON-RPC method.

Privacy posture: the capture keeps at most ``snaplen`` bytes of a packet (400 by default). Payload is
read only in two cases: UDP port 53 messages, parsed into names, types and codes (the ``dns`` table of
the batch); and TCP segments whose payload starts with ``{`` (JSON-RPC), searched for a ``"method"``
from the fixed list in :mod:`kubesonar.shared.mining`. What leaves the node is the DNS fields and, per
flow, that method's name; never payload bytes.
"""

from __future__ import annotations

import re

import dpkt
import numpy as np

from kubesonar.sensor.dissect import PacketFields
from kubesonar.sensor.packets import PacketBatch
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import IPPROTO_TCP, IPPROTO_UDP
from kubesonar.shared.mining import MONERO_KEYS, RPC_CODES

DNS_PORT = 53
_METHOD = re.compile(rb'"method"\s*:\s*"([A-Za-z_.]{1,40})"')
_OPEN_BRACE = ord("{")


def _payload(batch: PacketBatch, pf: PacketFields, i: int) -> bytes:
    start = int(batch.offset[i] + pf.payload_pos[i])
    end = int(batch.offset[i] + min(batch.caplen[i], pf.payload_pos[i] + pf.payload_len[i]))
    return batch.data[start:end].tobytes() if end > start else b""


def rpc_method_codes(batch: PacketBatch, pf: PacketFields) -> np.ndarray:
    """Per packet, the code of the mining JSON-RPC method its payload carries (0: none)."""
    codes = np.zeros(len(batch), dtype=np.int64)
    candidates = pf.is_ip & (pf.proto == IPPROTO_TCP) & (pf.payload_len > 0)
    if not candidates.any():
        return codes
    rows = np.flatnonzero(candidates)
    first = batch.data[np.minimum(batch.offset[rows] + pf.payload_pos[rows], len(batch.data) - 1)]
    rows = rows[(first == _OPEN_BRACE) & (pf.payload_pos[rows] < batch.caplen[rows])]
    for i in rows.tolist():
        payload = _payload(batch, pf, i)
        match = _METHOD.search(payload)
        if not match:
            continue
        name = match.group(1).decode()
        code = RPC_CODES.get(name, 0)
        if code and name in MONERO_KEYS and not any(k in payload for k in MONERO_KEYS[name]):
            code = 0
        codes[i] = code
    return codes


class DnsParser:
    """UDP port 53 payloads into :class:`DnsMessages`; unparseable ones are counted, never fatal."""

    def __init__(self, max_messages: int = 65_536):
        self.max_messages = max_messages  # per call: bounds the memory of a DNS flood
        self.parsed = 0
        self.malformed = 0
        self.dropped = 0

    def parse(self, batch: PacketBatch, pf: PacketFields, ts: np.ndarray) -> DnsMessages:
        dns = pf.is_ip & (pf.proto == IPPROTO_UDP) & ((pf.sport == DNS_PORT) | (pf.dport == DNS_PORT))
        dns &= (pf.payload_len >= 12) & ~pf.icmp_error & (pf.payload_pos + 12 <= batch.caplen)
        rows = np.flatnonzero(dns)
        if len(rows):  # a message asks one question (RFC 9619); anything else is not worth a parse
            at = batch.offset[rows] + pf.payload_pos[rows] + 4
            questions = batch.data[at].astype(np.int64) << 8 | batch.data[at + 1]
            self.malformed += int((questions != 1).sum())
            rows = rows[questions == 1]
        if len(rows) > self.max_messages:
            self.dropped += len(rows) - self.max_messages
            rows = rows[: self.max_messages]
        out = []
        for i in rows.tolist():
            payload = _payload(batch, pf, i)
            try:
                msg = dpkt.dns.DNS(payload)
                qname, qtype, answers = msg.qd[0].name, int(msg.qd[0].type), len(msg.an)
            except UnicodeDecodeError:  # binary labels (iodine's base128): dpkt insists on UTF-8
                question = _binary_question(payload)
                if question is None:
                    self.malformed += 1
                    continue
                (qname, qtype), answers = question, int.from_bytes(payload[6:8], "big")
            except (dpkt.UnpackError, IndexError, ValueError):
                self.malformed += 1
                continue
            response, rcode = bool(payload[2] & 0x80), payload[3] & 0x0F  # QR bit, RCODE (RFC 1035 4.1.1)
            client, server = (pf.dst[i], pf.src[i]) if response else (pf.src[i], pf.dst[i])
            out.append({
                "ts": int(ts[i]), "client": _address(client), "server": _address(server),
                "client_port": int(pf.dport[i] if response else pf.sport[i]), "response": int(response),
                "qname": qname.lower().rstrip("."), "qtype": qtype,
                "rcode": rcode if response else 0, "answers": answers,
                "size": int(min(pf.payload_len[i], 0xFFFF)),
            })
        self.parsed += len(out)
        return DnsMessages.from_rows(out)


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
