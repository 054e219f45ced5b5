"""The one entry point into the core: every queue adapter calls :func:`process_deliveries` once per
invocation with all the messages it was handed (the offline paths call :func:`process_batch`).

State and alerts live in the object store, written with compare-and-swap, so any number of concurrent
invocations may score batches of the same cluster without losing an update. All messages of one
invocation are applied together: per cluster, one read and at most one write of each state document
per invocation, not per message (docs/cost.md). Store layout:

- ``state/<cluster>/detectors.json``: every detector's state and the applied-message log (layout 2;
  the per-detector documents of layout 1 are read once and carried over, :func:`_legacy_document`);
- ``state/<cluster>/sensor_health.json``: heartbeats, the only document an idle node's message touches;
- ``alerts/<cluster>/<alert id>.json``: one document per alert.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from kubesonar.shared import identity, outbox
from kubesonar.shared.alerts import Finding, merge_alert, new_alert
from kubesonar.shared.allowlist import AllowEntry, is_allowed
from kubesonar.shared.applied import APPLIED, CONFLICT, NEW, TOO_OLD, AppliedLog, content_digest
from kubesonar.shared.batch import MAX_ROWS_PER_MESSAGE, Batch, decode_batch
from kubesonar.shared.detectors import Detector, observe_all
from kubesonar.shared.detectors.beaconing import BeaconingDetector
from kubesonar.shared.detectors.brute_force import BruteForceDetector
from kubesonar.shared.detectors.control_plane import ApiServerAccessDetector, MetadataAccessDetector
from kubesonar.shared.detectors.crypto_mining import CryptoMiningDetector
from kubesonar.shared.detectors.dns_tunneling import DnsTunnelingDetector
from kubesonar.shared.detectors.exfiltration import ExfiltrationDetector
from kubesonar.shared.detectors.icmp_tunneling import IcmpTunnelingDetector
from kubesonar.shared.detectors.long_connection import LongConnectionDetector
from kubesonar.shared.detectors.new_tls_client import NewTlsClientDetector
from kubesonar.shared.detectors.new_workload import NewWorkloadDetector
from kubesonar.shared.detectors.port_scan import PortScanDetector
from kubesonar.shared.detectors.reverse_shell import ReverseShellDetector
from kubesonar.shared.detectors.tls_bare_ip import TlsBareIpDetector
from kubesonar.shared.detectors.tool_transfer import ToolTransferDetector
from kubesonar.shared.detectors.unusual_destination import UnusualDestinationDetector
from kubesonar.shared.detectors.watchlist import WatchlistDetector
from kubesonar.shared.edges import update_edge_summary
from kubesonar.shared.errors import BatchFormatError, ConfigError, StoreError
from kubesonar.shared.health import SensorHealth
from kubesonar.shared.lists_store import ALLOW_LOADER
from kubesonar.shared.netzones import PRIVATE_NETWORKS, Zones
from kubesonar.shared.ports import Clock, Notifier, ObjectStore
from kubesonar.shared.signing import Verifier, authenticate
from kubesonar.shared.state import read_document, update_document
from kubesonar.shared.triage import normalize, on_detection
from kubesonar.shared.watchlist import LOADER, WatchEntry

SECOND = 1_000_000_000
_APPLIED_KEEP = 256  # findings of recent batches kept to replay on redelivery (completes a half-made alert)
LAYOUT = 2  # of the state documents (module docstring)
_STALE = "older than its sensor's sequence window, or than the core's memory: refused as a replay"
_CONFLICT = "its key (sensor, sequence, part) was applied with other content: refused as a conflict"
_BATCHES_KEEP = 64  # batch keys an alert remembers
ROWS_HELD = MAX_ROWS_PER_MESSAGE  # decoded rows an invocation applies at once (process_deliveries)


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

    def __post_init__(self) -> None:
        # checked here, at a function's cold start: a network that does not parse would otherwise fail the
        # scoring of every message, each retried into the dead-letter queue
        for network in self.internal_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(f"internal network {network!r} is not a CIDR network (such as 10.0.0.0/8); "
                                  "check KUBESONAR_INTERNAL_NETWORKS or --internal-network") from None


@dataclass
class Dependencies:
    store: ObjectStore
    notifier: Notifier
    clock: Clock
    config: CoreConfig = field(default_factory=CoreConfig)
    keyring: Verifier | None = None  # None: unsigned batches accepted (the embedded default); shared/signing.py


@dataclass
class ProcessResult:
    flows: int
    new_alerts: list[dict[str, Any]] = field(default_factory=list)
    updated_alerts: list[dict[str, Any]] = field(default_factory=list)
    allowlisted: int = 0
    # messages older than their sensor's sequence window, or whose window ended too long ago for the core
    # to remember whether it applied them: refused as replays (shared/applied.py)
    stale: int = 0
    conflicts: int = 0  # messages whose key was applied with other content: refused (shared/applied.py)
    # faults met that did not stop the batch: a list that does not parse, a baseline started afresh, a
    # conflicting batch; every runtime shows them (analyze on stderr, the functions in logs and metrics)
    errors: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[dict[str, Any]]:
        return self.new_alerts + self.updated_alerts


def detectors(config: CoreConfig, watchlist: list[WatchEntry] | None = None) -> list[Detector]:
    """Every detector the core runs, configured; each keeps its state in ``state/<cluster>/<rule id>.json``."""
    learning_ns, learning = int(config.learning_period_s * SECOND), config.learning
    baseline_ns = int(config.workload_baseline_s * SECOND)
    zones = Zones(config.internal_networks)
    return [
        PortScanDetector(),
        NewWorkloadDetector(learning_ns, force_learning=learning),
        BruteForceDetector(learning_ns, force_learning=learning),
        MetadataAccessDetector(),
        ApiServerAccessDetector(learning_ns, force_learning=learning),
        CryptoMiningDetector(zones),
        DnsTunnelingDetector(),
        IcmpTunnelingDetector(zones),
        BeaconingDetector(learning_ns, force_learning=learning, zones=zones),
        LongConnectionDetector(learning_ns, force_learning=learning, zones=zones),
        ReverseShellDetector(zones),
        TlsBareIpDetector(zones),
        ToolTransferDetector(zones),
        NewTlsClientDetector(learning_ns, force_learning=learning, baseline_ns=baseline_ns),
        ExfiltrationDetector(learning_ns, force_learning=learning, zones=zones),
        UnusualDestinationDetector(learning_ns, force_learning=learning, zones=zones,
                                   baseline_ns=baseline_ns),
        WatchlistDetector(config.watchlist, watchlist or ()),
    ]


def process_batch(batch: Batch, deps: Dependencies, digest: int = 0, delivered: bool = False) -> ProcessResult:
    """Score one decoded batch (the offline paths); a failure raises. ``digest``: the content digest of
    its message (shared/applied.py), when the caller has the message; ``delivered``: the message came
    through a transport (a file queue), so it could be a replay, refused when its window is too old."""
    failed: dict[str, str] = {}
    key = batch_key(batch)
    result = _apply_cluster(_cluster(batch), [(key, batch)], deps, failed, {key: digest}, delivered)
    if failed:
        raise StoreError(next(iter(failed.values())))
    return result


def _cluster(batch: Batch) -> str:
    return batch.header.cluster or "default"


def _apply_cluster(cluster: str, items: list[tuple[str, Batch]], deps: Dependencies, failed: dict[str, str],
                   digests: dict[str, int] | None = None, delivered: bool = True) -> ProcessResult:
    """Apply one cluster's batches. Their findings are worked out first, then written in this order: the
    alerts, the health document, the detectors' document (only if some batch carries traffic). A batch
    is applied when the last is written, so a failure before it (a full disk, a store down) leaves every
    batch as it was: its redelivery, or a rerun, gives the same result. ``failed`` gets the ids of
    batches not applied (to retry), or refused for good (counted, then acknowledged). ``delivered``: the
    batches came through a transport, so one whose window ended too long ago is refused (shared/applied.py)."""
    traffic = [(i, b) for i, b in items if len(b.flows) or len(b.dns) or len(b.pods)]
    keys = {item_id: batch_key(batch) for item_id, batch in items}
    errors: list[str] = []
    raised = [ProcessResult(flows=0)]  # of the last attempt: a lost race works the findings out again
    detector_found: list[tuple[str, Finding]] = []
    replayed: set[str] = set()  # keys of batches applied before, whose findings are replayed
    fresh: list[Batch] = []

    def raise_alerts(found: list[tuple[str, Finding]]) -> None:
        raised[0] = ProcessResult(flows=0)
        _raise(deps, cluster, [(finding, keys[item_id]) for item_id, finding in found], raised[0], replayed=replayed)

    def health_then_alerts() -> None:
        _apply_health(deps, cluster, [(i, b) for i, b in items if i not in failed],
                      lambda health_found: raise_alerts(detector_found + health_found))

    try:
        if traffic:
            watchlist, errors = LOADER.load(deps.store)
            resets: list[str] = []
            _apply_detectors(deps, cluster, traffic, watchlist, failed, fresh, digests or {}, detector_found,
                             health_then_alerts, resets, replayed, delivered)
            errors = [*errors, *resets]
        else:
            health_then_alerts()
    except StoreError as exc:  # nothing of theirs is applied: the transport redelivers them
        fresh.clear()
        for item_id, _ in items:
            failed.setdefault(item_id, str(exc))
    if fresh:
        try:  # the service map's summary: batches applied for the first time only, so a redelivery adds nothing
            update_edge_summary(deps.store, cluster, [b.flows for b in fresh])
        except StoreError as exc:  # a map a little behind is no reason to score again
            errors = [*errors, f"edge summary not updated: {exc}"]
    result = raised[0]
    result.flows = sum(len(b.flows) for i, b in items if i not in failed)
    for item_id, why in [(i, why) for i, why in failed.items() if why in (_STALE, _CONFLICT)]:
        del failed[item_id]  # refused for good: acknowledged, counted, never retried
        if why == _STALE:
            result.stale += 1
        else:
            result.conflicts += 1
            errors = [*errors, f"batch {keys[item_id]}: {why}"]
    result.errors += [e for e in errors if e not in result.errors]
    return result


def _apply_detectors(deps: Dependencies, cluster: str, items: list[tuple[str, Batch]],
                     watchlist: list[WatchEntry], failed: dict[str, str], fresh: list[Batch],
                     digests: dict[str, int], found: list[tuple[str, Finding]], before_write: Callable[[], None],
                     resets: list[str], replayed: set[str], delivered: bool) -> None:
    """One compare-and-swap update of the cluster's detectors document for all ``items``; their findings
    go to ``found`` and ``before_write`` runs before the write. A batch whose scoring raises is left out
    (and reported in ``failed``) and the others are applied without it. ``resets`` gets why a stored
    baseline could not be read and was started afresh; ``replayed`` the keys of batches applied before."""
    now = deps.clock.now_ns()
    key = f"state/{cluster}/detectors.json"

    def step(stored: dict | None) -> dict | None:
        # a loop, not a recursive closure: one that calls itself holds itself, and with it the batches,
        # in a reference cycle that outlives every invocation until the cyclic collector runs
        while (document := attempt(stored)) is _AGAIN:
            pass
        return document

    def attempt(stored: dict | None) -> dict | None | object:
        doc = stored if stored is not None else _legacy_document(deps.store, cluster)
        applied = AppliedLog(doc.get("applied"))
        replay_log = dict(doc.get("findings", {}))
        found.clear()
        fresh.clear()
        replayed.clear()

        def new(item_id: str, batch: Batch) -> bool:
            """Whether the batch is new; a redelivery's findings are replayed, a refusal noted."""
            h = batch.header
            age = now - h.window_end_ns if delivered else 0
            status = applied.status(h.sensor_id, h.sequence, h.part, digests.get(item_id, 0), age)
            if status == APPLIED:
                found.extend((item_id, _finding(f)) for f in replay_log.get(batch_key(batch), ()))
                if all(batch_key(b) != batch_key(batch) for b in fresh):  # not the same key twice in this one
                    replayed.add(batch_key(batch))
            elif status == TOO_OLD:
                failed[item_id] = _STALE
            elif status == CONFLICT:
                failed[item_id] = _CONFLICT
            return status == NEW and item_id not in failed

        pending = [(item_id, batch) for item_id, batch in items if new(item_id, batch)]
        if not pending:  # nothing to apply: on a new cluster nothing to write either (an empty document is refused)
            return stored if stored is not None else doc or None
        states = doc.get("detectors", {})
        runners = detectors(deps.config, watchlist)
        resets.clear()
        for detector in runners:
            resets.extend(f"{key}: {why}" for why in _read_state(detector, states))
        for item_id, batch in pending:
            if fresh and not new(item_id, batch):  # the same key twice in one invocation
                continue
            try:
                made = [f for fs in observe_all(runners, batch) for f in fs]
            except Exception as exc:  # noqa: BLE001 - a batch that breaks a detector must not take the others
                failed[item_id] = f"scoring failed: {type(exc).__name__}: {exc}"
                return _AGAIN  # start again from the stored state, without it
            h = batch.header
            applied.mark(h.sensor_id, h.sequence, h.part, h.parts, now, digests.get(item_id, 0),
                         h.window_end_ns if delivered else 0)
            fresh.append(batch)
            found.extend((item_id, f) for f in made)
            if made:
                replay_log[batch_key(batch)] = [f.document() for f in made]
        applied.forget_older_than(now)
        while len(replay_log) > _APPLIED_KEEP:
            del replay_log[next(iter(replay_log))]
        return {"layout": LAYOUT, "detectors": {d.rule_id: d.to_state() for d in runners},
                "applied": applied.to_state(), "findings": replay_log}

    update_document(deps.store, key, step, before_write=before_write)


