"""The one entry point into the core: every runtime (local, AWS, GCP, Azure) calls :func:`process_batch`.

Detector state and alerts live in the object store and are written with compare-and-swap, so any
number of concurrent invocations may score batches of the same cluster without losing an update.
Store layout: ``state/<cluster>/<detector>.json``, ``alerts/<cluster>/<alert id>.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kubesonar.shared import identity
from kubesonar.shared.alerts import Finding, merge_alert, new_alert
from kubesonar.shared.allowlist import AllowEntry, is_allowed
from kubesonar.shared.batch import Batch, decode_batch
from kubesonar.shared.detectors import Detector
from kubesonar.shared.detectors.beaconing import BeaconingDetector
from kubesonar.shared.detectors.brute_force import BruteForceDetector
from kubesonar.shared.detectors.control_plane import ApiServerAccessDetector, MetadataAccessDetector
from kubesonar.shared.detectors.crypto_mining import CryptoMiningDetector
from kubesonar.shared.detectors.dns_tunneling import DnsTunnelingDetector
from kubesonar.shared.detectors.exfiltration import ExfiltrationDetector
from kubesonar.shared.detectors.new_workload import NewWorkloadDetector
from kubesonar.shared.detectors.port_scan import PortScanDetector
from kubesonar.shared.detectors.unusual_destination import UnusualDestinationDetector
from kubesonar.shared.detectors.watchlist import WatchlistDetector
from kubesonar.shared.health import SensorHealth
from kubesonar.shared.netzones import PRIVATE_NETWORKS, Zones
from kubesonar.shared.errors import BatchFormatError
from kubesonar.shared.ports import Clock, Notifier, ObjectStore
from kubesonar.shared.state import update_document
from kubesonar.shared.watchlist import LOADER, WatchEntry

SECOND = 1_000_000_000
_APPLIED_KEEP = 256  # batch keys a detector document remembers (redeliveries come within minutes)
_BATCHES_KEEP = 64  # batch keys an alert remembers


@dataclass(frozen=True)
class CoreConfig:
    learning_period_s: float = 24 * 3600.0  # novelty detectors learn, silently, this long (data time)
    # and a workload's own baseline needs this much of its history before it is judged against it
    # (a workload deployed after the cluster's learning still learns its first day)
    workload_baseline_s: float = 24 * 3600.0
    learning: bool = False  # force learning for these batches (``analyze --learn``)
    allowlist: tuple[AllowEntry, ...] = ()
    sensor_silent_after_s: float = 60.0  # a node's sensor unheard this long is silent
    # the cluster's and the VPC's networks: beaconing, exfiltration and unusual_destination judge
    # only traffic leaving them (shared/netzones.py)
    internal_networks: tuple[str, ...] = PRIVATE_NETWORKS
    watchlist: tuple[WatchEntry, ...] = ()  # entries given directly; those in the store are added


@dataclass
class Dependencies:
    store: ObjectStore
    notifier: Notifier
    clock: Clock
    config: CoreConfig = field(default_factory=CoreConfig)


@dataclass
class ProcessResult:
    flows: int
    new_alerts: list[dict[str, Any]] = field(default_factory=list)
    updated_alerts: list[dict[str, Any]] = field(default_factory=list)
    allowlisted: int = 0
    errors: list[str] = field(default_factory=list)  # configuration faults met (a watchlist that does not parse)

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return self.new_alerts + self.updated_alerts


def detectors(config: CoreConfig, watchlist: list[WatchEntry] | None = None) -> list[Detector]:
    """Every detector the core runs, configured; each keeps its state in ``state/<cluster>/<rule id>.json``."""
    learning_ns, learning = int(config.learning_period_s * SECOND), config.learning
    zones = Zones(config.internal_networks)
    return [
        PortScanDetector(),
        NewWorkloadDetector(learning_ns, force_learning=learning),
        BruteForceDetector(learning_ns, force_learning=learning),
        MetadataAccessDetector(),
        ApiServerAccessDetector(learning_ns, force_learning=learning),
        CryptoMiningDetector(zones),
        DnsTunnelingDetector(),
        BeaconingDetector(learning_ns, force_learning=learning, zones=zones),
        ExfiltrationDetector(learning_ns, force_learning=learning, zones=zones),
        UnusualDestinationDetector(learning_ns, force_learning=learning, zones=zones,
                                   baseline_ns=int(config.workload_baseline_s * SECOND)),
        WatchlistDetector(config.watchlist, watchlist or ()),
    ]


def process_batch(batch: Batch, deps: Dependencies) -> ProcessResult:
    """Score one batch. Idempotent: queues deliver at least once, so each document records the batch
    keys (sensor id, sequence, part) it has applied; a redelivered batch changes nothing and replays
    the findings it made the first time, so an alert it created half-way is still completed."""
    cluster = batch.header.cluster or "default"
    key = batch_key(batch)
    findings: list[Finding] = []
    watchlist, watchlist_errors = LOADER.load(deps.store)
    for detector in detectors(deps.config, watchlist):
        findings += _apply_once(deps.store, f"state/{cluster}/{detector.rule_id}.json", key, detector,
                                lambda d=detector: d.decide(d.update(batch.flows, batch.pods, batch.dns)))
    health = SensorHealth(deps.config.sensor_silent_after_s)
    now = deps.clock.now_ns()
    findings += _apply_once(deps.store, f"state/{cluster}/sensor_health.json", key, health,
                            lambda: health.observe(batch.header, now) + health.check(now))

    result = _raise(deps, cluster, findings, key, flows=len(batch.flows))
    result.errors += watchlist_errors
    return result


def _raise(deps: Dependencies, cluster: str, findings: list[Finding], key: str, flows: int) -> ProcessResult:
    """Findings that no allowlist silences become (or update) alerts; new ones are notified."""
    result = ProcessResult(flows=flows)
    kept = [f for f in findings if not is_allowed(f, list(deps.config.allowlist))]
    result.allowlisted = len(findings) - len(kept)
    for finding in kept:
        alert, created = _upsert_alert(deps.store, cluster, finding, deps.clock, key)
        if created:
            result.new_alerts.append(alert)
            deps.notifier.notify(alert)
        elif alert is not None:
            result.updated_alerts.append(alert)
    return result


@dataclass(frozen=True)
class Delivery:
    """One message as a transport hands it over, its envelope removed (SQS base64, Pub/Sub data, Event
    Grid data, a NATS message): ``id`` is the transport's own id, used only to report outcomes back."""

    id: str
    data: bytes


