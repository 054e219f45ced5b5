"""The composition root: the one place that assembles the product's pieces.

capture (file or live) -> flow engine -> enrichment -> batch messages -> publisher (``replay``, ``sensor``),
and queue -> backend -> core -> store and notifier (``analyze``, ``watch``). CLI commands are thin calls
into these functions; ``sensor/``, ``shared/`` and ``functions/`` never import one another sideways.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubesonar.sensor.capture_file import STDIN
from kubesonar.sensor.offline import CaptureStats, Observed, read_captures
from kubesonar.shared.batch import PUBSUB_LIMIT, BatchHeader, decode_batch, encode_batch

# the detection core, its stores and the allowlists are imported where used: the sensor never loads them

RECORDS_PER_BATCH = 50_000
_SENSOR_ID = "offline"
# where a --state directory keeps the cluster's edge its runs were judged with (JSON: the internal
# networks, [] for every address outside, null for the private ranges)
EDGE_KEY = "analyze/{cluster}/edge.json"


def _first_sequence() -> int:
    """A --state directory kept between runs has seen this sensor's earlier sequence numbers: go on
    from the clock so a new run's batches are new to the core."""
    return time.time_ns() // 1000


@dataclass
class AnalysisResult:
    alerts: list[dict[str, Any]]
    flows: int
    stats: CaptureStats
    errors: list[str] = field(default_factory=list)  # faults the core met and went on (ProcessResult.errors)
    # of the scored captures' flows (not the learning ones): those whose responder is outside the
    # cluster (shared/netzones.py), the only ones beaconing, exfiltration, reverse shells and unusual
    # destinations judge; and those that would be with no internal network (not special-use, not a pod)
    outside_flows: int = 0
    outside_with_no_internal_network: int = 0
    # no internal network was named and no flow had an end beyond the private ranges: every address was
    # judged outside (_boundary_known)
    judged_all_outside: bool = False
    edge: Edge | None = None  # the cluster's edge the run judged with
    # the edge was taken from the --state directory, as its earlier runs were judged (None: not taken)
    edge_from_state: Edge | None = None
    # the edge named for this run differs from the one the --state directory's earlier runs were judged
    # with (None: it does not, or there were none)
    edge_before: Edge | None = None


@dataclass(frozen=True)
class Edge:
    """The cluster's edge a run judged with: the internal networks, () for every address outside, None
    for the private ranges (and the pods of --pods)."""

    networks: tuple[str, ...] | None

    def __str__(self) -> str:
        if self.networks is None:
            return "the private ranges"
        return ", ".join(self.networks) if self.networks else "every address outside (as --internal-network none)"


def _edge(networks: Iterable[str] | None) -> Edge:
    """The edge of these internal networks: named in another order or spelling, the same edge."""
    if networks is None:
        return Edge(None)
    return Edge(tuple(sorted({str(ipaddress.ip_network(n, strict=False)) for n in networks})))


def _recorded_edge(store: Any, cluster: str) -> tuple[Edge | None, str | None]:
    """The edge an earlier run on this --state directory recorded, and a fault if its record is unreadable
    (then the edge is found anew: a broken record must not stop the analysis)."""
    stored = store.get(EDGE_KEY.format(cluster=cluster))
    if stored is None:
        return None, None
    try:
        networks = json.loads(stored.data)["internal_networks"]
        if networks is not None and not (isinstance(networks, list) and all(isinstance(n, str) for n in networks)):
            raise ValueError("internal_networks is neither null nor a list of CIDRs")
        return _edge(networks), None  # a network that does not parse raises ValueError: unreadable too
    except (ValueError, KeyError, TypeError) as e:
        key = EDGE_KEY.format(cluster=cluster)
        return None, f"the edge recorded in the state ({key}) is unreadable ({e}); found anew"


def _record_edge(store: Any, cluster: str, edge: Edge) -> None:
    networks = None if edge.networks is None else list(edge.networks)
    store.put(EDGE_KEY.format(cluster=cluster), json.dumps({"internal_networks": networks}).encode())