_AGAIN = object()  # _apply_detectors: a batch was left out; apply the rest from the stored state again


def _read_state(detector: Detector, states: dict[str, Any]) -> list[str]:
    """Load the detector's stored state; why it was started afresh instead, if it was: a document it
    cannot read, or an empty one where its state should be (never written by the core)."""
    stored = states.get(detector.rule_id)
    detector.from_state(stored)
    if detector.reset_reason:
        return [detector.reset_reason]
    if detector.rule_id in states and not stored:
        return [f"{detector.rule_id}: stored state is {json.dumps(stored)}, not a detector's state: started afresh"]
    return []


def _apply_health(deps: Dependencies, cluster: str, items: list[tuple[str, Batch]],
                  before_write: Callable[[list[tuple[str, Finding]]], None]) -> None:
    """Heartbeats of all ``items`` in one update (repeating a heartbeat changes nothing: counters are
    cumulative); ``before_write`` gets its findings before the write."""
    if not items:
        before_write([])
        return
    health = SensorHealth(deps.config.sensor_silent_after_s)
    found: list[tuple[str, Finding]] = []
    now = deps.clock.now_ns()

    def step(stored: dict | None) -> dict | None:
        health.from_state((stored or {}).get("state"))
        found.clear()
        touched = False
        for item_id, batch in items:
            found.extend((item_id, f) for f in health.observe(batch.header, now))
            touched |= health.touched
        found.extend((items[0][0], f) for f in health.check(now))
        touched |= health.touched  # the check may have forgotten nodes long gone
        if not touched and not found and stored is not None:
            return stored
        return {"state": health.to_state()}

    update_document(deps.store, f"state/{cluster}/sensor_health.json", step, before_write=lambda: before_write(found))


