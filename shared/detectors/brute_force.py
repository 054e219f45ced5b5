"""Brute force: many short sessions from one source to one authentication service.

A password-guessing tool opens session after session to one service, each a handshake, a key
exchange or greeting, a few failed tries and a close: a few dozen packets and kilobytes, seconds long
(hydra and ncrack against SSH: 35-41 packets, 5-6 KB, 9-12 s). Each such *short session* to an
authentication port adds one to the (source, service) pair's count, which decays with a one-hour
half-life across batches, so attempts spread over hours (low and slow) still add up while a person
mistyping a password a few times never gets near. The pair is a brute force at 20: a tool makes
dozens to thousands of attempts; a person a handful; a job on a 5-minute schedule levels off at
12 / ln 2 = 17 per hour of half-life.

Database ports and the Kubernetes API carry legitimate short sessions (clients without a connection
pool), so there a pair is only judged if it was not seen while learning.

Catches: SSH, RDP, FTP, telnet, VNC, SMB, LDAP, MySQL, PostgreSQL, SQL Server, MongoDB, Redis and
Kubernetes API guessing from one source, fast or slow. Misses: guessing spread over many sources
(each counts alone); attempts inside one long session (a protocol that allows unlimited tries).
False positives: automation opening one SSH session per command; pool-less database clients that
appeared after learning.

Score: the pair's decayed count of short sessions (20 decides).

Example:
    >>> d = BruteForceDetector(learning_period_ns=0)
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score, bounded, clock_from_v0
from kubesonar.shared.flow import FlowRecords, address_text, answered
from kubesonar.shared.identity import source_endpoint, workload_keys

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
# ports whose sessions are mostly authentication when short
INTERACTIVE_PORTS = (21, 22, 23, 445, 389, 636, 3389, 5900)
# ports where short sessions are also normal traffic: judged only for pairs not seen while learning
SERVICE_PORTS = (1433, 3306, 5432, 6379, 27017, 6443)
API_SERVER = ("default", "Service", "kubernetes")


@dataclass
class SessionCount:
    """A (source, service) pair's short sessions, decayed with the half-life."""

    decayed: float
    last_ns: int
    sessions: int = 0
    alarm: bool = False


@dataclass
class BruteForceState:
    counts: dict[Pair, SessionCount] = field(default_factory=dict)  # (source, "address:port")
    learned: set[Pair] = field(default_factory=set)  # service-port pairs seen while learning


@dataclass
class _Assessment:
    first_ts: int | None = None  # the batch's earliest flow (None: no flows)
    sessions: int = 0
    scores: list[Score] = field(default_factory=list)
    counts: dict[Pair, SessionCount] = field(default_factory=dict)  # the counts as this batch leaves them
    learned: list[Pair] = field(default_factory=list)


