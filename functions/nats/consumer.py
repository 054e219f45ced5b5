"""The backend's loop on a durable pull consumer shared by every replica.

Each step fetches up to ``batch`` messages, hands them to the core in ONE call (one read and write of
each state document per step), then settles each message by its outcome: applied -> ack; poison (never
decodes) -> copied to the dead-letter stream, then terminated; retry -> nak with a growing delay, and
after ``max_deliveries`` deliveries dead-lettered and terminated like poison. A message is acked only
after the core applied it, so a replica killed mid-step loses nothing: its messages come back to
another replica after the ack wait, and the core ignores a batch key it has applied (no duplicate alert).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors

from kubesonar.functions.nats.connection import NatsConnection
from kubesonar.functions.nats.streams import Layout, ensure_streams
from kubesonar.shared.pipeline import Delivery, DeliveryOutcome, Dependencies, process_deliveries, retry_delay_s

_DEAD_HEADROOM = 8 * 1024  # our headers on a dead letter: its body is cut to fit the server's max payload


@dataclass
class StepReport:
    """What one step did, for metrics and logs."""

    messages: int = 0
    redeliveries: int = 0
    dead_lettered: list[tuple[str, str]] = field(default_factory=list)  # (batch key or id, why)
    retried: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    outcome: DeliveryOutcome | None = None


class NatsConsumer:
    def __init__(self, connection: NatsConnection, layout: Layout, deps: Dependencies, batch: int = 64,
                 max_deliveries: int = 5, ack_wait_s: float = 120.0, fetch_wait_s: float = 1.0):
        self._conn, self.layout, self.deps = connection, layout, deps
        self.batch, self.max_deliveries, self.fetch_wait_s = batch, max_deliveries, fetch_wait_s
        replicas = connection.address.replicas
        connection.run(ensure_streams(connection.js, layout, replicas, max_deliveries, ack_wait_s))
        self._sub = connection.run(connection.js.pull_subscribe(layout.subject, durable=layout.consumer,
                                                                stream=layout.stream))

    def step(self) -> StepReport:
        """Fetch, score and settle one batch of messages (none within the fetch wait: an empty report)."""
        report = StepReport()
        messages = self._fetch()
        if not messages:
            return report
        started = time.perf_counter()
        by_id = {str(m.metadata.sequence.stream): m for m in messages}
        outcome = process_deliveries([Delivery(i, m.data or b"") for i, m in by_id.items()], self.deps)
        self._conn.run(self._settle(by_id, outcome, report))
        report.messages, report.outcome = len(messages), outcome
        report.redeliveries = sum(1 for m in messages if m.metadata.num_delivered > 1)
        report.seconds = time.perf_counter() - started
        return report

    def _fetch(self) -> list[Any]:
        try:
            return self._conn.run(self._sub.fetch(self.batch, timeout=self.fetch_wait_s),
                                  timeout=self.fetch_wait_s + self._conn.timeout_s)
        except (nats.errors.TimeoutError, TimeoutError):
            return []

    async def _settle(self, by_id: dict[str, Any], outcome: DeliveryOutcome, report: StepReport) -> None:
        settles = [by_id[i].ack() for i in outcome.applied]
        for message_id, why in outcome.poison:
            settles.append(self._dead_letter(by_id[message_id], f"does not decode: {why}", report))
        for message_id, why in outcome.retry:
            message = by_id[message_id]
            deliveries = message.metadata.num_delivered
            if deliveries >= self.max_deliveries:
                settles.append(self._dead_letter(message, f"failed {deliveries} times: {why}", report))
            else:
                report.retried.append((_key(message), why))
                settles.append(message.nak(delay=retry_delay_s(deliveries)))
        await asyncio.gather(*settles)
        await self._conn.nc.flush()

    async def _dead_letter(self, message: Any, why: str, report: StepReport) -> None:
        """Keep it in the dead-letter stream (with why), then end its deliveries."""
        headers = {"KubeSonar-Reason": why[:1000], "KubeSonar-Deliveries": str(message.metadata.num_delivered),
                   "KubeSonar-Stream-Sequence": str(message.metadata.sequence.stream),
                   "Nats-Msg-Id": f"dead/{message.metadata.sequence.stream}"}
        if _key(message):
            headers["KubeSonar-Batch-Key"] = _key(message)[:1000]
        # a message near the max payload no longer fits with these headers, and the server answers an
        # oversized publish by closing the connection (nats-py does not reconnect after that -ERR)
        data, room = message.data or b"", self._conn.nc.max_payload - _DEAD_HEADROOM
        if len(data) > room:
            headers["KubeSonar-Truncated"] = f"{room} of {len(data)} bytes kept"
            data = data[:room]
        await self._conn.js.publish(self.layout.dead_subject, data, headers=headers)
        await message.term()
        report.dead_lettered.append((_key(message) or str(message.metadata.sequence.stream), why))

    def lag(self) -> int:
        """Messages in the stream not yet delivered to any replica (the consumer's backlog)."""
        info = self._conn.run(self._conn.js.consumer_info(self.layout.stream, self.layout.consumer))
        return int(info.num_pending or 0)

    def gone(self) -> bool:
        """Whether the server says the durable consumer (or its stream) no longer exists: an operator
        deleted it. A server away or busy is not that (nothing is known then)."""
        try:
            self._conn.run(self._conn.js.consumer_info(self.layout.stream, self.layout.consumer, timeout=2.0))
        except nats.js.errors.NotFoundError:
            return True
        except Exception:  # noqa: BLE001 - unreachable, timed out: not known to be gone
            return False
        return False

    def run(self, stop: Callable[[], bool], on_step: Callable[[StepReport], None]) -> None:
        """Steps until ``stop()``; the step in hand is finished and settled first (graceful drain)."""
        while not stop():
            on_step(self.step())

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the server gone at shutdown: the consumer outlives us anyway
            self._conn.run(self._sub.unsubscribe())
        self._conn.close()


def _key(message: Any) -> str:
    return (message.headers or {}).get("Nats-Msg-Id", "")
