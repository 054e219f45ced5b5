"""The live sensor loop: rings on the chosen interfaces -> the flow engine -> one batch per window.

Every ``window_s`` the records that completed are enriched, given a header (cluster, node, sensor id,
sequence, window, health counters) and handed to a sink, even when there are none: that batch is the
heartbeat by which the backend tells a silent or dropping sensor. A flood publishes early, whenever
``max_pending_flows`` records are waiting, so memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kubesonar.sensor.af_packet import RingConfig
from kubesonar.sensor.capture import Capture
from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.sensor.observe import warm_up
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.errors import CaptureError, ConfigError
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pod_events import PodEvents

if TYPE_CHECKING:
    from kubesonar.sensor.capture_workers import CaptureWorkers

log = logging.getLogger(__name__)

SECOND = 1_000_000_000
LIVE_TIMEOUTS = FlowTimeouts(active_s=60.0, idle_s=60.0, ended_s=2.0, unanswered_s=5.0)


@dataclass(frozen=True)
class SensorSettings:
    interfaces: tuple[str, ...]  # names or shell patterns ("veth*"), matched again every window
    window_s: float = 10.0
    capture_filter: str = ""
    cluster: str = "default"
    node: str = field(default_factory=socket.gethostname)
    max_flows: int = 65_536  # live flow table cap (memory bound)
    max_pending_flows: int = 8_192  # publish early past this many waiting records; batch size cap
    timeouts: FlowTimeouts = LIVE_TIMEOUTS
    ring: RingConfig = field(default_factory=RingConfig)
    # count each packet where it enters the node: a packet crossing two captured interfaces (pod to pod
    # on a routed CNI) is kept where it arrives and not again where it leaves
    arrivals_only: bool = False
    # capture processes, each with its own rings (one PACKET_FANOUT group per interface) and flow table
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.interfaces:
            raise ConfigError("name at least one interface to capture on (--interface)")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"{self.workers} capture workers: give 1 to 64")
        if not 0.5 <= self.window_s <= 3600:
            raise ConfigError(f"window of {self.window_s} s is outside 0.5 .. 3600 s")


@dataclass
class Window:
    header: BatchHeader
    flows: FlowRecords
    pods: PodEvents | None = None
    dns: DnsMessages | None = None


class WindowSink(Protocol):
    def __call__(self, window: Window) -> None: ...


@dataclass
class SensorCounters:
    packets: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    ring_malformed: int = 0  # packets a V3 ring block claimed that lay outside it, skipped unread
    flows: int = 0
    evicted_flows: int = 0
    windows: int = 0
    capture_errors: int = 0
    interfaces: int = 0
    dns_messages: int = 0
    dns_malformed: int = 0
    dns_dropped: int = 0
    tls_client_hellos: int = 0
    tls_unreadable: int = 0  # ClientHellos cut by the snap length, split over segments, or malformed
    tls_dropped: int = 0  # ClientHellos past the per-read bound, not parsed
    executables_dropped: int = 0  # segments that may start an executable, past the per-read bound, not read
    # packets that joined no flow, by reason (sensor/observe.py: unplaced)
    unplaced_unknown_linktype: int = 0
    unplaced_not_ip: int = 0
    unplaced_truncated: int = 0
    # the sink failed (not a queue outage, which the spool absorbs): a bug, a full disk; the records wait
    sink_errors: int = 0
    sink_dropped_flows: int = 0  # held past --max-flows while the sink kept failing, the oldest dropped

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class LiveSensor:
    def __init__(self, settings: SensorSettings, sink: WindowSink,
                 enrich: Callable[[FlowRecords], FlowRecords] | None = None,
                 extra_counters: Callable[[], dict[str, int]] | None = None,
                 pod_events: Callable[[], PodEvents] | None = None,
                 heartbeat: Callable[[], None] | None = None):
        self.settings = settings
        # called whenever the sink takes a batch (each window at least): sensor/liveness.py
        self.heartbeat = heartbeat or (lambda: None)
        self.sink = sink
        self.enrich = enrich
        self.extra_counters = extra_counters
        self.pod_events = pod_events
        self.counters = SensorCounters()
        # unique per process start, so a restarted sensor's sequence numbers never collide with its last life's
        self.sensor_id = f"{settings.node}/{time.time_ns():x}"
        if settings.workers == 1:
            warm_up()  # compile or load the kernels now, not at the first packet
            self.capture: Capture | CaptureWorkers = Capture(settings)
        else:
            from kubesonar.sensor.capture_workers import CaptureWorkers

            self.capture = CaptureWorkers(settings, settings.workers)
        self._pending: list[FlowRecords] = []
        self._pending_dns: list[DnsMessages] = []
        self._pending_count = 0
        self._sink_failing = False
        self._held_pods: PodEvents | None = None
        self._sequence = 0
        self._window_start = time.time_ns()

    @property
    def errors(self) -> list[str]:
        return self.capture.errors

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, duration_s: float | None = None) -> None:
        """Capture until ``stop`` is set (or ``duration_s`` passed), then publish what is left."""
        stop = stop or threading.Event()
        _steady_heap()
        capture = self.capture
        capture.refresh_interfaces()  # workers start here: the duration counts from when rings are open
        self.heartbeat()
        deadline = time.monotonic() + duration_s if duration_s else None
        if not capture.interfaces:
            capture.finish()
            raise CaptureError(f"no interface matches {', '.join(self.settings.interfaces)}")
        next_window = time.monotonic() + self.settings.window_s
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                capture.read_ready(max(0.0, min(0.2, next_window - time.monotonic())))
                self._take()
                if self._pending_count >= self.settings.max_pending_flows:
                    if self._sink_failing:  # retried at the window's end, not every read
                        self._bound_held()
                    else:
                        self._publish_or_hold(final_part=False)
                if time.monotonic() >= next_window:
                    self._close_window()
                    next_window += self.settings.window_s
                    capture.refresh_interfaces()
        except BaseException:
            self._flush(quiet=True)  # a sink fault in the last flush must not hide what ended the loop
            raise
        self._flush(quiet=False)

    def _flush(self, quiet: bool) -> None:
        """Publish what is left: the table's flows, a batch at a time."""
        try:
            while self.capture.finish(self.settings.max_pending_flows):
                self._take()
                self._publish(final_part=False)
            self._take()
            self._publish(final_part=True)
        except Exception as exc:
            if not quiet:
                raise
            log.error("the last %d records were not published: %s: %s", self._pending_count, type(exc).__name__, exc)

    def _take(self) -> None:
        flows, dns = self.capture.take()
        for records in flows:
            self._add(records)
        self._pending_dns += dns

    def _add(self, records: FlowRecords) -> None:
        if len(records):
            self._pending.append(records)
            self._pending_count += len(records)

    def _close_window(self) -> None:
        now = time.time_ns()
        # a mass expiry (the end of a flood) ends and publishes a batch at a time, never all at once (with
        # --workers the workers' parts gather first: bounded by the node's --max-flows, CaptureWorkers.expire)
        while self.capture.expire(now, self.settings.max_pending_flows):
            self._take()
            self._publish_or_hold(final_part=False)
        self._take()
        self._publish_or_hold(final_part=True)

    def _publish_or_hold(self, final_part: bool) -> None:
        """Publish; if the sink fails, its records wait for the next window and capture goes on. The
        fault is logged once, with its traceback, until a publish works again."""
        try:
            self._publish(final_part)
        except Exception:
            self.counters.sink_errors += 1
            if not self._sink_failing:
                log.exception("publishing a window failed; its %d records wait for the next window",
                              self._pending_count)
            self._sink_failing = True
            self._bound_held()
            return
        if self._sink_failing:
            log.warning("publishing works again after %d failures", self.counters.sink_errors)
        self._sink_failing = False

    def _bound_held(self) -> None:
        """While the sink fails, hold at most --max-flows records and as many DNS messages, the newest."""
        excess = self._pending_count - self.settings.max_flows
        if excess > 0:
            flows = FlowRecords.concat(self._pending)
            order = np.argsort(flows["first_ts"], kind="stable")
            self._pending = [flows.take(order[excess:])]
            self._pending_count -= excess
            self.counters.sink_dropped_flows += excess
        while sum(len(d) for d in self._pending_dns) > self.settings.max_flows:
            self._pending_dns.pop(0)

    def _publish(self, final_part: bool) -> None:
        """Hand the waiting records to the sink, in batches of at most ``max_pending_flows`` (a mass
        expiry after a flood must not become one huge batch in memory); always at least one batch.
        Whatever the sink did not take when it raised waits in ``_pending`` again: no window is lost."""
        # one part (a mass expiry) is taken as it is; the batches are gathered in time order one at a
        # time, so the records are held once, not again sorted beside themselves
        flows = self._pending[0] if len(self._pending) == 1 else FlowRecords.concat(self._pending)
        raw_dns = self._pending_dns
        self._pending, self._pending_count, self._pending_dns = [], 0, []
        order = np.argsort(flows["first_ts"], kind="stable")
        step = self.settings.max_pending_flows
        starts = range(0, len(flows), step) or [0]
        sent = 0
        try:
            dns = DnsMessages.concat(raw_dns)
            if len(dns) and self.enrich:
                dns = self.enrich(dns)
            capture = self.capture.counters()
            for i, lo in enumerate(starts):
                chunk = flows.take(order[lo : lo + step])
                self._send(self.enrich(chunk) if self.enrich and len(chunk) else chunk,
                           final_part and i == len(starts) - 1, dns if i == 0 else None, capture)
                sent = i + 1
        except BaseException:
            if sent < len(starts) and len(flows):
                rest = flows.take(order[starts[sent]:])
                self._pending.insert(0, rest)
                self._pending_count += len(rest)
            if sent == 0:
                self._pending_dns[:0] = raw_dns
            raise

    def _send(self, flows: FlowRecords, closes_window: bool, dns: DnsMessages | None,
              capture: dict[str, int]) -> None:
        """One batch to the sink; the sequence and counters move on only once the sink took it, so a
        batch that failed is sent again under the same sequence, not as a gap the backend counts as lost."""
        now = time.time_ns()
        for name, value in capture.items():
            setattr(self.counters, name, value)
        counters = self.counters.as_dict() | {"flows": self.counters.flows + len(flows),
                                              "windows": self.counters.windows + closes_window}
        counters |= self.extra_counters() if self.extra_counters else {}
        header = BatchHeader(self.settings.cluster, self.settings.node, self.sensor_id, self._sequence,
                             self._window_start, now, counters=counters)
        pods = self._take_pods()
        try:
            self.sink(Window(header, flows, pods, dns))
        except BaseException:
            self._held_pods = pods  # sent with the next batch, not lost with this one
            raise
        self.heartbeat()
        self.counters.flows += len(flows)
        self.counters.windows += closes_window
        self._sequence += 1
        self._window_start = now


    def _take_pods(self) -> PodEvents | None:
        if not self.pod_events:
            return None
        held, self._held_pods = self._held_pods, None
        taken = self.pod_events()
        return taken if held is None else PodEvents.concat([held, taken])


def _steady_heap() -> None:
    """Keep glibc from growing its mmap threshold as numpy frees big arrays: past that, batch-sized
    arrays land on the heap and fragment it (a 1,000,000-tuple flood took the peak from about 260 to
    350 MiB). Allocations over 64 KiB stay mmap'd and go back to the system when freed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 10)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def default_node_name() -> str:
    """The node this sensor runs on: NODE_NAME from the downward API, else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()
