"""Ingress tool transfer (MITRE T1105): a workload received an executable file in cleartext from a host
outside the cluster.

A compromised container fetches its tools: Kinsing's, TeamTNT's and Hildegard's scripts run
``curl http://IP/kinsing`` or ``wget`` over plain HTTP and get an ELF; Metasploit's and Cobalt Strike's
stagers pull their stage over a raw TCP stream (a 4-byte length, then the DLL's ``MZ``). The sensor flags
each side of a flow that sent an ELF or PE header, checked field by field, at the start of a TCP segment
or of an HTTP response's body (flow schema 7's ``executable``, sensor/executables.py); this rule reports
the workload that received one from an outside host, whichever side opened the connection (downloaded,
or pushed into it by a client outside). Legitimate software comes over TLS, and package managers fetch
archives (.deb, .apk, .rpm, gzip), not bare executables. No baseline: judged from the first window.

Catches: an ELF (i386, ARM, x86-64, AArch64, RISC-V; executable or shared object) or a PE sent in
cleartext by a host outside to a workload, over HTTP (any port) or a raw stream.
Misses: anything over TLS (HTTPS downloads, a TLS stager); executables inside archives, compressed
(``Content-Encoding: gzip``), chunked (the body starts with a chunk size) or encoded (base64, XOR'd
stages); a header that starts mid-segment other than right after HTTP response headers; transfers
from hosts inside the cluster's networks (lateral tool transfer); scripts (shell, Python); a receiver
that neither opened nor accepted the connection in the record and only reset it, or whose packets the
sensor did not see (a segment forged from outside, answered by a reset or nothing, is no transfer); an
executable in a SYN's own data (a TCP Fast Open client pushing one: sensor/executables.py never reads a
SYN's data, whose sender may be spoofed).
False positives: software that downloads plain executables over HTTP from outside (an old installer,
an init container fetching a static binary from a vendor's HTTP mirror, a CI runner pulling build
tools); an artifact repository in the cluster (Nexus, Artifactory) receiving binaries uploaded over
plain HTTP from outside. Allowlist the workload with the port. A blind, spoofed sender does not frame a
listening pod: its SYN is answered by the pod's SYN-ACK (the pod "accepted"), but the sensor keeps an
executable only from a segment whose acknowledgement number acknowledges the other side's SYN and no
more than it sent (sensor/flow_kernel.py _acknowledges), which a sender that never saw the SYN-ACK
guesses right once in 2^32. Where the sensor did not see that SYN (mid-connection) any number counts.

Score: 1.0 per (receiving workload, outside host), reported once.

Example:
    >>> d = ToolTransferDetector()
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score
from kubesonar.shared.flow import Executable, Opening, TcpFlag, address_text, executable_sent
from kubesonar.shared.identity import source_endpoint, subject_keys
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch
    from kubesonar.shared.flow import FlowRecords

# (who received, who sent, the sender's flow direction, the receiver's, the evidence's word for it)
_DIRECTIONS = (("src", "dst", "in", "out", "downloaded"), ("dst", "src", "out", "in", "pushed"))
_SYN, _ACK, _RST = int(TcpFlag.SYN), int(TcpFlag.ACK), int(TcpFlag.RST)


@dataclass
class ToolTransferState:
    reported: dict[Pair, None] = field(default_factory=dict)  # (receiver, sending address), oldest first


def _took_part(receiver_flags: np.ndarray) -> np.ndarray:
    """Whether the receiver was an end of a connection: it opened or accepted one (SYN), or acknowledged
    without resetting. A segment sent from an outside address to a pod that never connected to it is
    answered by a reset alone, or by nothing (an address nobody holds): no file moved, and anyone could
    otherwise raise this rule on any pod with one forged packet."""
    return ((receiver_flags & _SYN) != 0) | (((receiver_flags & _ACK) != 0) & ((receiver_flags & _RST) == 0))


class ToolTransferDetector(Detector[ToolTransferState, list[Score]]):
    rule_id = "tool_transfer"

    def __init__(self, zones: Zones | None = None, max_subjects: int = 20_000):
        super().__init__()
        self.zones, self.max_subjects = zones or Zones(), max_subjects

    def new_state(self) -> ToolTransferState:
        return ToolTransferState()

    def _encode(self, state: ToolTransferState) -> dict[str, Any]:
        return {"reported": [list(p) for p in state.reported]}

    def _decode(self, document: dict[str, Any]) -> ToolTransferState:
        return ToolTransferState(dict.fromkeys(Pair(*p) for p in document["reported"]))

    def _assess(self, batch: Batch) -> list[Score]:
        flows = batch.flows
        if not len(flows) or not flows["executable"].any():
            return []
        scores: dict[Pair, Score] = {}
        for receiver, sender, sent_by, received_by, direction in _DIRECTIONS:
            rows = self.zones.outside(flows, np.flatnonzero(executable_sent(flows, sent_by)), sender)
            rows = rows[_took_part(flows[f"flags_{received_by}"][rows])]
            rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
            for row, key in zip(rows.tolist(), subject_keys(flows, rows, receiver), strict=True):
                address = address_text(flows[f"{sender}_addr"][row])
                pair = Pair(key, address)
                if pair not in scores or flows["first_ts"][row] < scores[pair].first_seen_ns:
                    scores[pair] = self._score(flows, row, pair, receiver, sent_by, direction)
        return sorted(scores.values(), key=lambda s: (s.first_seen_ns, s.subject))

    def _score(self, flows: FlowRecords, row: int, pair: Pair, receiver: str, sent_by: str, direction: str) -> Score:
        kind = int(executable_sent(flows, sent_by)[row])
        port = int(flows["dst_port"][row])
        evidence = {
            "kind": " and ".join(k.name for k in (Executable.ELF, Executable.PE) if kind & k),
            "via": "http" if flows["opening"][row] == Opening.HTTP else "raw stream",
            "direction": direction, "sender": pair.target, "port": port,
            "bytes": int(flows[f"bytes_{sent_by}"][row]),
        }
        if flows["http_host"][row]:
            evidence["http_host"] = str(flows["http_host"][row])
        return Score(pair, 1.0, True, source_endpoint(flows, row, receiver), int(flows["first_ts"][row]),
                     int(flows["last_ts"][row]), evidence, fresh=pair not in self.state.reported,
                     identity=(pair.target,), destination={"ip": pair.target, "port": port})

    def _scores(self, assessment: list[Score]) -> list[Score]:
        return assessment

    def _commit(self, assessment: list[Score], flagged: set[Hashable]) -> None:
        """Pairs are reported once; there is no baseline to protect."""
        if not assessment:
            return
        self.touched = True
        self.state.reported.update(dict.fromkeys(s.subject for s in assessment))
        if len(self.state.reported) > self.max_subjects:
            self.state.reported = dict.fromkeys(list(self.state.reported)[-self.max_subjects:])
