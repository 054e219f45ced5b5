"""The Event Grid stand-in refuses what Event Grid refuses, through the real azure-eventgrid SDK; and
the sensor's publisher keeps every event and request under the 1 MB limit with the largest batches."""

from __future__ import annotations

import os

import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient
from azure.identity import DefaultAzureCredential

from kubesonar.sensor.queues import Message, open_publisher
from kubesonar.sensor.queues.eventgrid import LIMIT, EventGridQueue
from kubesonar.shared.batch import BatchHeader, encode_batch
from kubesonar.shared.errors import QueueUnavailable
from kubesonar.shared.flow import FlowRecords

from eventgrid_standin import EventGridStandIn


@pytest.fixture
def topic(tmp_path, monkeypatch):
    import trustme

    standin = EventGridStandIn(trustme.CA(), tmp_path, key="local-key-for-the-test")
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", standin.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", standin.identity_header)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(standin.ca_file))
    yield standin
    standin.close()


def _event(data, **kw) -> EventGridEvent:
    return EventGridEvent(subject="prod/node-1", event_type="KubeSonar.FlowBatch", data=data, data_version="1", **kw)


def test_entra_tokens_and_keys_are_checked(topic):
    EventGridPublisherClient(topic.endpoint, DefaultAzureCredential()).send([_event("AA==")])
    EventGridPublisherClient(topic.endpoint, AzureKeyCredential("local-key-for-the-test")).send([_event("AA==")])
    with pytest.raises(ClientAuthenticationError):
        EventGridPublisherClient(topic.endpoint, AzureKeyCredential("wrong")).send([_event("AA==")])
    topic.key = None  # local auth disabled, as the module sets it
    with pytest.raises(ClientAuthenticationError):
        EventGridPublisherClient(topic.endpoint, AzureKeyCredential("local-key-for-the-test")).send([_event("AA==")])
    assert len(topic.received) == 2 and topic.counters.refused == {401: 2}


def test_over_one_megabyte_is_refused_with_413_and_cloudevents_with_400(topic):
    from azure.core.messaging import CloudEvent

    client = EventGridPublisherClient(topic.endpoint, DefaultAzureCredential())
    with pytest.raises(HttpResponseError) as big:
        client.send([_event("A" * (1024 * 1024))])
    with pytest.raises(HttpResponseError) as cloud:
        client.send([CloudEvent(source="/kubesonar", type="KubeSonar.FlowBatch", data=b"x")])
    assert (big.value.status_code, cloud.value.status_code) == (413, 400) and topic.received == []


def test_the_largest_batches_fit_one_event_each_and_requests_stay_under_one_megabyte(topic):
    queue = open_publisher(f"eventgrid://{topic.host}")
    assert isinstance(queue, EventGridQueue) and queue.limit == LIMIT
    flows = FlowRecords.empty(0)
    header = BatchHeader("prod", "n" * 253, "s" * 253 + "/1", 0, 0, 1)
    (message,) = [Message(f"{'s' * 253}/1/{sequence}/0", d)
                  for sequence, d in enumerate(encode_batch(header, flows, limit=LIMIT))]
    padded = message.data + os.urandom(LIMIT - len(message.data))  # as large as a batch may be
    queue.send([Message(f"{'s' * 253}/1/{i}/0", padded) for i in range(3)])  # three requests
    assert len(topic.received) == 3 and topic.counters.refused == {}


def test_an_event_grid_refuses_for_good_is_named_and_the_rest_are_delivered(topic):
    """An event over 1 MB is answered 413 on every try: named in MessageRefused (dropped and counted in
    front of the spool), not an outage that holds the spool's head; the others are delivered."""
    from kubesonar.shared.errors import MessageRefused

    header = BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1)
    (data,) = encode_batch(header, FlowRecords.empty(0), limit=LIMIT)
    huge, small = Message("node-1/1/0/0", data + os.urandom(1024 * 1024)), Message("node-1/1/1/0", data)
    with pytest.raises(MessageRefused) as refused:
        open_publisher(f"eventgrid://{topic.host}").send([huge, small])
    assert list(refused.value.refused) == [huge.key] and "413" in refused.value.refused[huge.key]
    assert [e["id"] for e in topic.received] == [small.key]


def test_an_unreachable_topic_is_queue_unavailable_for_the_spool(topic):
    url = f"eventgrid://{topic.host}"
    topic.close()
    header = BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1)
    (data,) = encode_batch(header, FlowRecords.empty(0), limit=LIMIT)
    with pytest.raises(QueueUnavailable, match="Event Grid"):
        open_publisher(url).send([Message("node-1/1/0/0", data)])
