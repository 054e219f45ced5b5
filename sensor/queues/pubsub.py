"""The sensor's Pub/Sub publisher. The message data is the raw batch bytes; cluster, node, sensor,
sequence and part travel as attributes. Credentials come from Application Default Credentials: in the
DaemonSet, a credential configuration that exchanges the pod's projected service-account token at
Google's STS (Workload Identity Federation with Kubernetes; GKE's metadata server cannot serve a
hostNetwork pod: docs/gcp.md), no key files. PUBSUB_EMULATOR_HOST, when set, points the client at an
emulator, as the library itself honours it.

The capture loop waits while a window is sent: a publish gives up after :data:`_PUBLISH_TIMEOUT_S`, the
client's own retries included (the spooling publisher retries briefly and then spools). With the
client's 60 s a window sent to an unreachable Pub/Sub held capture for three minutes."""

from __future__ import annotations

import re
from typing import Any

from kubesonar.sensor.queues import Message
from kubesonar.shared.batch import PUBSUB_PUSH_LIMIT, read_header
from kubesonar.shared.errors import ConfigError, MessageRefused, QueueUnavailable
from kubesonar.shared.identity import split_batch_key

_TOPIC = re.compile(r"^pubsub://(projects/[^/]+/topics/[^/]+)$")
_PUBLISH_TIMEOUT_S = 5.0


class PubSubQueue:
    limit = PUBSUB_PUSH_LIMIT

    def __init__(self, url: str, client: Any = None):
        match = _TOPIC.match(url)
        if not match:
            raise ConfigError(f"queue URL {url!r} is not pubsub://projects/PROJECT/topics/TOPIC")
        self.topic = match.group(1)
        self._publisher = client or _publisher_client()

    def send(self, messages: list[Message]) -> None:
        refused: dict[str, str] = {}
        try:
            pending = []
            for m in messages:
                why = self._publish(m, pending)
                if why:
                    refused[m.key] = why
            invalid = [m for m, future in pending if self._refused(future)]
            if len(invalid) > 1:
                # a request refused whole names no message: one at a time finds which (the rest go again).
                # Not only when every message failed: a send spans several requests past ~9 MB or 100
                # messages, or when the 50 ms timer splits it, and one of them may be refused alone
                invalid = [m for m in invalid if self._refused_alone(m)]
            refused |= {m.key: "Pub/Sub InvalidArgument" for m in invalid}
        except Exception as exc:
            raise QueueUnavailable(f"Pub/Sub {self.topic}: {type(exc).__name__}: {exc}") from None
        if refused:
            raise MessageRefused(refused)

    def _publish(self, message: Message, pending: list) -> str:
        """Publish one message, its future added to ``pending``; why the client refuses it outright, or ""."""
        from google.cloud.pubsub_v1.publisher.exceptions import MessageTooLargeError

        try:
            pending.append((message, self._publisher.publish(self.topic, message.data, timeout=_PUBLISH_TIMEOUT_S,
                                                             **_attributes(message))))
        except MessageTooLargeError as exc:
            return f"Pub/Sub: {exc}"
        return ""

    def _refused_alone(self, message: Message) -> bool:
        alone: list = []
        self._publish(message, alone)
        return self._refused(alone[0][1])

    @staticmethod
    def _refused(future: Any) -> bool:
        """Wait for a publish: True if Pub/Sub refused it as invalid (the request's messages, not the topic,
        whose name the URL's form has checked); any other fault raises."""
        from google.api_core.exceptions import InvalidArgument

        try:
            future.result(timeout=_PUBLISH_TIMEOUT_S)
        except InvalidArgument:
            return True
        return False


def _publisher_client() -> Any:
    from google.auth.exceptions import DefaultCredentialsError, TransportError
    from google.cloud import pubsub_v1

    # A publish request fills up to Pub/Sub's 10 MB request cap with messages of at most `limit` bytes
    # (a window's parts go together) and waits no longer than 50 ms for more.
    settings = pubsub_v1.types.BatchSettings(max_bytes=9_000_000, max_latency=0.05, max_messages=100)
    try:
        return pubsub_v1.PublisherClient(batch_settings=settings)
    except DefaultCredentialsError as exc:
        raise ConfigError(f"no Google credentials for Pub/Sub (GOOGLE_APPLICATION_CREDENTIALS: the credential "
                          f"configuration infra/k8s/overlays/gcp ships, docs/gcp.md): {exc}") from None
    except TransportError as exc:  # without a project set, the library asks the network for one here
        raise ConfigError(f"Google's token service could not be reached to find the project while the Pub/Sub "
                          f"client was made; set GOOGLE_CLOUD_PROJECT (the gcp overlay does): {exc}") from None


def _attributes(message: Message) -> dict[str, str]:
    sensor, sequence, part = split_batch_key(message.key)
    header = read_header(message.data)
    return {"cluster": header.cluster or "default", "node": header.node, "sensor": sensor,
            "sequence": str(sequence), "part": str(part)}