def _legacy_document(store: ObjectStore, cluster: str) -> dict:
    """Layout 1 kept one document per detector (``state/<cluster>/<rule id>.json``, each with its state
    and the batch keys it applied). Their states carry over into the first layout-2 document, so a
    deployed bucket keeps its baselines; the old documents are left as they were (delete them at will)."""
    states = {}
    present = set(store.list(f"state/{cluster}/"))  # one request on a new cluster, not eleven
    for detector in detectors(CoreConfig()):
        key = f"state/{cluster}/{detector.rule_id}.json"
        old, _ = read_document(store, key) if key in present else (None, None)
        if isinstance(old, dict) and old.get("state") is not None:
            states[detector.rule_id] = old["state"]
    return {"layout": LAYOUT, "detectors": states} if states else {}


def _raise(deps: Dependencies, cluster: str, findings: list[tuple[Finding, str]], result: ProcessResult,
           drain: bool = False, replayed: set[str] | frozenset[str] = frozenset()) -> None:
    """Findings that no allowlist (given, or in the store) silences become (or update) their alerts, one
    write per alert however many batches of the invocation found it. Those owing a notification (new,
    escalated, reopened) go through the outbox (shared/outbox.py), which also delivers what a dead
    invocation left owing: in invocations with findings, and on the schedule's tick (``drain``). Findings
    of ``replayed`` batches are never merged again into an alert that exists (_upsert_alert)."""
    stored, list_errors = ALLOW_LOADER.load(deps.store)
    result.errors += [e for e in list_errors if e not in result.errors]
    allow = [*deps.config.allowlist, *stored]
    by_alert: dict[str, list[tuple[Finding, str]]] = {}
    for finding, key in findings:
        if is_allowed(finding, allow):
            result.allowlisted += 1
        else:
            by_alert.setdefault(finding.fingerprint(cluster), []).append((finding, key))
    outbox.intend(deps, cluster, list(by_alert))
    owed: list[str] = []
    claim = outbox.new_claim()
    for alert_id, group in by_alert.items():
        alert, created, reason = _upsert_alert(deps.store, cluster, group, deps.clock, claim, replayed)
        if created:
            result.new_alerts.append(alert)
        elif alert is not None:
            result.updated_alerts.append(alert)
        if reason or alert is None:  # a replayed batch may have died before delivering
            owed.append(alert_id)
    if by_alert or drain:
        result.errors += outbox.settle(deps, cluster, owed, claim)


