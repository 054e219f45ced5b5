"""A stand-in for an Event Grid custom topic, on 127.0.0.1 over HTTPS: no Event Grid emulator runs here
(the known simulators need Docker or .NET, and one refuses events over 66 KB). It is ours, and checks
only what it says:

- publish: ``POST /api/events`` as azure-eventgrid's ``EventGridPublisherClient`` sends it; auth by
  ``Authorization: Bearer`` (a token this service issued for Event Grid's audience) or ``aeg-sas-key``
  (only when the topic allows local auth; the module's topics do not); a request or event over 1 MB is
  answered 413; an event without Event Grid schema's fields (id, subject, eventType, eventTime, data,
  dataVersion, each typed) or a CloudEvents body is answered 400. A topic whose input schema is set to
  CloudEvents (``input_schema = CLOUD_EVENTS``, a deploy mistake) answers 400 to every Event Grid schema
  request, with the body Event Grid sends then (:data:`SCHEMA_MISMATCH`).
- delivery: each event to the subscriber as the Functions host hands it to a Python function (the
  ``azure.functions`` library's own Event Grid converter builds the ``func.EventGridEvent``), one event
  per invocation, up to ``concurrency`` at once; an exception is retried on a bounded schedule, then the
  event is dead-lettered as Event Grid does: a blob in the dead-letter container, the event plus
  ``deadLetterReason``, ``deliveryAttempts`` and ``lastDeliveryOutcome``.
- identity: ``GET /msi/token`` answers as App Service's managed identity endpoint (IDENTITY_ENDPOINT,
  IDENTITY_HEADER), so DefaultAzureCredential gets a token by the same path as in a function app; a
  token for any audience (the resource asked for), which the Key Vault stand-in checks too
  (tests/keyvault_standin.py, :func:`token_audience`).

It does not model Event Grid's filters, its rate matching, batching to webhooks, or its retry timings.
"""

from __future__ import annotations

import json
import queue
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BYTES = 1024 * 1024  # 1 MB per request and per event (docs/azure.md cites Microsoft's limits)
EVENTGRID_AUDIENCE = "https://eventgrid.azure.net"
_TOKENS: dict[str, str] = {}  # token -> audience; one tenant for every stand-in of the process
_TOKENS_LOCK = threading.Lock()
_FIELDS = {"id": str, "subject": str, "eventType": str, "eventTime": str, "dataVersion": str}
EVENT_GRID_SCHEMA, CLOUD_EVENTS = "EventGridSchema", "CloudEventSchemaV1_0"  # a topic's inputSchema
# What Event Grid answers a request of Event Grid schema events (a JSON array) on a CloudEvents topic: 400,
# error code BadRequest with an InputJsonInvalid detail (the message as quoted in Azure/azure-sdk-for-python
# issue 15941, the body's form as in microsoft/onefuzz issue 3285)
SCHEMA_MISMATCH = ("This resource is configured to receive event in 'CloudEventV10' schema. The JSON received does "
                   "not conform to the expected schema. Token Expected: StartObject, Actual Token Received: "
                   "StartArray. Report '{report}' to our forums for assistance or raise a support ticket.")


