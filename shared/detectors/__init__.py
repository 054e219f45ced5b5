"""Detectors: each learns from and scores flows, keeps serialisable state, and decides findings.

The interface (model: river's anomaly detectors): ``update(flows, pods, dns)`` learns from a batch (its
flows, and the pod events and DNS messages sensors saw) and returns a
:class:`Score` per subject it scored, a higher ``score`` meaning more anomalous; ``decide(scores)``
turns scores into findings, kept apart so thresholds never hide in the learning. ``to_state()`` /
``from_state()`` carry what was learned through object storage as JSON. A detector still learning
(its warm-up) scores with ``warming_up=True`` and ``decide`` reports nothing for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from kubesonar.shared.alerts import Finding
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.pod_events import PodEvents


@dataclass
class Score:
    subject: str  # what was scored: a workload key or an address
    score: float  # higher is more anomalous; each detector documents its scale
    alarm: bool  # the detector's own test says anomalous
    endpoint: dict[str, str]  # ip, namespace, pod, workload, node, labels
    first_seen_ns: int
    last_seen_ns: int
    evidence: dict[str, Any] = field(default_factory=dict)
    warming_up: bool = False
    fresh: bool = True  # this batch brought new evidence (an alarm without it is not reported again)
    identity: tuple[str, ...] = ()  # what tells apart two alerts of one rule about one subject
    destination: dict[str, Any] | None = None  # ip, port: what allowlists match a port against


class Detector(Protocol):
    rule_id: str
    touched: bool  # set by update(): whether the state changed (the core skips writing it back when not)

    def to_state(self) -> dict[str, Any]: ...

    def from_state(self, state: dict[str, Any] | None) -> Detector: ...

    def update(self, flows: FlowRecords, pods: PodEvents | None = None,
               dns: DnsMessages | None = None) -> list[Score]: ...

    def decide(self, scores: list[Score]) -> list[Finding]: ...


def decide_alarms(rule_id: str, scores: list[Score]) -> list[Finding]:
    """The usual decision: a finding for every fresh alarm out of warm-up."""
    from kubesonar.shared.alerts import Finding

    return [
        Finding(type=rule_id, source=s.endpoint, first_seen_ns=s.first_seen_ns, last_seen_ns=s.last_seen_ns,
                evidence=s.evidence, identity=s.identity, destination=s.destination)
        for s in scores
        if s.alarm and s.fresh and not s.warming_up
    ]


# -- helpers the detectors share ----------------------------------------------------------------------


def source_endpoint(flows: FlowRecords, row: int, side: str = "src") -> dict[str, str]:
    """Who a finding is about: the flow's ``side`` endpoint as the alert's ``source``."""
    from kubesonar.shared.flow import address_text

    name = str(flows[f"{side}_workload_name"][row])
    workload = f"{flows[f'{side}_namespace'][row]}/{flows[f'{side}_workload_kind'][row]}/{name}" if name else ""
    return {"ip": address_text(flows[f"{side}_addr"][row]), "namespace": str(flows[f"{side}_namespace"][row]),
            "pod": str(flows[f"{side}_pod"][row]), "workload": workload, "node": str(flows[f"{side}_node"][row]),
            "labels": str(flows[f"{side}_labels"][row])}


def subject_keys(flows: FlowRecords, rows, side: str = "src") -> list[str]:
    """Per row, what a baseline is kept for: the workload (namespace/kind/name) or, unknown, the address."""
    from kubesonar.shared.flow import address_text

    names = flows[f"{side}_workload_name"][rows]
    spaces, kinds = flows[f"{side}_namespace"][rows], flows[f"{side}_workload_kind"][rows]
    addresses = flows[f"{side}_addr"][rows]
    return [f"{ns}/{kind}/{name}" if name else address_text(addr)
            for ns, kind, name, addr in zip(spaces.tolist(), kinds.tolist(), names.tolist(), addresses)]


class StateDocument:
    """The state plumbing detectors share: a JSON document (a fresh copy of ``EMPTY`` at first), handed
    to and from the core, and the cluster's learning period for those that learn."""

    EMPTY: dict[str, Any] = {}
    rule_id = ""

    def __init__(self, learning_period_ns: int = 0, force_learning: bool = False):
        self.learning_period_ns, self.force_learning = learning_period_ns, force_learning
        self.touched = False
        self._state: dict[str, Any] = copy.deepcopy(self.EMPTY)

    def to_state(self) -> dict[str, Any]:
        return self._state

    def from_state(self, state: dict[str, Any] | None):
        self._state = state or copy.deepcopy(self.EMPTY)
        return self

    def end_learning(self) -> None:
        self._state["learning_ended"] = True

    def _learning(self, flows: FlowRecords) -> bool:
        """Whether this batch falls in the cluster's learning period; the clock starts at the first batch."""
        first_ts = int(flows["first_ts"].min())
        if self._state.get("learning_until_ns") is None:
            self._state["learning_until_ns"] = first_ts + self.learning_period_ns
            self.touched = True
        # a period of 0 means none, even for records older than the first batch's (records come out of order)
        return self.force_learning or (self.learning_period_ns > 0 and not self._state.get("learning_ended")
                                       and first_ts < self._state["learning_until_ns"])

    def decide(self, scores: list[Score]) -> list[Finding]:
        return decide_alarms(self.rule_id, scores)


def bounded(mapping: dict[str, Any], most: int, recency: str = "t") -> dict[str, Any]:
    """Keep the ``most`` entries most recently updated (by their ``recency`` field)."""
    if len(mapping) <= most:
        return mapping
    keep = sorted(mapping, key=lambda k: mapping[k][recency])[-most:]
    return {k: mapping[k] for k in keep}


def dns_client_endpoint(dns, i: int) -> dict[str, str]:
    """The querying pod of DNS message ``i`` as an alert's ``source``."""
    from kubesonar.shared.flow import address_text

    name = str(dns["client_workload_name"][i])
    workload = f"{dns['client_namespace'][i]}/{dns['client_workload_kind'][i]}/{name}" if name else ""
    return {"ip": address_text(dns["client"][i]), "namespace": str(dns["client_namespace"][i]),
            "pod": str(dns["client_pod"][i]), "workload": workload, "node": "", "labels": ""}


def workloads_seen(flows: FlowRecords) -> dict[str, int]:
    """Each named workload on either side of the batch's flows, with its earliest flow's time: baselines
    count a workload's history from when it was first seen at all, not from its first egress."""
    first: dict[str, int] = {}
    for side in ("src", "dst"):
        rows = np.flatnonzero(flows[f"{side}_workload_name"] != "")
        if not len(rows):
            continue
        keys = zip(flows[f"{side}_namespace"][rows].tolist(), flows[f"{side}_workload_kind"][rows].tolist(),
                   flows[f"{side}_workload_name"][rows].tolist())
        for (ns, kind, name), ts in zip(keys, flows["first_ts"][rows].tolist()):
            key = f"{ns}/{kind}/{name}"
            if ts < first.get(key, ts + 1):
                first[key] = ts
    return first