def _boundary_known(paths: Iterable[str]) -> bool:
    """Whether the private ranges can stand for the cluster's edge in these captures: some flow has an
    end beyond them. A capture in which none does was taken where the private ranges are the whole
    world (a lab, an office LAN, a malware sandbox, whose command server sits at 172.18.0.2): judging
    only traffic leaving them would judge nothing, and the outbound rules would be silent on every
    command server in it. Read apart from the scoring (the flow engine is cheap beside the core), and
    stopped at the first flow that crosses."""
    from kubesonar.shared.netzones import Zones

    private = Zones()
    # faults are counted by the scoring read; DNS messages say nothing of the edge
    for observed in read_captures(paths, stats=CaptureStats(), dns=False):
        flows = observed.flows
        if not (private.inside(flows["src_addr"]).all() and private.inside(flows["dst_addr"]).all()):
            return True
    return False


def _read_once(path: str) -> bool:
    """Standard input, a pipe or a FIFO: a look ahead (_boundary_known) would leave the scoring read an
    empty stream, or a FIFO's second open waiting for a writer that is gone."""
    if path == STDIN:
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # missing or unreadable: the scoring read reports it
        return False


def _batches(observed: Iterator[Observed], cluster: str, node: str, sequences: Iterator[int]) -> Iterator[bytes]:
    """Encode flows and DNS messages the way a sensor publishes them, so the core reads real batch
    messages. Sequence numbers run on across calls: the core skips a (sensor, sequence, part) it has seen."""
    for chunk in observed:
        flows, dns = chunk.flows, chunk.dns
        for start in range(0, max(len(flows), 1), RECORDS_PER_BATCH):
            part = flows.take(slice(start, start + RECORDS_PER_BATCH))
            times = np.concatenate([part["first_ts"], part["last_ts"], dns["ts"] if start == 0 else []])
            header = BatchHeader(cluster, node, _SENSOR_ID, next(sequences), int(times.min()), int(times.max()))
            yield from encode_batch(header, part, limit=PUBSUB_LIMIT, dns=dns if start == 0 else None)


