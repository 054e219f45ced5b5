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
from kubesonar.shared.signing import Keyring, authenticate


class LocalBackend:
    def __init__(self, state_dir: str | Path, config: CoreConfig | None = None, remember: int = 100_000,
                 keyring: Keyring | None = None, notifier: Notifier | None = None):
        # a long-running process passes its own notifier: the collecting one keeps every alert in memory
        self.notifier = notifier or CollectingNotifier()
        self.deps = Dependencies(LocalObjectStore(Path(state_dir)), self.notifier, SystemClock(),
                                 config or CoreConfig(), keyring=keyring)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        self.counters = {"messages": 0, "duplicates": 0, "decode_errors": 0, "flows": 0, "alerts": 0}
        self.errors: list[str] = []
        self.heartbeats: dict[str, dict[str, int]] = {}  # sensor id -> its latest health counters

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
            self.errors.append(f"{key}: {exc}")
            return None
        self._seen[key] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        self.counters["messages"] += 1
        self.counters["flows"] += len(batch.flows)
        self.heartbeats[batch.header.sensor_id] = batch.header.counters
        try:
            result = process_batch(batch, self.deps, content_digest(message, batch.header.parts))
        except Exception as exc:  # noqa: BLE001 - the state directory failed (full, read-only) or a fault of
            # ours: counted, shown, retried by the caller; raised, it ended the process on this file at each start
            self.counters["process_errors"] = self.counters.get("process_errors", 0) + 1
            self.errors.append(f"{key}: {exc}" if isinstance(exc, KubeSonarError) else
                               f"{key}: {type(exc).__name__}: {exc}")
            del self._seen[key]  # not applied: a redelivery may still succeed
            return None
        self.counters["alerts"] += len(result.alerts)
        if result.conflicts:  # a key applied before with other content: refused, shown
            self.counters["conflicts"] = self.counters.get("conflicts", 0) + result.conflicts
        self.errors += [e for e in result.errors if e not in self.errors]  # faults met: shown by the caller
        return result

    def alerts(self) -> list[dict[str, Any]]:
        return getattr(self.notifier, "sent", [])