@dataclass(frozen=True)
class Delivery:
    """One message as a transport hands it over, its envelope removed (SQS base64, Pub/Sub data, Event
    Grid data, a NATS message): ``id`` is the transport's own id, used only to report outcomes back."""

    id: str
    data: bytes


_RETRY_DELAYS_S = (1.0, 5.0, 15.0, 30.0, 60.0)


def retry_delay_s(attempts: int) -> float:
    """How long a message not applied waits before it is tried again, after its ``attempts``-th try (a
    NATS nak's delay; the file queue's wait)."""
    return _RETRY_DELAYS_S[min(attempts, len(_RETRY_DELAYS_S)) - 1]


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
    """Score all messages of one invocation together: the entry point every queue adapter calls. They are
    applied together up to ``ROWS_HELD`` decoded rows at a time: a decoded full message holds some 40 MB,
    and an invocation holding all of them outgrew the function (16 messages of 131,072 flows: 825 MB)."""
    outcome = DeliveryOutcome(ProcessResult(flows=0))
    clusters: dict[str, list[tuple[str, Batch]]] = {}
    digests: dict[str, int] = {}
    held = 0
    for delivery in deliveries:
        try:
            message = authenticate(delivery.data, deps.keyring)
            batch = decode_batch(message)
        except BatchFormatError as exc:
            outcome.poison.append((delivery.id, str(exc)))
            continue
        digests[delivery.id] = content_digest(message, batch.header.parts)
        clusters.setdefault(_cluster(batch), []).append((delivery.id, batch))
        held += len(batch.flows) + len(batch.dns) + len(batch.pods)
        if held >= ROWS_HELD:
            _apply_held(clusters, digests, deps, outcome)
            clusters, held = {}, 0
    _apply_held(clusters, digests, deps, outcome)
    return outcome


