"""The sensor's Pub/Sub publisher against Google's emulator: the raw batch bytes as data, the attributes
the function logs by, and an unreachable Pub/Sub reported as QueueUnavailable, so the spool keeps the
messages."""

from __future__ import annotations

import uuid

import pytest
from gcp_emulator import PROJECT, free_port, gcp_emulators  # noqa: F401 - the fixture

from kubesonar.sensor.queues import open_publisher, window_messages
from kubesonar.sensor.queues.pubsub import PubSubQueue
from kubesonar.sensor.spool import SpoolingPublisher
from kubesonar.shared.batch import BatchHeader, decode_batch
from kubesonar.shared.flow import FlowRecords


def _messages(parts_of: int = 1):
    header = BatchHeader("prod", "node-7", "node-7/abc", 42, 0, 10_000_000_000, counters={"kernel_packets": 5})
    return window_messages(header, FlowRecords.empty(), PubSubQueue.limit)


def test_messages_carry_the_batch_and_its_attributes(gcp_emulators):  # noqa: F811
    from google.cloud import pubsub_v1

    topic = f"projects/{PROJECT}/topics/flows-{uuid.uuid4().hex[:8]}"
    subscription = topic.replace("/topics/", "/subscriptions/")
    pubsub_v1.PublisherClient().create_topic(name=topic)
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(name=subscription, topic=topic)
    messages = _messages()
    queue = open_publisher(f"pubsub://{topic}")
    assert isinstance(queue, PubSubQueue) and queue.limit == 380_928
    queue.send(messages)
    (received,) = subscriber.pull(subscription=subscription, max_messages=10, timeout=30).received_messages
    assert received.message.data == messages[0].data and decode_batch(received.message.data).header.sequence == 42
    assert dict(received.message.attributes) == {"cluster": "prod", "node": "node-7", "sensor": "node-7/abc",
                                                 "sequence": "42", "part": "0"}


def test_a_message_pubsub_refuses_for_good_is_named_and_the_rest_are_delivered(gcp_emulators):  # noqa: F811
    """A message the client refuses (past the 10 MB a publish request may be) fails the same way on every try:
    named in MessageRefused (dropped and counted in front of the spool), the others delivered."""
    from google.cloud import pubsub_v1

    from kubesonar.sensor.queues import Message
    from kubesonar.shared.errors import MessageRefused

    topic = f"projects/{PROJECT}/topics/flows-{uuid.uuid4().hex[:8]}"
    subscription = topic.replace("/topics/", "/subscriptions/")
    pubsub_v1.PublisherClient().create_topic(name=topic)
    subscriber = pubsub_v1.SubscriberClient()
    subscriber.create_subscription(name=subscription, topic=topic)
    (small,) = _messages()
    huge = Message("node-7/abc/43/0", small.data + bytes(10_500_000))
    with pytest.raises(MessageRefused) as refused:
        open_publisher(f"pubsub://{topic}").send([huge, small])
    assert list(refused.value.refused) == [huge.key]
    (received,) = subscriber.pull(subscription=subscription, max_messages=10, timeout=30).received_messages
    assert received.message.data == small.data


def test_an_unreachable_pubsub_spools(tmp_path, monkeypatch):
    from kubesonar.sensor.queues import pubsub

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(pubsub, "_PUBLISH_TIMEOUT_S", 3.0)
    spooling = SpoolingPublisher(PubSubQueue(f"pubsub://projects/{PROJECT}/topics/flows"), tmp_path / "spool")
    spooling.publish(_messages())
    assert spooling.stats.sent == 0 and spooling.stats.spooled == 1


@pytest.mark.parametrize("url", ["pubsub://projects/p/topics/t", "pubsub://topics/t"])
def test_a_malformed_topic_url_is_a_config_error(url):
    from kubesonar.shared.errors import ConfigError

    with pytest.raises(ConfigError):
        open_publisher(url)