def analyze(
    captures: Iterable[str], learn: Iterable[str] = (), pods: str | None = None, state_dir: str | None = None,
    cluster: str = "default", learning_period_s: float | None = None, allowlists: Iterable[str] = (),
    internal_networks: tuple[str, ...] | None = None,
) -> AnalysisResult:
    from kubesonar.functions.local.notifier import CollectingNotifier
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.shared.allowlist import load_allowlist
    from kubesonar.shared.inventory import PodInventory
    from kubesonar.shared.netzones import Zones
    from kubesonar.shared.pipeline import CoreConfig, Dependencies, end_learning, process_batch
    from kubesonar.shared.ports import SystemClock

    inventory = PodInventory.load(pods) if pods else None
    allowed = tuple(entry for path in allowlists for entry in load_allowlist(path))
    # with no internal network named and no pods to name the cluster's own addresses, the private ranges
    # stand for the cluster's edge unless nothing in the captures crosses it (_boundary_known); a stream
    # is read once, so they stand for it there
    # A --state directory kept between runs holds baselines learned with one edge: a later run guessing
    # another (a capture that crosses the private ranges after a lab's that did not) would mix them, and
    # destinations judged inside before were never learned as outside. So a run that names no edge takes
    # the one recorded by the first, and one that names another is told the baselines were not learned so.
    learn, captures = list(learn), list(captures)
    named = internal_networks is not None or inventory is not None
    with ExitStack() as stack:
        root = state_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="kubesonar-state-"))
        store = LocalObjectStore(Path(root))
        recorded, fault = _recorded_edge(store, cluster)
        errors: list[str] = [fault] if fault else []
        edge_from_state = recorded if recorded is not None and not named else None
        judged_all_outside = False
        if edge_from_state is not None:
            internal_networks = edge_from_state.networks
        elif not named:
            judged_all_outside = (not any(map(_read_once, [*learn, *captures]))
                                  and not _boundary_known([*learn, *captures]))
            internal_networks = () if judged_all_outside else None
        edge = _edge(internal_networks)
        notifier = CollectingNotifier()
        stats = CaptureStats()
        touched: dict[str, dict[str, Any]] = {}
        flows = outside = outside_if_none = 0
        phases = [(list(learn), True), (list(captures), False)]
        sequences = itertools.count(_first_sequence())
        for paths, learning in phases:
            if not paths:
                continue
            options: dict[str, Any] = {} if learning_period_s is None else {"learning_period_s": learning_period_s}
            if internal_networks is not None:
                options["internal_networks"] = internal_networks
            config = CoreConfig(learning=learning, allowlist=allowed, **options)
            deps = Dependencies(store, notifier, SystemClock(), config)
            zones, no_internal_network = Zones(config.internal_networks), Zones(())
            observed = read_captures(paths, stats=stats)
            if inventory is not None:
                observed = (Observed(inventory.enrich(o.flows), inventory.enrich(o.dns)) for o in observed)
            for message in _batches(observed, cluster, "offline", sequences):
                batch = decode_batch(message)
                flows += len(batch.flows)
                if not learning:
                    rows = np.arange(len(batch.flows))
                    outside += len(zones.outside(batch.flows, rows))
                    outside_if_none += len(no_internal_network.outside(batch.flows, rows))
                result = process_batch(batch, deps)
                for alert in result.alerts:
                    touched[alert["id"]] = alert
                errors += [e for e in result.errors if e not in errors]
            if learning:
                end_learning(store, cluster)
        if flows and edge != recorded:  # a run that read nothing (a missing capture) showed no edge
            _record_edge(store, cluster, edge)
        return AnalysisResult(sorted(touched.values(), key=lambda a: a["first_seen"]), flows, stats, errors, outside,
                              outside_if_none, judged_all_outside, edge, edge_from_state,
                              recorded if named and recorded not in (None, edge) else None)


@dataclass
class ReplaySummary:
    windows: int = 0
    messages: int = 0
    flows: int = 0
    dns: int = 0
    bytes: int = 0
    stats: CaptureStats = field(default_factory=CaptureStats)


def replay(captures: Iterable[str], publisher: Any, cluster: str = "default", node: str = "replay",
           pods: str | None = None, window_s: float = 10.0, sensor_id: str | None = None,
           progress: Any = None, signer: Any = None) -> ReplaySummary:
    """The offline sensor publishing a capture as a live sensor would have: its flows cut into windows of
    ``window_s`` seconds of capture time (a flow is reported in the window in which it ended, DNS messages
    in the window of their time), one batch per window, each with its heartbeat counters, sent through
    ``publisher`` (any queue kind). Windows without traffic are not sent. A header's window times are
    when it is sent, as a live sensor's are: the core refuses a message whose window ended a day ago as a
    replay (shared/applied.py), and a capture may be years old; the rows keep their capture times."""
    from kubesonar.sensor.queues import window_messages
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.inventory import PodInventory

    inventory = PodInventory.load(pods) if pods else None
    summary = ReplaySummary()
    chunks = list(read_captures(captures, stats=summary.stats))
    flows = FlowRecords.concat([c.flows for c in chunks]) if chunks else FlowRecords.empty()
    dns = DnsMessages.concat([c.dns for c in chunks]) if chunks else DnsMessages.empty()
    if inventory is not None:
        flows, dns = inventory.enrich(flows), inventory.enrich(dns)
    window_ns = int(window_s * 1e9)
    flow_window = flows["last_ts"] // window_ns
    dns_window = dns["ts"] // window_ns
    sensor_id = sensor_id or f"{node}/replay-{time.time_ns():x}"
    windows = np.unique(np.concatenate([flow_window, dns_window]))
    sent = 0
    for sequence, window in enumerate(windows.tolist()):
        sent = max(time.time_ns(), sent + 1)  # each window later than the last, as a sensor's
        in_flows, in_dns = np.flatnonzero(flow_window == window), np.flatnonzero(dns_window == window)
        counters = {"packets": summary.stats.packets} if sequence == len(windows) - 1 else {}
        header = BatchHeader(cluster, node, sensor_id, sequence, sent - window_ns, sent, counters=counters)
        messages = window_messages(header, flows.take(in_flows), publisher.limit, dns=dns.take(in_dns), signer=signer)
        publisher.send(messages)
        summary.windows += 1
        summary.messages += len(messages)
        summary.flows += len(in_flows)
        summary.dns += len(in_dns)
        summary.bytes += sum(len(m.data) for m in messages)
        if progress:
            progress(summary)
    return summary


