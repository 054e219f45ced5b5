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
    >>> d.decide(d.update(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from kubesonar.shared.alerts import Finding
from kubesonar.shared.detectors import Score, decide_alarms
from kubesonar.shared.flow import ConnState, FlowRecords, address_text
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.pod_events import PodEvents

SECOND = 1_000_000_000
# ports whose sessions are mostly authentication when short
INTERACTIVE_PORTS = (21, 22, 23, 445, 389, 636, 3389, 5900)
# ports where short sessions are also normal traffic: judged only for pairs not seen while learning
SERVICE_PORTS = (1433, 3306, 5432, 6379, 27017, 6443)
API_SERVER = ("default", "Service", "kubernetes")
_DONE = (int(ConnState.ESTABLISHED), int(ConnState.CLOSED), int(ConnState.RESET), int(ConnState.OTHER))


class BruteForceDetector:
    rule_id = "brute_force"

    def __init__(self, learning_period_ns: int, force_learning: bool = False, threshold: float = 20.0,
                 half_life_s: float = 3600.0, max_packets: int = 80, max_bytes: int = 24_000,
                 max_duration_s: float = 60.0, max_pairs: int = 20_000):
        self.learning_period_ns, self.force_learning = learning_period_ns, force_learning
        self.threshold, self.half_life_ns = threshold, half_life_s * SECOND
        self.max_packets, self.max_bytes, self.max_duration_ns = max_packets, max_bytes, max_duration_s * SECOND
        self.max_pairs = max_pairs
        self._state: dict[str, Any] = {"pairs": {}, "learned": [], "learning_until_ns": None}

    def to_state(self) -> dict[str, Any]:
        return self._state

    def from_state(self, state: dict[str, Any] | None) -> BruteForceDetector:
        self._state = state or {"pairs": {}, "learned": [], "learning_until_ns": None}
        return self

    def end_learning(self) -> None:
        self._state["learning_ended"] = True

    def update(self, flows: FlowRecords, pods: PodEvents | None = None,
               dns: DnsMessages | None = None) -> list[Score]:
        """Count each source's short sessions per authentication service; score the pairs seen."""
        self.touched = False  # whether the state changed (the core skips writing it back when not)
        if not len(flows):
            return []
        if self._state["learning_until_ns"] is None:
            self._state["learning_until_ns"] = int(flows["first_ts"].min()) + self.learning_period_ns
            self.touched = True
        rows, service_port = self._sessions(flows)
        if not len(rows):
            return []
        self.touched = True
        src = [address_text(a) for a in flows["src_addr"][rows]]
        dst = [address_text(a) for a in flows["dst_addr"][rows]]
        workload = [f"{a}/{b}/{c}" if c else "" for a, b, c in zip(
            flows["src_namespace"][rows], flows["src_workload_kind"][rows], flows["src_workload_name"][rows])]
        ports = flows["dst_port"][rows].tolist()
        ts = flows["first_ts"][rows].tolist()
        groups: dict[str, list[int]] = {}
        for i in range(len(rows)):
            groups.setdefault(f"{workload[i] or src[i]}>{dst[i]}:{ports[i]}", []).append(i)
        learning = self.force_learning or (not self._state.get("learning_ended")
                                           and int(flows["first_ts"].min()) < self._state["learning_until_ns"])
        learned = set(self._state["learned"])
        scores = []
        for pair, members in groups.items():
            first, last = members[0], members[-1]
            if service_port[first]:
                if learning:
                    learned.add(pair)
                    continue
                if pair in learned:
                    continue
            p = self._state["pairs"].setdefault(pair, {"score": 0.0, "t": ts[first], "sessions": 0, "alarm": False})
            decay = math.pow(2.0, -max(0, ts[last] - p["t"]) / self.half_life_ns)
            p["score"] = p["score"] * decay + len(members)
            p["t"] = max(p["t"], ts[last])
            p["sessions"] += len(members)
            was = p["alarm"]
            p["alarm"] = p["score"] >= self.threshold
            row = rows[first]
            endpoint = {"ip": src[first], "namespace": str(flows["src_namespace"][row]),
                        "pod": str(flows["src_pod"][row]), "workload": workload[first],
                        "node": str(flows["src_node"][row]), "labels": str(flows["src_labels"][row])}
            evidence = {"target": dst[first], "port": ports[first], "short_sessions": p["sessions"],
                        "decayed_count": round(p["score"], 2), "in_this_batch": len(members)}
            score = Score(pair, p["score"], p["alarm"], endpoint, ts[first], ts[last], evidence,
                          fresh=p["alarm"] and not was, identity=(dst[first], str(ports[first])))
            scores.append(score)
        self._state["learned"] = sorted(learned)
        self._forget()
        return scores

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
        keep = (flows["proto"] == 6) & (interactive | service) & np.isin(flows["state"], _DONE) & (
            flows["packets_in"] > 0) & short & (flows["conn_start"] == flows["first_ts"])  # whole sessions only
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        return rows, service[rows] & ~interactive[rows]

    def _forget(self) -> None:
        pairs = self._state["pairs"]
        if len(pairs) > self.max_pairs:
            keep = sorted(pairs, key=lambda k: pairs[k]["t"])[-self.max_pairs :]
            self._state["pairs"] = {k: pairs[k] for k in keep}

    def decide(self, scores: list[Score]) -> list[Finding]:
        """A finding when a pair first reaches the threshold (and again if it falls back and returns)."""
        return decide_alarms(self.rule_id, scores)
