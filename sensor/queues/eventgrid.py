"""The sensor's Event Grid publisher: ``eventgrid://TOPIC-HOSTNAME`` names a custom topic, whose publish
endpoint is ``https://TOPIC-HOSTNAME/api/events``.

Events use the Event Grid schema, not CloudEvents: the Python Functions trigger reads only Event Grid
keys (a CloudEvent's ``data_base64`` would be dropped). ``data`` is the batch, base64-encoded (a JSON
string), ``subject`` is ``cluster/node``, ``eventType`` ``KubeSonar.FlowBatch``, ``dataVersion`` the
batch's flow schema version and ``id`` the batch key, so a redelivery is recognisable by id too.

Event Grid takes at most 1 MB per event and per publish request (docs/azure.md cites the limits): the
batch limit leaves room for base64 and the envelope, and events are grouped into requests under 1 MB.
Credentials come from ``DefaultAzureCredential``: on AKS, workload identity (AZURE_CLIENT_ID,
AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, set by the webhook); the topic has key auth disabled.
"""

from __future__ import annotations

import base64
from typing import Any

from kubesonar.sensor.queues import Message
from kubesonar.shared.batch import EVENT_GRID_LIMIT, read_header
from kubesonar.shared.errors import ConfigError, MessageRefused, QueueUnavailable

EVENT_TYPE = "KubeSonar.FlowBatch"
REQUEST_MAX_BYTES = 1_000_000  # 1 MB per request and per event, read as decimal to be safe either way
_ENVELOPE_BYTES = 2048  # id, subject, topic, eventType, eventTime, dataVersion and JSON punctuation
# what Event Grid answers about the events themselves (a malformed event, one over 1 MB): the same on
# every try. 401, 403 and 404 are about the topic or the credentials, and heal.
_EVENTS_REFUSED = frozenset({400, 413})
LIMIT = EVENT_GRID_LIMIT  # (REQUEST_MAX_BYTES - _ENVELOPE_BYTES) // 4 * 3: the base64 of a batch fits


def endpoint_of(url: str) -> str:
    host = url.removeprefix("eventgrid://").rstrip("/")
    if not host or "/" in host:
        raise ConfigError(f"queue URL {url!r}: use eventgrid://TOPIC-HOSTNAME (the topic endpoint's host)")
    return f"https://{host}/api/events"


class EventGridQueue:
    limit = LIMIT

    def __init__(self, url: str, client: Any = None):
        self.url = url
        if client is None:
            from azure.eventgrid import EventGridPublisherClient
            from azure.identity import DefaultAzureCredential

            # the spooling publisher retries (briefly, so capture is not held up) and then spools:
            # no second retry loop in the SDK
            client = EventGridPublisherClient(endpoint_of(url), DefaultAzureCredential(), retry_total=0,
                                              connection_timeout=5, read_timeout=15)
        self._client = client

    def send(self, messages: list[Message]) -> None:
        refused: dict[str, str] = {}
        for group in _requests([_event(m) for m in messages]):
            why = self._send(group)
            if why and len(group) == 1:
                refused[group[0].id] = why
            elif why:  # a request refused whole names no event: one at a time finds which (the rest go again)
                refused |= {event.id: alone for event in group if (alone := self._send([event]))}
        if refused:
            raise MessageRefused(refused)

    def _send(self, events: list[Any]) -> str:
        """Send one request; why Event Grid refused its events for good (400, 413), or "". A refusal about
        the topic or the credentials (401, 403, 404), or no answer, raises QueueUnavailable."""
        try:
            self._client.send(events)
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if status in _EVENTS_REFUSED:
                return f"Event Grid {status} {_reason(exc)[:300]}"
            raise QueueUnavailable(f"Event Grid {self.url}: {type(exc).__name__}: {str(exc)[:300]}") from None
        return ""


def _reason(exc: Exception) -> str:
    """Event Grid's error code and message (what was wrong: a schema mismatch names the topic's schema), not
    only the HTTP reason phrase."""
    error = getattr(exc, "error", None)
    if getattr(error, "message", None):
        return f"{error.code}: {error.message}"
    return str(getattr(exc, "reason", "") or exc)


def _event(message: Message) -> Any:
    from azure.eventgrid import EventGridEvent

    header = read_header(message.data)
    return EventGridEvent(subject=f"{header.cluster or 'default'}/{header.node}", event_type=EVENT_TYPE,
                          data=base64.b64encode(message.data).decode("ascii"),
                          data_version=str(header.schema_version), id=message.key)


def _requests(events: list[Any]) -> list[list[Any]]:
    """Events in order, grouped so that no publish request passes 1 MB."""
    groups: list[list[Any]] = []
    size = 0
    for event in events:
        event_size = len(event.data) + len(event.subject) + len(event.id) + _ENVELOPE_BYTES
        if not groups or size + event_size > REQUEST_MAX_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(event)
        size += event_size
    return groups
