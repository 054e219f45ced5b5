"""Alerts published on ``kubesonar.alerts.<severity>.<type>``: subscribers choose by subject
(``kubesonar.alerts.high.>``, ``kubesonar.alerts.*.port_scan``); the KUBESONAR_ALERTS stream keeps them
(another prefix, which no stream keeps, gets a plain publish). The rule that raised it is the header
``KubeSonar-Rule`` (the subject names the type: a subscriber to a type gets all its rules).
``Nats-Msg-Id`` is the alert id and its notification's sequence, so a replica that replays a batch cannot
announce the same notification twice, while an escalation is a new one. An alert over the server's max
payload (1 MB by default) is cut to fit (shared/alert_fit.py); it says what was cut."""

from __future__ import annotations

import re
from typing import Any

import nats.js.errors

from kubesonar.functions.nats.connection import NatsConnection
from kubesonar.functions.nats.streams import ALERTS_PREFIX
from kubesonar.shared.alert_fit import alert_json, fit_alert
from kubesonar.shared.alerts import alert_rule

_HEADROOM = 4096  # our headers (the alert id, the cluster) and the subject, counted in the max payload


def _token(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", value) or "unknown"


class NatsNotifier:
    def __init__(self, connection: NatsConnection, prefix: str = ALERTS_PREFIX):
        self._conn, self.prefix = connection, prefix

    def subject(self, alert: dict[str, Any]) -> str:
        return f"{self.prefix}.{_token(alert['severity'])}.{_token(alert['type'])}"

    def notify(self, alert: dict[str, Any]) -> None:
        # one id per notification of an alert (new, then escalated or reopened: the outbox's sequence)
        msg_id = f"{alert['id']}/{(alert.get('notify') or {}).get('seq', 0)}"
        headers = {"Nats-Msg-Id": msg_id, "KubeSonar-Cluster": alert.get("cluster") or "default",
                   "KubeSonar-Rule": alert_rule(alert)}
        data = alert_json(fit_alert(alert, self._conn.nc.max_payload - _HEADROOM))
        self._conn.run(self._publish(self.subject(alert), data, headers))

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        try:
            await self._conn.js.publish(subject, data, headers=headers)
        except nats.js.errors.NoStreamResponseError:  # a prefix no stream keeps: a plain publish
            await self._conn.nc.publish(subject, data, headers=headers)
