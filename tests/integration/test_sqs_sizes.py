"""The SQS publisher against moto server: a batch message at the publisher's limit fits 256 KiB as SQS
counts it (the base64 body and the key attribute's name, type and value) with the longest key the names
allow, and a SendMessageBatch request SQS refuses whole is sent again one message at a time.

moto checks only the body's length against a queue's MaximumMessageSize (its default is 1 MiB) and leaves
the attributes out, so it would take a message SQS refuses. The size is therefore computed from the
request botocore puts on the wire, by the documented rule: "All parts of the message attribute, including
Name, Type, and Value, are part of the message size restriction (256 KiB or 262,144 bytes)"
(https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_MessageAttributeValue.html)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from kubesonar.sensor.queues import Message
from kubesonar.sensor.queues.sqs import LIMIT, SQS_MAX_BYTES, SqsQueue
from kubesonar.shared.batch import BatchHeader, encode_batch
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.identity import MAX_BATCH_KEY, batch_key
from kubesonar.shared.names import MAX_NODE, MAX_SENSOR_ID

from aws_emulator import aws_endpoint, client  # noqa: F401 - the fixture

EKS_SENSOR = "ip-192-168-123-45.us-west-2.compute.internal/18ebe3a3c0ffee00"
LONGEST_SENSOR = "n" * MAX_NODE + "/" + "a" * (MAX_SENSOR_ID - MAX_NODE - 1)


def _queue(endpoint: str) -> tuple[object, str]:
    sqs = client("sqs", endpoint)
    url = sqs.create_queue(QueueName=f"flows-{uuid.uuid4().hex[:10]}",
                           Attributes={"MaximumMessageSize": str(SQS_MAX_BYTES)})["QueueUrl"]
    return sqs, url


def _at_limit(sensor: str, sequence: int, part: int) -> Message:
    """A batch message as large as the publisher takes: a real batch, padded as a full window's would be."""
    header = BatchHeader("prod", sensor.split("/")[0], sensor, sequence, 0, 1)
    (data,) = encode_batch(header, FlowRecords.empty(0), limit=LIMIT)
    return Message(batch_key(sensor, sequence, part), data + os.urandom(LIMIT - len(data)))


def _sqs_size(entry: dict) -> int:
    """A SendMessageBatch entry's size by SQS's rule: the body and each attribute's name, type and value."""
    attributes = entry.get("MessageAttributes", {})
    return len(entry["MessageBody"].encode()) + sum(
        len(name.encode()) + len(a["DataType"].encode()) + len(a.get("StringValue", "").encode())
        for name, a in attributes.items())


def _received_keys(sqs, url: str) -> list[str]:
    keys: list[str] = []
    while got := sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], MaxNumberOfMessages=10,
                                     VisibilityTimeout=60).get("Messages", []):
        keys += [m["MessageAttributes"]["key"]["StringValue"] for m in got]
    return keys


@pytest.mark.parametrize("sensor", [EKS_SENSOR, LONGEST_SENSOR])
def test_a_message_at_the_limit_fits_256_kib_with_its_key_as_sqs_counts_it(aws_endpoint, sensor):  # noqa: F811
    sqs, url = _queue(aws_endpoint)
    requests: list[dict] = []
    sqs.meta.events.register("before-send.sqs.SendMessageBatch",
                             lambda request, **_: requests.append(json.loads(request.body)))
    messages = [_at_limit(sensor, 2**64 - 1 - i, 2**32 - 1) for i in range(3)]
    assert max(len(m.key) for m in messages) <= MAX_BATCH_KEY
    SqsQueue(url, client=sqs).send(messages)
    entries = [entry for request in requests for entry in request["Entries"]]
    assert len(entries) == 3 and all(len(e["MessageBody"]) == 4 * -(-LIMIT // 3) for e in entries)
    assert max(_sqs_size(e) for e in entries) <= SQS_MAX_BYTES  # each message
    assert max(sum(_sqs_size(e) for e in r["Entries"]) for r in requests) <= SQS_MAX_BYTES  # each call
    assert sorted(_received_keys(sqs, url)) == sorted(m.key for m in messages)


def _small(i: int) -> Message:
    header = BatchHeader("prod", "node-1", "node-1/18ebe3a3", i, 0, 1)
    (data,) = encode_batch(header, FlowRecords.empty(0), limit=LIMIT)
    return Message(batch_key("node-1/18ebe3a3", i, 0), data)


@pytest.mark.parametrize("group", [
    pytest.param([_small(i) for i in range(11)], id="TooManyEntriesInBatchRequest"),
    # five messages at the limit: 1.3 MB of bodies, past moto's 1 MiB for a request (SQS's is 256 KiB)
    pytest.param([_at_limit("node-1/18ebe3a3", i, 0) for i in range(5)], id="BatchRequestTooLong"),
])
def test_a_request_sqs_refuses_whole_is_sent_again_one_message_at_a_time(aws_endpoint, group):  # noqa: F811
    """The refusal is about the request (the same on every try), not an outage: taken for one, the window was
    retried, spooled and retried again forever. The grouping never builds such a request; forged here."""
    sqs, url = _queue(aws_endpoint)
    codes: list[str] = []
    sqs.meta.events.register("needs-retry.sqs.SendMessageBatch", lambda response, **_: codes.append(
        response[1].get("Error", {}).get("Code", "") if response and response[1] else ""))
    assert SqsQueue(url, client=sqs)._send_group(group) == {}
    assert codes[0] == f"AWS.SimpleQueueService.{'TooManyEntriesInBatchRequest' if len(group) == 11 else 'BatchRequestTooLong'}"
    assert sorted(_received_keys(sqs, url)) == sorted(m.key for m in group)
