"""Synchronous pull in bulk: what makes a scheduled function amortise state I/O over many messages.

Pulls, scores and acknowledges in rounds: a round pulls until the subscription answers empty, it holds
ROUND_BYTES of message data, or `max_messages` are pulled in all; it hands them to one scoring call,
then acknowledges what was applied and nacks the rest at once (redelivered later; after the subscription's
max delivery attempts, its dead-letter policy moves it aside). Holding a whole backlog (10,000 messages of
up to 381 KB: 3.8 GB) and acknowledging only at the end outgrew the function's memory and its time limit,
and a tick killed at its limit had acknowledged nothing. No round starts once the time left is shorter
than the longest round so far, nor after a round of which nothing was applied (the store is down: each
round would spend a delivery attempt of its messages, nacked ones coming back after 10 s, and the
subscription's five would be gone within one tick). The core bounds the decoded rows it holds at once
(ROWS_HELD).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from kubesonar.shared.batch import PUBSUB_PUSH_LIMIT
from kubesonar.shared.identity import batch_key
from kubesonar.shared.pipeline import Delivery

_PULL_CAP = 1000  # the most one Pull returns
_ACK_CHUNK = 1000  # ack ids per Acknowledge request, well under its 512 KB request cap
ROUND_BYTES = 64 << 20  # message data a round holds: 175 of the largest messages a sensor sends
# A pull waits for messages until its deadline: the first may wait (a tick that finds none), the later ones
# only briefly, since an empty answer after some messages means the backlog is drained (a tick is billed
# by the second).
_FIRST_PULL_S, _NEXT_PULL_S = 10.0, 1.5

_subscriber: pubsub_v1.SubscriberClient | None = None


def drain(subscription: str, max_messages: int, score: Callable[[list[Delivery], dict[str, str]], list[str]],
          deadline: float = float("inf")) -> int:
    """Pull, score and ack in rounds until drained, `max_messages` pulled, or too near `deadline` (a
    time.monotonic() value). Returns how many messages were pulled."""
    global _subscriber
    _subscriber = _subscriber or pubsub_v1.SubscriberClient()
    pulled, longest_round = 0, 0.0
    while pulled < max_messages and deadline - time.monotonic() > longest_round:
        started = time.monotonic()
        received, drained = _pull_round(subscription, max_messages - pulled, first=not pulled)
        applied = _score_and_ack(subscription, received, score) if received else 0
        pulled += len(received)
        longest_round = max(longest_round, time.monotonic() - started)
        if drained or (received and not applied):
            break
    return pulled


def _pull_round(subscription: str, most: int, first: bool) -> tuple[list, bool]:
    """Messages pulled until ROUND_BYTES of data or `most` messages are held; and whether the
    subscription answered empty. Each pull asks for no more than the bytes left can hold of sensor-sized
    messages, so a round overshoots its bytes only by messages larger than a sensor sends."""
    received: list = []
    held = 0
    while len(received) < most and held < ROUND_BYTES:
        ask = min(_PULL_CAP, most - len(received), max(1, (ROUND_BYTES - held) // PUBSUB_PUSH_LIMIT))
        try:
            response = _subscriber.pull(subscription=subscription, max_messages=ask,
                                        timeout=_FIRST_PULL_S if first and not received else _NEXT_PULL_S)
        except gexc.DeadlineExceeded:
            return received, True
        if not response.received_messages:
            return received, True
        received += response.received_messages
        held += sum(len(r.message.data) for r in response.received_messages)
    return received, False


def _score_and_ack(subscription: str, received: list,
                   score: Callable[[list[Delivery], dict[str, str]], list[str]]) -> int:
    """Scores a round, acks what was applied (or dead-lettered) and nacks the rest; returns how many acked."""
    ack_ids = {r.message.message_id: r.ack_id for r in received}
    done = set(score([Delivery(r.message.message_id, r.message.data) for r in received],
                     {r.message.message_id: attributes_key(r.message.attributes) for r in received}))
    _in_chunks(_subscriber.acknowledge, subscription, [a for m, a in ack_ids.items() if m in done])
    _in_chunks(lambda **kw: _subscriber.modify_ack_deadline(ack_deadline_seconds=0, **kw), subscription,
               [a for m, a in ack_ids.items() if m not in done])
    return len(done & ack_ids.keys())


def attributes_key(attributes: dict[str, str]) -> str:
    """The batch key a sensor's attributes name, for logs; '' when they do not name one."""
    try:
        return batch_key(attributes["sensor"], int(attributes["sequence"]), int(attributes["part"]))
    except (KeyError, ValueError):
        return ""


def _in_chunks(call: Callable[..., object], subscription: str, ack_ids: list[str]) -> None:
    for start in range(0, len(ack_ids), _ACK_CHUNK):
        call(subscription=subscription, ack_ids=ack_ids[start:start + _ACK_CHUNK])
