"""Capture files to flow records and DNS messages: the offline sensor."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from kubesonar.sensor.app_layer import DnsParser
from kubesonar.sensor.capture_file import STDIN, read_capture
from kubesonar.sensor.dissect import PacketFields
from kubesonar.sensor.flow_table import FlowTable, FlowTimeouts
from kubesonar.sensor.observe import Observed, observe, unplaced
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.errors import CaptureError
from kubesonar.shared.flow import FlowRecords

_INITIAL_FLOWS = 1 << 16


@dataclass
class CaptureStats:
    """Health counters of one run; they travel in every batch header."""

    packets: int = 0
    ip_packets: int = 0
    non_ip_packets: int = 0
    truncated_packets: int = 0
    fragments: int = 0
    tunnelled_packets: int = 0
    icmp_errors_attributed: int = 0
    # packets that joined no flow, by reason (sensor/observe.py: unplaced); they add up to packets - ip_packets
    unplaced_unknown_linktype: int = 0
    unplaced_not_ip: int = 0
    unplaced_truncated: int = 0
    flows: int = 0
    dns_messages: int = 0
    dns_malformed: int = 0
    tls_client_hellos: int = 0
    tls_unreadable: int = 0  # ClientHellos cut by the snap length, split over segments, or malformed
    tls_dropped: int = 0  # ClientHellos past the per-read bound, not parsed
    executables_dropped: int = 0  # segments that may start an executable, past the per-read bound, not read
    capture_errors: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # a capture read whole that gave nothing to judge

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def read_captures(
    paths: Iterable[str | os.PathLike[str]],
    timeouts: FlowTimeouts | None = None,
    stats: CaptureStats | None = None,
    progress: Callable[[int], None] | None = None,
    held_rows: int = 0,
    dns: bool = True,
) -> Iterator[Observed]:
    """Yield flow records and DNS messages from capture files read one after the other into one flow table.

    A capture that is missing or corrupt is recorded in ``stats.errors`` (and counted); the flows read
    before the fault are kept and the remaining captures are still read. One whose packets hold no IP
    packet is recorded in ``stats.notes``. ``held_rows``: flow records
    come this many or more at a time (sensor/flow_table.py), later than the DNS messages of their batch.
    Without ``dns`` no DNS message is read (and none counted).
    """
    stats = stats if stats is not None else CaptureStats()
    # room for as many flows as the live sensor's default bound from the start: rows never used cost no
    # memory (their pages are never touched), while growing past 16,384 flows copied the whole table
    table = FlowTable(timeouts, initial_capacity=_INITIAL_FLOWS, held_rows=held_rows)
    parser = DnsParser() if dns else None
    for path in paths:
        packets_before, ip_before, cut_before = stats.packets, stats.ip_packets, stats.truncated_packets
        linktypes: set[int] = set()
        try:
            for batch in read_capture(path, progress=progress):
                observed, fields = observe(batch, table, parser)
                # count_nonzero: a boolean sum() casts every element first, several times slower; int(): the
                # counters are plain ints (CaptureStats.counters)
                stats.packets += len(batch)
                stats.ip_packets += int(np.count_nonzero(fields.is_ip))
                stats.non_ip_packets += len(batch) - int(np.count_nonzero(fields.is_ip | fields.truncated))
                stats.truncated_packets += int(np.count_nonzero(fields.truncated))
                stats.fragments += int(np.count_nonzero(fields.fragment))
                stats.tunnelled_packets += _tunnelled(fields)
                stats.icmp_errors_attributed += int(np.count_nonzero(fields.icmp_error))
                for reason, count in unplaced(batch, fields).items():
                    setattr(stats, f"unplaced_{reason}", getattr(stats, f"unplaced_{reason}") + count)
                stats.flows += len(observed.flows)
                if parser is not None:
                    stats.dns_messages, stats.dns_malformed = parser.parsed, parser.malformed
                stats.tls_client_hellos, stats.tls_unreadable = table.tls.parsed, table.tls.unreadable
                stats.tls_dropped, stats.executables_dropped = table.tls.dropped, table.executables.dropped
                if stats.ip_packets == ip_before:  # only while no IP packet came: a capture's first batch
                    linktypes.update(np.unique(batch.linktype).tolist())
                # the batch and its fields (some 11 MiB) go before the next batch's are made, not after:
                # the memory of one set, reused, is touched for the first time once
                del fields, batch
                if len(observed.flows) or len(observed.dns):
                    yield observed
        except CaptureError as exc:
            stats.capture_errors += 1
            stats.errors.append(str(exc))
        if stats.packets > packets_before and stats.ip_packets == ip_before:
            name = "<stdin>" if os.fspath(path) == STDIN else os.fspath(path)
            stats.notes.append(_no_ip_note(name, stats.packets - packets_before, stats.truncated_packets - cut_before,
                                           linktypes))
    records = table.flush()
    table.tls.finish()
    stats.tls_client_hellos, stats.tls_unreadable = table.tls.parsed, table.tls.unreadable
    stats.flows += len(records)
    if len(records):
        yield Observed(records, DnsMessages.empty())


def _no_ip_note(name: str, packets: int, cut: int, linktypes: set[int]) -> str:
    """ARP alone, IP behind a header naming the wrong link type (Ethernet frames filed as raw IP), or
    packets all cut by a small snap length: nothing was judged, which "no alerts" alone would hide."""
    if cut == packets:
        return (f"{name}: each of its {packets} packets was cut before the end of its IP header, so no flow came "
                "from it; capture with a larger snap length (tcpdump -s 0)")
    return (f"{name}: none of its {packets} packets is IPv4 or IPv6 (link type {', '.join(map(str, sorted(linktypes)))}"
            "), so no flow came from it; if it holds IP traffic, its header names the wrong link type")


def _tunnelled(fields: PacketFields) -> int:
    """Packets that came out of a VXLAN or Geneve tunnel: counted only in a batch that has one (a
    batch's largest tunnel address takes a third of the time of the count)."""
    outer = fields.tunnel_src
    return int(np.count_nonzero(outer[:, 0] | outer[:, 1])) if len(outer) and outer.max() else 0


_HELD_ROWS = 4096  # as many as the JSON-lines writer joins before it writes (kubesonar/flow_text.py)


def flows_from_captures(
    paths: Iterable[str | os.PathLike[str]],
    timeouts: FlowTimeouts | None = None,
    stats: CaptureStats | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[FlowRecords]:
    """The flow records alone of :func:`read_captures`, a few thousand at a time; no DNS message is read
    (the stats count none), which took 4 ms a million packets holding none."""
    for observed in read_captures(paths, timeouts, stats, progress, held_rows=_HELD_ROWS, dns=False):
        if len(observed.flows):
            yield observed.flows
