"""Reverse shell: a workload holding a human-driven interactive session with a host outside.

A reverse shell is a connection the victim opens out to the attacker's listener; the attacker then
types into it. What the flow shows (flow schema 4's gap statistics of each side's small packets):
- *human-timed*: the responder's small packets (the attacker's keystrokes or command lines) come at
  human pace, their mean gap between 0.1 s (below human reaction time: machine traffic) and 60 s
  (past it nobody is at the keyboard), and irregular: a coefficient of variation over the spread
  under which beaconing judges that many gaps a clock (its Poisson floor for n gaps, at most 0.35) and
  over a timer's with +-40% jitter (0.23): a jittered implant timer is not a person either;
- *two-way*: at least 8 such gaps from the responder and 4 from the initiator (the shell's answers);
- to a host outside the cluster, on a port that is not a service the workload uses (one on which a host
  outside answered it before this batch: a shell's retries before its listener was up reached nothing),
  and not a session that named a host (a TLS SNI, or the Host of a plain-HTTP request it opened with: a
  websocket or a long poll): services are reached by name, shells by address and port.
A controller is one host: a protocol the workload speaks on one port with MESH_PEERS or more hosts
outside in the batch is a mesh (a P2P network's gossip, whose messages arrive as irregularly as a
person's; a cluster of brokers or databases), not a shell, and is not reported.
The source's role sets how sure it is: a workload that answers other hosts' connections
(shared/roles.py) opening such a session is what a compromised service does, reported at the rule's
severity (critical). A workload that serves nothing (a Job, a worker, a supply-chain implant in a
build) is reported at CLIENT_SEVERITY on a port past the system range (1024 and up): the well-known
ports below are the services people drive by hand (SSH, telnet, FTP), and its session there is scored
0.5 and kept as evidence, not reported. A session reported from a client is reported again once its
workload is seen serving (one alert, escalated to critical). The role is observed, not learned, so this
rule judges from the first window whatever the learning period.

Catches: nc, socat, bash /dev/tcp and Metasploit reverse_tcp shells, on any port the workload does not
use, pty or not; RAT sessions an operator drives by address (njRAT's to its port 39556). Misses:
shells from workloads that serve nothing on a system port (22, 53, 443: protocol_mismatch judges 80 and
443); shells over TLS with an SNI, or through a port the workload already uses or speaks with several
hosts; scripted shells driven by a machine at machine pace; everything before the sensor fills schema
4's gap columns.
False positives: an interactive remote session a workload was built for, or one run by hand from a debug
pod (a database console to an address outside, on its port); a consumer of one broker outside reached
by address in cleartext, whose deliveries arrive as irregularly as commands and are each acknowledged
(brokers reached by name over TLS send an SNI, and clusters of brokers are meshes): allowlist the
workload and port.

Score: 1.0 for a server's session, 0.5 for a client's; the evidence holds the role and both sides' gap
figures.

Example:
    >>> d = ReverseShellDetector()
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import IDLE_FORGET_NS, Detector, Pair, Score
from kubesonar.shared.detectors.beaconing import cv_floors
from kubesonar.shared.flow import IPPROTO_TCP, address_text, answered, client_named, names_a_host
from kubesonar.shared.identity import source_endpoint, subject_keys
from kubesonar.shared.netzones import Zones
from kubesonar.shared.roles import merge_servers, servers_in

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch
    from kubesonar.shared.flow import FlowRecords

HUMAN_GAP_S = (0.1, 60.0)  # human reaction time up to nobody at the keyboard
# irregular: past the spread under which beaconing judges that many gaps a clock (beaconing.cv_floors,
# at most 0.35) and past a timer's with +-40% uniform jitter (0.4 / sqrt 3 = 0.23): under 20 gaps the
# Poisson floor alone would call a jittered implant timer a person. Ten think times drawn from a person
# vary by about 0.4 to 1; typing key by key adds a near-constant few seconds to each, which brings a
# real pty session's CV down to about 0.3 (lab scenario)
JITTERED_TIMER_CV = 0.4 / math.sqrt(3)
MIN_GAPS_IN, MIN_GAPS_OUT = 8, 4
MESH_PEERS = 3  # hosts outside one workload speaks a port with at once: a mesh, as beaconing's 3 workloads a service
SYSTEM_PORTS_END = 1024  # IANA's system ports: the services people drive by hand
CLIENT_SEVERITY = "high"  # a session from a workload that serves nothing: a debug pod's console is one too
_PORTS_KEPT = 64  # per subject: the ports it reached outside


@dataclass
class PortsUsed:
    ports: list[int] = field(default_factory=list)
    last_ns: int = 0


@dataclass
class ReverseShellState:
    servers: dict[str, int] = field(default_factory=dict)  # subject -> last time it answered a connection
    ports: dict[str, PortsUsed] = field(default_factory=dict)  # subject -> ports it reached outside
    # (subject, address:port) -> the role it was reported from, oldest first: one reported from a client
    # is reported again, surer, once its workload is seen serving (its alert escalates to critical)
    reported: dict[Pair, str] = field(default_factory=dict)


@dataclass
class _Assessment:
    servers: dict[str, int] = field(default_factory=dict)
    ports: dict[str, set[int]] = field(default_factory=dict)
    last_ns: dict[str, int] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)


class ReverseShellDetector(Detector[ReverseShellState, _Assessment]):
    rule_id = "reverse_shell"

    def __init__(self, zones: Zones | None = None, max_subjects: int = 20_000):
        super().__init__()
        self.zones, self.max_subjects = zones or Zones(), max_subjects

    def new_state(self) -> ReverseShellState:
        return ReverseShellState()

    def _encode(self, state: ReverseShellState) -> dict[str, Any]:
        # every reported pair in "reported", as the version before wrote it (it reads this document too)
        return {"servers": state.servers, "ports": {k: vars(p) for k, p in state.ports.items()},
                "reported": [list(p) for p in state.reported],
                "reported_from_client": [list(p) for p, role in state.reported.items() if role == "client"]}

    def _decode(self, document: dict[str, Any]) -> ReverseShellState:
        # a document of the version before reported servers only, and has no "reported_from_client"
        from_client = {Pair(*p) for p in document.get("reported_from_client", ())}
        return ReverseShellState({k: int(v) for k, v in document["servers"].items()},
                                 {k: PortsUsed(list(p["ports"]), int(p["last_ns"]))
                                  for k, p in document["ports"].items()},
                                 {(pair := Pair(*p)): "client" if pair in from_client else "server"
                                  for p in document["reported"]})

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        out = _Assessment()
        if not len(flows):
            return out
        out.servers = servers_in(flows)
        reached = self._answered_outside(flows)  # hosts outside spoken with: ports used, meshes
        self._ports_used(flows, reached, out)
        roles = merge_servers(self.state.servers, out.servers, self.max_subjects)
        rows = self.zones.outside(flows, np.flatnonzero(_interactive(flows)))
        meshes = _meshes(flows, reached) if len(rows) else set()
        reported: set[Pair] = set()
        for row, key in zip(rows.tolist(), subject_keys(flows, rows), strict=True):
            port = int(flows["dst_port"][row])
            known = self.state.ports.get(key)
            if (known is not None and port in known.ports) or (key, port) in meshes:
                continue
            pair = Pair(key, f"{address_text(flows['dst_addr'][row])}:{port}")
            if pair in reported:
                continue
            server = key in roles
            alarm = server or port >= SYSTEM_PORTS_END
            was = self.state.reported.get(pair)  # the role it was reported from, if it was
            fresh = alarm and (was is None or (server and was == "client"))
            reported.add(pair)
            evidence = {"destination": pair.target, "role": "server" if server else "client",
                        **_gap_evidence(flows, row)}
            out.scores.append(Score(pair, 1.0 if server else 0.5, alarm, source_endpoint(flows, row),
                                    int(flows["conn_start"][row]), int(flows["last_ts"][row]), evidence, fresh=fresh,
                                    identity=(pair.target,), destination={"ip": pair.target.rsplit(":", 1)[0],
                                                                          "port": port},
                                    severity=None if server else CLIENT_SEVERITY))
        return out

    def _ports_used(self, flows: FlowRecords, rows: np.ndarray, out: _Assessment) -> None:
        """The ports each subject reached outside in this batch (joined after scoring: a session's own
        port is not one its workload used before it). One row per (address, port) is enough."""
        if not len(rows):
            return
        pairs = np.empty(len(rows), dtype=[("addr", "V16"), ("port", "u2")])
        pairs["addr"], pairs["port"] = flows["src_addr"][rows], flows["dst_port"][rows]
        _, first = np.unique(pairs, return_index=True)
        rows = rows[first]
        for key, port, ts in zip(subject_keys(flows, rows), flows["dst_port"][rows].tolist(),
                                 flows["last_ts"][rows].tolist(), strict=True):
            out.ports.setdefault(key, set()).add(port)
            out.last_ns[key] = max(ts, out.last_ns.get(key, ts))

    def _answered_outside(self, flows: FlowRecords) -> np.ndarray:
        """Rows of TCP connections to hosts outside that answered: a port reached, a host spoken with. Tries
        nobody answered are neither: a shell retries until its listener is up, and an implant's decoys
        cost it nothing."""
        return self.zones.outside(flows, np.flatnonzero((flows["proto"] == IPPROTO_TCP) & answered(flows)))

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Roles and ports used are observations; a flagged session's port never becomes one its
        workload uses, so the shell stays reported when it comes back."""
        if not assessment.servers and not assessment.ports and not assessment.scores:
            return
        self.touched = True
        # roles and ports of subjects quiet for IDLE_FORGET_NS of data time are forgotten (rotating
        # remote addresses, pods' addresses): the state holds the present, not the cluster's history
        since = max([*assessment.servers.values(), *assessment.last_ns.values(), 0]) - IDLE_FORGET_NS
        self.state.servers = merge_servers(self.state.servers, assessment.servers, self.max_subjects, since)
        kept_out: dict[str, set[int]] = {}
        for pair in flagged:
            if isinstance(pair, Pair):
                kept_out.setdefault(pair.source, set()).add(int(pair.target.rsplit(":", 1)[1]))
        for key, ports in assessment.ports.items():
            used = self.state.ports.get(key) or PortsUsed()
            new = [p for p in sorted(ports - kept_out.get(key, set())) if p not in used.ports]
            self.state.ports[key] = PortsUsed((used.ports + new)[-_PORTS_KEPT:],
                                              max(used.last_ns, assessment.last_ns[key]))
        self.state.ports = {k: p for k, p in self.state.ports.items() if p.last_ns >= since}
        if len(self.state.ports) > self.max_subjects:
            keep = sorted(self.state.ports, key=lambda k: self.state.ports[k].last_ns)[-self.max_subjects:]
            self.state.ports = {k: self.state.ports[k] for k in keep}
        for s in assessment.scores:
            if s.flagged and self.state.reported.get(s.subject) != "server":  # never back down to client
                self.state.reported[s.subject] = s.evidence["role"]
        if len(self.state.reported) > self.max_subjects:
            self.state.reported = dict(list(self.state.reported.items())[-self.max_subjects:])


