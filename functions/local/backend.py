"""The embedded backend as a queue consumer: batch messages in, the core on a local directory store.

Used by ``kubesonar watch`` (sensor and backend in one process) and by anything reading a
``file://`` queue. Messages are deduplicated by key (sensor id, sequence, part): a queue may deliver
one twice, a spool may resend one, and neither may count twice.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.applied import content_digest
from kubesonar.shared.batch import decode_batch
from kubesonar.shared.errors import BatchFormatError, KubeSonarError
from kubesonar.shared.pipeline import CoreConfig, Dependencies, ProcessResult, process_batch
from kubesonar.shared.ports import Notifier, SystemClock
from kubesonar.shared.signing import Verifier, authenticate

# what `kubesonar watch` keeps in memory for months: the latest alerts, faults and sensors heard (a sensor
# id is new at each sensor start), never one more per alert, fault or restart
ALERTS_KEEP = 1000
ERRORS_KEEP = 100
HEARTBEATS_KEEP = 1000


class LocalBackend:
    def __init__(self, state_dir: str | Path, config: CoreConfig | None = None, remember: int = 100_000,
                 keyring: Verifier | None = None, notifier: Notifier | None = None):
        self.notifier = notifier or CollectingNotifier(keep=ALERTS_KEEP)
        self.deps = Dependencies(LocalObjectStore(Path(state_dir)), self.notifier, SystemClock(),
                                 config or CoreConfig(), keyring=keyring)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.counters = {"messages": 0, "duplicates": 0, "decode_errors": 0, "flows": 0, "alerts": 0}
        self.errors: list[str] = []
        self.heartbeats: OrderedDict[str, dict[str, int]] = OrderedDict()  # sensor id -> its latest counters

    def receive(self, key: str, message: bytes) -> ProcessResult | None:
        """Score one message; None for a duplicate or a message that does not decode (counted)."""
        if key in self._seen:
            self.counters["duplicates"] += 1
            return None
        try:
            message = authenticate(message, self.deps.keyring)
            batch = decode_batch(message)
        except BatchFormatError as exc:
            self.counters["decode_errors"] += 1
            self._fault(f"{key}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - a fault of ours, not the message's: retried, like one below
            self._not_applied(key, exc)
            return None
        self._seen[key] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        self.counters["messages"] += 1
        self.counters["flows"] += len(batch.flows)
        self.heartbeats[batch.header.sensor_id] = batch.header.counters
        self.heartbeats.move_to_end(batch.header.sensor_id)
        if len(self.heartbeats) > HEARTBEATS_KEEP:  # the sensor heard from least recently (a restarted one)
            self.heartbeats.popitem(last=False)
        try:
            result = process_batch(batch, self.deps, content_digest(message, batch.header.parts), delivered=True)
        except Exception as exc:  # noqa: BLE001 - the state directory failed (full, read-only) or a fault of
            # ours: counted, shown, retried by the caller; raised, it ended the process on this file at each start
            self._not_applied(key, exc)
            del self._seen[key]  # a redelivery may still succeed
            return None
        self.counters["alerts"] += len(result.alerts)
        if result.stale:  # a window too old to tell from a replay (shared/applied.py): refused, counted
            self.counters["stale"] = self.counters.get("stale", 0) + result.stale
        if result.conflicts:  # a key applied before with other content: refused, shown
            self.counters["conflicts"] = self.counters.get("conflicts", 0) + result.conflicts
        for fault in result.errors:  # faults met: shown by the caller
            if fault not in self.errors:
                self._fault(fault)
        return result

    def _not_applied(self, key: str, exc: Exception) -> None:
        self.counters["process_errors"] = self.counters.get("process_errors", 0) + 1
        self._fault(f"{key}: {exc}" if isinstance(exc, KubeSonarError) else f"{key}: {type(exc).__name__}: {exc}")

    def _fault(self, error: str) -> None:
        self.errors.append(error)
        del self.errors[:-ERRORS_KEEP]  # the latest; the counters count them all

    def alerts(self) -> list[dict[str, Any]]:
        return getattr(self.notifier, "sent", [])
