"""The Lambda function: an SQS batch of sensor messages in, the core, alerts to S3 and SNS.

Clients are built once per container (cold start). All records of an invocation go to the core
together (one read and at most one write of each state document per invocation, docs/cost.md); the
records that fail are reported back (ReportBatchItemFailures), so a poison message is retried alone and
ends in the dead-letter queue while the rest of its batch succeeds. Settings (environment):
KUBESONAR_STATE_BUCKET, KUBESONAR_ALERTS_BUCKET, KUBESONAR_TOPIC_ARN, KUBESONAR_LEARNING_PERIOD_S,
KUBESONAR_SENSOR_SILENT_AFTER_S, KUBESONAR_INTERNAL_NETWORKS (comma-separated CIDRs inside the
cluster or VPC; docs/detection.md), KUBESONAR_STORE_RETRY_S (how long one S3 call may take, retries
included; under the function's timeout); an EventBridge schedule's event runs the sensor-health check instead;
KUBESONAR_KEYRING_SECRET (a Secrets Manager secret holding the keyring, read again when a batch names a
key id it lacks, once a minute at most; or KUBESONAR_KEYRING with the document itself in the encrypted
environment): batches must then be signed (docs/hardening.md);
AWS_ENDPOINT_URL points every client elsewhere (tests use it to reach an emulator).
"""

from __future__ import annotations

import base64
import binascii
import os
import time

import boto3
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from kubesonar.functions.aws.notifier import SnsNotifier
from kubesonar.functions.aws.store import S3ObjectStore, client_config
from kubesonar.shared.env_numbers import seconds_setting
from kubesonar.shared.errors import ConfigError
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

logger = Logger(service="kubesonar")
metrics = Metrics(namespace="KubeSonar", service="kubesonar")
_client_config = client_config(seconds_setting(os.environ, "KUBESONAR_STORE_RETRY_S", STORE_RETRY_S))
_s3 = boto3.client("s3", config=_client_config)


def _secret(name: str) -> str:
    try:
        # bounded as S3 calls are: a re-read during an invocation must not outlast it (botocore's 60 s timeouts)
        secretsmanager = boto3.client("secretsmanager", config=_client_config)
        text = secretsmanager.get_secret_value(SecretId=name).get("SecretString")
    except (BotoCoreError, ClientError) as exc:  # Terraform leaves the secret without a value: put the keyring in
        raise ConfigError(f"keyring secret {name}: Secrets Manager cannot give its value: {exc}") from None
    if text is None:
        raise ConfigError(f"keyring secret {name}: holds no text (put the keyring document in; docs/hardening.md)")
    return text


deps = Dependencies(
    store=RoutedObjectStore(S3ObjectStore(_s3, os.environ["KUBESONAR_STATE_BUCKET"]),
                            {"alerts/": S3ObjectStore(_s3, os.environ["KUBESONAR_ALERTS_BUCKET"])}),
    notifier=SnsNotifier(boto3.client("sns"), os.environ["KUBESONAR_TOPIC_ARN"]),
    clock=SystemClock(),
    config=CoreConfig(learning_period_s=seconds_setting(os.environ, "KUBESONAR_LEARNING_PERIOD_S", 24 * 3600),
                      sensor_silent_after_s=seconds_setting(os.environ, "KUBESONAR_SENSOR_SILENT_AFTER_S", 60),
                      internal_networks=tuple(filter(None, os.environ.get(
                          "KUBESONAR_INTERNAL_NETWORKS", ",".join(PRIVATE_NETWORKS)).split(",")))),
    keyring=keyring_from_env(os.environ, _secret),
)


def _delivery(record: dict) -> Delivery | tuple[str, str]:
    try:
        return Delivery(record["messageId"], base64.b64decode(record["body"], validate=True))
    except (binascii.Error, ValueError) as exc:
        return record["messageId"], f"body is not base64: {exc}"


def score_records(records: list[dict]) -> dict:
    started = time.perf_counter()
    decoded = [_delivery(r) for r in records]
    outcome = process_deliveries([d for d in decoded if isinstance(d, Delivery)], deps)
    poison = [d for d in decoded if isinstance(d, tuple)] + outcome.poison
    for message_id, why in poison:
        logger.warning("message does not decode", extra={"message_id": message_id, "error": why})
    for message_id, why in outcome.retry:
        logger.error("message failed; SQS redelivers it", extra={"message_id": message_id, "error": why})
    for fault in outcome.result.errors:  # met and gone on: a list that does not parse, a baseline reset, a conflict
        logger.warning("fault met", extra={"error": fault})
    metrics.add_metric(name="DecodeErrors", unit=MetricUnit.Count, value=len(poison))
    metrics.add_metric(name="Faults", unit=MetricUnit.Count, value=len(outcome.result.errors))
    metrics.add_metric(name="Conflicts", unit=MetricUnit.Count, value=outcome.result.conflicts)
    metrics.add_metric(name="Stale", unit=MetricUnit.Count, value=outcome.result.stale)
    metrics.add_metric(name="Batches", unit=MetricUnit.Count, value=len(outcome.applied))
    metrics.add_metric(name="Flows", unit=MetricUnit.Count, value=outcome.result.flows)
    metrics.add_metric(name="Alerts", unit=MetricUnit.Count, value=len(outcome.result.new_alerts))
    metrics.add_metric(name="ProcessingLatency", unit=MetricUnit.Milliseconds,
                       value=(time.perf_counter() - started) * 1000)
    logger.info("batches scored", extra={"records": len(records), "flows": outcome.result.flows,
                                         "new_alerts": [a["id"] for a in outcome.result.new_alerts],
                                         "errors": outcome.result.errors})
    return {"batchItemFailures": [{"itemIdentifier": i} for i, _ in poison + outcome.retry]}


def check_sensor_health() -> dict:
    """The schedule's tick: sensors of every cluster silent for too long raise sensor_silent, even when
    no batch arrives at all (a whole cluster gone quiet)."""
    result = check_all_sensors(deps)
    raised = [a["id"] for a in result.new_alerts]
    for fault in result.errors:  # a cluster that could not be checked, a notification deferred
        logger.warning("fault met", extra={"error": fault})
    metrics.add_metric(name="Faults", unit=MetricUnit.Count, value=len(result.errors))
    metrics.add_metric(name="Alerts", unit=MetricUnit.Count, value=len(raised))
    logger.info("sensor health checked", extra={"new_alerts": raised})
    return {"new_alerts": raised}


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    if event.get("source") == "aws.events":  # the EventBridge schedule, not SQS
        return check_sensor_health()
    return score_records(event.get("Records", []))


freeze_what_loading_made()  # the instance's lasting objects, skipped by every collection (shared/frozen_start.py)