def https_server(ca: Any, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A server on a free port of 127.0.0.1 with a certificate for it from the test's CA (trustme)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


def token_audience(token: str) -> str | None:
    """The audience a token from an identity endpoint of these stand-ins was issued for; None if none issued it."""
    with _TOKENS_LOCK:
        return _TOKENS.get(token)


@dataclass
class Counters:
    published: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> requests
    delivered: int = 0  # invocations that returned
    failed: int = 0  # invocations that raised
    dead_lettered: int = 0


class EventGridStandIn:
    def __init__(self, ca: Any, tls_dir: Path, topic: str = "kubesonar-flows", subscription: str = "kubesonar-scoring",
                 key: str | None = None,
                 subscriber: Callable[[Any], None] | None = None, dead_letter: Any = None,
                 max_attempts: int = 4, retry_delays_s: tuple[float, ...] = (0.05, 0.1, 0.2), concurrency: int = 16):
        self.topic, self.subscription, self.key = topic, subscription, key
        self.input_schema = EVENT_GRID_SCHEMA
        self.subscriber, self.dead_letter = subscriber, dead_letter
        self.max_attempts, self.retry_delays_s = max_attempts, retry_delays_s
        self.identity_header = secrets.token_hex(16)
        self.received: list[dict] = []
        self.counters = Counters()
        self._lock = threading.Lock()
        self._work: queue.Queue[tuple[dict, int] | None] = queue.Queue()
        self._busy = 0
        self.ca_file = tls_dir / "eventgrid-standin-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._server = https_server(ca, _handler(self))
        self.port = self._server.server_address[1]
        self._threads = [threading.Thread(target=self._server.serve_forever, daemon=True)]
        self._threads += [threading.Thread(target=self._deliver_loop, daemon=True) for _ in range(concurrency)]
        for t in self._threads:
            t.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}/api/events"

    @property
    def identity_endpoint(self) -> str:
        return f"https://{self.host}/msi/token"

    def close(self) -> None:
        for _ in self._threads[1:]:
            self._work.put(None)
        self._server.shutdown()
        self._server.server_close()

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until every accepted event is delivered or dead-lettered (bounded)."""
        deadline = time.monotonic() + timeout_s
        while self._work.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._work.unfinished_tasks} deliveries still pending")
            time.sleep(0.02)

    def redeliver(self, event: dict) -> None:
        """Deliver an event again, as Event Grid may (at-least-once)."""
        self._work.put((event, 1))

    # -- publish ----------------------------------------------------------------------------------------

    def issue_token(self, audience: str) -> str:
        token = secrets.token_urlsafe(24)
        with _TOKENS_LOCK:
            _TOKENS[token] = audience
        return token

    def accept(self, headers: Any, body: bytes) -> tuple[int, str]:
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            if token_audience(authorization.removeprefix("Bearer ")) != EVENTGRID_AUDIENCE:
                return 401, "the bearer token is not one issued for Event Grid"
        elif "aeg-sas-key" in headers:
            if self.key is None:
                return 401, "local (key) authentication is disabled for this topic"
            if not secrets.compare_digest(headers["aeg-sas-key"], self.key):
                return 401, "wrong aeg-sas-key"
        else:
            return 401, "no credential: Authorization: Bearer or aeg-sas-key"
        if len(body) > MAX_BYTES:
            return 413, f"request of {len(body)} bytes is over 1 MB"
        if self.input_schema == CLOUD_EVENTS and body.lstrip().startswith(b"["):
            report = f"{uuid.uuid4()}:0:{datetime.now(UTC):%m/%d/%Y %I:%M:%S %p} (UTC)"
            return 400, SCHEMA_MISMATCH.format(report=report)
        if "cloudevents" in headers.get("Content-Type", ""):
            return 400, "this topic's input schema is the Event Grid schema, not CloudEvents"
        try:
            events = json.loads(body)
        except ValueError:
            return 400, "body is not JSON"
        if not isinstance(events, list) or not events:
            return 400, "body is not a non-empty array of events"
        for event in events:
            problem = _schema_problem(event)
            if problem:
                return 400, problem
            if len(json.dumps(event, separators=(",", ":")).encode()) > MAX_BYTES:
                return 413, f"event {event['id']} is over 1 MB"
        for event in events:
            event = dict(event, topic=f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/"
                                      f"kubesonar/providers/Microsoft.EventGrid/topics/{self.topic}",
                         metadataVersion="1")
            with self._lock:
                self.received.append(event)
                self.counters.published += 1
            if self.subscriber is not None:
                self._work.put((event, 1))
        return 200, ""

    # -- delivery ---------------------------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        while (item := self._work.get()) is not None:
            event, attempt = item
            try:
                self._deliver(event, attempt)
            finally:
                self._work.task_done()

    def _deliver(self, event: dict, attempt: int) -> None:
        from azure.functions.eventgrid import EventGridEventInConverter
        from azure.functions.meta import Datum

        try:  # what the Python worker does with the host's invocation request
            self.subscriber(EventGridEventInConverter.decode(Datum(json.dumps(event), "json"), trigger_metadata={}))
            with self._lock:
                self.counters.delivered += 1
            return
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.counters.failed += 1
        if attempt >= self.max_attempts:
            self._dead_letter(event, attempt, outcome)
            return
        time.sleep(self.retry_delays_s[min(attempt - 1, len(self.retry_delays_s) - 1)])
        self._work.put((event, attempt + 1))

    def _dead_letter(self, event: dict, attempts: int, outcome: str) -> None:
        now = datetime.now(UTC)
        record = [dict(event, deadLetterReason="MaxDeliveryAttemptsExceeded", deliveryAttempts=attempts,
                       lastDeliveryOutcome=outcome[:500], publishTime=event["eventTime"],
                       lastDeliveryAttemptTime=now.isoformat())]
        # Event Grid's layout: the subscription's name upper-cased, then the UTC date and hour unpadded
        name = f"{self.subscription.upper()}/{now.year}/{now.month}/{now.day}/{now.hour}/{uuid.uuid4()}.json"
        self.dead_letter.upload_blob(name, json.dumps(record).encode())
        with self._lock:
            self.counters.dead_lettered += 1


def _schema_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "an event is not a JSON object"
    if "specversion" in event:
        return "a CloudEvent: this topic's input schema is the Event Grid schema"
    for name, kind in _FIELDS.items():
        if not isinstance(event.get(name), kind) or not event[name]:
            return f"event {event.get('id')!r}: {name} is required and must be a non-empty string"
    if "data" not in event:
        return f"event {event['id']!r}: data is required"
    try:
        datetime.fromisoformat(event["eventTime"])  # 3.11 reads a trailing Z
    except ValueError:
        return f"event {event['id']!r}: eventTime {event['eventTime']!r} is not ISO 8601"
    return None


def _handler(standin: EventGridStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length <= 4 * MAX_BYTES else b""
            if self.path.split("?")[0] != "/api/events":
                return self._answer(404, "not found")
            status, why = standin.accept(self.headers, body if length <= 4 * MAX_BYTES else b"x" * (MAX_BYTES + 1))
            if status != 200:
                with standin._lock:
                    standin.counters.refused[status] = standin.counters.refused.get(status, 0) + 1
            self._answer(status, why)

        def do_GET(self) -> None:  # App Service's managed identity endpoint
            path, _, query = self.path.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            if path != "/msi/token" or self.headers.get("X-IDENTITY-HEADER") != standin.identity_header:
                return self._answer(401, "not the identity endpoint, or the wrong identity header")
            from urllib.parse import unquote

            audience = unquote(params.get("resource", "")).rstrip("/")
            body = json.dumps({"access_token": standin.issue_token(audience), "resource": audience,
                               "expires_on": str(int(time.time()) + 3600), "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, status: int, why: str) -> None:
            error = {"code": "BadRequest", "message": why, "details": [{"code": "InputJsonInvalid", "message": why}]} \
                if status == 400 else {"code": str(status), "message": why}
            body = json.dumps({"error": error}).encode() if why else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