def build_sensor(settings: Any, queue: str, spool: str, spool_max_bytes: int, enrich: Any = None,
                 watcher: Any = None, signer: Any = None, health_file: str | None = None) -> Any:
    """The live sensor: capture -> flows -> enrichment -> batch messages -> spool -> the queue's publisher."""
    from kubesonar.sensor.live import LiveSensor
    from kubesonar.sensor.liveness import Heartbeat, stale_after

    beats = Heartbeat(health_file, stale_after(settings.window_s)) if health_file else None
    heartbeat = beats.beat if beats else None
    if beats:
        # alive while it starts (a file left by the container's last life may be stale), for as long as
        # the capture workers' first answer may take: without the native module, kernels compile then
        from kubesonar.sensor.capture_workers import START_TIMEOUT_S

        beats.beat(ahead_s=max(beats.stale_after_s, START_TIMEOUT_S))
    from kubesonar.sensor.queues import open_publisher, window_messages
    from kubesonar.sensor.queues.refusals import REFUSING_ALL_MARKER, DropRefused
    from kubesonar.sensor.spool import SpoolingPublisher
    from kubesonar.shared.url_credentials import without_credentials

    queue_publisher = DropRefused(open_publisher(queue), queue=without_credentials(queue),
                                  marker=Path(spool, REFUSING_ALL_MARKER))
    publisher = SpoolingPublisher(queue_publisher, spool, max_bytes=spool_max_bytes)

    def publish(window: Any) -> None:
        publisher.publish(window_messages(window.header, window.flows, publisher.limit, window.pods, window.dns,
                                          signer=signer))

    def spool_counters() -> dict[str, int]:
        s = publisher.stats
        counters = {"spool_depth": s.depth, "spool_dropped": s.dropped, "spool_expired": s.expired,
                    "spool_quarantined": s.quarantined, "publish_retries": s.retries,
                    "queue_refused": queue_publisher.refused, "queue_refusing_all": int(queue_publisher.refusing_all),
                    "queue_refusal_holds": queue_publisher.holds, "queue_hold_probes": queue_publisher.probes}
        return counters | (watcher.counters() if watcher else {})

    return LiveSensor(settings, publish, enrich=enrich, extra_counters=spool_counters,
                      pod_events=watcher.take_events if watcher else None, heartbeat=heartbeat)


def build_watch(settings: Any, state_dir: str, enrich: Any, show: Any) -> tuple[Any, Any]:
    """Sensor and backend in one process: each window goes through the real batch format to the core on a
    local store, as a cloud function would get it; ``show`` is called with every new alert."""
    from kubesonar.functions.local.backend import LocalBackend
    from kubesonar.sensor.live import LiveSensor
    from kubesonar.sensor.queues import window_messages
    from kubesonar.shared.batch import SQS_LIMIT

    backend = LocalBackend(state_dir)

    def score(window: Any) -> None:
        for message in window_messages(window.header, window.flows, SQS_LIMIT, window.pods, window.dns):
            result = backend.receive(message.key, message.data)
            for alert in result.new_alerts if result else []:
                show(alert)

    return LiveSensor(settings, score, enrich=enrich), backend
