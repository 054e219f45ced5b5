"""A Pub/Sub topic as the core's notifier: the alert JSON as data; severity, type and cluster as
attributes, so a subscription's filter (attributes.severity = "critical") routes without parsing.
An alert over Pub/Sub's 10 MB message limit is cut to fit (shared/alert_fit.py); it says what was cut."""

from __future__ import annotations

from typing import Any

from kubesonar.shared.alert_fit import alert_json, fit_alert
from kubesonar.shared.alerts import alert_rule

# Pub/Sub's limit is 10 MB (10,000,000 bytes) for a publish request: the data, its attributes and framing
MESSAGE_LIMIT = 10_000_000 - 64 * 1024


class PubSubNotifier:
    def __init__(self, publisher: Any, topic: str):
        self._publisher, self.topic = publisher, topic

    def notify(self, alert: dict[str, Any]) -> None:
        self._publisher.publish(self.topic, alert_json(fit_alert(alert, MESSAGE_LIMIT)),
                                severity=alert["severity"], type=alert["type"], rule=alert_rule(alert),
                                cluster=alert.get("cluster") or "default").result(timeout=60)
