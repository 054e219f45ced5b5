"""``kubesonar backend``: the backend as a long-running process, composed here.

- ``--queue nats://HOST:PORT/SUBJECT`` with ``--store nats://HOST:PORT/BUCKET``: a replica on the shared
  durable pull consumer (functions/nats/consumer.py); run as many as the traffic needs.
- ``--queue file://DIR`` with a directory store: the embedded default's consumer (functions/local/
  backend.py, the same that ``kubesonar watch`` runs in one process) taking the queue directory's files
  in name order. One process per directory. A file that does not decode moves to ``dead/``; one that
  fails while scored (the store, or any fault) stays and is tried again (after 1, 5, 15 s ...), and after
  ``max_deliveries`` attempts moves to ``dead/`` too.

Both serve /metrics, /healthz and /readyz, run the sensor-health check every ``check_interval_s``, print
each new alert as a JSON line, and on SIGTERM finish the messages in hand before they exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubesonar.backend_metrics import BackendMetrics, Health, serve
from kubesonar.shared.alerts import alert_rule
from kubesonar.shared.errors import ConfigError, QueueUnavailable
from kubesonar.shared.frozen_start import freeze_what_loading_made
from kubesonar.shared.keyring_source import RereadingKeyring, keyring_from_env
from kubesonar.shared.netzones import PRIVATE_NETWORKS
from kubesonar.shared.pipeline import CoreConfig, Dependencies, ProcessResult, check_all_sensors, retry_delay_s
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.signing import Verifier
from kubesonar.shared.url_credentials import without_credentials

log = logging.getLogger("kubesonar.backend")


@dataclass(frozen=True)
class BackendSettings:
    queue: str
    store: str
    notify: tuple[str, ...] = ()
    consumer: str = "kubesonar-backend"
    batch: int = 64
    max_deliveries: int = 5
    ack_wait_s: float = 120.0
    listen: str = "0.0.0.0:9100"
    check_interval_s: float = 60.0
    learning_period_s: float = 24 * 3600.0
    sensor_silent_after_s: float = 60.0
    internal_networks: tuple[str, ...] = PRIVATE_NETWORKS
    duration_s: float | None = None  # stop after this long (tests, benchmarks); None: until SIGTERM


class FanOutNotifier:
    """Every new alert to each configured notifier, and as a JSON line on stdout."""

    def __init__(self, notifiers: list[Any], echo: bool = True):
        self.notifiers, self.echo = notifiers, echo

    def notify(self, alert: dict[str, Any]) -> None:
        for notifier in self.notifiers:
            notifier.notify(alert)
        if self.echo:
            print(json.dumps(alert, sort_keys=True), flush=True)


def _open_notifier(url: str) -> Any:
    if not url.startswith("nats://"):
        raise ConfigError(f"notify URL {without_credentials(url)!r} is not nats://HOST:PORT[/SUBJECT-PREFIX]")
    from kubesonar.functions.nats.connection import shared_connection
    from kubesonar.functions.nats.notifier import NatsNotifier
    from kubesonar.functions.nats.streams import ALERTS_PREFIX
    from kubesonar.shared.nats_address import parse_nats_url

    address = parse_nats_url(url, "subject prefix")
    return NatsNotifier(shared_connection(address), address.name or ALERTS_PREFIX)


def _config(settings: BackendSettings) -> CoreConfig:
    return CoreConfig(learning_period_s=settings.learning_period_s,
                      sensor_silent_after_s=settings.sensor_silent_after_s,
                      internal_networks=settings.internal_networks)


def run_backend(settings: BackendSettings, install_signals: bool = True) -> None:
    """Run until SIGTERM/SIGINT (or ``duration_s``); the kind of queue chooses the consumer."""
    stop = threading.Event()
    metrics, health = BackendMetrics(), Health(liveness_s=max(300.0, settings.ack_wait_s))

    def on_signal(*_: Any) -> None:  # unready at once, not when the step in hand ends: no new work sent here
        health.draining = True
        stop.set()

    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
    deadline = None if settings.duration_s is None else time.monotonic() + settings.duration_s
    http = serve(settings.listen, metrics, health)
    freeze_what_loading_made()  # what loading made, skipped by every collection (shared/frozen_start.py)

    def stopping() -> bool:
        if deadline is not None and time.monotonic() > deadline:
            stop.set()
        if stop.is_set():
            health.draining = True
        return stop.is_set()

    try:
        if settings.queue.startswith("nats://"):
            _run_nats(settings, metrics, health, stopping)
        elif settings.queue.startswith("file://"):
            _run_directory(settings, metrics, health, stopping)
        else:
            raise ConfigError(f"backend queue {without_credentials(settings.queue)!r} is not nats://HOST:PORT/SUBJECT "
                              "or file://DIR")
    finally:
        http.shutdown()


def _show_keyring_rereads(metrics: BackendMetrics, keyring: Verifier | None) -> None:
    if isinstance(keyring, RereadingKeyring):  # a keyring file (KUBESONAR_KEYRING_FILE), not one fixed at start
        metrics.keyring_rereads.labels("read").set_function(lambda: keyring.rereads - keyring.reread_failures)
        metrics.keyring_rereads.labels("failed").set_function(lambda: keyring.reread_failures)


def _record(metrics: BackendMetrics, result: ProcessResult) -> None:
    metrics.flows.inc(result.flows)
    metrics.stale.inc(result.stale)  # both consumers: the NATS one and the directory one
    for alert in result.new_alerts:
        metrics.alerts.labels(alert["severity"], alert["type"], alert_rule(alert)).inc()
    metrics.config_errors.inc(len(result.errors))
    metrics.conflicts.inc(result.conflicts)
    for fault in result.errors:  # met and gone on: a list that does not parse, a baseline reset, a conflict
        log.warning("fault met: %s", fault)


class _Ticker:
    """The scheduled sensor-health check, every ``interval_s`` (each replica ticks; the check is idempotent)."""

    def __init__(self, deps: Dependencies, metrics: BackendMetrics, interval_s: float):
        self.deps, self.metrics, self.interval_s = deps, metrics, interval_s
        self.next = time.monotonic() + interval_s

    def maybe(self) -> None:
        if time.monotonic() >= self.next:
            self.next = time.monotonic() + self.interval_s
            _record(self.metrics, check_all_sensors(self.deps))


def _run_nats(settings: BackendSettings, metrics: BackendMetrics, health: Health, stopping: Any) -> None:
    from kubesonar.functions.nats.connection import shared_connection
    from kubesonar.functions.nats.consumer import NatsConsumer, StepReport
    from kubesonar.functions.nats.notifier import NatsNotifier
    from kubesonar.functions.nats.streams import Layout
    from kubesonar.shared.nats_address import parse_nats_url
    from kubesonar.stores import open_store

    address = parse_nats_url(settings.queue, "subject")
    if not address.name:
        raise ConfigError(f"backend queue {without_credentials(settings.queue)!r}: name the subject, "
                          "e.g. nats://nats:4222/kubesonar.batches")
    connection = shared_connection(address)
    # without --notify, alerts go out on the queue's own server (kubesonar.alerts.<severity>.<type>)
    notifiers = [_open_notifier(u) for u in settings.notify] or [NatsNotifier(connection)]
    deps = Dependencies(open_store(settings.store), FanOutNotifier(notifiers), SystemClock(), _config(settings),
                        keyring=keyring_from_env(os.environ))
    consumer = NatsConsumer(connection, Layout(address.name, settings.consumer), deps,
                            batch=settings.batch, max_deliveries=settings.max_deliveries,
                            ack_wait_s=settings.ack_wait_s)
    _show_keyring_rereads(metrics, deps.keyring)
    ticker = _Ticker(deps, metrics, settings.check_interval_s)
    health.connected = True
    metrics.connected.set_function(lambda: int(connection.connected))
    lag_at, conflicts_seen, disconnects_seen = 0.0, 0, 0
    log.info("backend on %s (stream %s, consumer %s), store %s", without_credentials(settings.queue),
             consumer.layout.stream, settings.consumer, without_credentials(settings.store))

    def on_step(report: StepReport) -> None:
        nonlocal lag_at, conflicts_seen, disconnects_seen
        health.beat()
        conflicts = getattr(deps.store, "conflicts", 0)
        metrics.store_conflicts.inc(conflicts - conflicts_seen)
        conflicts_seen = conflicts
        metrics.disconnects.inc(connection.disconnects - disconnects_seen)
        disconnects_seen = connection.disconnects
        health.connected = connection.connected
        if report.outcome is not None:
            outcome = report.outcome
            metrics.messages.labels("applied").inc(len(outcome.applied))
            metrics.messages.labels("dead_lettered").inc(len(report.dead_lettered))
            metrics.messages.labels("retried").inc(len(report.retried))
            metrics.decode_errors.inc(len(outcome.poison))
            metrics.redeliveries.inc(report.redeliveries)
            metrics.latency.observe(report.seconds)
            _record(metrics, outcome.result)
            for key, why in report.dead_lettered:
                log.warning("dead-lettered %s: %s", key, why)
            for key, why in report.retried:
                log.error("retrying %s: %s", key, why)
        ticker.maybe()
        if time.monotonic() - lag_at > 5:
            lag_at = time.monotonic()
            metrics.lag.set(consumer.lag())

    try:
        while not stopping():
            try:
                consumer.run(stopping, on_step)
            except Exception as exc:  # the server away: unready, wait, go on (messages come back)
                if connection.nc.is_closed:  # for good (the client reconnects only until then): start afresh
                    raise QueueUnavailable(f"the NATS connection is closed for good ({type(exc).__name__} {exc}): "
                                           "exiting, to be started again") from None
                if connection.connected and consumer.gone():  # deleted by hand: fetches fail until a start makes it
                    raise QueueUnavailable(f"the durable consumer {settings.consumer} of {consumer.layout.stream} "
                                           "no longer exists: exiting, to be started again (a start makes it)"
                                           ) from None
                metrics.loop_errors.inc()
                health.connected = False
                health.beat()
                log.error("step failed: %s: %s", type(exc).__name__, exc)
                time.sleep(1.0)
    finally:
        log.info("draining: the messages in hand were settled; closing")
        consumer.close()


def _run_directory(settings: BackendSettings, metrics: BackendMetrics, health: Health, stopping: Any) -> None:
    from kubesonar.functions.local.backend import LocalBackend

    queue = Path(urlparse(settings.queue).path)
    store = settings.store.removeprefix("file://")
    if "://" in store:
        raise ConfigError(f"a file:// queue goes with a directory store, not {without_credentials(settings.store)!r}")
    notifiers = [_open_notifier(u) for u in settings.notify]
    backend = LocalBackend(store, _config(settings), notifier=FanOutNotifier(notifiers),
                           keyring=keyring_from_env(os.environ))
    _show_keyring_rereads(metrics, backend.deps.keyring)
    ticker = _Ticker(backend.deps, metrics, settings.check_interval_s)
    health.connected = True
    metrics.connected.set(1)  # a directory: nothing to lose
    log.info("backend on %s, store %s", queue, store)  # a directory and a path: no credentials to hide
    failures: dict[str, tuple[int, float]] = {}  # a file not applied: (attempts, when to try it again)

    def dead_letter(path: Path) -> None:
        (queue / "dead").mkdir(exist_ok=True)
        path.replace(queue / "dead" / path.name)
        metrics.messages.labels("dead_lettered").inc()

    def not_applied(path: Path, why: str) -> None:
        """Kept, as a nak: tried again after 1, 5, 15 s..., dead after ``max_deliveries`` attempts."""
        attempts = failures.get(path.name, (0, 0.0))[0] + 1
        failures[path.name] = (attempts, time.monotonic() + retry_delay_s(attempts))
        if attempts >= settings.max_deliveries:
            del failures[path.name]
            dead_letter(path)
            log.warning("dead-lettered after %d attempts: %s", attempts, why)
        else:
            metrics.messages.labels("retried").inc()
            log.error("retrying: %s", why)

    while not stopping():
        now = time.monotonic()
        files = [p for p in sorted(queue.glob("*.ksfb")) if failures.get(p.name, (0, now))[1] <= now][: settings.batch]
        started = time.perf_counter()
        for path in files:
            decode_errors, process_errors = backend.counters["decode_errors"], backend.counters.get("process_errors", 0)
            try:
                message = path.read_bytes()
            except FileNotFoundError:  # taken since the listing (by another process on the same directory)
                continue
            except OSError as exc:  # unreadable now (a directory, a fault of the disk): not the process's end
                not_applied(path, f"{path.name} cannot be read: {exc.strerror or exc}")
                continue
            result = backend.receive(path.name, message)
            why = "; ".join(backend.errors)
            backend.errors.clear()  # logged here, not kept: this process runs for months
            if backend.counters["decode_errors"] > decode_errors:
                metrics.decode_errors.inc()
                dead_letter(path)
                log.warning("dead-lettered %s", why)
                continue
            if backend.counters.get("process_errors", 0) > process_errors:
                not_applied(path, why)
                continue
            failures.pop(path.name, None)
            path.unlink()
            metrics.messages.labels("applied").inc()
            if result is not None:
                _record(metrics, result)
        if files:
            metrics.latency.observe(time.perf_counter() - started)
        metrics.lag.set(len(list(queue.glob("*.ksfb"))))
        health.beat()
        ticker.maybe()
        if not files:
            time.sleep(0.5)
