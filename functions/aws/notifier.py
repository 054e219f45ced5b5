"""SNS as the core's notifier. Severity and type travel as message attributes, so subscribers can
filter (a filter policy such as {"severity": ["high", "critical"]}) without parsing the alert."""

from __future__ import annotations

import json
from typing import Any


class SnsNotifier:
    def __init__(self, client: Any, topic_arn: str):
        self._sns, self.topic_arn = client, topic_arn

    def notify(self, alert: dict[str, Any]) -> None:
        self._sns.publish(
            TopicArn=self.topic_arn,
            Subject=f"KubeSonar {alert['severity']}: {alert['title']}"[:100],
            Message=json.dumps(alert, sort_keys=True),
            MessageAttributes={
                "severity": {"DataType": "String", "StringValue": alert["severity"]},
                "type": {"DataType": "String", "StringValue": alert["type"]},
                "cluster": {"DataType": "String", "StringValue": alert.get("cluster") or "default"},
            },
        )