@dataclass
class DeliveryOutcome:
    """What became of an invocation's deliveries. ``poison`` never decodes: count it, dead-letter it, do
    not retry it. ``retry`` failed while being applied: the transport redelivers it, and the others are
    not re-applied (each is applied once by its batch key). ``applied`` includes redeliveries."""

    result: ProcessResult
    applied: list[str] = field(default_factory=list)
    poison: list[tuple[str, str]] = field(default_factory=list)  # (id, why)
    retry: list[tuple[str, str]] = field(default_factory=list)  # (id, why)


def process_deliveries(deliveries: list[Delivery], deps: Dependencies) -> DeliveryOutcome:
    """Score all messages of one invocation: the entry point every queue adapter calls."""
    outcome = DeliveryOutcome(ProcessResult(flows=0))
    for delivery in deliveries:
        try:
            batch = decode_batch(delivery.data)
        except BatchFormatError as exc:
            outcome.poison.append((delivery.id, str(exc)))
            continue
        try:
            result = process_batch(batch, deps)
        except Exception as exc:  # noqa: BLE001 - any failure here is retried by the transport
            outcome.retry.append((delivery.id, f"{type(exc).__name__}: {exc}"))
            continue
        outcome.applied.append(delivery.id)
        _merge_result(outcome.result, result)
    return outcome


def _merge_result(into: ProcessResult, result: ProcessResult) -> None:
    into.flows += result.flows
    into.new_alerts += result.new_alerts
    into.updated_alerts += result.updated_alerts
    into.allowlisted += result.allowlisted
    into.errors += [e for e in result.errors if e not in into.errors]


