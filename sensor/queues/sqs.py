"""The sensor's SQS publisher. Message bodies are base64 (SQS bodies are text), so a batch message
may be at most 3/4 of the queue's 256 KiB; SendMessageBatch takes up to 10 messages and 256 KiB a
call. Credentials come from boto3's default chain: on EKS, IRSA's web-identity token
(AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE, set by the pod identity webhook).

The capture loop waits while a window is sent, so the client gives up within seconds and does not retry
on its own: the spooling publisher retries briefly and then spools. botocore's defaults (60 s to connect,
60 s a read, five attempts) held one send to a silent endpoint for minutes."""

from __future__ import annotations

import base64
from typing import Any

from kubesonar.sensor.queues import Message
from kubesonar.shared.errors import QueueUnavailable

SQS_MAX_BYTES = 262_144
_ENTRY_OVERHEAD = 64  # message attribute bytes per entry, rounded up
LIMIT = (SQS_MAX_BYTES - _ENTRY_OVERHEAD) * 3 // 4 - 4  # largest batch message whose base64 fits
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 3, 5  # SendMessageBatch answers in milliseconds; 256 KiB goes out in one


class SqsQueue:
    limit = LIMIT

    def __init__(self, url: str, client: Any = None):
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                            retries={"total_max_attempts": 1})
            client = boto3.client("sqs", region_name=_region(url), config=config)
        self._sqs, self.url = client, url

    def send(self, messages: list[Message]) -> None:
        for group in _groups(messages):
            entries = [{"Id": str(i), "MessageBody": base64.b64encode(m.data).decode("ascii"),
                        "MessageAttributes": {"key": {"DataType": "String", "StringValue": m.key}}}
                       for i, m in enumerate(group)]
            try:
                response = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            except Exception as exc:  # noqa: BLE001 - endpoint down, throttled, credentials: all retryable here
                raise QueueUnavailable(f"SQS {self.url}: {exc}") from None
            if response.get("Failed"):
                failed = response["Failed"][0]
                raise QueueUnavailable(f"SQS refused {len(response['Failed'])} message(s): "
                                       f"{failed.get('Code')} {failed.get('Message', '')}")


def _groups(messages: list[Message]) -> list[list[Message]]:
    """At most 10 messages and 256 KiB of bodies per SendMessageBatch call."""
    groups: list[list[Message]] = []
    size = 0
    for m in messages:
        body = 4 * ((len(m.data) + 2) // 3) + len(m.key) + _ENTRY_OVERHEAD
        if not groups or len(groups[-1]) == 10 or size + body > SQS_MAX_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(m)
        size += body
    return groups


def _region(url: str) -> str | None:
    host = url.split("/")[2]
    parts = host.split(".")
    return parts[1] if parts[0] == "sqs" and len(parts) > 2 else None
