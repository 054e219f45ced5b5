"""One capture: rings on the chosen interfaces, the flow table and the DNS parser they feed.

The live sensor (sensor/live.py) runs one in its own process, or one per capture worker
(sensor/capture_workers.py), whose rings then share a PACKET_FANOUT group per interface.
"""

from __future__ import annotations

import fnmatch
import time
from typing import TYPE_CHECKING

from kubesonar.sensor.af_packet import TPACKET_V3, RingSocket, SocketStats, list_interfaces, wait_readable
from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.bpf import capture_program
from kubesonar.sensor.dissect import LINKTYPE_ETHERNET, LINKTYPE_RAW
from kubesonar.sensor.flow_table import FlowTable
from kubesonar.sensor.observe import observe, unplaced
from kubesonar.shared.errors import CaptureError
from kubesonar.shared.flow import EndReason

if TYPE_CHECKING:
    from kubesonar.sensor.live import SensorSettings
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import FlowRecords

# the health counters a capture keeps (the rest of a heartbeat's are the sensor's own)
CAPTURE_COUNTERS = (
    "packets", "kernel_packets", "kernel_drops", "ring_malformed", "evicted_flows", "capture_errors", "interfaces",
    "dns_messages", "dns_malformed", "dns_dropped", "tls_client_hellos", "tls_unreadable", "tls_dropped",
    "executables_dropped",
    "unplaced_unknown_linktype", "unplaced_not_ip", "unplaced_truncated",
)


def fanout_group(sensor_pid: int, interface: str) -> int:
    """The PACKET_FANOUT group id of a sensor's workers on an interface: ids are shared by every socket of
    the network namespace, so it is the sensor's own (its process id) and the interface's."""
    import socket

    return (sensor_pid * 31 + socket.if_nametoindex(interface)) & 0xFFFF


