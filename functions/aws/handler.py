"""The Lambda function: an SQS batch of sensor messages in, the core, alerts to S3 and SNS.

Clients are built once per container (cold start); each record is scored on its own, and the
records that fail are reported back (ReportBatchItemFailures), so one poison message is retried
and ends in the dead-letter queue while the rest of its batch succeeds. Settings (environment):
KUBESONAR_STATE_BUCKET, KUBESONAR_ALERTS_BUCKET, KUBESONAR_TOPIC_ARN, KUBESONAR_LEARNING_PERIOD_S,
KUBESONAR_SENSOR_SILENT_AFTER_S, KUBESONAR_INTERNAL_NETWORKS (comma-separated CIDRs inside the
cluster or VPC; docs/detection.md); an EventBridge schedule's event runs the sensor-health check instead;
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
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kubesonar.functions.aws.notifier import SnsNotifier
from kubesonar.functions.aws.store import S3ObjectStore
from kubesonar.shared.batch import decode_batch
from kubesonar.shared.errors import BatchFormatError
from kubesonar.shared.netzones import PRIVATE_NETWORKS
from kubesonar.shared.pipeline import CoreConfig, Dependencies, check_sensors, clusters_with_sensors, process_batch
from kubesonar.shared.ports import RoutedObjectStore, SystemClock

logger = Logger(service="kubesonar")
metrics = Metrics(namespace="KubeSonar", service="kubesonar")
processor = BatchProcessor(event_type=EventType.SQS)
_s3 = boto3.client("s3")
deps = Dependencies(
    store=RoutedObjectStore(S3ObjectStore(_s3, os.environ["KUBESONAR_STATE_BUCKET"]),
                            {"alerts/": S3ObjectStore(_s3, os.environ["KUBESONAR_ALERTS_BUCKET"])}),
    notifier=SnsNotifier(boto3.client("sns"), os.environ["KUBESONAR_TOPIC_ARN"]),
    clock=SystemClock(),
    config=CoreConfig(learning_period_s=float(os.environ.get("KUBESONAR_LEARNING_PERIOD_S", 24 * 3600)),
                      sensor_silent_after_s=float(os.environ.get("KUBESONAR_SENSOR_SILENT_AFTER_S", 60)),
                      internal_networks=tuple(filter(None, os.environ.get(
                          "KUBESONAR_INTERNAL_NETWORKS", ",".join(PRIVATE_NETWORKS)).split(",")))),
)


def record_handler(record: SQSRecord) -> None:
    started = time.perf_counter()
    try:
        batch = decode_batch(base64.b64decode(record.body, validate=True))
    except (BatchFormatError, binascii.Error, ValueError) as exc:
        metrics.add_metric(name="DecodeErrors", unit=MetricUnit.Count, value=1)
        logger.warning("message does not decode", extra={"message_id": record.message_id, "error": str(exc)})
        raise
    result = process_batch(batch, deps)
    metrics.add_metric(name="Batches", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="Flows", unit=MetricUnit.Count, value=result.flows)
    metrics.add_metric(name="Alerts", unit=MetricUnit.Count, value=len(result.new_alerts))
    metrics.add_metric(name="ProcessingLatency", unit=MetricUnit.Milliseconds,
                       value=(time.perf_counter() - started) * 1000)
    logger.info("batch scored", extra={"sensor": batch.header.sensor_id, "sequence": batch.header.sequence,
                                       "part": batch.header.part, "flows": result.flows,
                                       "new_alerts": [a["id"] for a in result.new_alerts]})


def check_sensor_health() -> dict:
    """The schedule's tick: sensors of every cluster silent for too long raise sensor_silent, even when
    no batch arrives at all (a whole cluster gone quiet)."""
    clusters = clusters_with_sensors(deps.store)
    raised = [a["id"] for c in clusters for a in check_sensors(deps, c).new_alerts]
    metrics.add_metric(name="Alerts", unit=MetricUnit.Count, value=len(raised))
    logger.info("sensor health checked", extra={"clusters": clusters, "new_alerts": raised})
    return {"clusters": len(clusters), "new_alerts": raised}


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    if event.get("source") == "aws.events":  # the EventBridge schedule, not SQS
        return check_sensor_health()
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
