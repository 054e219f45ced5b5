"""The JetStream layout the backend creates (and leaves alone when it exists, so an operator may tune it).

For a queue subject ``S`` (e.g. ``kubesonar.batches``):
- stream ``KUBESONAR_BATCHES`` on ``S``: work-queue retention (a message leaves once acked), file
  storage, the duplicate window in which ``Nats-Msg-Id`` (the batch key) drops resends;
- stream ``KUBESONAR_BATCHES_DEAD`` on ``S.dead``: messages that never decode or kept failing, with
  why, kept two weeks;
- the durable pull consumer (``kubesonar-backend``) every backend replica shares;
- stream ``KUBESONAR_ALERTS`` on ``kubesonar.alerts.>``: alerts as published, kept 30 days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

DAY_S = 86_400.0
ALERTS_PREFIX = "kubesonar.alerts"


@dataclass(frozen=True)
class Layout:
    subject: str
    consumer: str = "kubesonar-backend"
    duplicate_window_s: float = 600.0  # a spool drains well within ten minutes of the server's return
    # unconsumed batches older than a week are dropped; the core already refuses those whose window ended
    # 23 hours ago (shared/applied.py), and a stream made with this age is left as it is
    max_age_s: float = 7 * DAY_S

    @property
    def stream(self) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.subject).upper()

    @property
    def dead_subject(self) -> str:
        return self.subject + ".dead"

    @property
    def dead_stream(self) -> str:
        return self.stream + "_DEAD"


async def ensure_streams(js: Any, layout: Layout, replicas: int, max_deliveries: int, ack_wait_s: float) -> None:
    await _ensure_stream(js, StreamConfig(
        name=layout.stream, subjects=[layout.subject], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE, num_replicas=replicas, duplicate_window=layout.duplicate_window_s,
        max_age=layout.max_age_s, description="KubeSonar sensor batches"))
    await _ensure_stream(js, StreamConfig(
        name=layout.dead_stream, subjects=[layout.dead_subject], storage=StorageType.FILE,
        num_replicas=replicas, max_age=14 * DAY_S, description="KubeSonar batches that failed for good"))
    await _ensure_stream(js, StreamConfig(
        name="KUBESONAR_ALERTS", subjects=[ALERTS_PREFIX + ".>"], storage=StorageType.FILE,
        num_replicas=replicas, max_age=30 * DAY_S, duplicate_window=3600.0, description="KubeSonar alerts"))
    try:
        await js.consumer_info(layout.stream, layout.consumer)
    except nats.js.errors.NotFoundError:
        # the server stops redelivering one past our own bound, a net for a backend that dies on a message
        await js.add_consumer(layout.stream, ConsumerConfig(
            durable_name=layout.consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s,
            max_deliver=max_deliveries + 1, max_ack_pending=10_000, filter_subject=layout.subject,
            num_replicas=replicas))


async def _ensure_stream(js: Any, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:  # another replica created it meanwhile
            await js.stream_info(config.name)
