"""Unusual destination judged by how it is reached, with no baseline: the cold half of
``unusual_destination`` (MITRE T1571, Non-Standard Port: a protocol and a port that do not go together).

A web port names how a connection to it opens (flow schema 5's ``opening``, the initiator's first
payload): on port 80 with an HTTP request line, on 443 and 8443 with a TLS record. A TCP connection to a
host outside the cluster that opens otherwise breaks the pairing: cleartext HTTP on 443 or 8443, TLS on
80, a protocol of its own, or a server that speaks first. Implants pick these ports because egress
filters let them out, then speak what they speak over them (PowerShell Empire's TLS on port 80, Cobalt
Strike's HTTP profiles on 8443, RATs' binary protocols on 80 or 443); browsers, SDKs and package
managers speak the port's protocol, and a proxy is reached on its own port.

Off port 80, cleartext HTTP pairs with a name: a service on another port is reached as
``Host: api.example.com:8081``, and a proxy request names its target. HTTP whose Host is an address
on any other port is a client with a hard-coded address list speaking HTTP where no web server
is expected: the IP:port lists of Trickbot and Emotet (8082, 7080, 8080), stagers fetching the next
stage from ``http://IP:PORT/``. Judged per connection
whose handshake the sensor saw (one joined mid-stream has no known opening), whatever the source's role,
and reported once per workload and destination.

Catches: C2 and RAT channels that borrow a web port for another protocol, in one connection.
Misses: C2 that speaks the port's own protocol (HTTP beacons on 80, TLS on 443: beaconing's, tls_bare_ip's
and the fingerprints' part), its own protocol on other ports (8080 is too often anything to judge), HTTP
to a named host on any port, UDP (QUIC), destinations inside the cluster's networks, connections older
than the sensor.
False positives: a VPN or SSH server run on 443 to pass firewalls (sslh, OpenVPN over TCP), a service
that serves plain HTTP on 8443, a partner API called by address on a port of its own; allowlist the
workload with the destination and port.

Example:
    >>> rows = mismatched(flows)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kubesonar.shared.detectors.base import Pair, Score
from kubesonar.shared.flow import IPPROTO_TCP, Opening, address_text, names_a_host
from kubesonar.shared.identity import source_endpoint, subject_keys

if TYPE_CHECKING:
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.netzones import Zones

# port -> how its service opens: the IANA web ports whose clients are browsers, SDKs and package managers
EXPECTED_OPENING: dict[int, Opening] = {80: Opening.HTTP, 443: Opening.TLS, 8443: Opening.TLS}
_PORTS = np.array(sorted(EXPECTED_OPENING), dtype=np.uint16)
_EXPECTED = np.zeros(65536, dtype=np.uint8)
_EXPECTED[_PORTS] = [EXPECTED_OPENING[int(p)] for p in _PORTS]
HTTP_PORT = 80
UNNAMED_HTTP = "http to a named host"  # the evidence's "expected" for cleartext HTTP by address off port 80


def mismatched(flows: FlowRecords) -> np.ndarray:
    """Rows of TCP connections to a web port that opened otherwise than its service does, and of cleartext
    HTTP whose Host is an address on any port but 80."""
    opening, port = flows["opening"], flows["dst_port"]
    expected = _EXPECTED[port]
    tcp = flows["proto"] == IPPROTO_TCP
    wrong = tcp & (expected != 0) & (opening != Opening.UNKNOWN) & (opening != expected)
    # an address the client wrote as its Host; an empty Host is no evidence: the sensor did not see one
    # whole (a request cut by the snap length or split over segments, HTTP/1.0, RTSP, IRC's NICK)
    http_off_80 = np.flatnonzero(tcp & (expected == 0) & (opening == Opening.HTTP) & (port != HTTP_PORT)
                                 & (flows["http_host"] != ""))
    unnamed = http_off_80[~names_a_host(flows["http_host"][http_off_80])]
    return np.union1d(np.flatnonzero(wrong), unnamed)


def _expected(port: int) -> str:
    opening = EXPECTED_OPENING.get(port)
    return opening.name.lower() if opening is not None else UNNAMED_HTTP


def mismatch_scores(flows: FlowRecords, zones: Zones, reported: dict[Pair, None]) -> list[Score]:
    """A score per (subject, outside host and port) of the batch's mismatched connections, each an alarm;
    fresh unless ``reported`` already holds it."""
    rows = zones.outside(flows, mismatched(flows))
    scores: dict[Pair, Score] = {}
    for row, key in zip(rows.tolist(), subject_keys(flows, rows), strict=True):
        host, port = address_text(flows["dst_addr"][row]), int(flows["dst_port"][row])
        pair = Pair(key, f"{host}:{port}")
        spoken = Opening(int(flows["opening"][row])).name.lower()
        earlier = scores.get(pair)
        if earlier is not None:
            earlier.evidence["connections"] += 1
            earlier.evidence["bytes_sent"] += int(flows["bytes_out"][row])
            earlier.evidence["bytes_received"] += int(flows["bytes_in"][row])
            if spoken not in earlier.evidence["opened_with"]:
                earlier.evidence["opened_with"].append(spoken)
            earlier.first_seen_ns = min(earlier.first_seen_ns, int(flows["conn_start"][row]))
            earlier.last_seen_ns = max(earlier.last_seen_ns, int(flows["last_ts"][row]))
            continue
        evidence = {"kind": "protocol_mismatch", "destination": pair.target, "port": port,
                    "expected": _expected(port), "opened_with": [spoken], "connections": 1,
                    "bytes_sent": int(flows["bytes_out"][row]), "bytes_received": int(flows["bytes_in"][row])}
        scores[pair] = Score(pair, 1.0, True, source_endpoint(flows, row), int(flows["conn_start"][row]),
                             int(flows["last_ts"][row]), evidence, fresh=pair not in reported,
                             identity=("protocol", pair.target), destination={"ip": host, "port": port},
                             needs_baseline=False)
    return list(scores.values())
