"""Messages a queue refuses for good are dropped, counted and logged, in front of any publisher.

A refusal about the message itself (too large for the queue, an attribute it will not take) fails the
same way on every try. Treated as an outage, it held the head of the spool: every window behind it
waited, retried and spooled until the spool's bound dropped the oldest. A refusal about the queue or
the credentials (a missing queue, a denied key) stays QueueUnavailable: those heal, and the spool keeps
the batches meanwhile.
"""

from __future__ import annotations

import logging

from kubesonar.sensor.queues import Message, Publisher
from kubesonar.shared.errors import MessageRefused

log = logging.getLogger(__name__)


class DropRefused:
    def __init__(self, inner: Publisher):
        self.inner, self.limit = inner, inner.limit
        self.refused = 0  # messages dropped because the queue refused them for good (a heartbeat counter)

    def send(self, messages: list[Message]) -> None:
        try:
            self.inner.send(messages)
        except MessageRefused as exc:
            self.refused += len(exc.refused)
            for key, why in exc.refused.items():
                log.error("the queue refused message %s for good, dropped: %s", key, why)
