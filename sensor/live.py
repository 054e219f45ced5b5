"""The live sensor loop: rings on the chosen interfaces -> the flow engine -> one batch per window.

Every ``window_s`` the records that completed are enriched, given a header (cluster, node, sensor id,
sequence, window, health counters) and handed to a sink, even when there are none: that batch is the
heartbeat by which the backend tells a silent or dropping sensor. A flood publishes early, whenever
``max_pending_flows`` records are waiting, so memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import ctypes
import fnmatch
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kubesonar.sensor.af_packet import RingConfig, RingSocket, SocketStats, list_interfaces, wait_readable
from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.bpf import compile_filter
from kubesonar.sensor.dissect import LINKTYPE_ETHERNET, LINKTYPE_RAW
from kubesonar.sensor.flow_table import FlowTable, FlowTimeouts
from kubesonar.sensor.observe import observe, unplaced, warm_up
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.errors import CaptureError, ConfigError
from kubesonar.shared.flow import EndReason, FlowRecords
from kubesonar.shared.pod_events import PodEvents

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

    def __post_init__(self) -> None:
        if not self.interfaces:
            raise ConfigError("name at least one interface to capture on (--interface)")
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
    # packets that joined no flow, by reason (sensor/observe.py: unplaced)
    unplaced_unknown_linktype: int = 0
    unplaced_not_ip: int = 0
    unplaced_truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class LiveSensor:
    def __init__(self, settings: SensorSettings, sink: WindowSink,
                 enrich: Callable[[FlowRecords], FlowRecords] | None = None,
                 extra_counters: Callable[[], dict[str, int]] | None = None,
                 pod_events: Callable[[], PodEvents] | None = None):
        self.settings = settings
        self.sink = sink
        self.enrich = enrich
        self.extra_counters = extra_counters
        self.pod_events = pod_events
        self.counters = SensorCounters()
        # unique per process start, so a restarted sensor's sequence numbers never collide with its last life's
        self.sensor_id = f"{settings.node}/{time.time_ns():x}"
        warm_up()  # compile or load the kernels now, not at the first packet
        # quiet flows looked for once a second of traffic (and at every window's end), not at every read
        self.table = FlowTable(settings.timeouts, max_flows=settings.max_flows, expire_every_s=1.0)
        self._sockets: dict[str, RingSocket] = {}
        self._pending: list[FlowRecords] = []
        self._pending_dns: list[DnsMessages] = []
        self.dns = DnsParser(max_messages=settings.max_pending_flows)
        self._pending_count = 0
        self._sequence = 0
        self._window_start = time.time_ns()
        self.errors: list[str] = []
        self._programs = {linktype: compile_filter(settings.capture_filter, linktype == LINKTYPE_RAW,
                                                   settings.ring.snaplen)
                          for linktype in (LINKTYPE_ETHERNET, LINKTYPE_RAW)}
        self._retired = SocketStats()  # kernel counters of sockets closed so far: totals never go back

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, duration_s: float | None = None) -> None:
        """Capture until ``stop`` is set (or ``duration_s`` passed), then publish what is left."""
        stop = stop or threading.Event()
        _steady_heap()
        deadline = time.monotonic() + duration_s if duration_s else None
        self._refresh_interfaces()
        if not self._sockets:
            raise CaptureError(f"no interface matches {', '.join(self.settings.interfaces)}")
        next_window = time.monotonic() + self.settings.window_s
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                timeout = max(0.0, min(0.2, next_window - time.monotonic()))
                read = [self._read(ring) for ring in wait_readable(list(self._sockets.values()), timeout)]
                if read and max(read) < self.settings.ring.frames_per_read:
                    # the rings are drained: let packets gather a moment, as TPACKET_V3's block timeout
                    # does, so each read carries many (the per-read cost is most of a small read's)
                    time.sleep(self.settings.ring.gather_s)
                if self._pending_count >= self.settings.max_pending_flows:
                    self._publish(final_part=False)
                if time.monotonic() >= next_window:
                    self._close_window()
                    next_window += self.settings.window_s
                    self._refresh_interfaces()
        finally:
            for ring in list(self._sockets.values()):
                self._read(ring)
            self._add(self.table.flush(EndReason.END_OF_INPUT))
            self._close_window()
            for ring in self._sockets.values():
                ring.close()
            self._sockets.clear()

    def _read(self, ring: RingSocket) -> int:
        """Read and account what the ring holds; return the number of packets."""
        try:
            batch = ring.read()
            if batch is None:
                return 0
            observed, fields = observe(batch, self.table, self.dns)
            self.counters.packets += len(batch)
            for reason, count in unplaced(batch, fields).items():
                name = f"unplaced_{reason}"
                setattr(self.counters, name, getattr(self.counters, name) + count)
            self._add(observed.flows)
            if len(observed.dns):
                self._pending_dns.append(observed.dns)
            return len(batch)
        except OSError as exc:  # the interface went away (a pod ended): drop it; the next refresh decides
            self._fail(f"capture on {ring.interface} stopped: {exc.strerror or exc}")
            self._retire(ring)
            return 0
        finally:
            if ring.interface in self._sockets:
                ring.release()

    def _add(self, records: FlowRecords) -> None:
        if len(records):
            self._pending.append(records)
            self._pending_count += len(records)

    def _close_window(self) -> None:
        self._add(self.table.expire(time.time_ns()))
        self._publish(final_part=True)

    def _publish(self, final_part: bool) -> None:
        """Hand the waiting records to the sink, in batches of at most ``max_pending_flows`` (a mass
        expiry after a flood must not become one huge batch in memory); always at least one batch."""
        flows = FlowRecords.concat(self._pending)
        self._pending, self._pending_count = [], 0
        if len(flows):
            flows = flows.take(np.argsort(flows["first_ts"], kind="stable"))
        dns = DnsMessages.concat(self._pending_dns)
        self._pending_dns = []
        if len(dns) and self.enrich:
            dns = self.enrich(dns)
        self._read_kernel_counters()
        step = self.settings.max_pending_flows
        chunks = [flows.take(slice(lo, lo + step)) for lo in range(0, len(flows), step)] or [flows]
        del flows
        for i, chunk in enumerate(chunks):
            self._send(self.enrich(chunk) if self.enrich and len(chunk) else chunk,
                       final_part and i == len(chunks) - 1, dns if i == 0 else None)
            chunks[i] = None  # let it go before the next one is encoded

    def _read_kernel_counters(self) -> None:
        for ring in self._sockets.values():
            try:
                ring.read_stats()
            except OSError:
                pass
        self.counters.kernel_packets = self._retired.packets + sum(r.stats.packets for r in self._sockets.values())
        self.counters.kernel_drops = self._retired.drops + sum(r.stats.drops for r in self._sockets.values())
        self.counters.ring_malformed = self._retired.malformed + sum(r.stats.malformed for r in self._sockets.values())

    def _send(self, flows: FlowRecords, closes_window: bool, dns: DnsMessages | None) -> None:
        now = time.time_ns()
        self.counters.flows += len(flows)
        self.counters.evicted_flows = self.table.evicted
        self.counters.interfaces = len(self._sockets)
        if closes_window:
            self.counters.windows += 1
        self.counters.dns_messages, self.counters.dns_malformed = self.dns.parsed, self.dns.malformed
        self.counters.dns_dropped = self.dns.dropped
        tls = self.table.tls
        self.counters.tls_client_hellos, self.counters.tls_unreadable = tls.parsed, tls.unreadable
        self.counters.tls_dropped = tls.dropped
        counters = self.counters.as_dict() | (self.extra_counters() if self.extra_counters else {})
        header = BatchHeader(self.settings.cluster, self.settings.node, self.sensor_id, self._sequence,
                             self._window_start, now, counters=counters)
        self._sequence += 1
        self._window_start = now
        self.sink(Window(header, flows, self.pod_events() if self.pod_events else None, dns))

    # -- interfaces ----------------------------------------------------------------------------------

    def _refresh_interfaces(self) -> None:
        present = list_interfaces()
        wanted = {name for pattern in self.settings.interfaces for name in fnmatch.filter(present, pattern)}
        for name in set(self._sockets) - wanted:
            self._retire(self._sockets[name])
        for name in sorted(wanted - set(self._sockets)):
            try:
                self._sockets[name] = RingSocket(name, self.settings.ring, self._programs,
                                                 arrivals_only=self.settings.arrivals_only)
            except CaptureError as exc:
                self._fail(str(exc))

    def _retire(self, ring: RingSocket) -> None:
        """Close a socket, keeping its kernel counters in the totals."""
        try:
            ring.read_stats()
        except OSError:
            pass
        self._retired.packets += ring.stats.packets
        self._retired.drops += ring.stats.drops
        self._retired.malformed += ring.stats.malformed
        ring.close()
        self._sockets.pop(ring.interface, None)

    def _fail(self, message: str) -> None:
        self.counters.capture_errors += 1
        if len(self.errors) < 100:
            self.errors.append(message)


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
