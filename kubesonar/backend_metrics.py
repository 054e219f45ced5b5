"""The backend's Prometheus metrics and its health and readiness endpoints, on one HTTP port.

``/metrics`` (Prometheus text), ``/healthz`` (200 while the loop turns: a step ended within the
liveness bound), ``/readyz`` (200 while connected and not draining: a Service sends work only then).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from kubesonar.shared.errors import ConfigError

_IDLE_S = 30.0  # a connection that sends nothing for this long is closed: each one holds a thread


class BackendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("kubesonar_backend_messages", "Batch messages settled, by outcome "
                                "(applied, dead_lettered, retried)", ["outcome"], registry=r)
        self.flows = Counter("kubesonar_backend_flows", "Flow records scored", registry=r)
        self.alerts = Counter("kubesonar_backend_alerts", "New alerts raised", ["severity", "type", "rule"], registry=r)
        self.decode_errors = Counter("kubesonar_backend_decode_errors", "Messages that do not decode", registry=r)
        self.stale = Counter("kubesonar_backend_stale", "Messages older than their sensor's sequence window, "
                             "or whose window ended 23 hours ago or more, refused as replays", registry=r)
        self.redeliveries = Counter("kubesonar_backend_redeliveries", "Messages delivered more than once",
                                    registry=r)
        self.latency = Histogram("kubesonar_backend_processing_seconds", "Time to score and settle one fetched "
                                 "batch of messages", registry=r,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.lag = Gauge("kubesonar_backend_consumer_lag", "Messages waiting in the queue for any replica",
                         registry=r)
        self.config_errors = Counter("kubesonar_backend_config_errors", "Faults met and gone on, each logged "
                                     "(a list that does not parse, a baseline started afresh, a conflict)",
                                     registry=r)
        self.conflicts = Counter("kubesonar_backend_conflicts", "Messages whose key was applied with other "
                                 "content, refused", registry=r)
        self.store_conflicts = Counter("kubesonar_backend_store_conflicts", "Compare-and-swap writes lost to "
                                       "another replica and retried (replicas contending for one cluster's "
                                       "state)", registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, resident memory: capacity per replica
        self.loop_errors = Counter("kubesonar_backend_loop_errors", "Steps that failed (server unreachable)",
                                   registry=r)
        self.disconnects = Counter("kubesonar_backend_disconnects", "Times the connection to the queue's "
                                   "server was lost (the client reconnects by itself: a short outage fails "
                                   "no step)", registry=r)
        self.connected = Gauge("kubesonar_backend_connected", "1 while connected to the queue's server",
                               registry=r)
        self.keyring_rereads = Gauge("kubesonar_backend_keyring_rereads", "Times the keyring file was read "
                                     "again for a key id it lacked, by outcome (read, failed: the keyring in "
                                     "hand kept); at most one a minute", ["outcome"], registry=r)


class Health:
    """What the probes read: the loop's last turn, the connection, a drain under way."""

    def __init__(self, liveness_s: float) -> None:
        self.liveness_s = liveness_s
        self.last_step = time.monotonic()
        self.connected = False
        self.draining = False

    def beat(self) -> None:
        self.last_step = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last_step < self.liveness_s

    def ready(self) -> bool:
        return self.connected and not self.draining and self.alive()


def serve(address: str, metrics: BackendMetrics, health: Health) -> ThreadingHTTPServer:
    """Serve the three endpoints on ``HOST:PORT`` in a daemon thread; returns the server (``.shutdown()``)."""
    host, _, port = address.rpartition(":")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"--listen {address!r} is not HOST:PORT")

    class Handler(BaseHTTPRequestHandler):
        timeout = _IDLE_S

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._reply(200 if health.alive() else 503, b"ok\n" if health.alive() else b"stalled\n")
            elif self.path == "/readyz":
                self._reply(200 if health.ready() else 503, b"ready\n" if health.ready() else b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a log line each
            return

    try:
        server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)
    except OSError as exc:  # taken, or not an address of this host
        raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
