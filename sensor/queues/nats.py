"""The sensor's NATS JetStream publisher: ``nats://HOST:PORT/SUBJECT`` (auth and TLS: shared/nats_address.py).

Each message is a JetStream publish acknowledged by the stream, with ``Nats-Msg-Id`` set to its batch
key, so a resend within the stream's duplicate window (a spool draining, a retry after a lost ack) is
dropped by the server. The backend creates the stream (``kubesonar backend``); until it exists, or
while the server cannot be reached, sends fail with QueueUnavailable and the spool keeps the batches.
nats-py is asyncio: one loop thread holds the connection across windows (shared/loop_thread.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats
import nats.js.errors

from kubesonar.sensor.queues import Message
from kubesonar.shared.errors import ConfigError, MessageRefused, QueueUnavailable
from kubesonar.shared.loop_thread import LoopThread
from kubesonar.shared.nats_address import NatsAddress, parse_nats_url
from kubesonar.shared.url_credentials import without_credentials

NATS_MAX_PAYLOAD = 1024 * 1024  # the server's default max_payload
LIMIT = NATS_MAX_PAYLOAD - 16 * 1024  # room for the subject and headers
_TIMEOUT_S = 5.0


class NatsQueue:
    limit = LIMIT

    def __init__(self, url: str, timeout_s: float = _TIMEOUT_S):
        self.address: NatsAddress = parse_nats_url(url, "subject")
        if not self.address.name:
            raise ConfigError(f"queue URL {without_credentials(url)!r}: name the subject, "
                              "e.g. nats://nats:4222/kubesonar.batches")
        self.subject, self.timeout_s = self.address.name, timeout_s
        self._loop = LoopThread("nats-publisher")
        self._nc: Any = None
        self._js: Any = None
        self.last_error = ""  # the latest error nats-py reported in the background

    def send(self, messages: list[Message]) -> None:
        try:
            self._loop.run(self._send(messages), timeout=self.timeout_s * (2 + len(messages)))
        except (QueueUnavailable, ConfigError, MessageRefused):
            raise
        except Exception as exc:  # down, timed out, refused: the spool keeps the batch
            # a string, never the error itself in a local: its traceback holds this frame (a cycle)
            why = self.last_error if isinstance(exc, nats.errors.NoServersError) and self.last_error else str(exc)
            raise QueueUnavailable(f"NATS {self.address.shown} {self.subject}: {type(exc).__name__} {why}") from None

    async def _send(self, messages: list[Message]) -> None:
        js = await self._connected()
        if not self._nc.is_connected:  # reconnecting: fail now, not after a timeout per message (the spool waits)
            raise QueueUnavailable(f"NATS {self.address.shown} is not reachable (reconnecting)")
        publishes = [js.publish(self.subject, m.data, timeout=self.timeout_s, headers={"Nats-Msg-Id": m.key})
                     for m in messages]
        results = await asyncio.gather(*publishes, return_exceptions=True)
        refused = {m.key: _refusal(r) for m, r in zip(messages, results, strict=True) if _refusal(r)}
        failures = [r for r in results if isinstance(r, BaseException) and not _refusal(r)]
        del results
        if any(isinstance(f, nats.js.errors.NoStreamResponseError) for f in failures):
            raise QueueUnavailable(f"no JetStream stream takes subject {self.subject} on {self.address.shown}: "
                                   "start `kubesonar backend`, which creates it")
        if failures:
            # popped, never named: a local holding the error would be held by its traceback (this frame),
            # a reference cycle kept, with the batch, until the cyclic collector runs
            raise failures.pop(0)
        if refused:
            raise MessageRefused(refused)

    async def _connected(self) -> Any:
        if self._nc is not None and not self._nc.is_closed:
            return self._js
        # Two tries to connect (nats-py's least): with max_reconnect_attempts=-1 it retries a first
        # connection forever, so a sensor started while NATS was down waited out the whole send timeout on
        # every window (15 s, three times with the spool's attempts) and logged a traceback a second.
        # Once connected it reconnects forever in the background, and a send during an outage fails fast.
        self._nc = await nats.connect(**self.address.connect_options(), name="kubesonar-sensor",
                                      connect_timeout=self.timeout_s, allow_reconnect=True,
                                      max_reconnect_attempts=1, reconnect_time_wait=1, error_cb=self._quiet)
        self._nc.options["max_reconnect_attempts"] = -1  # read by nats-py each time the connection drops
        if self._nc.max_payload < self.limit + 1024:
            await self._nc.close()
            raise ConfigError(f"NATS {self.address.shown} takes messages of at most {self._nc.max_payload} bytes; "
                              f"the sensor needs {self.limit + 1024}: raise the server's max_payload to 1 MiB")
        self._js = self._nc.jetstream(timeout=self.timeout_s)
        return self._js

    async def _quiet(self, exc: Exception) -> None:
        """nats-py reports each failed reconnect here; its default logs a traceback every second of an
        outage. The spool logs the outage once."""
        self.last_error = f"{type(exc).__name__} {exc}"

    def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):  # closing a dead connection
                self._loop.run(self._nc.drain(), timeout=self.timeout_s)
        self._loop.close()


# JetStream's "message size exceeds maximum allowed": the stream's max_msg_size, the same on every try
_MESSAGE_TOO_LARGE = 10054


def _refusal(result: object) -> str:
    """Why the server refused this message for good, or "" (delivered, or a fault that may heal)."""
    if isinstance(result, nats.errors.MaxPayloadError):
        return f"larger than the server's max_payload: {result}"
    if isinstance(result, nats.js.errors.APIError) and result.err_code == _MESSAGE_TOO_LARGE:
        return f"JetStream {result.err_code}: {result.description}"
    return ""


def open_nats_queue(url: str) -> NatsQueue:
    return NatsQueue(url)
