"""SQS -> Lambda handler -> S3 and SNS, against moto in server mode on 127.0.0.1: the sensor's SQS
publisher sends real batches, the handler consumes an SQS event built from the received messages."""

from __future__ import annotations

import base64
import copy
import importlib
import json
import multiprocessing
import os
import uuid

import numpy as np
import pytest
from alert_fixtures import ManualClock

from kubesonar.sensor.offline import flows_from_captures
from kubesonar.sensor.queues import window_messages
from kubesonar.sensor.queues.sqs import LIMIT, SqsQueue
from kubesonar.sensor.spool import SpoolingPublisher
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pipeline import CoreConfig, detectors

from aws_emulator import EVENT, LambdaContext, aws_endpoint, client  # noqa: F401 - the fixture
from conftest import PCAPS, REPO
from helpers import LIVE_WINDOW


@pytest.fixture
def backend(aws_endpoint, monkeypatch):  # noqa: F811
    """Fresh buckets, topic and queues; the handler imported against them (as a cold start)."""
    tag = uuid.uuid4().hex[:10]
    s3, sns, sqs = (client(s, aws_endpoint) for s in ("s3", "sns", "sqs"))
    names = {"state": f"ks-state-{tag}", "alerts": f"ks-alerts-{tag}"}
    for bucket in names.values():
        s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name=f"kubesonar-alerts-{tag}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"alerts-inbox-{tag}")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "false"})
    flows_queue = sqs.create_queue(QueueName=f"kubesonar-flows-{tag}",
                                   Attributes={"MaximumMessageSize": "262144"})["QueueUrl"]
    env = {"KUBESONAR_STATE_BUCKET": names["state"], "KUBESONAR_ALERTS_BUCKET": names["alerts"],
           "KUBESONAR_TOPIC_ARN": topic, "POWERTOOLS_METRICS_NAMESPACE": "KubeSonar",
           "KUBESONAR_SENSOR_SILENT_AFTER_S": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import kubesonar.functions.aws.handler as handler

    handler = importlib.reload(handler)
    return {"handler": handler, "s3": s3, "sqs": sqs, "names": names, "inbox": inbox, "flows": flows_queue,
            "env": env, "endpoint": aws_endpoint}


def _publish_capture(b, capture, sensor="node-1/18ebe3a3", sequence=0, window=LIVE_WINDOW) -> int:
    """The sensor's path: flows -> window messages -> spooling publisher -> SQS."""
    flows = FlowRecords.concat(list(flows_from_captures([capture])))
    header = BatchHeader("prod", sensor.split("/")[0], sensor, sequence, *window)
    messages = window_messages(header, flows, LIMIT)
    publisher = SpoolingPublisher(SqsQueue(b["flows"], client("sqs", b["endpoint"])), f"/tmp/spool-{uuid.uuid4().hex}")
    publisher.publish(messages)
    assert publisher.stats.sent == len(messages) and publisher.stats.spooled == 0
    return len(messages)


def _received_event(b, count: int) -> dict:
    """An SQS event, in Lambda's shape, of the messages waiting on the flows queue."""
    records = []
    while len(records) < count:
        got = b["sqs"].receive_message(QueueUrl=b["flows"], MaxNumberOfMessages=10, MessageAttributeNames=["All"],
                                       AttributeNames=["All"]).get("Messages", [])
        assert got, "messages went missing"
        for m in got:
            r = copy.deepcopy(EVENT["Records"][0])
            r.update(messageId=m["MessageId"], receiptHandle=m["ReceiptHandle"], body=m["Body"], md5OfBody=m["MD5OfBody"])
            records.append(r)
    return {"Records": records}


def _alerts(b) -> list[dict]:
    s3 = b["s3"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=b["names"]["alerts"]).get("Contents", [])]
    return [json.loads(s3.get_object(Bucket=b["names"]["alerts"], Key=k)["Body"].read()) for k in keys]


