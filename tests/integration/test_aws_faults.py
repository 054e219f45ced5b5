"""The Lambda shows the faults the core went on from (issue 19): a watchlist in the state bucket that
does not parse is one "fault met" log line and the Faults metric, and the batch is still scored."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import uuid

import numpy as np
import pytest

from kubesonar.sensor.queues import window_messages
from kubesonar.shared.batch import SQS_LIMIT, BatchHeader
from kubesonar.shared.flow import FlowRecords

from aws_emulator import EVENT, LambdaContext, aws_endpoint, client  # noqa: F401 - the fixture
from helpers import LIVE_WINDOW


@pytest.fixture
def handler(aws_endpoint, monkeypatch):  # noqa: F811
    tag = uuid.uuid4().hex[:10]
    s3, sns = client("s3", aws_endpoint), client("sns", aws_endpoint)
    for bucket in (f"ks-state-{tag}", f"ks-alerts-{tag}"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=f"ks-state-{tag}", Key="watchlists/bad.json", Body=b'{"entries": [')
    env = {"KUBESONAR_STATE_BUCKET": f"ks-state-{tag}", "KUBESONAR_ALERTS_BUCKET": f"ks-alerts-{tag}",
           "KUBESONAR_TOPIC_ARN": sns.create_topic(Name=f"kubesonar-alerts-{tag}")["TopicArn"],
           "POWERTOOLS_METRICS_NAMESPACE": "KubeSonar"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import kubesonar.functions.aws.handler as module

    return importlib.reload(module)


def test_a_broken_watchlist_is_logged_and_counted(capfd, caplog, handler):
    flows = FlowRecords.empty(10)
    flows.columns["first_ts"] = np.arange(10, dtype=np.int64) * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"]
    (message,) = window_messages(BatchHeader("prod", "node-1", "node-1/a", 1, *LIVE_WINDOW), flows, SQS_LIMIT)
    record = copy.deepcopy(EVENT["Records"][0])
    record["messageId"], record["body"] = "m0", base64.b64encode(message.data).decode()
    assert handler.lambda_handler({"Records": [record]}, LambdaContext()) == {"batchItemFailures": []}
    faults = [r for r in caplog.records if r.getMessage() == "fault met"]
    assert len(faults) == 1 and faults[0].error.startswith("watchlist bad:") and faults[0].levelname == "WARNING"
    (emf,) = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith('{"_aws"')]
    assert emf["Faults"] == [1.0] and emf["Conflicts"] == [0.0] and emf["Flows"] == [10.0]


def test_a_cluster_whose_health_document_is_broken_does_not_stop_the_others_check(caplog, handler, monkeypatch):
    """The schedule's tick checks every cluster: one cluster's document that cannot be read is a fault met,
    logged, and the other clusters' silent sensors are still reported."""
    import os
    import time

    from conftest import REPO

    monkeypatch.setenv("KUBESONAR_SENSOR_SILENT_AFTER_S", "1")
    handler = importlib.reload(handler)
    client("s3", os.environ["AWS_ENDPOINT_URL"]).put_object(
        Bucket=os.environ["KUBESONAR_STATE_BUCKET"], Key="state/aaa/sensor_health.json", Body=b"[]")
    header = BatchHeader("prod", "node-7", "node-7/5f1", 0, *LIVE_WINDOW,
                         counters={"packets": 10, "kernel_packets": 10, "kernel_drops": 0})
    (heartbeat,) = window_messages(header, FlowRecords.empty(), SQS_LIMIT)
    record = dict(copy.deepcopy(EVENT["Records"][0]), body=base64.b64encode(heartbeat.data).decode())
    assert handler.lambda_handler({"Records": [record]}, LambdaContext()) == {"batchItemFailures": []}
    time.sleep(1.8)  # past 4/3 of the 1 s bound (shared/health.py)
    schedule = json.loads((REPO / "tests" / "fixtures" / "aws" / "scheduled-event.json").read_text())
    assert len(handler.lambda_handler(schedule, LambdaContext())["new_alerts"]) == 1  # prod's node-7
    faults = [r for r in caplog.records if r.getMessage() == "fault met"]
    assert len(faults) == 1 and "state/aaa/sensor_health.json" in faults[0].error


def test_an_internal_network_that_does_not_parse_stops_the_cold_start_with_one_clear_line(handler, monkeypatch):
    """Not every message failing its scoring and retried into the dead-letter queue."""
    from kubesonar.shared.errors import ConfigError

    monkeypatch.setenv("KUBESONAR_INTERNAL_NETWORKS", "10.0.0.0/8,10.1.2.300/24")
    with pytest.raises(ConfigError, match=r"internal network '10.1.2.300/24' is not a CIDR network"):
        importlib.reload(handler)


@pytest.mark.parametrize("name, value", [("KUBESONAR_LEARNING_PERIOD_S", "1d"),
                                         ("KUBESONAR_SENSOR_SILENT_AFTER_S", "nan")])
def test_a_setting_that_is_not_a_number_stops_the_cold_start_naming_the_variable(handler, monkeypatch, name, value):
    """float() alone raised a bare ValueError ("could not convert string to float: '1d'") naming neither
    the variable nor the setting (and took "nan" as a period no timestamp ever passes)."""
    from kubesonar.shared.errors import ConfigError

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}='{value}' is not a number of seconds"):
        importlib.reload(handler)
