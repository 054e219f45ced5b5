"""The sensor's SQS publisher. Message bodies are base64 (SQS bodies are text), and SQS counts a message's
attributes in its size (name, type and value: the MessageAttributeValue reference), so a batch message
may be at most 3/4 of the queue's 256 KiB less the batch key attribute at its longest (a sensor id as
long as names allow). SendMessageBatch takes up to 10 messages and 256 KiB a call. Credentials come
from boto3's default chain: on EKS, IRSA's web-identity token (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE,
set by the pod identity webhook).

A refusal of the whole SendMessageBatch request (too long, too many entries) is about the request we
built and the same on every try: its messages go again one at a time, never as an outage to spool.

The capture loop waits while a window is sent, so the client gives up within seconds and does not retry
on its own: the spooling publisher retries briefly and then spools. botocore's defaults (60 s to connect,
60 s a read, five attempts) held one send to a silent endpoint for minutes."""

from __future__ import annotations

import base64
from typing import Any

from kubesonar.sensor.queues import Message
from kubesonar.shared.errors import MessageRefused, QueueUnavailable
from kubesonar.shared.identity import MAX_BATCH_KEY

SQS_MAX_BYTES = 262_144
KEY_ATTRIBUTE, _KEY_TYPE = "key", "String"
# the key attribute at its longest, as SQS counts it: name, type and value
_MAX_ATTRIBUTE_BYTES = len(KEY_ATTRIBUTE) + len(_KEY_TYPE) + MAX_BATCH_KEY
LIMIT = (SQS_MAX_BYTES - _MAX_ATTRIBUTE_BYTES) // 4 * 3  # the largest batch message whose base64 and key fit
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 3, 5  # SendMessageBatch answers in milliseconds; 256 KiB goes out in one
# refusals about the message itself, the same on every try: too large for the queue, a body or attribute
# it will not take. A missing queue, denied credentials or KMS key, throttling and the service's own
# faults may heal, and stay retryable.
_MESSAGE_FAULTS = frozenset({"InvalidParameterValue", "InvalidMessageContents", "InvalidAttributeName",
                             "InvalidAttributeValue", "MessageTooLong"})
# refusals of the whole SendMessageBatch request we built, the same on every try: botocore's sqs model lists
# them; SQS names them AWS.SimpleQueueService.<name> (its query-compatible code, what botocore puts in Code)
_REQUEST_FAULTS = frozenset({"BatchRequestTooLong", "TooManyEntriesInBatchRequest", "BatchEntryIdsNotDistinct",
                             "EmptyBatchRequest", "InvalidBatchEntryId"})


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
        refused: dict[str, str] = {}
        for group in _groups(messages):
            refused |= self._send_group(group)
        if refused:
            raise MessageRefused(refused)

    def _send_group(self, group: list[Message]) -> dict[str, str]:
        """Send up to 10 messages; the keys of those SQS refuses for good, with why. Anything that may
        heal raises QueueUnavailable."""
        if not group:
            return {}
        try:
            entries = [_entry(i, m) for i, m in enumerate(group)]
            response = self._sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
        except Exception as exc:  # noqa: BLE001 - endpoint down, throttled, credentials: retryable unless about a message
            code, why = _error(exc)
            if code not in _MESSAGE_FAULTS | _REQUEST_FAULTS:
                raise QueueUnavailable(f"SQS {self.url}: {exc}") from None
            if len(group) == 1:
                return {group[0].key: f"SQS {code}: {why}"}
            # the call names no entry (moto refuses a whole batch for one oversized message), or refuses the
            # request as built: one at a time finds the refused messages and delivers the others, some
            # perhaps twice (receivers deduplicate by key)
            return {key: reason for m in group for key, reason in self._send_group([m]).items()}
        refused: dict[str, str] = {}
        healing: list[str] = []
        for failed in response.get("Failed", []):
            reason = f"SQS {failed.get('Code')}: {failed.get('Message', '')}"
            if failed.get("SenderFault") and _code(failed.get("Code", "")) in _MESSAGE_FAULTS:
                refused[group[int(failed["Id"])].key] = reason
            else:
                healing.append(reason)
        if healing:
            raise QueueUnavailable(f"SQS refused {len(healing)} message(s): {healing[0]}")
        return refused


def _entry(index: int, message: Message) -> dict[str, Any]:
    return {"Id": str(index), "MessageBody": base64.b64encode(message.data).decode("ascii"),
            "MessageAttributes": {KEY_ATTRIBUTE: {"DataType": _KEY_TYPE, "StringValue": message.key}}}


def message_size(message: Message) -> int:
    """The message's size as SQS counts it against 256 KiB: its base64 body and its attribute's name, type
    and value."""
    return 4 * ((len(message.data) + 2) // 3) + len(KEY_ATTRIBUTE) + len(_KEY_TYPE) + len(message.key.encode())


def _error(exc: Exception) -> tuple[str, str]:
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    return _code(error.get("Code", "")), error.get("Message", str(exc))


def _code(code: str) -> str:
    """An SQS error code without the query-compatible prefix: AWS.SimpleQueueService.BatchRequestTooLong, as
    SQS and moto send it, is BatchRequestTooLong as botocore's model names it."""
    return code.removeprefix("AWS.SimpleQueueService.")


def _groups(messages: list[Message]) -> list[list[Message]]:
    """At most 10 messages and 256 KiB of messages (attributes included) per SendMessageBatch call."""
    groups: list[list[Message]] = []
    size = 0
    for m in messages:
        body = message_size(m)
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
