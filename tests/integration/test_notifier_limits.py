"""Each notifier keeps an alert under its channel's message limit (SNS 256 KB, Pub/Sub 10 MB, Event Grid
1 MB per event, NATS its max payload), against the emulators: an alert grown past it by comments was
refused at every notification attempt, so never announced. The cut alert keeps its newest comments and
says what was cut."""

from __future__ import annotations

import json

import pytest
from alert_fixtures import grown_alert
from gcp_emulator import gcp_emulators  # noqa: F401 - the fixture

from aws_emulator import aws_endpoint, client  # noqa: F401 - the fixture
from nats_server import nats  # noqa: F401 - the fixture


def _check_cut(sent: dict, whole: dict, limit: int) -> None:
    assert len(json.dumps(sent, sort_keys=True).encode()) <= limit
    assert sent["id"] == whole["id"] and sent["severity"] == whole["severity"]
    assert sent["cut"]["fields"][:2] == ["history", "comments"] and sent["history"] == []
    kept = sent["cut"]["comments_kept"]
    assert 0 < kept < len(whole["comments"]) and sent["comments"] == whole["comments"][-kept:]  # the newest
    assert sent["evidence"] == whole["evidence"]


def test_sns_gets_an_alert_over_256_kb_cut_to_fit(aws_endpoint):  # noqa: F811
    import uuid

    from kubesonar.functions.aws.notifier import MESSAGE_LIMIT, SnsNotifier

    sns, sqs = client("sns", aws_endpoint), client("sqs", aws_endpoint)
    topic = sns.create_topic(Name=f"kubesonar-alerts-{uuid.uuid4().hex[:10]}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"inbox-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn, Attributes={"RawMessageDelivery": "true"})
    alert = grown_alert(2000)  # 200 comments of 2 KB and their history: 840 KB of JSON
    SnsNotifier(sns, topic).notify(alert)
    (message,) = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=5)["Messages"]
    _check_cut(json.loads(message["Body"]), alert, MESSAGE_LIMIT)


def test_a_small_alert_goes_whole(aws_endpoint):  # noqa: F811
    from kubesonar.shared.alert_fit import fit_alert

    alert = grown_alert(100, comments=3)
    assert fit_alert(alert, 256 * 1024) is alert


def test_pubsub_gets_an_alert_over_10_mb_cut_to_fit(gcp_emulators):  # noqa: F811
    import uuid

    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

    from kubesonar.functions.gcp.notifier import MESSAGE_LIMIT, PubSubNotifier

    publisher = pubsub_v1.PublisherClient()
    # a synchronous pull takes 4 MB answers by default: this one is near 10 MB
    channel = grpc.insecure_channel(gcp_emulators["pubsub"], options=[("grpc.max_receive_message_length", -1)])
    subscriber = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
    topic = publisher.create_topic(name=f"projects/kubesonar-test/topics/alerts-{uuid.uuid4().hex[:8]}").name
    inbox = subscriber.create_subscription(name=topic.replace("/topics/", "/subscriptions/"), topic=topic).name
    alert = grown_alert(60_000)  # 200 comments of 60 KB and their history: 24 MB of JSON
    PubSubNotifier(publisher, topic).notify(alert)
    (received,) = subscriber.pull(subscription=inbox, max_messages=1, timeout=30).received_messages
    _check_cut(json.loads(received.message.data), alert, MESSAGE_LIMIT)


@pytest.fixture
def eventgrid(tmp_path):
    import trustme

    from eventgrid_standin import EventGridStandIn

    standin = EventGridStandIn(trustme.CA(), tmp_path, topic="kubesonar-alerts", key="k")
    yield standin
    standin.close()


def test_event_grid_gets_an_alert_over_1_mb_cut_to_fit(eventgrid, monkeypatch):
    from azure.core.credentials import AzureKeyCredential
    from azure.eventgrid import EventGridPublisherClient

    from kubesonar.functions.azure.notifier import EVENT_LIMIT, EventGridNotifier

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(eventgrid.ca_file))
    publisher = EventGridPublisherClient(eventgrid.endpoint, AzureKeyCredential("k"), retry_total=0)
    alert = grown_alert(6000)  # 200 comments of 6 KB and their history: 2.4 MB of JSON
    EventGridNotifier(publisher).notify(alert)
    (event,) = eventgrid.received
    _check_cut(event["data"], alert, EVENT_LIMIT)


def test_nats_gets_an_alert_over_the_max_payload_cut_to_fit(nats):  # noqa: F811
    from kubesonar.functions.nats.connection import NatsConnection
    from kubesonar.functions.nats.notifier import _HEADROOM, NatsNotifier
    from kubesonar.functions.nats.streams import Layout, ensure_streams
    from kubesonar.shared.nats_address import parse_nats_url

    connection = NatsConnection(parse_nats_url(nats.url + "/kubesonar.flows"))
    try:
        connection.run(ensure_streams(connection.js, Layout("kubesonar.flows"), 1, 5, 30.0))
        alert = grown_alert(6000)  # 2.4 MB of JSON; nats-server's max payload is 1 MB by default
        notifier = NatsNotifier(connection)
        notifier.notify(alert)
        kept = connection.run(connection.js.get_last_msg("KUBESONAR_ALERTS", notifier.subject(alert)))
        _check_cut(json.loads(kept.data), alert, connection.nc.max_payload - _HEADROOM)
    finally:
        connection.close()
