"""Two detectors of a pod reaching what it should not: the cloud's metadata service, and the cluster's
control plane.

``metadata_access`` — Catches: any workload contacting the instance metadata service (169.254.169.254,
fd00:ec2::254) or a container credential endpoint (ECS 169.254.170.2, EKS Pod Identity 169.254.170.23,
fd00:ec2::23): how a compromised pod takes the node's cloud credentials. Misses: metadata reached
through a proxy or from the node's own network namespace (host-network agents are the node).
False positives: node agents, CNI and CSI plugins that read metadata from a pod network; SDKs probing
for credentials before IRSA or Workload Identity (allowlist them by namespace or workload).
Score: 1.0 for each (source, endpoint) pair seen, once.

``api_server_access`` — Catches: a pod reaching a kubelet (10250) or etcd (2379-2380), always; and a
workload that never talked to the Kubernetes API (service ``default/kubernetes``, named by the sensor's
enrichment) while learning, starting to. Misses: API access through a proxy; traffic of pods the
inventory does not know (node processes are not judged). False positives: metrics-server or
Prometheus scraping kubelets; operators deployed after learning.
Score: 1.0 for each new (source, target) pair.

Example:
    >>> d = MetadataAccessDetector()
    >>> d.decide(d.update(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kubesonar.shared.alerts import Finding
from kubesonar.shared.detectors import Score, decide_alarms
from kubesonar.shared.flow import FlowRecords, address_bytes, address_text
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.pod_events import PodEvents

METADATA_ENDPOINTS = ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "169.254.170.23", "fd00:ec2::23")
_METADATA_BYTES = [np.array(address_bytes(a), dtype="V16") for a in METADATA_ENDPOINTS]
KUBELET_PORTS = (10250,)
ETCD_PORTS = (2379, 2380)
_API = ("default", "Service", "kubernetes")


def _endpoint(flows: FlowRecords, row: int) -> dict[str, str]:
    name = str(flows["src_workload_name"][row])
    workload = f"{flows['src_namespace'][row]}/{flows['src_workload_kind'][row]}/{name}" if name else ""
    return {"ip": address_text(flows["src_addr"][row]), "namespace": str(flows["src_namespace"][row]),
            "pod": str(flows["src_pod"][row]), "workload": workload, "node": str(flows["src_node"][row]),
            "labels": str(flows["src_labels"][row])}


class _PairDetector:
    """Reports each (source, target) pair its ``_rows`` select once; remembers pairs (bounded)."""

    rule_id = ""
    max_pairs = 20_000

    def __init__(self) -> None:
        self._state: dict[str, Any] = {"seen": []}

    def to_state(self) -> dict[str, Any]:
        return self._state

    def from_state(self, state: dict[str, Any] | None) -> _PairDetector:
        self._state = state or {"seen": []}
        return self

    def _rows(self, flows: FlowRecords) -> tuple[np.ndarray, list[str]]:
        raise NotImplementedError

    def update(self, flows: FlowRecords, pods: PodEvents | None = None,
               dns: DnsMessages | None = None) -> list[Score]:
        self.touched = False  # whether the state changed (the core skips writing it back when not)
        if not len(flows):
            return []
        rows, targets = self._rows(flows)
        self.touched |= bool(len(rows))
        seen = dict.fromkeys(self._state["seen"])
        scores = []
        for row, target in zip(rows.tolist(), targets):
            endpoint = _endpoint(flows, row)
            pair = f"{endpoint['workload'] or endpoint['ip']}>{target}"
            if pair in seen:
                continue
            seen[pair] = None
            ts = int(flows["first_ts"][row])
            evidence = {"target": target, "port": int(flows["dst_port"][row]), "protocol": int(flows["proto"][row]),
                        "packets_out": int(flows["packets_out"][row]), "bytes_in": int(flows["bytes_in"][row])}
            scores.append(Score(pair, 1.0, True, endpoint, ts, ts, evidence, identity=(target,)))
        self._state["seen"] = list(seen)[-self.max_pairs :]
        return scores

    def decide(self, scores: list[Score]) -> list[Finding]:
        return decide_alarms(self.rule_id, scores)


class MetadataAccessDetector(_PairDetector):
    rule_id = "metadata_access"

    def _rows(self, flows: FlowRecords) -> tuple[np.ndarray, list[str]]:
        dst = flows["dst_addr"]
        hit = np.zeros(len(dst), dtype=bool)
        for target in _METADATA_BYTES:  # a handful of 16-byte compares: cheaper than a sort
            hit |= dst == target
        rows = np.flatnonzero(hit)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        return rows, [address_text(a) for a in flows["dst_addr"][rows]]


class ApiServerAccessDetector(_PairDetector):
    rule_id = "api_server_access"

    def __init__(self, learning_period_ns: int = 0, force_learning: bool = False):
        super().__init__()
        self.learning_period_ns, self.force_learning = learning_period_ns, force_learning
        self._state.update(learned=[], learning_until_ns=None)

    def from_state(self, state: dict[str, Any] | None) -> ApiServerAccessDetector:
        self._state = state or {"seen": [], "learned": [], "learning_until_ns": None}
        return self

    def end_learning(self) -> None:
        self._state["learning_ended"] = True

    def _rows(self, flows: FlowRecords) -> tuple[np.ndarray, list[str]]:
        if self._state["learning_until_ns"] is None:
            self._state["learning_until_ns"] = int(flows["first_ts"].min()) + self.learning_period_ns
            self.touched = True
        learning = self.force_learning or (not self._state.get("learning_ended")
                                           and int(flows["first_ts"].min()) < self._state["learning_until_ns"])
        pod = flows["src_workload_name"] != ""  # only pods are judged: the node itself talks to all of these
        control = pod & (flows["proto"] == 6) & np.isin(flows["dst_port"], KUBELET_PORTS + ETCD_PORTS) & (
            flows["packets_in"] > 0)
        api = pod & (flows["dst_namespace"] == _API[0]) & (flows["dst_workload_kind"] == _API[1]) & (
            flows["dst_workload_name"] == _API[2])
        api_rows = np.flatnonzero(api)
        workloads = {int(i): f"{flows['src_namespace'][i]}/{flows['src_workload_kind'][i]}/{flows['src_workload_name'][i]}"
                     for i in api_rows}  # only the rows that reached the API: names cost a Python step each
        learned = set(self._state["learned"])
        if learning:
            self.touched |= bool(workloads)
            learned.update(workloads.values())
            self._state["learned"] = sorted(learned)
            api[:] = False
        else:
            api[[i for i, w in workloads.items() if w in learned]] = False
        rows = np.flatnonzero(control | api)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        targets = [("kubernetes API" if api[r] else
                    f"{'kubelet' if flows['dst_port'][r] in KUBELET_PORTS else 'etcd'} {address_text(flows['dst_addr'][r])}")
                   for r in rows.tolist()]
        return rows, targets
