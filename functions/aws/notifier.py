"""SNS as the core's notifier. Severity and type travel as message attributes, so subscribers can
filter (a filter policy such as {"severity": ["high", "critical"]}) without parsing the alert.
An alert over SNS's 256 KB message limit is cut to fit (shared/alert_fit.py); it says what was cut."""

from __future__ import annotations

from typing import Any

from kubesonar.shared.alert_fit import alert_json, fit_alert
from kubesonar.shared.alerts import alert_rule

# SNS's limit is 256 KB for the message and its attributes together; ours are a few dozen bytes
MESSAGE_LIMIT = 256 * 1024 - 4096


class SnsNotifier:
    def __init__(self, client: Any, topic_arn: str):
        self._sns, self.topic_arn = client, topic_arn

    def notify(self, alert: dict[str, Any]) -> None:
        self._sns.publish(
            TopicArn=self.topic_arn,
            Subject=f"KubeSonar {alert['severity']}: {alert['title']}"[:100],
            Message=alert_json(fit_alert(alert, MESSAGE_LIMIT)).decode(),
            MessageAttributes={
                "severity": {"DataType": "String", "StringValue": alert["severity"]},
                "type": {"DataType": "String", "StringValue": alert["type"]},
                "rule": {"DataType": "String", "StringValue": alert_rule(alert)},
                "cluster": {"DataType": "String", "StringValue": alert.get("cluster") or "default"},
            },
        )