def _apply_held(clusters: dict[str, list[tuple[str, Batch]]], digests: dict[str, int], deps: Dependencies,
                outcome: DeliveryOutcome) -> None:
    for cluster, items in clusters.items():
        failed: dict[str, str] = {}
        try:
            _merge_result(outcome.result, _apply_cluster(cluster, items, deps, failed, digests))
        except Exception as exc:  # noqa: BLE001 - the store failed: the transport redelivers them all
            failed = {item_id: f"{type(exc).__name__}: {exc}" for item_id, _ in items}
        outcome.retry += list(failed.items())
        outcome.applied += [item_id for item_id, _ in items if item_id not in failed]


def _merge_result(into: ProcessResult, result: ProcessResult) -> None:
    into.flows += result.flows
    into.new_alerts += result.new_alerts
    into.updated_alerts += result.updated_alerts
    into.allowlisted += result.allowlisted
    into.stale += result.stale
    into.conflicts += result.conflicts
    into.errors += [e for e in result.errors if e not in into.errors]


def check_all_sensors(deps: Dependencies) -> ProcessResult:
    """The schedule's tick over every cluster that has sent heartbeats (an adapter's timer calls this). A
    cluster whose check fails (a document that cannot be read, a store error) is one of ``errors``: the
    other clusters are still checked, and their outboxes drained."""
    total = ProcessResult(flows=0)
    for cluster in clusters_with_sensors(deps.store):
        try:
            _merge_result(total, check_sensors(deps, cluster))
        except StoreError as exc:
            total.errors.append(f"sensor check of cluster {cluster} failed: {exc}")
    return total


