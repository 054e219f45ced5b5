"""The function app (Python v2 model): Event Grid events of sensor batches in, the core, alerts to Blob
Storage and the alerts topic; a timer runs the sensor-health check every minute.

The Python Event Grid trigger takes one event per invocation (docs/azure.md), so each call hands the
core one delivery. Raising makes Event Grid retry on its schedule, then dead-letter the event to the
dead-letter container; an event that can never decode is not raised (30 retries would not help): it is
counted and written to that container under ``undecodable/`` by the function itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re

import azure.functions as func

from kubesonar.functions.azure.runtime import deadletter, deps
from kubesonar.shared.pipeline import Delivery, check_all_sensors, process_deliveries

app = func.FunctionApp()
log = logging.getLogger("kubesonar")


@app.event_grid_trigger(arg_name="event")
def score_batch(event: func.EventGridEvent) -> None:
    try:
        deliveries, poison = [Delivery(event.id, base64.b64decode(event.get_json(), validate=True))], []
    except (binascii.Error, TypeError, ValueError) as exc:  # data is not a base64 string
        deliveries, poison = [], [(event.id, f"data is not a base64 batch: {exc}")]
    outcome = process_deliveries(deliveries, deps)
    for event_id, why in poison + outcome.poison:
        deadletter.put(f"undecodable/{re.sub(r'[^A-Za-z0-9._=@+-]', '_', event_id)}.json",
                       json.dumps({"id": event_id, "error": why, "subject": event.subject,
                                   "eventType": event.event_type, "data": event.get_json()}).encode())
    for fault in outcome.result.errors:  # met and gone on: a list that does not parse, a baseline reset, a conflict
        log.warning(json.dumps({"message": "fault met", "id": event.id, "error": fault}))
    _log("batch scored", id=event.id, subject=event.subject, flows=outcome.result.flows,
         decode_errors=len(poison + outcome.poison), new_alerts=[a["id"] for a in outcome.result.new_alerts],
         errors=outcome.result.errors + [why for _, why in outcome.retry], faults=len(outcome.result.errors),
         conflicts=outcome.result.conflicts, stale=outcome.result.stale)
    if outcome.retry:  # Event Grid redelivers; what was applied is not applied twice
        raise RuntimeError(f"event {event.id} failed: {outcome.retry[0][1]}")


@app.timer_trigger(arg_name="timer", schedule="0 */1 * * * *", run_on_startup=False)
def check_sensor_health(timer: func.TimerRequest) -> None:
    """Sensors silent for too long raise sensor_silent, even when no batch arrives at all."""
    checked = check_all_sensors(deps)
    for fault in checked.errors:  # a cluster that could not be checked, a notification deferred
        log.warning(json.dumps({"message": "fault met", "error": fault}))
    _log("sensor health checked", new_alerts=[a["id"] for a in checked.new_alerts], faults=len(checked.errors))


def _log(message: str, **fields: object) -> None:
    """One JSON line per invocation: Application Insights keeps it in traces, queryable with parse_json."""
    log.info(json.dumps({"message": message, **fields}, default=str))
