"""The Event Grid stand-in refuses what Event Grid refuses, through the real azure-eventgrid SDK; and
the sensor's publisher keeps every event and request under the 1 MB limit with the largest batches."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.eventgrid import EventGridEvent, EventGridPublisherClient
from azure.identity import DefaultAzureCredential

from kubesonar.sensor.queues import Message, open_publisher
from kubesonar.sensor.queues.eventgrid import LIMIT, EventGridQueue
from kubesonar.sensor.spool import OUTAGE_BACKOFF_S
from kubesonar.shared.batch import BatchHeader, encode_batch
from kubesonar.shared.errors import QueueUnavailable
from kubesonar.shared.flow import FlowRecords

from eventgrid_standin import CLOUD_EVENTS, EVENT_GRID_SCHEMA, EventGridStandIn


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


def _window(sequence: int, flows: int = 0):
    from kubesonar.sensor.live import Window

    records, rng = FlowRecords.empty(flows), np.random.default_rng(sequence)
    records.columns["first_ts"] = rng.integers(0, 2**62, flows)  # incompressible
    records.columns["bytes_out"] = rng.integers(0, 2**62, flows).astype(np.uint64)
    return Window(BatchHeader("prod", "node-1", "node-1/1", sequence, sequence, sequence + 1), records)


def test_a_topic_that_refuses_every_event_keeps_the_batches_in_the_spool_until_it_is_fixed(topic, tmp_path, caplog):
    """A topic deployed with the CloudEvents input schema answers 400 to every event. Dropped as refusals, every
    window was lost until someone fixed it; from the second window refused whole in a row the batches are held
    in the spool, the heartbeat says so (the newest window offered meanwhile is refused too: the hold stands,
    nothing lost), and once the topic is fixed the window offered is delivered, then all the held ones in order."""
    from kubesonar.compose import build_sensor
    from kubesonar.sensor.live import SensorSettings

    url = f"eventgrid://{topic.host}"
    live = build_sensor(SensorSettings(("lo",), node="node-1"), url, str(tmp_path / "spool"), 1 << 20)
    topic.input_schema = CLOUD_EVENTS
    with caplog.at_level("ERROR", logger="kubesonar.sensor.queues.refusals"):
        for sequence in range(4):
            if sequence == 3:  # the spool's backoff has passed: window 3 is offered in place of the oldest
                time.sleep(OUTAGE_BACKOFF_S[0] * 1.2)
            live.sink(_window(sequence, flows=40_000 if sequence == 1 else 0))  # window 1 in two parts
    counters = live.extra_counters()
    # window 0 may have been a lone bad one: dropped; window 1 was the second refused whole: held from there
    assert (counters["queue_refused"], counters["spool_depth"], counters["spool_dropped"], topic.received) == (1, 4, 0, [])
    assert (counters["queue_refusing_all"], counters["queue_refusal_holds"], counters["queue_hold_probes"]) == (1, 1, 1)
    (error,) = [r.getMessage() for r in caplog.records if "misconfigured" in r.getMessage()]
    assert url in error and "400 BadRequest" in error and "'CloudEventV10' schema" in error

    topic.input_schema = EVENT_GRID_SCHEMA  # the deploy fixed
    time.sleep(OUTAGE_BACKOFF_S[0] * 2 * 1.2)  # the spool tries the queue again once its backoff (doubled) has passed
    live.sink(_window(4))  # offered in place of the oldest: taken, so the hold ends and the held windows follow
    counters = live.extra_counters()
    assert (counters["queue_refusing_all"], counters["spool_depth"], counters["spool_dropped"]) == (0, 0, 0)
    assert counters["queue_refused"] == 1 and counters["queue_refusal_holds"] == 1
    probe, *held = [int(e["id"].split("/")[2]) for e in topic.received]
    assert probe == 4 and held == sorted(held) and set(held) == {1, 2, 3} and held.count(1) > 1


def test_a_refused_window_between_good_ones_is_still_dropped_not_held(topic, tmp_path):
    """One window refused whole (an event over 1 MB, answered 413), then one taken: the queue is not refusing
    everything, so the refusal is dropped and counted and nothing waits behind it."""
    from kubesonar.sensor.queues.refusals import DropRefused
    from kubesonar.sensor.spool import SpoolingPublisher

    queue = DropRefused(open_publisher(f"eventgrid://{topic.host}"))
    spool = SpoolingPublisher(queue, tmp_path / "spool")
    (data,) = encode_batch(BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1), FlowRecords.empty(0), limit=LIMIT)
    for sequence in range(6):
        bad = sequence % 2 == 1
        spool.publish([Message(f"node-1/1/{sequence}/0", data + os.urandom(1024 * 1024) if bad else data)])
    assert queue.refused == 3 and spool.stats.depth == 0
    assert [e["id"] for e in topic.received] == [f"node-1/1/{s}/0" for s in (0, 2, 4)]
    assert not queue.refusing_all and queue.holds == 0


def test_a_bad_window_drained_part_by_part_counts_as_one_window_not_a_refusing_topic(topic, tmp_path):
    """The spool sends a window's parts one send each: a window whose three parts are each over 1 MB (413) is
    one bad window, dropped, not three refused sends in a row that would hold every window behind it."""
    from azure.core.credentials import AzureKeyCredential

    from kubesonar.sensor.queues.refusals import DropRefused
    from kubesonar.sensor.spool import SpoolingPublisher

    client = EventGridPublisherClient(topic.endpoint, AzureKeyCredential("the-key"), retry_total=0)
    queue = DropRefused(EventGridQueue(f"eventgrid://{topic.host}", client=client))
    spool = SpoolingPublisher(queue, tmp_path / "spool", max_wait_s=0.01, outage_backoff_s=(0.0, 0.0))
    (data,) = encode_batch(BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1), FlowRecords.empty(0), limit=LIMIT)
    topic.key = "another-key"  # an outage (401): both windows go to the spool
    spool.publish([Message(f"node-1/1/0/{part}", data + os.urandom(1024 * 1024)) for part in range(3)])
    spool.publish([Message("node-1/1/1/0", data)])
    assert spool.stats.depth == 4
    topic.key = "the-key"
    assert spool.drain()
    assert queue.refused == 3 and not queue.refusing_all and [e["id"] for e in topic.received] == ["node-1/1/1/0"]


def test_a_queue_held_for_days_keeps_no_record_of_each_window_it_refused(topic):
    """While a topic refuses every window, the spool offers it its head, and once the spool's bound drops that
    the next one: over days of a misconfigured topic, thousands of windows. Each was remembered in the set of
    windows refused since the last acceptance, which only has to tell two windows from one."""
    from kubesonar.sensor.queues.refusals import WINDOWS_TO_HOLD, DropRefused

    queue = DropRefused(open_publisher(f"eventgrid://{topic.host}"))
    topic.input_schema = CLOUD_EVENTS
    (data,) = encode_batch(BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1), FlowRecords.empty(0), limit=LIMIT)
    for sequence in range(40):
        try:
            queue.send([Message(f"node-1/1/{sequence}/0", data)])
        except QueueUnavailable:
            pass
    assert queue.refusing_all and queue.refused == 1 and queue.holds == 1
    assert len(queue._refused_windows) <= WINDOWS_TO_HOLD


def test_a_hold_outlives_a_restart_of_the_sensor(topic, tmp_path):
    """The sensor restarts (a node reboot, a rollout) while its topic still refuses every window: the held
    batches are in the spool, but the rule's memory was not. The first one the restarted spool offered was
    taken for the one bad window and dropped; a held batch is never dropped, whatever the restarts."""
    from kubesonar.compose import build_sensor
    from kubesonar.sensor.live import SensorSettings

    url, spool = f"eventgrid://{topic.host}", str(tmp_path / "spool")
    topic.input_schema = CLOUD_EVENTS
    live = build_sensor(SensorSettings(("lo",), node="node-1"), url, spool, 1 << 20)
    for sequence in range(3):
        live.sink(_window(sequence))
    assert (live.extra_counters()["queue_refused"], live.extra_counters()["spool_depth"]) == (1, 2)  # 0 dropped

    restarted = build_sensor(SensorSettings(("lo",), node="node-1"), url, spool, 1 << 20)
    restarted.sink(_window(3))
    counters = restarted.extra_counters()
    assert (counters["queue_refused"], counters["spool_depth"], counters["queue_refusing_all"]) == (0, 3, 1)
    assert counters["spool_quarantined"] == 0  # the hold's marker in the spool's directory is not an entry

    topic.input_schema = EVENT_GRID_SCHEMA  # the topic fixed: every held window is delivered, and the hold ends
    time.sleep(OUTAGE_BACKOFF_S[0] * 1.2)
    restarted.sink(_window(4))
    counters = restarted.extra_counters()
    assert (counters["queue_refusing_all"], counters["spool_depth"], counters["queue_refused"]) == (0, 0, 0)
    assert [int(e["id"].split("/")[2]) for e in topic.received] == [4, 1, 2, 3]  # the window offered, then the held
    again = build_sensor(SensorSettings(("lo",), node="node-1"), url, spool, 1 << 20)
    assert again.extra_counters()["queue_refusing_all"] == 0  # what was held is over: a restart starts afresh


def test_a_hold_longer_than_the_backends_replay_window_offers_a_window_within_it(topic, tmp_path, monkeypatch):
    """The backend refuses as a replay a window WINDOW sequences below the newest it took (shared/applied.py):
    after a long hold, the newest window offered first would have had every held window far behind it refused
    (lost, where the hold kept them). The window offered is at most PROBE_REACH entries from the oldest."""
    from kubesonar.sensor import spool as spool_module
    from kubesonar.sensor.queues.refusals import DropRefused

    monkeypatch.setattr(spool_module, "PROBE_REACH", 3)  # as 256 behaves with 512 windows held, in eight
    queue = DropRefused(open_publisher(f"eventgrid://{topic.host}"))
    spool = spool_module.SpoolingPublisher(queue, tmp_path / "spool", outage_backoff_s=(0.0, 0.0))
    (data,) = encode_batch(BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1), FlowRecords.empty(0), limit=LIMIT)
    topic.input_schema = CLOUD_EVENTS
    for sequence in range(8):
        spool.publish([Message(f"node-1/1/{sequence}/0", data)])
    assert (queue.refused, queue.probes, spool.stats.depth, topic.received) == (1, 6, 7, [])  # 0 dropped, 1 held
    topic.input_schema = EVENT_GRID_SCHEMA
    spool.publish([Message("node-1/1/8/0", data)])
    probe, *rest = [int(e["id"].split("/")[2]) for e in topic.received]
    # within reach (each refused probe moved to another entry in it), then the rest in order
    assert probe in (1, 2, 3) and rest == [s for s in range(1, 9) if s != probe]
    assert (queue.refused, queue.refusing_all, spool.stats.depth) == (1, False, 0)


def test_a_topic_that_breaks_again_after_the_probe_keeps_the_held_windows(topic, tmp_path):
    """A probe taken says the queue works, and the held windows it then refuses whole were dropped as bad on
    their own, every one: a topic that took the probe and then refused everything again (a fix rolled back,
    a frontend not yet updated) lost the whole hold. A held window no larger than the probe it took is not
    bad on its own (the one refusal a sensor's windows meet is a size): the hold starts again, nothing lost."""
    from kubesonar.sensor.queues.refusals import DropRefused
    from kubesonar.sensor.spool import SpoolingPublisher

    queue = DropRefused(open_publisher(f"eventgrid://{topic.host}"))
    spool = SpoolingPublisher(queue, tmp_path / "spool", outage_backoff_s=(0.0, 0.0))
    (data,) = encode_batch(BatchHeader("prod", "node-1", "node-1/1", 0, 0, 1), FlowRecords.empty(0), limit=LIMIT)
    topic.input_schema = CLOUD_EVENTS
    for sequence in range(4):  # 0 dropped, 1 held, 2 and 3 offered as probes, refused, held
        spool.publish([Message(f"node-1/1/{sequence}/0", data)])
    assert (queue.refused, queue.refusing_all, spool.stats.depth) == (1, True, 3)

    accept = topic.accept

    def rolled_back_after_one(headers, body):  # takes one request, then refuses everything again
        answer = accept(headers, body)
        topic.input_schema = CLOUD_EVENTS
        return answer

    topic.input_schema, topic.accept = EVENT_GRID_SCHEMA, rolled_back_after_one
    spool.publish([Message("node-1/1/4/0", data)])  # the probe: taken
    assert [int(e["id"].split("/")[2]) for e in topic.received] == [4]
    assert (queue.refused, queue.refusing_all, spool.stats.depth) == (1, True, 3), "the held windows were dropped"
    topic.accept = accept
    topic.input_schema = EVENT_GRID_SCHEMA  # fixed for good
    spool.publish([Message("node-1/1/5/0", data)])
    assert [int(e["id"].split("/")[2]) for e in topic.received] == [4, 5, 1, 2, 3]
    assert (queue.refused, queue.refusing_all, spool.stats.depth) == (1, False, 0)
