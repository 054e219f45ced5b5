"""A Pub/Sub topic as the core's notifier: the alert JSON as data; severity, type and cluster as
attributes, so a subscription's filter (attributes.severity = "critical") routes without parsing."""

from __future__ import annotations

import json
from typing import Any


class PubSubNotifier:
    def __init__(self, publisher: Any, topic: str):
        self._publisher, self.topic = publisher, topic

    def notify(self, alert: dict[str, Any]) -> None:
        self._publisher.publish(self.topic, json.dumps(alert, sort_keys=True).encode(),
                                severity=alert["severity"], type=alert["type"],
                                cluster=alert.get("cluster") or "default").result(timeout=60)
