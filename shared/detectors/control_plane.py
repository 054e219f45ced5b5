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
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score, clock_from_v0
from kubesonar.shared.flow import FlowRecords, address_bytes, address_text
from kubesonar.shared.identity import source_endpoint, subject_keys, workload_key

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

METADATA_ENDPOINTS = ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "169.254.170.23", "fd00:ec2::23")
_METADATA_BYTES = [np.array(address_bytes(a), dtype="V16") for a in METADATA_ENDPOINTS]
KUBELET_PORTS = (10250,)
ETCD_PORTS = (2379, 2380)
_API = ("default", "Service", "kubernetes")


@dataclass
class PairsState:
    reported: dict[Pair, None] = field(default_factory=dict)  # (source, target) pairs, oldest first
    learned: set[str] = field(default_factory=set)  # workloads that used the API while learning


@dataclass
class _Assessment:
    first_ts: int | None  # the batch's earliest flow (None: no flows)
    candidates: int  # rows the detector looked at
    scores: list[Score] = field(default_factory=list)
    learned: list[str] = field(default_factory=list)


class _PairDetector(Detector[PairsState, _Assessment]):
    """Reports each (source, target) pair its ``_rows`` select once; remembers pairs (bounded)."""

    max_pairs = 20_000

    def new_state(self) -> PairsState:
        return PairsState()

    def _encode(self, state: PairsState) -> dict[str, Any]:
        return {"reported": [list(p) for p in state.reported], "learned": sorted(state.learned)}

    def _decode(self, document: dict[str, Any]) -> PairsState:
        return PairsState(dict.fromkeys(Pair(*p) for p in document["reported"]), set(document["learned"]))

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        return {"clock": clock_from_v0(document), "reported": [list(Pair.from_v0(p)) for p in document["seen"]],
                "learned": list(document.get("learned", []))}

    def _rows(self, flows: FlowRecords, learning: bool) -> tuple[np.ndarray, list[str], list[str]]:
        """Rows to report (in time order), their targets, and workloads learned from this batch."""
        raise NotImplementedError

    def _is_learning(self, first_ts: int) -> bool:
        return False

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        if not len(flows):
            return _Assessment(None, 0)
        first_ts = int(flows["first_ts"].min())
        rows, targets, learned = self._rows(flows, self._is_learning(first_ts))
        out = _Assessment(first_ts, len(rows), learned=learned)
        seen: set[Pair] = set()
        sources = subject_keys(flows, rows)
        for row, source, target in zip(rows.tolist(), sources, targets, strict=True):
            pair = Pair(source, target)
            if pair in seen:
                continue
            seen.add(pair)
            endpoint = source_endpoint(flows, row)
            ts = int(flows["first_ts"][row])
            evidence = {"target": target, "port": int(flows["dst_port"][row]), "protocol": int(flows["proto"][row]),
                        "packets_out": int(flows["packets_out"][row]), "bytes_in": int(flows["bytes_in"][row])}
            out.scores.append(Score(pair, 1.0, True, endpoint, ts, ts, evidence, identity=(target,),
                                    fresh=pair not in self.state.reported))  # scored again, reported once
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Pairs are reported once, so every pair scored is remembered; the workloads that reached the
        API while learning join the baseline (nothing is flagged while learning)."""
        self.touched |= assessment.candidates > 0 or bool(assessment.learned)
        reported = self.state.reported
        reported.update(dict.fromkeys(s.subject for s in assessment.scores))
        if len(reported) > self.max_pairs:
            self.state.reported = dict.fromkeys(list(reported)[-self.max_pairs:])
        self.state.learned.update(assessment.learned)


class MetadataAccessDetector(_PairDetector):
    rule_id = "metadata_access"

    def _rows(self, flows: FlowRecords, learning: bool) -> tuple[np.ndarray, list[str], list[str]]:
        dst = flows["dst_addr"]
        hit = np.zeros(len(dst), dtype=bool)
        for target in _METADATA_BYTES:  # a handful of 16-byte compares: cheaper than a sort
            hit |= dst == target
        rows = np.flatnonzero(hit)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        return rows, [address_text(a) for a in flows["dst_addr"][rows]], []


class ApiServerAccessDetector(_PairDetector):
    rule_id = "api_server_access"

    def _is_learning(self, first_ts: int) -> bool:
        return self._learning(first_ts)

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        if assessment.first_ts is not None:
            self._start_clock(assessment.first_ts)
        super()._commit(assessment, flagged)

    def _rows(self, flows: FlowRecords, learning: bool) -> tuple[np.ndarray, list[str], list[str]]:
        pod = flows["src_workload_name"] != ""  # only pods are judged: the node itself talks to all of these
        control = pod & (flows["proto"] == 6) & np.isin(flows["dst_port"], KUBELET_PORTS + ETCD_PORTS) & (
            flows["packets_in"] > 0)
        api = pod & (flows["dst_namespace"] == _API[0]) & (flows["dst_workload_kind"] == _API[1]) & (
            flows["dst_workload_name"] == _API[2])
        api_rows = np.flatnonzero(api)
        workloads = {int(i): workload_key(flows["src_namespace"][i], flows["src_workload_kind"][i],
                                          flows["src_workload_name"][i])
                     for i in api_rows}  # only the rows that reached the API: names cost a Python step each
        learned: list[str] = []
        if learning:
            learned = list(dict.fromkeys(workloads.values()))
            api[:] = False
        else:
            api[[i for i, w in workloads.items() if w in self.state.learned]] = False
        rows = np.flatnonzero(control | api)
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        targets = [("kubernetes API" if api[r] else
                    f"{'kubelet' if flows['dst_port'][r] in KUBELET_PORTS else 'etcd'} "
                    f"{address_text(flows['dst_addr'][r])}")
                   for r in rows.tolist()]
        return rows, targets, learned
