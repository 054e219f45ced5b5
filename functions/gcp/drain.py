"""Synchronous pull in bulk: what makes a scheduled function amortise state I/O over many messages.

Pulls until the subscription answers empty or `max_messages` are held, hands them all to one scoring call,
then acknowledges what it applied and nacks the rest at once (redelivered next tick; after the
subscription's max delivery attempts, its dead-letter policy moves it aside).
"""

from __future__ import annotations

from collections.abc import Callable

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from kubesonar.shared.identity import batch_key
from kubesonar.shared.pipeline import Delivery

_PULL_CAP = 1000  # the most one Pull returns
_ACK_CHUNK = 1000  # ack ids per Acknowledge request, well under its 512 KB request cap
# A pull waits for messages until its deadline: the first may wait (a tick that finds none), the later ones
# only briefly, since an empty answer after some messages means the backlog is drained (a tick is billed
# by the second).
_FIRST_PULL_S, _NEXT_PULL_S = 10.0, 1.5

_subscriber: pubsub_v1.SubscriberClient | None = None


def drain(subscription: str, max_messages: int, score: Callable[[list[Delivery], dict[str, str]], list[str]]) -> int:
    """Pull, score in one call, ack. Returns how many messages were pulled."""
    global _subscriber
    _subscriber = _subscriber or pubsub_v1.SubscriberClient()
    received = []
    while len(received) < max_messages:
        try:
            response = _subscriber.pull(subscription=subscription, timeout=_NEXT_PULL_S if received else _FIRST_PULL_S,
                                        max_messages=min(_PULL_CAP, max_messages - len(received)))
        except gexc.DeadlineExceeded:
            break
        if not response.received_messages:
            break
        received += response.received_messages
    if not received:
        return 0
    ack_ids = {r.message.message_id: r.ack_id for r in received}
    done = set(score([Delivery(r.message.message_id, r.message.data) for r in received],
                     {r.message.message_id: attributes_key(r.message.attributes) for r in received}))
    _in_chunks(_subscriber.acknowledge, subscription, [a for m, a in ack_ids.items() if m in done])
    _in_chunks(lambda **kw: _subscriber.modify_ack_deadline(ack_deadline_seconds=0, **kw), subscription,
               [a for m, a in ack_ids.items() if m not in done])
    return len(received)


def attributes_key(attributes: dict[str, str]) -> str:
    """The batch key a sensor's attributes name, for logs; '' when they do not name one."""
    try:
        return batch_key(attributes["sensor"], int(attributes["sequence"]), int(attributes["part"]))
    except (KeyError, ValueError):
        return ""


def _in_chunks(call: Callable[..., object], subscription: str, ack_ids: list[str]) -> None:
    for start in range(0, len(ack_ids), _ACK_CHUNK):
        call(subscription=subscription, ack_ids=ack_ids[start:start + _ACK_CHUNK])
