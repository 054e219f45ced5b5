"""The one base class of every detector, in river's manner: learn, score and decide are three calls.

- :meth:`Detector.score` scores the subjects a batch touches against what was learned (higher is more
  anomalous); it does not change the learned state.
- :meth:`Detector.decide` turns scores into findings (the threshold lives in the score's ``alarm`` and
  warm-up, never in the learning).
- :meth:`Detector.learn` folds the batch into the state, keeping the subjects just flagged out of the
  baseline (river's ``protect_anomaly_detector``: an attacker must not train the model into accepting
  the attack).
- :meth:`Detector.observe` is the template the core calls: score, decide, then learn.

Cold start (:attr:`Detector.needs_baseline`, or a :class:`Score`'s own ``needs_baseline``): a judgment
that compares a subject with its own past (a new destination, a volume, a new TLS client) is silenced
while the cluster learns; one of behaviour itself (a scan, a tunnel, a low-jitter beacon, a known-bad
fingerprint) is decided from the first batch, whatever the learning period, and what it flags is never
learned, by itself (``flagged``) nor by the detectors that keep baselines (:func:`observe_all`).

State is a dataclass per detector; :meth:`Detector.to_state` writes it as JSON with ``state_version``
and :meth:`Detector.from_state` reads it back, migrating an older document or, where that cannot be
done, starting afresh with a logged ``reset_reason``: a document is never misread.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from kubesonar.shared.alerts import Finding
    from kubesonar.shared.batch import Batch
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.pod_events import PodEvents

log = logging.getLogger(__name__)

S = TypeVar("S")
A = TypeVar("A")


@dataclass
class Score:
    subject: Hashable  # what was scored: a workload key or an address, or a pair of it and a target
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
    needs_baseline: bool | None = None  # compares the subject with its past; None: the detector's declaration
    severity: str | None = None  # the alert's when not the rule's (a rule that judges two ways)

    @property
    def flagged(self) -> bool:
        """Judged anomalous: what the model must not learn. Warm-up judges nothing."""
        return self.alarm and not self.warming_up


def decide_alarms(rule_id: str, scores: list[Score]) -> list[Finding]:
    """The usual decision: a finding for every fresh alarm out of warm-up."""
    from kubesonar.shared.alerts import Finding

    return [
        Finding(type=rule_id, source=s.endpoint, first_seen_ns=s.first_seen_ns, last_seen_ns=s.last_seen_ns,
                evidence=s.evidence, identity=s.identity, destination=s.destination, severity=s.severity)
        for s in scores
        if s.alarm and s.fresh and not s.warming_up
    ]


class Pair(NamedTuple):
    """A subject and what it reached (an address, a domain, an indicator): kept as two strings, never
    joined into one and split back."""

    source: str
    target: str

    @classmethod
    def from_v0(cls, joined: str) -> Pair:
        """A pair as version-0 documents wrote it, ``source>target`` (a source never holds '>')."""
        source, sep, target = joined.partition(">")
        if not sep:
            raise StateMigrationError(f"pair {joined!r} is not source>target")
        return cls(source, target)


class StateMigrationError(ValueError):
    """A stored document that cannot be read as this code's state (the detector starts afresh)."""


@dataclass
class LearningClock:
    """The cluster's learning period in data time: it starts at the first batch a detector sees and ends
    at ``until_ns``, or when ended by hand (``analyze`` after ``--learn``)."""

    until_ns: int | None = None
    ended: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"until_ns": self.until_ns, "ended": self.ended}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LearningClock:
        return cls(doc["until_ns"], bool(doc["ended"]))