def _notifications(b) -> list[dict]:
    out = []
    while True:
        got = b["sqs"].receive_message(QueueUrl=b["inbox"], MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            return out
        out += [json.loads(m["Body"]) for m in got]


def test_real_batches_flow_from_the_sensor_through_sqs_and_lambda_to_s3_and_sns(backend):
    b = backend
    sent = _publish_capture(b, PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap")
    assert sent >= 1
    event = _received_event(b, sent)
    out = b["handler"].lambda_handler(event, LambdaContext())
    assert out == {"batchItemFailures": []}
    (alert,) = _alerts(b)
    assert (alert["type"], alert["source"]["ip"], alert["cluster"]) == ("port_scan", "192.168.1.10", "prod")
    (note,) = _notifications(b)
    attributes = note["MessageAttributes"]
    assert attributes["severity"]["Value"] == "high" and attributes["type"]["Value"] == "port_scan"
    assert attributes["rule"]["Value"] == "port_scan"
    assert json.loads(note["Message"])["id"] == alert["id"]
    # baselines in their own bucket, alerts in theirs
    state_keys = [o["Key"] for o in b["s3"].list_objects_v2(Bucket=b["names"]["state"])["Contents"]]
    assert sorted(state_keys) == ["outbox/prod.json", "state/prod/detectors.json", "state/prod/sensor_health.json",
                                  "summary/prod/edges.json"]
    doc = json.loads(b["s3"].get_object(Bucket=b["names"]["state"], Key="state/prod/detectors.json")["Body"].read())
    assert sorted(doc["detectors"]) == sorted(d.rule_id for d in detectors(CoreConfig()))


def test_a_poison_message_fails_alone_and_a_redelivery_duplicates_nothing(backend):
    b = backend
    sent = _publish_capture(b, PCAPS / "portscan/evilfingers_nmap_UDP_SCAN.pcap")
    event = _received_event(b, sent)
    poison = copy.deepcopy(event["Records"][0])
    poison.update(messageId="poison-1", body=base64.b64encode(b"KSFB" + os.urandom(200)).decode())
    not_base64 = dict(copy.deepcopy(poison), messageId="poison-2", body="{not base64}")
    mixed = {"Records": [poison, *event["Records"], not_base64]}
    out = b["handler"].lambda_handler(mixed, LambdaContext())
    assert sorted(f["itemIdentifier"] for f in out["batchItemFailures"]) == ["poison-1", "poison-2"]
    assert len(_alerts(b)) == 1 and len(_notifications(b)) == 1
    again = b["handler"].lambda_handler(event, LambdaContext())  # SQS delivered the good ones again
    assert again == {"batchItemFailures": []}
    (alert,) = _alerts(b)
    assert alert["count"] == 1 and _notifications(b) == []


def _state(b, key: str) -> dict:
    return json.loads(b["s3"].get_object(Bucket=b["names"]["state"], Key=key)["Body"].read())


def _stale(printed: str) -> list[list[float]]:
    """The Stale metric of each invocation, from the metrics powertools printed (CloudWatch's EMF)."""
    docs = [json.loads(line) for line in printed.splitlines() if line.startswith("{") and '"_aws"' in line]
    return [d["Stale"] for d in docs if "Stale" in d]


def test_a_message_replayed_after_its_sensor_was_forgotten_is_refused_as_stale(backend, capsys):
    """The core forgets a sensor unheard for a day (shared/applied.py FORGET_NS). A captured message of
    one that fell silent was then new again: replayed, its flows were added to the service map a second
    time and the detectors learnt them again. Its window ended a day ago: it is refused as a replay,
    counted, acknowledged, never applied."""
    b = backend
    clock = ManualClock(LIVE_WINDOW[1] + 2 * 10**9)  # the core's clock, two seconds after the window ended
    b["handler"].deps.clock = clock
    captured = _received_event(b, _publish_capture(b, PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap"))
    assert b["handler"].lambda_handler(captured, LambdaContext()) == {"batchItemFailures": []}
    (alert,) = _alerts(b)
    edges = _state(b, "summary/prod/edges.json")

    clock.advance(25 * 3600)  # node-1's sensor silent for a day; node-2's traffic has the core forget it
    now = (clock.ns - 10 * 10**9, clock.ns)
    later = _received_event(b, _publish_capture(b, PCAPS / "benign/ndpi_ssh.pcap", "node-2/5f1", window=now))
    assert b["handler"].lambda_handler(later, LambdaContext()) == {"batchItemFailures": []}
    assert "node-1/18ebe3a3" not in _state(b, "state/prod/detectors.json")["applied"]
    with_node_2 = _state(b, "summary/prod/edges.json")
    capsys.readouterr()

    out = b["handler"].lambda_handler(captured, LambdaContext())  # the attacker sends the captured message
    assert out == {"batchItemFailures": []}  # acknowledged: retrying it would change nothing
    assert _stale(capsys.readouterr().out) == [[1.0]]
    assert _state(b, "summary/prod/edges.json") == with_node_2 != edges
    assert "node-1/18ebe3a3" not in _state(b, "state/prod/detectors.json")["applied"]
    assert _alerts(b) == [alert]


def _invoke_in_a_fresh_container(env: dict, event: dict) -> dict:
    os.environ.update(env)
    import kubesonar.functions.aws.handler as handler

    return handler.lambda_handler(event, LambdaContext())


def test_sixteen_concurrent_invocations_lose_no_baseline_update(backend):
    b = backend
    events = []
    for n in range(16):  # each invocation brings six workloads of its own, all during learning
        flows = FlowRecords.empty(6)
        flows.columns["first_ts"] = np.full(6, 1_700_000_000 * 10**9, dtype=np.int64)
        flows.columns["src_namespace"][:] = "team"
        flows.columns["src_workload_kind"][:] = "Deployment"
        flows.columns["src_workload_name"] = np.array([f"w{n}-{i}" for i in range(6)], dtype=object)
        (message,) = window_messages(BatchHeader("prod", f"node-{n}", f"node-{n}/1", 0, *LIVE_WINDOW), flows, LIMIT)
        record = dict(copy.deepcopy(EVENT["Records"][0]), messageId=f"m-{n}",
                      body=base64.b64encode(message.data).decode())
        events.append({"Records": [record]})
    env = dict(b["env"], AWS_ENDPOINT_URL=b["endpoint"], AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    with multiprocessing.get_context("spawn").Pool(16) as pool:
        results = pool.starmap(_invoke_in_a_fresh_container, [(env, e) for e in events])
    assert all(r == {"batchItemFailures": []} for r in results)
    doc = json.loads(b["s3"].get_object(Bucket=b["names"]["state"], Key="state/prod/detectors.json")["Body"].read())
    assert len(doc["detectors"]["new_workload"]["workloads"]) == 16 * 6 and len(doc["applied"]) == 16


def test_the_schedule_reports_a_sensor_that_went_silent(backend):
    import time

    b = backend
    header = BatchHeader("prod", "node-7", "node-7/5f1", 0, *LIVE_WINDOW,
                         counters={"packets": 10, "kernel_packets": 10, "kernel_drops": 0})
    (heartbeat,) = window_messages(header, FlowRecords.empty(), LIMIT)
    record = dict(copy.deepcopy(EVENT["Records"][0]), body=base64.b64encode(heartbeat.data).decode())
    assert b["handler"].lambda_handler({"Records": [record]}, LambdaContext()) == {"batchItemFailures": []}
    schedule = json.loads((REPO / "tests" / "fixtures" / "aws" / "scheduled-event.json").read_text())
    assert b["handler"].lambda_handler(schedule, LambdaContext())["new_alerts"] == []  # not yet
    time.sleep(1.8)  # past 4/3 of the 1 s bound (shared/health.py)
    (alert_id,) = b["handler"].lambda_handler(schedule, LambdaContext())["new_alerts"]
    (alert,) = _alerts(b)
    assert (alert["id"], alert["type"], alert["source"]["node"]) == (alert_id, "sensor_silent", "node-7")
    (note,) = _notifications(b)
    assert note["MessageAttributes"]["type"]["Value"] == "sensor_silent"
    assert b["handler"].lambda_handler(schedule, LambdaContext())["new_alerts"] == []  # once per silence
