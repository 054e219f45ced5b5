"""The embedded default: captures in, the core on a local directory, alerts out. No cloud account."""

from __future__ import annotations

import itertools
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.sensor.offline import CaptureStats, Observed, read_captures
from kubesonar.shared.batch import PUBSUB_LIMIT, BatchHeader, decode_batch, encode_batch
from kubesonar.shared.allowlist import load_allowlist
from kubesonar.shared.inventory import PodInventory
from kubesonar.shared.pipeline import CoreConfig, Dependencies, end_learning, process_batch
from kubesonar.shared.ports import SystemClock

RECORDS_PER_BATCH = 50_000
_SENSOR_ID = "offline"


def _first_sequence() -> int:
    """A --state directory kept between runs has seen this sensor's earlier sequence numbers: go on
    from the clock so a new run's batches are new to the core."""
    return time.time_ns() // 1000


@dataclass
class CollectingNotifier:
    """Keeps what would be pushed; the CLI prints it."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    def notify(self, alert: dict[str, Any]) -> None:
        self.sent.append(alert)


@dataclass
class AnalysisResult:
    alerts: list[dict[str, Any]]
    flows: int
    stats: CaptureStats


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
    inventory = PodInventory.load(pods) if pods else None
    allowed = tuple(entry for path in allowlists for entry in load_allowlist(path))
    with ExitStack() as stack:
        root = state_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="kubesonar-state-"))
        store = LocalObjectStore(Path(root))
        notifier = CollectingNotifier()
        stats = CaptureStats()
        touched: dict[str, dict[str, Any]] = {}
        flows = 0
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
            observed = read_captures(paths, stats=stats)
            if inventory is not None:
                observed = (Observed(inventory.enrich(o.flows), inventory.enrich(o.dns)) for o in observed)
            for message in _batches(observed, cluster, "offline", sequences):
                batch = decode_batch(message)
                flows += len(batch.flows)
                for alert in process_batch(batch, deps).alerts:
                    touched[alert["id"]] = alert
            if learning:
                end_learning(store, cluster)
        return AnalysisResult(sorted(touched.values(), key=lambda a: a["first_seen"]), flows, stats)
