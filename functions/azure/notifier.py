"""An Event Grid topic as the core's notifier: one event per new alert, eventType ``KubeSonar.Alert``,
subject ``cluster/type``, or ``cluster/type/rule`` when the rule reporting it is not named as its type
(``prod/unusual_destination/reverse_shell``: a ``subjectBeginsWith`` filter on the type takes all its rules),
the alert JSON as data. Severity is in the data, so subscriptions filter on it
with an advanced filter (``data.severity`` in high, critical) and route to a webhook, a Logic App, a
Service Bus queue or a Storage queue without parsing the alert. An alert over Event Grid's 1 MB per event
is cut to fit (shared/alert_fit.py); it says what was cut."""

from __future__ import annotations

from typing import Any

from azure.eventgrid import EventGridEvent

from kubesonar.shared.alert_fit import fit_alert
from kubesonar.shared.alerts import type_and_rule

EVENT_TYPE = "KubeSonar.Alert"
DATA_VERSION = "1.0"
# Event Grid takes 1 MB per event, its envelope (id, subject, type, times: a few hundred bytes) included
EVENT_LIMIT = 1024 * 1024 - 8192


class EventGridNotifier:
    def __init__(self, client: Any):
        self._eventgrid = client

    def notify(self, alert: dict[str, Any]) -> None:
        self._eventgrid.send([EventGridEvent(subject=f"{alert.get('cluster') or 'default'}/{type_and_rule(alert)}",
                                             event_type=EVENT_TYPE, data=fit_alert(alert, EVENT_LIMIT),
                                             data_version=DATA_VERSION, id=alert["id"])])