class Capture:
    def __init__(self, settings: SensorSettings, fanout_of: int | None = None):
        """``fanout_of``: the sensor process whose workers share each interface (None: not shared)."""
        self.settings = settings
        self.fanout_of = fanout_of
        # quiet flows looked for once a second of traffic (and at every window's end), not at every read.
        # Room for the cap and a read's new flows from the start: the table never grows by copying, and
        # rows never used cost no memory (the kernel maps a page at its first write)
        self.table = FlowTable(settings.timeouts, initial_capacity=settings.max_flows + settings.ring.frames_per_read,
                               max_flows=settings.max_flows, expire_every_s=1.0)
        self.dns = DnsParser(max_messages=settings.max_pending_flows)
        self.counts = dict.fromkeys(CAPTURE_COUNTERS, 0)
        self.errors: list[str] = []
        self.pending: list[FlowRecords] = []
        self.pending_dns: list[DnsMessages] = []
        self.pending_count = 0
        self._sockets: dict[str, RingSocket] = {}
        self._programs = {linktype: capture_program(settings.capture_filter, linktype == LINKTYPE_RAW,
                                                    settings.ring.snaplen)
                          for linktype in (LINKTYPE_ETHERNET, LINKTYPE_RAW)}
        self._retired = SocketStats()  # kernel counters of sockets closed so far: totals never go back
        self._finished = False

    def read_ready(self, timeout_s: float) -> None:
        """Read the rings that have packets, waiting at most ``timeout_s`` for one to have some."""
        if not self._sockets:  # every interface gone until the next refresh: nothing to wait on
            time.sleep(timeout_s)
            return
        read = [self._read(ring) for ring in wait_readable(list(self._sockets.values()), timeout_s)]
        if read and max(read) < self.settings.ring.frames_per_read:
            # the rings are drained: let packets gather a moment, as TPACKET_V3's block timeout
            # does, so each read carries many (the per-read cost is most of a small read's)
            time.sleep(self.settings.ring.gather_s)

    def take(self) -> tuple[list[FlowRecords], list[DnsMessages]]:
        """The records and DNS messages waiting, handed over."""
        taken = self.pending, self.pending_dns
        self.pending, self.pending_dns, self.pending_count = [], [], 0
        return taken

    def expire(self, now_ns: int, most: int | None = None) -> bool:
        """End the flows quiet at ``now_ns``, at most ``most`` a call; True while more may be due (take
        and hand on what ended, then call again)."""
        ended = self.table.expire(now_ns, most)
        self._add(ended)
        return most is not None and len(ended) == most

    def finish(self, most: int | None = None) -> bool:
        """Read what the rings hold and close them, then end the open flows, at most ``most`` a call;
        True while flows are left (take and hand on what ended, then call again)."""
        if not self._finished:
            if any(ring.version == TPACKET_V3 for ring in self._sockets.values()):
                # the block being filled is handed over only when it times out: let the last packets in
                time.sleep(self.settings.ring.block_timeout_ms / 1000 * 2)
            for ring in list(self._sockets.values()):
                self._read(ring)
            self.table.tls.finish()  # hellos still waiting for segments never get them
            self.counters()  # the last heartbeat still counts the interfaces it read
            self._finished = True
            for ring in list(self._sockets.values()):
                self._retire(ring)
        ended = self.table.flush(EndReason.END_OF_INPUT, most, now_ns=time.time_ns())  # watched until now
        self._add(ended)
        return most is not None and len(ended) == most

    def counters(self) -> dict[str, int]:
        """The capture's health counters, the kernel's read now."""
        for ring in self._sockets.values():
            try:
                ring.read_stats()
            except OSError:
                pass
        rings = list(self._sockets.values())
        c = self.counts
        c["kernel_packets"] = self._retired.packets + sum(r.stats.packets for r in rings)
        c["kernel_drops"] = self._retired.drops + sum(r.stats.drops for r in rings)
        c["ring_malformed"] = self._retired.malformed + sum(r.stats.malformed for r in rings)
        c["evicted_flows"] = self.table.evicted
        if not self._finished:
            c["interfaces"] = len(self._sockets)
        c["dns_messages"], c["dns_malformed"], c["dns_dropped"] = self.dns.parsed, self.dns.malformed, self.dns.dropped
        tls = self.table.tls
        c["tls_client_hellos"], c["tls_unreadable"], c["tls_dropped"] = tls.parsed, tls.unreadable, tls.dropped
        c["executables_dropped"] = self.table.executables.dropped
        return dict(c)

    def _read(self, ring: RingSocket) -> int:
        """Read and account what the ring holds; return the number of packets."""
        try:
            batch = ring.read()
            if batch is None:
                return 0
            observed, fields = observe(batch, self.table, self.dns)
            self.counts["packets"] += len(batch)
            for reason, count in unplaced(batch, fields).items():
                self.counts[f"unplaced_{reason}"] += count
            self._add(observed.flows)
            if len(observed.dns):
                self.pending_dns.append(observed.dns)
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
            self.pending.append(records)
            self.pending_count += len(records)

    # -- interfaces ----------------------------------------------------------------------------------

    def refresh_interfaces(self) -> None:
        present = list_interfaces()
        wanted = {name for pattern in self.settings.interfaces for name in fnmatch.filter(present, pattern)}
        for name in set(self._sockets) - wanted:
            self._retire(self._sockets[name])
        for name in sorted(wanted - set(self._sockets)):
            try:
                group = fanout_group(self.fanout_of, name) if self.fanout_of is not None else None
                self._sockets[name] = RingSocket(name, self.settings.ring, self._programs,
                                                 arrivals_only=self.settings.arrivals_only, fanout_group=group)
            except (CaptureError, OSError) as exc:
                self._fail(str(exc))

    @property
    def interfaces(self) -> int:
        return len(self._sockets)

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
        self.counts["capture_errors"] += 1
        if len(self.errors) < 100:
            self.errors.append(message)
