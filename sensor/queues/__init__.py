"""Publishers: where a sensor's batch messages go, behind one interface.

A queue is named by a URL (docs/sensor.md). Each kind of queue is one entry of :data:`QUEUE_KINDS`: the
URL form it answers to, the largest message it takes, and the module that publishes to it, imported
only when used (a node publishing to SQS never loads the Pub/Sub SDK). A new kind of queue is one new
module here and one entry in that table; ``kubesonar sensor`` and ``kubesonar replay`` take it at once.
Every message has a key, ``<sensor id>/<sequence>/<part>`` (shared/identity.py), by which a receiver
deduplicates: publishing twice is harmless.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kubesonar.shared.batch import EVENT_GRID_LIMIT, PUBSUB_PUSH_LIMIT, SQS_LIMIT, BatchHeader, encode_batch
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.identity import batch_key, split_batch_key
from kubesonar.shared.pod_events import PodEvents
from kubesonar.shared.signing import OVERHEAD as SIGNATURE_OVERHEAD
from kubesonar.shared.url_credentials import without_credentials


@dataclass(frozen=True)
class Message:
    key: str  # <sensor id>/<sequence>/<part>, unique per message, stable across retries
    data: bytes

    @property
    def file_name(self) -> str:
        sensor, sequence, part = split_batch_key(self.key)
        return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', sensor) or 'sensor'}-{sequence:020d}-{part:05d}.ksfb"


class Publisher(Protocol):
    limit: int  # the largest message the queue takes, in bytes

    def send(self, messages: list[Message]) -> None:
        """Deliver all, in order, or raise QueueUnavailable (some may have been delivered). A message the
        queue refuses for what it is does not stop the rest: it is named in a MessageRefused raised once
        the others are delivered (sensor/queues/refusals.py drops it)."""
        ...


@dataclass(frozen=True)
class QueueKind:
    name: str
    pattern: re.Pattern[str]
    limit: int  # the largest batch message this queue carries
    publisher: str  # "module:callable": callable(url) -> Publisher, imported on first use
    form: str  # how the URL looks, for error messages and --help


QUEUE_KINDS: tuple[QueueKind, ...] = (
    QueueKind("file", re.compile(r"^file://"), SQS_LIMIT, "kubesonar.sensor.queues.directory:open_directory_queue",
              "file://DIR"),
    QueueKind("pubsub", re.compile(r"^pubsub://projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}$"),
              PUBSUB_PUSH_LIMIT, "kubesonar.sensor.queues.pubsub:PubSubQueue", "pubsub://projects/PROJECT/topics/TOPIC"),
    QueueKind("eventgrid", re.compile(r"^eventgrid://[A-Za-z0-9.-]+(:\d+)?/?$"), EVENT_GRID_LIMIT,
              "kubesonar.sensor.queues.eventgrid:EventGridQueue", "eventgrid://TOPIC-HOSTNAME"),
    QueueKind("nats", re.compile(r"^nats://[^/?#]+/[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\?.*)?$"),
              1024 * 1024 - 16 * 1024, "kubesonar.sensor.queues.nats:open_nats_queue", "nats://HOST:PORT/SUBJECT"),
    # a standard queue only: a FIFO queue (NAME.fifo) refuses every message that carries no MessageGroupId
    QueueKind("sqs", re.compile(r"^https?://(sqs\.[a-z0-9-]+\.amazonaws\.com(\.cn)?|[^/]+)/\d{12}/[A-Za-z0-9_-]{1,80}$"),
              SQS_LIMIT, "kubesonar.sensor.queues.sqs:SqsQueue",
              "an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"),
)


@dataclass(frozen=True)
class QueueTarget:
    kind: str
    address: str
    limit: int


def queue_kind(url: str) -> QueueKind:
    """Which kind of queue a URL names; a URL that names none is a ConfigError listing the forms."""
    for kind in QUEUE_KINDS:
        if kind.pattern.match(url):
            return kind
    shown = without_credentials(url)
    if url.endswith(".fifo"):
        raise ConfigError(f"queue URL {shown!r} names an SQS FIFO queue: the sensor sends to a standard queue "
                          "(infra/aws makes one); a FIFO queue would refuse every batch")
    raise ConfigError(f"queue URL {shown!r} is not one of: " + ", ".join(k.form for k in QUEUE_KINDS))


def parse_queue_url(url: str) -> QueueTarget:
    kind = queue_kind(url)
    return QueueTarget(kind.name, url, kind.limit)


def open_publisher(url: str) -> Publisher:
    """The publisher for a queue URL; its SDK is imported here, not before."""
    kind = queue_kind(url)
    module, _, name = kind.publisher.partition(":")
    try:
        factory = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ConfigError(f"publishing to {kind.name} ({without_credentials(url)}) needs a package this installation "
                          f"lacks: {exc.name}; install kubesonar[sensor]") from None
    return factory(url)


def window_messages(header: BatchHeader, flows: FlowRecords, limit: int, pods: PodEvents | None = None,
                    dns: DnsMessages | None = None, signer: Callable[[bytes], bytes] | None = None) -> list[Message]:
    """A window's batch messages, each keyed by sensor id, sequence and part; signed by ``signer``
    (shared/signing.py's ``Keyring.sign``) when given, within the same ``limit``."""
    if signer is None:
        encoded = encode_batch(header, flows, limit=limit, pods=pods, dns=dns)
    else:
        encoded = [signer(m) for m in encode_batch(header, flows, limit=limit - SIGNATURE_OVERHEAD, pods=pods, dns=dns)]
    return [Message(batch_key(header.sensor_id, header.sequence, part), data) for part, data in enumerate(encoded)]