class BruteForceDetector(Detector[BruteForceState, _Assessment]):
    rule_id = "brute_force"

    def __init__(self, learning_period_ns: int, force_learning: bool = False, threshold: float = 20.0,
                 half_life_s: float = 3600.0, max_packets: int = 80, max_bytes: int = 24_000,
                 max_duration_s: float = 60.0, max_pairs: int = 20_000):
        super().__init__(learning_period_ns, force_learning)
        self.threshold, self.half_life_ns = threshold, half_life_s * SECOND
        self.max_packets, self.max_bytes, self.max_duration_ns = max_packets, max_bytes, max_duration_s * SECOND
        self.max_pairs = max_pairs

    def new_state(self) -> BruteForceState:
        return BruteForceState()

    def _encode(self, state: BruteForceState) -> dict[str, Any]:
        return {"counts": [[*pair, vars(c)] for pair, c in state.counts.items()],
                "learned": sorted(list(p) for p in state.learned)}

    def _decode(self, document: dict[str, Any]) -> BruteForceState:
        return BruteForceState({Pair(src, dst): SessionCount(**c) for src, dst, c in document["counts"]},
                               {Pair(*p) for p in document["learned"]})

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        counts = [[*Pair.from_v0(k), {"decayed": p["score"], "last_ns": p["t"], "sessions": p["sessions"],
                                      "alarm": p["alarm"]}] for k, p in document["pairs"].items()]
        return {"clock": clock_from_v0(document), "counts": counts,
                "learned": [list(Pair.from_v0(p)) for p in document["learned"]]}

    def _assess(self, batch: Batch) -> _Assessment:
        """Count each source's short sessions per authentication service; score the pairs seen."""
        flows = batch.flows
        if not len(flows):
            return _Assessment()
        first_ts = int(flows["first_ts"].min())
        out = _Assessment(first_ts)
        rows, service_port = self._sessions(flows)
        out.sessions = len(rows)
        if not len(rows):
            return out
        src = [address_text(a) for a in flows["src_addr"][rows]]
        dst = [address_text(a) for a in flows["dst_addr"][rows]]
        ports = flows["dst_port"][rows].tolist()
        ts = flows["first_ts"][rows].tolist()
        workloads = workload_keys(flows["src_namespace"][rows].tolist(), flows["src_workload_kind"][rows].tolist(),
                                  flows["src_workload_name"][rows].tolist())
        groups: dict[Pair, list[int]] = {}
        for i in range(len(rows)):
            groups.setdefault(Pair(workloads[i] or src[i], f"{dst[i]}:{ports[i]}"), []).append(i)
        learning = self._learning(first_ts)
        learned = self.state.learned
        for pair, members in groups.items():
            first, last = members[0], members[-1]
            if service_port[first]:
                if learning:
                    out.learned.append(pair)
                    continue
                if pair in learned:
                    continue
            known = self.state.counts.get(pair)
            before = known or SessionCount(0.0, ts[first])
            decay = math.pow(2.0, -max(0, ts[last] - before.last_ns) / self.half_life_ns)
            count = SessionCount(before.decayed * decay + len(members), max(before.last_ns, ts[last]),
                                 before.sessions + len(members))
            count.alarm = count.decayed >= self.threshold
            out.counts[pair] = count
            endpoint = source_endpoint(flows, rows[first])
            evidence = {"target": dst[first], "port": ports[first], "short_sessions": count.sessions,
                        "decayed_count": round(count.decayed, 2), "in_this_batch": len(members)}
            out.scores.append(Score(pair, count.decayed, count.alarm, endpoint, ts[first], ts[last], evidence,
                                    fresh=count.alarm and not before.alarm, identity=(dst[first], str(ports[first]))))
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Counts are evidence and always kept; only service-port pairs seen while learning (when nothing
        is flagged) join the baseline."""
        if assessment.first_ts is None:
            return
        self._start_clock(assessment.first_ts)
        if not assessment.sessions:
            return
        self.touched = True
        self.state.learned.update(p for p in assessment.learned if p not in flagged)
        counts = self.state.counts
        counts.update(assessment.counts)
        self.state.counts = bounded(counts, self.max_pairs)

    def _sessions(self, flows: FlowRecords) -> tuple[np.ndarray, np.ndarray]:
        """Rows of short, completed TCP sessions to authentication services, and which are service ports."""
        port = flows["dst_port"]
        api = (flows["dst_namespace"] == API_SERVER[0]) & (flows["dst_workload_kind"] == API_SERVER[1]) & (
            flows["dst_workload_name"] == API_SERVER[2])
        interactive = np.isin(port, INTERACTIVE_PORTS)
        service = np.isin(port, SERVICE_PORTS) | api
        short = ((flows["packets_out"] + flows["packets_in"]) <= self.max_packets) & (
            (flows["bytes_out"] + flows["bytes_in"]) <= self.max_bytes) & (
            (flows["last_ts"] - flows["first_ts"]) <= self.max_duration_ns)
        keep = (flows["proto"] == 6) & (interactive | service) & answered(flows) & (
            flows["packets_in"] > 0) & short & (flows["conn_start"] == flows["first_ts"])  # whole sessions only
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        return rows, service[rows] & ~interactive[rows]
