"""The sensor's publishers against a queue that answers slowly or not at all. The capture loop waits
while a window is sent, so a send must fail within seconds (the spool takes the batch), never after the
SDK's own minutes of timeouts and retries: meanwhile the ring overflows, and a pod told to stop is killed
before its last window is spooled."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from kubesonar.sensor.queues import Message, window_messages
from kubesonar.sensor.queues.sqs import LIMIT, SqsQueue
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.errors import QueueUnavailable
from kubesonar.shared.flow import FlowRecords

from aws_emulator import CREDENTIALS, aws_endpoint, client  # noqa: F401 - the fixture

SEND_BOUND_S = 12.0  # what one send may cost the capture loop, at most


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """A TCP port on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers: a queue
    endpoint behind a dead load balancer, a black-holed route."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def _messages(sequence: int = 0) -> list[Message]:
    header = BatchHeader("prod", "node-1", "node-1/18ebe3a3", sequence, 0, 1, counters={"packets": 1})
    return window_messages(header, FlowRecords.empty(3), LIMIT)


def _send_within(send, bound_s: float) -> tuple[bool, BaseException | None]:
    """(whether ``send`` ended within ``bound_s``, what it raised)."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            send()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised[0] = exc

    thread = threading.Thread(target=run, daemon=True)  # left behind if it hangs: the test has failed then
    thread.start()
    thread.join(bound_s)
    return not thread.is_alive(), raised[0]


def test_a_silent_sqs_endpoint_fails_the_send_within_seconds(monkeypatch):
    with silent_endpoint() as endpoint:
        for k, v in CREDENTIALS.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        queue = SqsQueue(f"{endpoint}/123456789012/flows")  # the client the sensor builds for itself
        started = time.monotonic()
        ended, raised = _send_within(lambda: queue.send(_messages()), SEND_BOUND_S)
        assert ended, f"the send still waited after {SEND_BOUND_S} s"
        assert isinstance(raised, QueueUnavailable), raised
        assert time.monotonic() - started < SEND_BOUND_S


def test_the_sensor_built_client_still_delivers(aws_endpoint, monkeypatch):  # noqa: F811
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    sqs = client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName=f"flows-{uuid.uuid4().hex[:10]}")["QueueUrl"]
    SqsQueue(url).send(_messages(7))
    got = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
    assert [m["MessageAttributes"]["key"]["StringValue"] for m in got] == ["node-1/18ebe3a3/7/0"]



def test_an_unreachable_pubsub_fails_the_send_within_seconds(monkeypatch):
    from gcp_emulator import PROJECT, free_port

    from kubesonar.sensor.queues.pubsub import PubSubQueue

    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there
    queue = PubSubQueue(f"pubsub://projects/{PROJECT}/topics/flows")
    header = BatchHeader("prod", "node-7", "node-7/abc", 1, 0, 1)
    messages = window_messages(header, FlowRecords.empty(), PubSubQueue.limit)
    ended, raised = _send_within(lambda: queue.send(messages), SEND_BOUND_S)
    assert ended, f"the send still waited after {SEND_BOUND_S} s"
    assert isinstance(raised, QueueUnavailable), raised


def test_a_silent_queue_holds_up_one_window_then_windows_go_straight_to_the_spool(tmp_path, monkeypatch):
    """What the capture loop waits per window while SQS is black-holed: the first window's tries, then
    nothing until the outage backoff has passed."""
    from kubesonar.sensor.spool import SpoolingPublisher

    with silent_endpoint() as endpoint:
        for k, v in CREDENTIALS.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        publisher = SpoolingPublisher(SqsQueue(f"{endpoint}/123456789012/flows"), tmp_path / "spool")
        waited = []
        for sequence in range(4):
            started = time.monotonic()
            ended, raised = _send_within(lambda s=sequence: publisher.publish(_messages(s)), 3 * SEND_BOUND_S)
            assert ended and raised is None, raised
            waited.append(time.monotonic() - started)
        assert publisher.stats.spooled == 4 and publisher.stats.sent == 0
        assert all(w < 0.5 for w in waited[1:]), waited


def test_a_message_sqs_refuses_for_good_is_dropped_and_counted_and_the_windows_behind_it_go_on(
        aws_endpoint, tmp_path, monkeypatch):  # noqa: F811
    """A queue whose MaximumMessageSize is 1024 bytes refuses a big window's batch (moto: InvalidParameterValue,
    the same on every try). Retried as an outage, it held the spool's head and every later window waited
    behind it; dropped and counted, the next window is delivered at once."""
    from kubesonar.compose import build_sensor
    from kubesonar.sensor.live import SensorSettings, Window

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    sqs = client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName=f"small-{uuid.uuid4().hex[:10]}",
                           Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    live = build_sensor(SensorSettings(("lo",), node="node-1"), url, str(tmp_path / "spool"), 1 << 20)
    big = BatchHeader("prod", "node-1", "node-1/18ebe3a3", 0, 0, 1)
    small = BatchHeader("prod", "node-1", "node-1/18ebe3a3", 1, 1, 2)
    flows = FlowRecords.empty(100)
    flows.columns["first_ts"] = np.random.default_rng(7).integers(0, 2**62, 100)  # incompressible
    live.sink(Window(big, flows))  # far past 1024 bytes
    live.sink(Window(small, FlowRecords.empty(0)))
    got = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], MaxNumberOfMessages=10)
    assert [m["MessageAttributes"]["key"]["StringValue"] for m in got.get("Messages", [])] == ["node-1/18ebe3a3/1/0"]
    counters = live.extra_counters()
    assert (counters["queue_refused"], counters["spool_depth"], counters["spool_dropped"]) == (1, 0, 0)


def test_two_windows_in_a_row_over_a_lowered_maximum_message_size_do_not_freeze_the_heartbeats(
        aws_endpoint, tmp_path, monkeypatch):  # noqa: F811
    """An operator lowered the queue's MaximumMessageSize below the sensor's batch limit: heartbeats fit, busy
    windows are refused (moto: InvalidParameterValue). Three busy windows in a row held the spool (the queue
    looked misconfigured) and, as it offered only its oldest window, the heartbeats waited behind it for up to
    23 h: the backend saw a silent sensor. Offered the newest window while held, the queue takes it, so the
    held busy windows are dropped as refused and the heartbeats delivered."""
    from kubesonar.compose import build_sensor
    from kubesonar.sensor.live import SensorSettings, Window
    from kubesonar.sensor.queues.refusals import REFUSING_ALL_MARKER
    from kubesonar.sensor.spool import OUTAGE_BACKOFF_S

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    sqs = client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName=f"lowered-{uuid.uuid4().hex[:10]}",
                           Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    spool = tmp_path / "spool"
    live = build_sensor(SensorSettings(("lo",), node="node-1"), url, str(spool), 1 << 20)

    def window(sequence: int, flows: int) -> Window:
        records = FlowRecords.empty(flows)
        records.columns["first_ts"] = np.random.default_rng(sequence).integers(0, 2**62, flows)  # incompressible
        return Window(BatchHeader("prod", "node-1", "node-1/18ebe3a3", sequence, sequence, sequence + 1), records)

    for sequence in range(3):  # busy: far past 1024 bytes; the first is dropped, the second starts the hold
        live.sink(window(sequence, 100))
    counters = live.extra_counters()
    assert (counters["queue_refused"], counters["queue_refusing_all"], counters["spool_depth"]) == (1, 1, 2)
    for sequence in range(3, 6):  # quiet: heartbeats, each once the spool's backoff has passed
        time.sleep(OUTAGE_BACKOFF_S[0] * 1.2)
        live.sink(window(sequence, 0))
    got = []
    while batch := sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages", []):
        got += [int(m["MessageAttributes"]["key"]["StringValue"].split("/")[2]) for m in batch]
    counters = live.extra_counters()
    assert sorted(got) == [3, 4, 5], f"heartbeats delivered: {got}, counters {counters}"
    assert (counters["queue_refused"], counters["queue_refusing_all"], counters["spool_depth"]) == (3, 0, 0)
    assert (counters["spool_dropped"], counters["queue_refusal_holds"], counters["queue_hold_probes"]) == (0, 1, 1)
    assert not (spool / REFUSING_ALL_MARKER).exists()


def test_a_probe_from_the_spool_that_the_queue_refuses_is_not_offered_again_and_again(
        aws_endpoint, tmp_path, monkeypatch):  # noqa: F811
    """Once PROBE_REACH entries or more are held, the probe comes from the spool. It was always the entry
    PROBE_REACH from the oldest: if that one is bad on its own (a busy window over a lowered
    MaximumMessageSize), every probe was refused and the heartbeats held around it waited for up to 23 h,
    the freeze the probe is there to end. A refused probe moves the next one to another entry in reach."""
    from kubesonar.sensor import spool as spool_module
    from kubesonar.sensor.queues.refusals import DropRefused

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    monkeypatch.setattr(spool_module, "PROBE_REACH", 3)  # as 256 behaves, with fewer windows
    sqs = client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName=f"lowered-{uuid.uuid4().hex[:10]}",
                           Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    queue = DropRefused(SqsQueue(url))
    backoff_s = 0.3
    spool = spool_module.SpoolingPublisher(queue, tmp_path / "spool", outage_backoff_s=(backoff_s, backoff_s))

    def window(sequence: int, flows: int) -> list[Message]:
        records = FlowRecords.empty(flows)
        records.columns["first_ts"] = np.random.default_rng(sequence).integers(0, 2**62, flows)  # incompressible
        return window_messages(BatchHeader("prod", "node-1", "node-1/18ebe3a3", sequence, sequence, sequence + 1),
                               records, LIMIT)

    spool.publish(window(0, 100))  # busy: refused, dropped (it may be the one bad window)
    spool.publish(window(1, 100))  # busy: refused too, the hold starts
    spool.publish(window(2, 0))  # within the backoff: spooled, a heartbeat the queue would take
    spool.publish(window(3, 100))  # within the backoff: spooled; the entry PROBE_REACH from the oldest
    assert (queue.refused, queue.refusing_all, spool.stats.depth) == (1, True, 3)
    for sequence in range(4, 8):  # heartbeats, each once the backoff has passed: the probe is from the spool
        time.sleep(backoff_s * 1.2)
        spool.publish(window(sequence, 0))
    got = []
    while batch := sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], MaxNumberOfMessages=10,
                                       WaitTimeSeconds=0).get("Messages", []):
        got += [int(m["MessageAttributes"]["key"]["StringValue"].split("/")[2]) for m in batch]
    assert sorted(got) == [2, 4, 5, 6, 7], f"delivered {got}, depth {spool.stats.depth}, refused {queue.refused}"
    assert (queue.refused, queue.refusing_all, spool.stats.depth, spool.stats.dropped) == (3, False, 0, 0)


def test_a_hold_is_not_retried_as_an_outage(aws_endpoint, tmp_path, monkeypatch):  # noqa: F811
    """A hold raises QueueRefusingAll, a QueueUnavailable, and the spool's short retries took it for a
    passing fault: the window that starts a hold (and, after a restart, the first held one drained) was sent
    three times to a queue that had refused it for good, the capture loop waited up to a second meanwhile,
    and publish_retries counted two retries of a refusal."""
    from kubesonar.compose import build_sensor
    from kubesonar.sensor.live import SensorSettings, Window

    monkeypatch.setenv("AWS_ENDPOINT_URL", aws_endpoint)
    sqs = client("sqs", aws_endpoint)
    url = sqs.create_queue(QueueName=f"lowered-{uuid.uuid4().hex[:10]}",
                           Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    spool = tmp_path / "spool"

    def window(sequence: int) -> Window:
        records = FlowRecords.empty(100)
        records.columns["first_ts"] = np.random.default_rng(sequence).integers(0, 2**62, 100)  # incompressible
        return Window(BatchHeader("prod", "node-1", "node-1/18ebe3a3", sequence, sequence, sequence + 1), records)

    live = build_sensor(SensorSettings(("lo",), node="node-1"), url, str(spool), 1 << 20)
    for sequence in range(2):  # the first dropped, the second starts the hold
        live.sink(window(sequence))
    counters = live.extra_counters()
    assert (counters["queue_refusing_all"], counters["publish_retries"]) == (1, 0)
    restarted = build_sensor(SensorSettings(("lo",), node="node-1"), url, str(spool), 1 << 20)
    restarted.sink(window(2))  # drains the held window first: refused, still held
    counters = restarted.extra_counters()
    assert (counters["queue_refusing_all"], counters["spool_depth"], counters["publish_retries"]) == (1, 2, 0)


def test_a_missing_sqs_queue_stays_retryable(aws_endpoint):  # noqa: F811
    """A refusal about the queue (or the credentials) heals once it is fixed: the spool keeps the batch."""
    from kubesonar.shared.errors import MessageRefused

    queue = SqsQueue(f"{aws_endpoint}/123456789012/missing-{uuid.uuid4().hex[:10]}")
    try:
        queue.send(_messages())
    except MessageRefused as exc:
        raise AssertionError(f"a missing queue was taken for a refused message: {exc}") from None
    except QueueUnavailable:
        pass
    else:
        raise AssertionError("a missing queue took the message")
