"""The Cloud Run function (2nd gen): sensor messages in, the core, alerts to Cloud Storage and Pub/Sub.

Two CloudEvent entry points over the same core call (docs/gcp.md says why the deployed one is `on_tick`):
- `on_tick`: a Cloud Scheduler tick (via Pub/Sub) drains the flows subscription in bulk with synchronous
  pulls, scores everything in one call, acks what was applied, then runs the sensor-health check;
- `on_message`: one pushed message per request (push subscription or Eventarc); raising means retry.
A message that never decodes is counted, copied under `deadletter/` of the state bucket, and acked.
Settings (environment): KUBESONAR_STATE_BUCKET, KUBESONAR_ALERTS_BUCKET, KUBESONAR_ALERTS_TOPIC,
KUBESONAR_FLOWS_SUBSCRIPTION, KUBESONAR_PULL_MAX_MESSAGES, KUBESONAR_DRAIN_SECONDS (how long a tick
starts new rounds of pulling and scoring: under the function's timeout), KUBESONAR_LEARNING_PERIOD_S,
KUBESONAR_SENSOR_SILENT_AFTER_S, KUBESONAR_INTERNAL_NETWORKS, KUBESONAR_STORE_RETRY_S (how long one
Cloud Storage call may keep retrying: under the function's timeout); KUBESONAR_KEYRING_FILE (the keyring, a Secret
Manager secret volume of its latest version, infra/gcp; read again when a batch names a key id it lacks):
batches must then be signed (docs/hardening.md);
STORAGE_EMULATOR_HOST and
PUBSUB_EMULATOR_HOST point the clients at emulators, as the libraries themselves honour them.
"""

from __future__ import annotations

import base64
import os
import time

import functions_framework
from cloudevents.http import CloudEvent
from google.cloud import pubsub_v1, storage

from kubesonar.functions.gcp.drain import attributes_key, drain
from kubesonar.functions.gcp.log import log
from kubesonar.functions.gcp.notifier import PubSubNotifier
from kubesonar.functions.gcp.store import GcsObjectStore
from kubesonar.shared.env_numbers import count_setting, seconds_setting
from kubesonar.shared.frozen_start import freeze_what_loading_made
from kubesonar.shared.keyring_source import keyring_from_env
from kubesonar.shared.netzones import PRIVATE_NETWORKS
from kubesonar.shared.pipeline import (
    CoreConfig,
    Delivery,
    Dependencies,
    check_all_sensors,
    process_deliveries,
)
from kubesonar.shared.ports import STORE_RETRY_S, RoutedObjectStore, SystemClock

_env = os.environ
_gcs = storage.Client()
_store_retry_s = seconds_setting(_env, "KUBESONAR_STORE_RETRY_S", STORE_RETRY_S)
deps = Dependencies(
    store=RoutedObjectStore(GcsObjectStore(_gcs, _env["KUBESONAR_STATE_BUCKET"], retry_s=_store_retry_s),
                            {"alerts/": GcsObjectStore(_gcs, _env["KUBESONAR_ALERTS_BUCKET"], retry_s=_store_retry_s)}),
    notifier=PubSubNotifier(pubsub_v1.PublisherClient(), _env["KUBESONAR_ALERTS_TOPIC"]),
    clock=SystemClock(),
    config=CoreConfig(learning_period_s=seconds_setting(_env, "KUBESONAR_LEARNING_PERIOD_S", 24 * 3600),
                      sensor_silent_after_s=seconds_setting(_env, "KUBESONAR_SENSOR_SILENT_AFTER_S", 60),
                      internal_networks=tuple(filter(None, _env.get(
                          "KUBESONAR_INTERNAL_NETWORKS", ",".join(PRIVATE_NETWORKS)).split(",")))),
    keyring=keyring_from_env(_env),
)
_subscription = _env.get("KUBESONAR_FLOWS_SUBSCRIPTION", "")
_pull_max = count_setting(_env, "KUBESONAR_PULL_MAX_MESSAGES", 10_000)
_drain_s = seconds_setting(_env, "KUBESONAR_DRAIN_SECONDS", 240)  # the module's timeout is 300 s


def score(deliveries: list[Delivery], keys: dict[str, str]) -> list[str]:
    """All deliveries in one core call; returns the ids to acknowledge (applied and dead-lettered)."""
    outcome = process_deliveries(deliveries, deps)
    data = {d.id: d.data for d in deliveries}
    for message_id, why in outcome.poison:
        deps.store.put(f"deadletter/{message_id}", data[message_id])
        log("WARNING", "message does not decode; copied to deadletter/", message_id=message_id, error=why,
            batch=keys.get(message_id, ""))
    for message_id, why in outcome.retry:
        log("ERROR", "message failed; Pub/Sub redelivers it", message_id=message_id, error=why,
            batch=keys.get(message_id, ""))
    for fault in outcome.result.errors:  # met and gone on: a list that does not parse, a baseline reset, a conflict
        log("WARNING", "fault met", error=fault)
    log("INFO", "batches scored", messages=len(deliveries), applied=len(outcome.applied),
        poison=len(outcome.poison), flows=outcome.result.flows, batches=[keys.get(i, i) for i in outcome.applied],
        new_alerts=[a["id"] for a in outcome.result.new_alerts], errors=outcome.result.errors,
        faults=len(outcome.result.errors), conflicts=outcome.result.conflicts, stale=outcome.result.stale)
    return outcome.applied + [i for i, _ in outcome.poison]


@functions_framework.cloud_event
def on_tick(event: CloudEvent) -> None:
    started = time.perf_counter()
    pulled = drain(_subscription, _pull_max, score, deadline=time.monotonic() + _drain_s)
    checked = check_all_sensors(deps)
    for fault in checked.errors:  # a cluster that could not be checked, a notification deferred
        log("WARNING", "fault met", error=fault)
    raised = [a["id"] for a in checked.new_alerts]
    log("INFO", "sensor health checked", new_alerts=raised, pulled=pulled, faults=len(checked.errors),
        seconds=round(time.perf_counter() - started, 3))


@functions_framework.cloud_event
def on_message(event: CloudEvent) -> None:
    message = event.data["message"]
    key = attributes_key(message.get("attributes") or {})
    if not score([Delivery(message["messageId"], base64.b64decode(message.get("data") or ""))],
                 {message["messageId"]: key}):
        raise RuntimeError(f"batch {key} was not applied; Pub/Sub redelivers it")


freeze_what_loading_made()  # the instance's lasting objects, skipped by every collection (shared/frozen_start.py)