def check_all_sensors(deps: Dependencies) -> ProcessResult:
    """The schedule's tick over every cluster that has sent heartbeats (an adapter's timer calls this)."""
    total = ProcessResult(flows=0)
    for cluster in clusters_with_sensors(deps.store):
        _merge_result(total, check_sensors(deps, cluster))
    return total


def check_sensors(deps: Dependencies, cluster: str) -> ProcessResult:
    """The scheduled check (a timer, not a batch): sensors silent for too long raise sensor_silent.
    Without it a cluster whose sensors all stopped would never be told."""
    health = SensorHealth(deps.config.sensor_silent_after_s)
    tick = f"tick/{deps.clock.now_ns()}"
    findings = _apply_once(deps.store, f"state/{cluster}/sensor_health.json", tick, health,
                           lambda: health.check(deps.clock.now_ns()))
    return _raise(deps, cluster, findings, tick, flows=0)


def clusters_with_sensors(store: ObjectStore) -> list[str]:
    """Clusters whose sensors have sent heartbeats (those the scheduled check looks at)."""
    return sorted({k.split("/")[1] for k in store.list("state/") if k.endswith("/sensor_health.json")})


def _apply_once(store: ObjectStore, doc_key: str, batch: str, detector: Any, run: Any) -> list[Finding]:
    """Run ``detector`` on its document once per batch key; a repeat replays the findings it made."""
    found: list[Finding] = []

    def step(stored: dict | None) -> dict | None:
        doc = stored or {}
        applied = dict(doc.get("applied", {}))
        if batch in applied:
            found[:] = [_finding(f) for f in applied[batch]]
            return stored
        detector.from_state(doc.get("state"))  # a retry after a conflict starts again from the newer state
        found[:] = run()
        if not found and not getattr(detector, "touched", True) and doc:
            return stored  # this batch changed nothing here: no write (a redelivery would change nothing again)
        applied[batch] = [asdict(f) for f in found]
        while len(applied) > _APPLIED_KEEP:
            del applied[next(iter(applied))]
        return {"state": detector.to_state(), "applied": applied}

    update_document(store, doc_key, step)
    return found


def batch_key(batch: Batch) -> str:
    """What identifies a message across redeliveries: its sensor, sequence number and part."""
    h = batch.header
    return identity.batch_key(h.sensor_id, h.sequence, h.part)


def end_learning(store: ObjectStore, cluster: str) -> None:
    """Close the learning period of every detector that learns, now (``analyze`` after ``--learn``)."""
    for detector in detectors(CoreConfig()):
        if not hasattr(detector, "end_learning"):
            continue

        def close(doc: dict | None, detector: Detector = detector) -> dict:
            doc = doc or {}
            detector.from_state(doc.get("state"))
            detector.end_learning()
            return {**doc, "state": detector.to_state()}

        update_document(store, f"state/{cluster}/{detector.rule_id}.json", close)


def _finding(d: dict[str, Any]) -> Finding:
    return Finding(**{**d, "identity": tuple(d.get("identity", ()))})


def _upsert_alert(store: ObjectStore, cluster: str, finding: Finding, clock: Clock, key: str
                  ) -> tuple[dict | None, bool]:
    """Create or update the finding's alert; (None, False) when this batch was already merged into it."""
    outcome: list = [False, False]  # created, replayed

    def change(alert: dict | None) -> dict:
        outcome[:] = [alert is None, False]
        if alert is not None and key in alert.get("batches", ()):
            outcome[1] = True
            return alert
        updated = new_alert(finding, cluster) if alert is None else merge_alert(alert, finding)
        if updated["status"] == "closed":
            updated["status"] = "open"  # it came back
        updated["updated_at_ns"] = clock.now_ns()
        updated["batches"] = [*updated.get("batches", ()), key][-_BATCHES_KEEP:]  # what it has merged
        return updated

    alert = update_document(store, f"alerts/{cluster}/{finding.fingerprint(cluster)}.json", change)
    return (None, False) if outcome[1] else (alert, outcome[0])


