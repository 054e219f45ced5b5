"""Exfiltration judged by how the traffic is made, with no baseline: the cold half of ``exfiltration``.

*Upload*: one TCP connection from a workload to an address outside the cluster that carried at least
1 MiB up and ten times more up than down, in the clear or to no name: no TLS ClientHello naming a host
(SNI) and not port 443. A request is small: web servers refuse bodies over 1 MiB unless built for
uploads (nginx's ``client_max_body_size`` default), and a request/response exchange or a download moves
more down than up; only the receiving side's ACKs come back from an upload (a ratio of 25-75 for TCP's
one ACK per one or two segments). What the cluster uploads on purpose (backups, image pushes, log
shipping, object stores) goes over TLS to a named service; a stealer's gate, a raw socket or a TLS
session to a bare address does not name one. Port 443 stays out because there TLS is the norm even
where the sensor missed the hello (a session older than the sensor). A transfer sends as fast as the path
allows from the start, while a stream (logs, metrics, replication) is paced by its producer: the bar must
be crossed within 10 minutes of the connection's first packet (two of the sensor's 5-minute interim
records; 1.7 kB/s on average), so a log stream of hours never adds up to an upload. Connections are
summed across interim records and batches, and forgotten once older than that.

*Mail and FTP*: an established session to an outside host on SMTP (25, 465, 587) or FTP (21), the
protocols of stolen-credential and keylogger drops (Agent Tesla, HawkEye, Snake). A workload rarely
mails or FTPs out itself; the one whose role it is, a mail relay or an FTP mirror, serves that protocol
too (it answered a connection on one of those ports, as observed, never learned), and is left alone.
A session the sensor read as another protocol (mining JSON-RPC: pools offer Stratum on port 25) is not
mail.
The FTP evidence adds what the data connections to the same host carried each way.

Catches: stealer uploads over plain HTTP or to a bare address, bulk pushes over raw TCP or SSH to an
outside address, credential drops by mail or FTP in any size. Misses: uploads over TLS to a named host
(a cloud drive, a chat webhook: the volume baseline's job once learned), uploads under 1 MiB per
connection or spread over many connections, a trickle under 1 MiB in its connection's first 10
minutes, UDP and QUIC uploads, mail through an in-cluster relay.
False positives: an offsite backup over SSH/rsync to an address, a plain-HTTP upload to one's own
storage on a public address, an application sending its own mail through a provider's submission port:
allowlist the workload with the destination (and port).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kubesonar.shared.detectors.base import Score
from kubesonar.shared.flow import IPPROTO_TCP, address_text, answered, names_a_host
from kubesonar.shared.identity import source_endpoint, subject_keys

if TYPE_CHECKING:
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.netzones import Zones

UPLOAD_MIN_BYTES = 1 << 20  # a default web server's largest request body
UPLOAD_RATIO = 10.0  # sent / received: a download or an exchange is below 1-10, an upload's ACKs far above
TRANSFER_WINDOW_NS = 600 * 1_000_000_000  # a transfer starts at once: two of the sensor's 5-minute records
SERVICES = {"mail": (25, 465, 587), "ftp": (21,)}
_HTTPS = 443


class Connection(NamedTuple):
    """One TCP connection of a subject: interim records and batches add to the same tally."""

    source: str
    destination: str
    port: int
    source_port: int
    start_ns: int


@dataclass
class Tally:
    sent: int = 0
    received: int = 0
    last_ns: int = 0
    reported: bool = False


@dataclass
class ChannelState:
    uploads: dict[Connection, Tally] = field(default_factory=dict)  # upload-leaning connections to outside
    servers: dict[str, dict[str, int]] = field(default_factory=dict)  # service -> subject -> last answer (ns)

    def encode(self) -> dict[str, Any]:
        return {"uploads": [[*c, t.sent, t.received, t.last_ns, t.reported] for c, t in self.uploads.items()],
                "servers": self.servers}

    @classmethod
    def decode(cls, document: dict[str, Any] | None) -> ChannelState:
        """A document's channels; one written before they existed has none (nothing was tallied)."""
        if document is None:
            return cls()
        uploads = {Connection(s, d, int(p), int(sp), int(t0)): Tally(int(a), int(b), int(last), bool(rep))
                   for s, d, p, sp, t0, a, b, last, rep in document["uploads"]}
        servers = {service: {k: int(v) for k, v in subjects.items()}
                   for service, subjects in document["servers"].items()}
        return cls(uploads, servers)


