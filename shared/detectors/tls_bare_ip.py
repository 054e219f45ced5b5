"""TLS to a bare address: a server workload opening TLS to a host outside without naming it (no SNI,
or an IP literal where RFC 6066 wants a host name).

Software that reaches a service reaches it by name, and every mainstream TLS client sends that name
(SNI) so the server can pick its certificate. An implant configured with its command server's address
often does not: Empire's agent sends the bare IP, Metasploit and many RATs send no SNI. From a workload
that answers other hosts' connections (a server, shared/roles.py) it is the shape of an implant in a
compromised service. No baseline: the role is observed, and the rule judges from the first window.

Catches: TLS C2 to a hard-coded address from a server workload (flow schema 4's ``tls_sni``, with a
ClientHello seen: ``tls_ja3`` or ``tls_ja4``). Misses: implants that send a host name (domain fronting,
a registered C2 domain: beaconing, the TLS watchlist and new_tls_client judge those); client-only
workloads; TLS the sensor did not see begin (a capture started mid-session).
False positives: server workloads calling a partner's API by IP over TLS, or probing their own
external address: allowlist the workload and port.

Score: 1.0 per (workload, address and port), reported once.

Example:
    >>> d = TlsBareIpDetector()
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import IDLE_FORGET_NS, Detector, Pair, Score
from kubesonar.shared.flow import address_text, names_a_host
from kubesonar.shared.identity import source_endpoint, subject_keys
from kubesonar.shared.netzones import Zones
from kubesonar.shared.roles import merge_servers, servers_in

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch
    from kubesonar.shared.flow import FlowRecords


@dataclass
class TlsBareIpState:
    servers: dict[str, int] = field(default_factory=dict)  # subject -> last time it answered a connection
    reported: dict[Pair, None] = field(default_factory=dict)  # (subject, address:port), oldest first


@dataclass
class _Assessment:
    servers: dict[str, int] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)


class TlsBareIpDetector(Detector[TlsBareIpState, _Assessment]):
    rule_id = "tls_bare_ip"

    def __init__(self, zones: Zones | None = None, max_subjects: int = 20_000):
        super().__init__()
        self.zones, self.max_subjects = zones or Zones(), max_subjects

    def new_state(self) -> TlsBareIpState:
        return TlsBareIpState()

    def _encode(self, state: TlsBareIpState) -> dict[str, Any]:
        return {"servers": state.servers, "reported": [list(p) for p in state.reported]}

    def _decode(self, document: dict[str, Any]) -> TlsBareIpState:
        return TlsBareIpState({k: int(v) for k, v in document["servers"].items()},
                              dict.fromkeys(Pair(*p) for p in document["reported"]))

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        out = _Assessment()
        if not len(flows):
            return out
        out.servers = servers_in(flows)
        roles = merge_servers(self.state.servers, out.servers, self.max_subjects)
        rows = self.zones.outside(flows, np.flatnonzero(_unnamed_tls(flows)))
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        seen: set[Pair] = set()
        for row, key in zip(rows.tolist(), subject_keys(flows, rows), strict=True):
            if key not in roles:
                continue
            address, port = address_text(flows["dst_addr"][row]), int(flows["dst_port"][row])
            pair = Pair(key, f"{address}:{port}")
            if pair in seen:
                continue
            seen.add(pair)
            evidence = {"destination": pair.target, "sni": str(flows["tls_sni"][row]),
                        "ja3": str(flows["tls_ja3"][row]), "ja4": str(flows["tls_ja4"][row]), "role": "server"}
            out.scores.append(Score(pair, 1.0, True, source_endpoint(flows, row), int(flows["first_ts"][row]),
                                    int(flows["last_ts"][row]), evidence, fresh=pair not in self.state.reported,
                                    identity=(pair.target,), destination={"ip": address, "port": port}))
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Roles are observations; pairs are reported once (there is no baseline to protect)."""
        if not assessment.servers and not assessment.scores:
            return
        self.touched = True
        since = max(assessment.servers.values(), default=0) - IDLE_FORGET_NS  # as reverse_shell's roles
        self.state.servers = merge_servers(self.state.servers, assessment.servers, self.max_subjects, since)
        self.state.reported.update(dict.fromkeys(s.subject for s in assessment.scores))
        if len(self.state.reported) > self.max_subjects:
            self.state.reported = dict.fromkeys(list(self.state.reported)[-self.max_subjects:])


def _unnamed_tls(flows: FlowRecords) -> np.ndarray:
    """Rows with a ClientHello seen that names no host: no SNI, or an address written as one. Only the
    SNI counts, never an HTTP Host: the rule is about what a TLS client puts in its hello, and a
    connection that opened with plain HTTP has no hello (a CONNECT's tunnelled hello is judged on its own
    SNI)."""
    hello = (flows["tls_ja3"] != "") | (flows["tls_ja4"] != "")
    return hello & ~names_a_host(flows["tls_sni"])
