"""Publishers: where a sensor's batch messages go, behind one interface.

A queue is named by a URL (docs/sensor.md): ``file://DIR`` is the embedded default, a directory that
stands in for a queue; SQS queue URLs, ``pubsub://projects/P/topics/T`` and Event Grid topic endpoints
are the clouds' (their publishers come with each cloud's adapter). Every message has a key,
``<sensor id>/<sequence>/<part>``, by which a receiver deduplicates: publishing twice is harmless.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from kubesonar.shared.batch import EVENT_GRID_LIMIT, PUBSUB_LIMIT, SQS_LIMIT, BatchHeader, encode_batch
from kubesonar.shared.errors import ConfigError, QueueUnavailable
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.pod_events import PodEvents


@dataclass(frozen=True)
class Message:
    key: str  # <sensor id>/<sequence>/<part>, unique per message, stable across retries
    data: bytes

    @property
    def file_name(self) -> str:
        sensor, sequence, part = self.key.rsplit("/", 2)
        return f"{_safe(sensor)}-{int(sequence):020d}-{int(part):05d}.ksfb"


class Publisher(Protocol):
    limit: int  # the largest message the queue takes, in bytes

    def send(self, messages: list[Message]) -> None:
        """Deliver all, in order, or raise QueueUnavailable (some may have been delivered)."""
        ...


class DirectoryQueue:
    """The embedded default: each message a file in DIR, written atomically; readers take them in
    name order (sensor, sequence, part) and a rewrite of the same key replaces the same file."""

    def __init__(self, directory: str | os.PathLike[str], limit: int = SQS_LIMIT):
        self.directory = Path(directory)
        self.limit = limit  # default: the smallest cloud limit, so local runs split batches as production does

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            try:
                with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".incoming-", delete=False) as f:
                    f.write(m.data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(f.name, self.directory / m.file_name)
            except OSError as exc:
                raise QueueUnavailable(f"cannot write to queue directory {self.directory}: {exc.strerror}") from None


@dataclass(frozen=True)
class QueueTarget:
    kind: str  # "file", "sqs", "pubsub", "eventgrid"
    address: str
    limit: int


_SQS = re.compile(r"^https?://(sqs\.[a-z0-9-]+\.amazonaws\.com(\.cn)?|[^/]+)/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$")
_PUBSUB = re.compile(r"^pubsub://projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][\w.~+%-]{2,254}$")
_EVENT_GRID = re.compile(r"^https://[a-z0-9-]+\.[a-z0-9-]+\.eventgrid\.azure\.net/api/events$")


def parse_queue_url(url: str) -> QueueTarget:
    """Which queue a URL names; a URL that names none is a ConfigError listing the forms."""
    if url.startswith("file://"):
        path = urlparse(url).path
        if not path:
            raise ConfigError(f"queue URL {url!r}: file:// needs a directory, e.g. file:///var/lib/kubesonar/queue")
        return QueueTarget("file", path, SQS_LIMIT)
    if _PUBSUB.match(url):
        return QueueTarget("pubsub", url, PUBSUB_LIMIT)
    if _EVENT_GRID.match(url):
        return QueueTarget("eventgrid", url, EVENT_GRID_LIMIT)
    if _SQS.match(url):
        return QueueTarget("sqs", url, SQS_LIMIT)
    raise ConfigError(
        f"queue URL {url!r} is not one of: file://DIR, an SQS queue URL "
        "(https://sqs.REGION.amazonaws.com/ACCOUNT/NAME), pubsub://projects/PROJECT/topics/TOPIC, "
        "an Event Grid topic endpoint (https://TOPIC.REGION-1.eventgrid.azure.net/api/events)"
    )


def open_publisher(url: str) -> Publisher:
    target = parse_queue_url(url)
    if target.kind == "file":
        directory = Path(target.address)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create queue directory {directory}: {exc.strerror}") from None
        return DirectoryQueue(directory)
    if target.kind == "sqs":
        from kubesonar.sensor.sqs import SqsQueue

        return SqsQueue(url)
    raise ConfigError(f"publishing to {target.kind} ({url}) comes with the {target.kind} adapter, "
                      "which this build does not include yet; use file://DIR")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "sensor"


def window_messages(header: BatchHeader, flows: FlowRecords, limit: int, pods: PodEvents | None = None,
                    dns: DnsMessages | None = None) -> list[Message]:
    """A window's batch messages, each keyed by sensor id, sequence and part."""
    return [Message(f"{header.sensor_id}/{header.sequence}/{part}", data)
            for part, data in enumerate(encode_batch(header, flows, limit=limit, pods=pods, dns=dns))]