def service_servers(flows: FlowRecords, known: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """``known`` with the subjects of ``flows`` that answered a connection on a mail or FTP port."""
    merged = {service: dict(known.get(service, {})) for service in SERVICES}
    served = (flows["proto"] == IPPROTO_TCP) & answered(flows)
    for service, ports in SERVICES.items():
        rows = np.flatnonzero(served & np.isin(flows["dst_port"], ports))
        for key, ts in zip(subject_keys(flows, rows, "dst"), flows["last_ts"][rows].tolist(), strict=True):
            merged[service][key] = max(ts, merged[service].get(key, ts))
    return merged


def upload_scores(flows: FlowRecords, zones: Zones, uploads: dict[Connection, Tally]) -> list[Score]:
    """Tally the batch's outside TCP connections not named by TLS into ``uploads`` (changed in place: the
    caller passes a copy) and score those that crossed the bar. Connections that lean down are dropped.
    An HTTP Host does not name a connection out of this rule, as an SNI does: stealers post to their
    gate's name in plain HTTP (``more/exfil``'s Predator names its gate), while what a cluster uploads on
    purpose goes over TLS."""
    candidates = np.flatnonzero((flows["proto"] == IPPROTO_TCP) & (flows["bytes_out"] > 0)
                                & ~names_a_host(flows["tls_sni"]) & (flows["dst_port"] != _HTTPS))
    rows = zones.outside(flows, candidates)
    if not len(rows):
        return []
    rows = rows[np.argsort(flows["last_ts"][rows], kind="stable")]
    keys = subject_keys(flows, rows)
    touched: dict[Connection, int] = {}
    for i, row in enumerate(rows.tolist()):
        conn = Connection(keys[i], address_text(flows["dst_addr"][row]), int(flows["dst_port"][row]),
                          int(flows["src_port"][row]), int(flows["conn_start"][row]))
        t = uploads.get(conn) or Tally()
        uploads[conn] = Tally(t.sent + int(flows["bytes_out"][row]), t.received + int(flows["bytes_in"][row]),
                              max(t.last_ns, int(flows["last_ts"][row])), t.reported)
        touched[conn] = row
    scores = []
    for conn, row in touched.items():
        t = uploads[conn]
        transfer = t.last_ns - conn.start_ns <= TRANSFER_WINDOW_NS
        if t.sent < t.received or not (transfer or t.reported):  # a download, an exchange, or a stream
            del uploads[conn]
            continue
        size, ratio = t.sent / UPLOAD_MIN_BYTES, t.sent / max(t.received, 1) / UPLOAD_RATIO
        alarm = t.reported or (size >= 1.0 and ratio >= 1.0 and transfer)  # reported: still the same theft
        fresh = alarm and not t.reported
        t.reported |= alarm
        evidence = {"kind": "upload", "destination": f"{conn.destination}:{conn.port}", "bytes_sent": t.sent,
                    "bytes_received": t.received, "threshold_bytes": UPLOAD_MIN_BYTES, "min_ratio": UPLOAD_RATIO}
        scores.append(Score(conn, min(size, ratio), alarm, source_endpoint(flows, row), conn.start_ns, t.last_ns,
                            evidence, fresh=fresh, identity=("upload", conn.destination),
                            destination={"ip": conn.destination, "port": conn.port}, needs_baseline=False))
    # connections that ended unreported, and streams, are past deciding: forget them
    now = int(flows["last_ts"][rows].max())
    for conn in [c for c, t in uploads.items() if not t.reported and now - c.start_ns > TRANSFER_WINDOW_NS]:
        del uploads[conn]
    return scores


def protocol_scores(flows: FlowRecords, zones: Zones, servers: dict[str, dict[str, int]]) -> list[Score]:
    """A score per (subject, service, outside host) of the batch's established mail and FTP sessions; an
    alarm unless the subject serves that protocol itself."""
    # mail and FTP are server-first (a 220 greeting); a session the sensor read as another protocol
    # (a mining pool's JSON-RPC on port 25, as pools offer to pass firewalls) is not them
    established = ((flows["proto"] == IPPROTO_TCP) & answered(flows) & (flows["packets_in"] > 1)
                   & (flows["rpc_method"] == ""))
    scores: dict[tuple[str, str, str], Score] = {}
    for service, ports in SERVICES.items():
        rows = zones.outside(flows, np.flatnonzero(established & np.isin(flows["dst_port"], ports)))
        for key, row in zip(subject_keys(flows, rows), rows.tolist(), strict=True):
            host = address_text(flows["dst_addr"][row])
            port = int(flows["dst_port"][row])
            relay = key in servers.get(service, {})
            earlier = scores.get((key, service, host))
            first = int(flows["conn_start"][row]) if earlier is None else earlier.first_seen_ns
            evidence = {"kind": service, "destination": f"{host}:{port}", "sessions": 1, "role":
                        f"{service} server" if relay else "client",
                        "bytes_sent": int(flows["bytes_out"][row]), "bytes_received": int(flows["bytes_in"][row])}
            if earlier is not None:
                for name in ("sessions", "bytes_sent", "bytes_received"):
                    evidence[name] += earlier.evidence[name]
            if service == "ftp":
                evidence["data_connections"] = _ftp_data(flows, row)
            scores[(key, service, host)] = Score(
                (key, service, host), 0.5 if relay else 1.0, not relay, source_endpoint(flows, row), first,
                int(flows["last_ts"][row]), evidence, identity=(service, host),
                destination={"ip": host, "port": port}, needs_baseline=False)
    return list(scores.values())


def _ftp_data(flows: FlowRecords, control: int) -> dict[str, int]:
    """Bytes the client sent and received on other TCP connections with the FTP server, either way round
    (passive: the client connects; active: the server does), during or after the control session."""
    client, server = flows["src_addr"][control], flows["dst_addr"][control]
    tcp = (flows["proto"] == IPPROTO_TCP) & (flows["last_ts"] >= flows["conn_start"][control])
    passive = tcp & (flows["src_addr"] == client) & (flows["dst_addr"] == server) & (flows["dst_port"] != 21)
    active = tcp & (flows["src_addr"] == server) & (flows["dst_addr"] == client)
    return {"connections": int(passive.sum() + active.sum()),
            "bytes_sent": int(flows["bytes_out"][passive].sum() + flows["bytes_in"][active].sum()),
            "bytes_received": int(flows["bytes_in"][passive].sum() + flows["bytes_out"][active].sum())}