def check_sensors(deps: Dependencies, cluster: str) -> ProcessResult:
    """The scheduled check (a timer, not a batch): sensors silent for too long raise sensor_silent.
    Without it a cluster whose sensors all stopped would never be told."""
    health = SensorHealth(deps.config.sensor_silent_after_s)
    found: list[Finding] = []

    def step(stored: dict | None) -> dict | None:
        health.from_state((stored or {}).get("state"))
        found[:] = health.check(deps.clock.now_ns())
        return {"state": health.to_state()} if found or health.touched else stored

    update_document(deps.store, f"state/{cluster}/sensor_health.json", step)
    result = ProcessResult(flows=0)
    tick = f"tick/{deps.clock.now_ns()}"
    _raise(deps, cluster, [(finding, tick) for finding in found], result, drain=True)
    return result


def clusters_with_sensors(store: ObjectStore) -> list[str]:
    """Clusters whose sensors have sent heartbeats (those the scheduled check looks at)."""
    return sorted({k.split("/")[1] for k in store.list("state/") if k.endswith("/sensor_health.json")})


def batch_key(batch: Batch) -> str:
    """What identifies a message across redeliveries: its sensor, sequence number and part."""
    h = batch.header
    return identity.batch_key(h.sensor_id, h.sequence, h.part)


def end_learning(store: ObjectStore, cluster: str) -> None:
    """Close the learning period of every detector that learns, now (``analyze`` after ``--learn``)."""

    def close(doc: dict | None) -> dict:
        doc = doc if doc is not None else _legacy_document(store, cluster)
        states = dict(doc.get("detectors", {}))
        for detector in detectors(CoreConfig()):
            detector.from_state(states.get(detector.rule_id))
            detector.end_learning()
            states[detector.rule_id] = detector.to_state()
        return {**doc, "layout": LAYOUT, "detectors": states}

    update_document(store, f"state/{cluster}/detectors.json", close)


def _finding(d: dict[str, Any]) -> Finding:
    """A finding of the replay log. Fields a later version added are left out: in a rollback or a mixed
    rollout this version reads what that one wrote (Finding(**d) refused them, on every redelivery)."""
    known = {f.name for f in fields(Finding)}
    return Finding(**{**{k: v for k, v in d.items() if k in known}, "identity": tuple(d.get("identity", ()))})


def _upsert_alert(store: ObjectStore, cluster: str, findings: list[tuple[Finding, str]], clock: Clock,
                  claim: str = "", replayed: set[str] | frozenset[str] = frozenset()
                  ) -> tuple[dict | None, bool, str | None]:
    """Create or update one alert with its findings (each with the key of the batch that made it), in one
    write: (alert, created, why it owes a notification); (None, False, None) when every one of those
    batches was already merged into it. A ``replayed`` batch was merged when it was applied (the alerts
    are written before the detectors' document), even once its key has left the alert's last
    ``_BATCHES_KEEP``: it is never merged twice. Triage fields survive the merge (shared/triage.py)."""
    outcome: list = [False, False, None]  # created, replayed, reason

    def change(alert: dict | None) -> dict:
        outcome[:] = [alert is None, True, None]
        updated = None if alert is None else normalize(alert)
        for finding, key in findings:
            if updated is not None and (key in updated.get("batches", ()) or key in replayed):
                continue
            outcome[1] = False
            updated = new_alert(finding, cluster) if updated is None else merge_alert(updated, finding)
            updated["batches"] = [*updated.get("batches", ()), key][-_BATCHES_KEEP:]  # what it has merged
        if outcome[1]:
            return alert
        now = clock.now_ns()
        updated, outcome[2] = on_detection(alert, updated, now)
        if outcome[2]:
            updated = outbox.mark_pending(updated, outcome[2], now, claim)
        updated["updated_at_ns"] = now
        return updated

    alert = update_document(store, f"alerts/{cluster}/{findings[0][0].fingerprint(cluster)}.json", change)
    return (None, False, None) if outcome[1] else (alert, outcome[0], outcome[2])
