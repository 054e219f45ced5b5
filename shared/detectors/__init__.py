"""Detectors: each learns from and scores flows, keeps serialisable state, and decides findings.

The interface (model: river's anomaly detectors): ``update(flows, pods)`` learns from a batch (its flows
and the pod events sensors saw) and returns a
:class:`Score` per subject it scored, a higher ``score`` meaning more anomalous; ``decide(scores)``
turns scores into findings, kept apart so thresholds never hide in the learning. ``to_state()`` /
``from_state()`` carry what was learned through object storage as JSON. A detector still learning
(its warm-up) scores with ``warming_up=True`` and ``decide`` reports nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kubesonar.shared.alerts import Finding
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


class Detector(Protocol):
    rule_id: str
    touched: bool  # set by update(): whether the state changed (the core skips writing it back when not)

    def to_state(self) -> dict[str, Any]: ...

    def from_state(self, state: dict[str, Any] | None) -> Detector: ...

    def update(self, flows: FlowRecords, pods: PodEvents | None = None) -> list[Score]: ...

    def decide(self, scores: list[Score]) -> list[Finding]: ...


def decide_alarms(rule_id: str, scores: list[Score]) -> list[Finding]:
    """The usual decision: a finding for every fresh alarm out of warm-up."""
    from kubesonar.shared.alerts import Finding

    return [
        Finding(type=rule_id, source=s.endpoint, first_seen_ns=s.first_seen_ns, last_seen_ns=s.last_seen_ns,
                evidence=s.evidence, identity=s.identity)
        for s in scores
        if s.alarm and s.fresh and not s.warming_up
    ]