def _meshes(flows: FlowRecords, reached: np.ndarray) -> set[tuple[str, int]]:
    """(subject, port) pairs whose subject spoke the port with MESH_PEERS or more of the hosts outside
    ``reached`` (rows of TCP connections that answered)."""
    peers: dict[tuple[str, int], set[bytes]] = {}
    for key, port, addr in zip(subject_keys(flows, reached), flows["dst_port"][reached].tolist(),
                               flows["dst_addr"][reached].tolist(), strict=True):
        peers.setdefault((key, port), set()).add(addr)
    return {pair for pair, hosts in peers.items() if len(hosts) >= MESH_PEERS}


def _interactive(flows: FlowRecords) -> np.ndarray:
    """Rows of TCP sessions whose responder types at human pace and whose initiator answers, not
    opened naming a host. A plain-HTTP request's Host counts as an SNI does: a session that opens with
    an HTTP request to a name is a web client's (a websocket, a long poll, server-sent events), and a
    shell that bothers to dress as one could as well send an SNI; a shell opens with no request."""
    mean_in_s = flows["gap_mean_us_in"] / 1e6
    return ((flows["proto"] == IPPROTO_TCP) & (flows["gaps_in"] >= MIN_GAPS_IN) & (flows["gaps_out"] >= MIN_GAPS_OUT)
            & (mean_in_s >= HUMAN_GAP_S[0]) & (mean_in_s <= HUMAN_GAP_S[1])
            & (flows["gap_cv_milli_in"] > np.maximum(cv_floors(flows["gaps_in"]), JITTERED_TIMER_CV) * 1000)
            & ~names_a_host(client_named(flows)))


def _gap_evidence(flows: FlowRecords, row: int) -> dict[str, Any]:
    return {side: {"gaps": int(flows[f"gaps_{side}"][row]),
                   "mean_gap_s": round(int(flows[f"gap_mean_us_{side}"][row]) / 1e6, 3),
                   "gap_cv": round(int(flows[f"gap_cv_milli_{side}"][row]) / 1000, 3)}
            for side in ("out", "in")} | {"port": int(flows["dst_port"][row]),
                                          "bytes_out": int(flows["bytes_out"][row]),
                                          "bytes_in": int(flows["bytes_in"][row])}