class Detector(ABC, Generic[S, A]):
    """Every detector: ``S`` is its state dataclass, ``A`` what :meth:`score` worked out for
    :meth:`learn` (a batch is analysed once, not once per call)."""

    rule_id: ClassVar[str] = ""
    state_version: ClassVar[int] = 1
    # whether this detector's judgments compare a subject with its own (or the cluster's) past: those are
    # silenced while learning. False (the default): it judges behaviour itself, from the first batch
    needs_baseline: ClassVar[bool] = False

    def __init__(self, learning_period_ns: int = 0, force_learning: bool = False) -> None:
        self.learning_period_ns = learning_period_ns
        self.force_learning = force_learning  # learn from these batches whatever the clock says
        self.clock = LearningClock()
        self.state: S = self.new_state()
        self.touched = False  # the state changed in the last observe(): the core skips the write when not
        self.reset_reason: str | None = None  # why the last document read was dropped, if it was
        self._assessment: tuple[Batch, A] | None = None

    # -- the interface the core calls ------------------------------------------------------------------

    def observe(self, batch: Batch, learn_from: Batch | None = None) -> list[Finding]:
        """Score the batch, decide, then learn from it with what was flagged kept out of the baseline.
        While the cluster learns, learn from ``learn_from`` instead: the batch less what the baseline-free
        detectors flagged (:func:`observe_all`). Past learning each detector's own test guards its
        baseline, and its record of what it reported stays whole."""
        self.touched = False
        scores = self.score(batch)
        findings = self.decide(scores)
        start = _batch_start(batch)
        if learn_from is None or start is None or not self._learning(start):
            learn_from = batch
        self.learn(learn_from, {s.subject for s in scores if s.flagged})
        self._assessment = None
        return findings

    def score(self, batch: Batch) -> list[Score]:
        """Score the subjects ``batch`` touches against the learned state (which stays as it was). While
        the cluster learns, the judgments that need a baseline are warm-up; the others stand."""
        assessment = self._assess(batch)
        self._assessment = (batch, assessment)
        scores = self._scores(assessment)
        start = _batch_start(batch)
        if scores and start is not None and self._learning(start):
            for s in scores:
                if self.needs_baseline if s.needs_baseline is None else s.needs_baseline:
                    s.warming_up = True
        return scores

    def learn(self, batch: Batch, flagged: set[Hashable]) -> None:
        """Fold ``batch`` into the state; nothing of a ``flagged`` subject enters the baseline."""
        if self._assessment is None or self._assessment[0] is not batch:
            self.score(batch)
        assert self._assessment is not None
        self._commit(self._assessment[1], flagged)

    def decide(self, scores: list[Score]) -> list[Finding]:
        return decide_alarms(self.rule_id, scores)

    def end_learning(self) -> None:
        self.clock.ended = True
        self.touched = True

    def to_state(self) -> dict[str, Any]:
        return {"state_version": self.state_version, "clock": self.clock.to_json(), **self._encode(self.state)}

    def from_state(self, document: dict[str, Any] | None) -> Detector[S, A]:
        """Read a stored document: this version's, or an older one migrated; anything else is dropped
        with a logged reason (``reset_reason``) rather than misread."""
        self.reset_reason, self._assessment, self.touched = None, None, False
        self.clock, self.state = LearningClock(), self.new_state()
        if not document:
            return self
        version = document.get("state_version", 0)
        try:
            if not isinstance(version, int) or version > self.state_version:
                raise StateMigrationError(f"version {version!r} is not one this code knows "
                                          f"(it reads up to {self.state_version})")
            if version < self.state_version:
                document = self._upgrade(document, version)
            clock, state = LearningClock.from_json(document["clock"]), self._decode(document)
        except (StateMigrationError, KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            self.reset_reason = f"{self.rule_id}: stored state of version {version!r} dropped, starting afresh: " \
                                f"{type(exc).__name__}: {exc}"
            log.warning(self.reset_reason)
            return self
        self.clock, self.state = clock, state
        return self

    # -- what each detector provides ---------------------------------------------------------------------

    @abstractmethod
    def new_state(self) -> S:
        """The state before anything was learned."""

    @abstractmethod
    def _encode(self, state: S) -> dict[str, Any]:
        """The state as a JSON-able dict (the base adds ``state_version`` and the clock)."""

    @abstractmethod
    def _decode(self, document: dict[str, Any]) -> S:
        """The state of a document of this version."""

    def _upgrade(self, document: dict[str, Any], version: int) -> dict[str, Any]:
        """A document of an older ``version`` as one of this version (version 0: the documents stored
        before versions existed). Raise StateMigrationError where it cannot be done."""
        if version == 0:
            return {"state_version": self.state_version, **self._from_v0(document)}
        raise StateMigrationError(f"no migration from version {version}")

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        """The fields of a version-0 document as version 1's (with its ``clock``)."""
        raise StateMigrationError("no migration from documents without a version")

    @abstractmethod
    def _assess(self, batch: Batch) -> A:
        """Work out the batch's scores and the changes it would make, without changing the state."""

    @abstractmethod
    def _scores(self, assessment: A) -> list[Score]:
        """The scores of an assessment."""

    @abstractmethod
    def _commit(self, assessment: A, flagged: set[Hashable]) -> None:
        """Apply an assessment's changes, flagged subjects kept out of the baseline; set ``touched``."""

    # -- the learning clock, shared ------------------------------------------------------------------------

    def _until(self, first_ts: int) -> int:
        return first_ts + self.learning_period_ns if self.clock.until_ns is None else self.clock.until_ns

    def _learning(self, first_ts: int) -> bool:
        """Whether data from ``first_ts`` falls in the cluster's learning period (the clock starts at the
        first batch; a period of 0 means none, even for records older than the first batch's)."""
        return self.force_learning or (self.learning_period_ns > 0 and not self.clock.ended
                                       and first_ts < self._until(first_ts))

    def _start_clock(self, first_ts: int) -> None:
        if self.clock.until_ns is None:
            self.clock.until_ns = first_ts + self.learning_period_ns
            self.touched = True


def observe_all(detectors: list[Detector], batch: Batch) -> list[list[Finding]]:
    """Every detector's findings on ``batch``, in the order given. Those that judge behaviour without a
    baseline run first; the flows they flag are kept out of what the baseline detectors learn, so a
    beacon or a scan seen while the cluster learns never becomes its normal."""
    found: dict[int, list[Finding]] = {}
    for i, d in enumerate(detectors):
        if not d.needs_baseline:
            found[i] = d.observe(batch)
    learn_from = without_flagged(batch, [f for fs in found.values() for f in fs])
    for i, d in enumerate(detectors):
        if d.needs_baseline:
            found[i] = d.observe(batch, learn_from)
    return [found[i] for i in range(len(detectors))]


def without_flagged(batch: Batch, findings: list[Finding]) -> Batch:
    """``batch`` without the flows of what ``findings`` name: from their source address (to their
    destination's address, when they name one). The batch itself when nothing is flagged."""
    if not findings or not len(batch.flows):
        return batch
    from dataclasses import replace

    import numpy as np

    from kubesonar.shared.flow import address_bytes

    flows = batch.flows
    drop = np.zeros(len(flows), dtype=bool)
    for f in findings:
        try:
            source = np.array([address_bytes(f.source["ip"])], dtype="V16")[0]
            mask = flows["src_addr"] == source
            if f.destination and f.destination.get("ip"):
                mask &= flows["dst_addr"] == np.array([address_bytes(f.destination["ip"])], dtype="V16")[0]
        except (KeyError, ValueError):  # a finding about no address (a DNS client unknown): nothing to drop
            continue
        drop |= mask
    if not drop.any():
        return batch
    return replace(batch, flows=flows.take(~drop))


def _batch_start(batch: Batch) -> int | None:
    """The data time a batch starts at: its first flow or, without flows, its first DNS message."""
    if len(batch.flows):
        return int(batch.flows["first_ts"].min())
    if len(batch.dns):
        return int(batch.dns["ts"].min())
    return None


def clock_from_v0(document: dict[str, Any]) -> dict[str, Any]:
    """The clock as version-0 documents kept it (``learning_until_ns``, ``learning_ended``)."""
    return {"until_ns": document.get("learning_until_ns"), "ended": bool(document.get("learning_ended", False))}


# Entries keyed by what churns (remote addresses that rotate, pods' addresses) and untouched this long in
# data time are forgotten: kept, they made state documents, read and written per batch, grow with the
# cluster's history up to their caps instead of with its present.
IDLE_FORGET_NS = 3 * 24 * 3600 * 1_000_000_000


def bounded(mapping: dict[Any, Any], most: int, recency: str = "last_ns", since_ns: int | None = None
            ) -> dict[Any, Any]:
    """Keep the ``most`` entries most recently updated (by their ``recency`` attribute), and with
    ``since_ns`` only those updated since then."""
    if since_ns is not None:
        mapping = {k: v for k, v in mapping.items() if getattr(v, recency) >= since_ns}
    if len(mapping) <= most:
        return mapping
    keep = sorted(mapping, key=lambda k: getattr(mapping[k], recency))[-most:]
    return {k: mapping[k] for k in keep}


def batch_of(flows: FlowRecords, pods: PodEvents | None = None, dns: DnsMessages | None = None) -> Batch:
    """A batch of these records, for running detectors outside the core (tests, notebooks)."""
    from kubesonar.shared.batch import Batch, BatchHeader
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.pod_events import PodEvents

    return Batch(BatchHeader("", "", "", 0, 0, 0), flows, pods if pods is not None else PodEvents.empty(),
                 dns if dns is not None else DnsMessages.empty())
