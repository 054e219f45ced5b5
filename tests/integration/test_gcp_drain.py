"""The tick's drain against the Pub/Sub emulator: it pulls, scores and acknowledges in rounds bounded by
bytes held and by the time left, so a flood neither outgrows the function nor loses a tick's work when
the tick ends (it held everything and acknowledged only at the end)."""

from __future__ import annotations

import time
import uuid

import pytest
from gcp_emulator import PROJECT, gcp_emulators  # noqa: F401 - the fixture

from kubesonar.functions.gcp import drain as drain_module
from kubesonar.functions.gcp.drain import drain

_SIZE = 100_000


@pytest.fixture
def flood(gcp_emulators):  # noqa: F811
    """30 messages of 100 KB on a fresh subscription (ack deadline 10 s, the least)."""
    from google.cloud import pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    tag = uuid.uuid4().hex[:8]
    topic = publisher.create_topic(name=f"projects/{PROJECT}/topics/flows-{tag}").name
    subscription = subscriber.create_subscription(name=f"projects/{PROJECT}/subscriptions/drain-{tag}", topic=topic,
                                                  ack_deadline_seconds=10).name
    for future in [publisher.publish(topic, bytes([i]) * _SIZE) for i in range(30)]:
        future.result(timeout=30)
    return subscription


@pytest.fixture(autouse=True)
def _rounds_of_1_mb(monkeypatch):
    monkeypatch.setattr(drain_module, "ROUND_BYTES", 1_000_000, raising=False)


def test_a_round_holds_its_bytes_and_is_acknowledged_before_the_next(flood):
    """The second round fails (as a tick killed at its limit would stop): the first round's messages
    stay acknowledged, and only the rest come back."""
    rounds: list[int] = []

    def score(deliveries, keys):
        rounds.append(sum(len(d.data) for d in deliveries))
        if len(rounds) == 2:
            raise RuntimeError("the tick ends here")
        return [d.id for d in deliveries]

    with pytest.raises(RuntimeError):
        drain(flood, 10_000, score)
    assert 1_000_000 <= rounds[0] < 1_000_000 + _SIZE  # held to its bytes, overshooting by one message at most
    first = rounds[0] // _SIZE
    time.sleep(11)  # the failed round's messages come back once their ack deadline passes
    again: list[int] = []
    pulled = drain(flood, 10_000, lambda d, k: again.append(len(d)) or [x.id for x in d])
    assert pulled == sum(again) == 30 - first and len(again) > 1


def test_no_round_starts_when_less_time_is_left_than_one_took(flood):
    def slow_score(deliveries, keys):
        time.sleep(1.0)
        return [d.id for d in deliveries]

    pulled = drain(flood, 10_000, slow_score, deadline=time.monotonic() + 1.5)
    assert pulled == 10  # one round of 1 MB: 1.0 s of scoring left 0.5 s, less than it took
    rest = drain(flood, 10_000, lambda d, k: [x.id for x in d])
    assert rest == 20  # what the first drain acknowledged stays acknowledged


def test_a_round_of_which_nothing_was_applied_ends_the_drain(flood):
    """A store that is down fails every round: going on would spend the messages' delivery attempts (the
    nacked ones come back within seconds) and dead-letter them within one tick."""
    calls: list[int] = []
    pulled = drain(flood, 10_000, lambda d, k: calls.append(len(d)) or [])
    assert pulled == 10 and calls == [10]
