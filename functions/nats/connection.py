"""One NATS connection per process, driven from sync code through a loop thread: the store, the notifier
and the consumer share it (one TCP connection, one reconnect policy)."""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.loop_thread import LoopThread
from kubesonar.shared.nats_address import NatsAddress

T = TypeVar("T")
TIMEOUT_S = 10.0


class NatsConnection:
    def __init__(self, address: NatsAddress, name: str = "kubesonar-backend", timeout_s: float = TIMEOUT_S):
        self.address, self.timeout_s = address, timeout_s
        self._loop = LoopThread("nats")
        self.disconnects = 0  # losses of the connection; the client reconnects by itself, so no call fails

        async def disconnected() -> None:
            self.disconnects += 1

        try:
            self.nc = self._loop.run(nats.connect(**address.connect_options(), name=name, connect_timeout=timeout_s,
                                                  allow_reconnect=True, max_reconnect_attempts=-1,
                                                  reconnect_time_wait=1, disconnected_cb=disconnected),
                                     timeout=timeout_s * 2)
        except Exception as exc:  # refused, unreachable, bad credentials: one clear line
            self._loop.close()
            raise ConfigError(f"cannot connect to NATS at {address.shown}: {type(exc).__name__} {exc}") from None
        self.js = self.nc.jetstream(timeout=timeout_s)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self._loop.run(coro, self.timeout_s if timeout is None else timeout)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    def close(self) -> None:
        """Drain (flush what is buffered, acks included) and close."""
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):  # the server is gone: nothing left to flush
                self.run(self.nc.drain())
        self._loop.close()


_SHARED: dict[str, NatsConnection] = {}


def shared_connection(address: NatsAddress) -> NatsConnection:
    """The process's connection to ``address``'s server (store, notifier and consumer on one connection)."""
    key = repr((address.server, address.creds, address.nkey, address.ca, address.cert, address.key, address.tls))
    if key not in _SHARED or _SHARED[key].nc.is_closed:
        _SHARED[key] = NatsConnection(address)
    return _SHARED[key]


def close_shared_connections() -> None:
    """Drain and close every shared connection (a process that ends, a test whose server goes away)."""
    for connection in list(_SHARED.values()):
        connection.close()
    _SHARED.clear()
