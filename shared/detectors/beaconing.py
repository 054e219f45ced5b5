"""Beaconing: a workload calling out to one destination on a clock, the way implants check in.

RITA-style, per (workload, destination, port, protocol) outside the cluster, over the connections'
start times and sizes kept in the baseline across windows (the last 64 connections of a pair):
- timing: the intervals between connections (those over a second: retries and parallel
  connections are one check-in), scored by Bowley's quartile skew (``1 - |skew|``: 1 when the
  intervals are symmetric about their median) and by their median absolute deviation relative to the
  median (``1 - MAD / median``: 1 when they do not vary);
- sizes: the bytes sent per connection, scored the same two ways.
A pair beacons when it has at least 6 intervals, their MAD is a smaller share of their median than
traffic without a clock would show but once in 100,000 tests, and its size score is 0.5 or more (the
skew score is reported, not required: over two dozen intervals it swings too much to veto). The
reasoning: connections that users or request load cause arrive
like a Poisson process, whose intervals have MAD / median of 0.69 on average but, over a handful of
intervals, now and then far less; the bar for n intervals is that null distribution's 1e-5 quantile
(``bench/beacon_null.py``: 0.01 for 6 intervals, 0.17 for 24, 0.35 for 64). A fixed-interval beacon
passes after 6 intervals; one with +-20% jitter (MAD / median 0.1) after about 16, +-50% after
about 40. Pairs are tested as connections come, so this keeps false alarms rare however many pairs
there are. Sizes only veto: a check-in sends much the same each time, but an implant uploading data
varies.

Also a *long connection*: one connection to a destination outside the cluster held open an hour
or more (a persistent C2 channel or reverse shell).

Only destinations few workloads use are judged (fewer than 3 seen): a service half the cluster calls
is not a command server. Pairs that already beaconed during the learning period are learned and
never reported (an external API polled every minute by design). Destinations inside the cluster
(named pods and Services, the internal networks) are never judged: health checks and scrapes are
periodic by nature. DNS (53) and NTP (123) are left out for the same reason, and so are CronJobs:
their clock is declared in the cluster (a nightly backup to the same storage hosts is regular by
design).

Catches: fixed-interval and jittered beacons (Cobalt Strike, Sliver, Metasploit reverse HTTP(S),
RATs) after 7 check-ins without jitter, about 17 with +-20%; persistent C2 connections. Misses:
beacons with jitter over about +-60% (64 intervals are kept), randomised sizes, intervals of a
second or less, C2 through a popular service (domain fronting, cloud storage), or from a CronJob's pods.
False positives: new periodic integrations (webhooks, license checks, telemetry) deployed after
learning: allowlist them by workload and port.

Score: RITA's timing score of a pair with enough intervals (mean of the skew score and 1 - MAD /
median); the decision is the test above, its figures in the evidence.

Example:
    >>> d = BeaconingDetector(learning_period_ns=0)
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kubesonar.shared.detectors.base import Detector, Score, StateMigrationError, bounded, clock_from_v0
from kubesonar.shared.flow import FlowRecords, address_text
from kubesonar.shared.identity import source_endpoint, subject_keys
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_KEEP = 65  # connections remembered per pair (64 intervals)
# 1e-5 quantile of MAD / median of n exponential intervals (bench/beacon_null.py, 400,000 samples each)
POISSON_MAD_FLOOR = ((6, 0.0097), (8, 0.0243), (10, 0.0495), (12, 0.0702), (16, 0.0975), (20, 0.1456),
                     (24, 0.1668), (32, 0.2124), (48, 0.2802), (64, 0.3529))


def mad_floor(intervals: int) -> float:
    n, q = zip(*POISSON_MAD_FLOOR, strict=False)
    return float(np.interp(intervals, n, q))


_IGNORED_PORTS = (53, 123)
_SCHEDULED = ("CronJob",)


def skew_and_spread(values: np.ndarray) -> tuple[float, float]:
    """(Bowley skew score ``1 - |skew|``, MAD / median) of ``values``."""
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    skew = (q1 + q3 - 2 * q2) / (q3 - q1) if q3 > q1 else 0.0
    mad = float(np.median(np.abs(values - q2)))
    spread = 0.0 if mad == 0 else (mad / q2 if q2 > 0 else math.inf)
    return 1.0 - min(1.0, abs(float(skew))), float(spread)


def regularity(values: np.ndarray) -> float:
    """RITA's score: the mean of the skew score and ``1 - MAD / median`` (1: all alike, ~0.5: exponential)."""
    skew, spread = skew_and_spread(values)
    return (skew + max(0.0, 1.0 - spread)) / 2


class Channel(NamedTuple):
    """A workload (or address) calling one remote address, port and protocol."""

    source: str
    address: str
    port: int
    protocol: int

    @property
    def destination(self) -> str:
        return f"{self.address}:{self.port}/{self.protocol}"

    @classmethod
    def from_v0(cls, joined: str) -> Channel:
        """``source>address:port/protocol``, as version-0 documents wrote it."""
        source, sep, rest = joined.partition(">")
        address_port, slash, protocol = rest.rpartition("/")
        address, colon, port = address_port.rpartition(":")
        if not (sep and slash and colon):
            raise StateMigrationError(f"beaconing pair {joined!r} is not source>address:port/protocol")
        return cls(source, address, int(port), int(protocol))


@dataclass
class ChannelHistory:
    """A channel's last connections (start in ms, bytes sent) and what was decided about it."""

    starts_ms: list[int] = field(default_factory=list)
    bytes_out: list[int] = field(default_factory=list)
    last_ns: int = 0
    learned: bool = False  # beaconed while learning: regular by design, never reported
    reported: bool = False  # reported as a beacon
    long: bool = False  # reported as a long connection

    def copy(self) -> ChannelHistory:
        return ChannelHistory(list(self.starts_ms), list(self.bytes_out), self.last_ns, self.learned,
                              self.reported, self.long)


@dataclass
class DestinationUsers:
    """The first few subjects seen calling a remote address (rarity needs no more)."""

    subjects: list[str] = field(default_factory=list)
    last_ns: int = 0


@dataclass
class BeaconingState:
    channels: dict[Channel, ChannelHistory] = field(default_factory=dict)
    destinations: dict[str, DestinationUsers] = field(default_factory=dict)  # by remote address


@dataclass
class _Assessment:
    first_ts: int | None = None
    scores: list[Score] = field(default_factory=list)
    channels: dict[Channel, ChannelHistory] = field(default_factory=dict)  # as this batch leaves them
    destinations: dict[str, DestinationUsers] = field(default_factory=dict)


class BeaconingDetector(Detector[BeaconingState, _Assessment]):
    rule_id = "beaconing"

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 min_intervals: int = 6, size_threshold: float = 0.5,
                 long_connection_s: float = 3600.0, rare_below: int = 3, max_pairs: int = 5_000):
        super().__init__(learning_period_ns, force_learning)
        self.zones = zones or Zones()
        self.min_intervals, self.size_threshold = min_intervals, size_threshold
        self.long_ns, self.rare_below, self.max_pairs = int(long_connection_s * SECOND), rare_below, max_pairs

    def new_state(self) -> BeaconingState:
        return BeaconingState()

    def _encode(self, state: BeaconingState) -> dict[str, Any]:
        # vars(): the fields by name, without a copy (the biggest state there is: keep it cheap)
        return {"channels": [[*c, vars(h)] for c, h in state.channels.items()],
                "destinations": {a: vars(d) for a, d in state.destinations.items()}}

    def _decode(self, document: dict[str, Any]) -> BeaconingState:
        return BeaconingState(
            {Channel(src, addr, port, proto): ChannelHistory(h["starts_ms"], h["bytes_out"], h["last_ns"], h["learned"],
                                                             h["reported"], h["long"])
             for src, addr, port, proto, h in document["channels"]},
            {a: DestinationUsers(d["subjects"], d["last_ns"]) for a, d in document["destinations"].items()})

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        channels = [[*Channel.from_v0(k), {"starts_ms": p["ts"], "bytes_out": p["sz"], "last_ns": p["t"],
                                           "learned": p["learned"], "reported": p["reported"], "long": p["long"]}]
                    for k, p in document["pairs"].items()]
        return {"clock": clock_from_v0(document), "channels": channels,
                "destinations": {a: {"subjects": d["w"], "last_ns": d["t"]}
                                 for a, d in document["destinations"].items()}}

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        out = _Assessment()
        if not len(flows):
            return out
        out.first_ts = int(flows["first_ts"].min())
        learning = self._learning(out.first_ts)
        candidates = np.isin(flows["proto"], (6, 17)) & ~np.isin(flows["dst_port"], _IGNORED_PORTS)
        candidates &= ~np.isin(flows["src_workload_kind"], _SCHEDULED)  # a CronJob's clock is declared
        rows = np.flatnonzero(candidates)
        if not len(rows):
            return out
        rows = self.zones.outside(flows, rows)
        if not len(rows):
            return out
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        dst = [address_text(a) for a in flows["dst_addr"][rows]]
        ports, protos = flows["dst_port"][rows].tolist(), flows["proto"][rows].tolist()
        # a connection's first record; for TCP only one that opened with a SYN (a quiet long connection
        # is cut into records at idle gaps: those are not new check-ins)
        opened = (flows["proto"][rows] != 6) | ((flows["flags_out"][rows] & 0x02) != 0)
        new_conn = ((flows["first_ts"][rows] == flows["conn_start"][rows]) & opened).tolist()
        starts, lasts = flows["conn_start"][rows].tolist(), flows["last_ts"][rows].tolist()
        sizes = flows["bytes_out"][rows].tolist()
        checked_in: dict[Channel, int] = {}
        long_rows: dict[Channel, int] = {}
        for i, row in enumerate(rows.tolist()):
            d = self._destination(out, dst[i])
            if keys[i] not in d.subjects and len(d.subjects) < self.rare_below:
                d.subjects.append(keys[i])
            d.last_ns = max(d.last_ns, lasts[i])
            channel = Channel(keys[i], dst[i], ports[i], protos[i])
            h = self._channel(out, channel)
            h.last_ns = max(h.last_ns, lasts[i])
            if new_conn[i]:
                h.starts_ms = (h.starts_ms + [starts[i] // 1_000_000])[-_KEEP:]
                h.bytes_out = (h.bytes_out + [sizes[i]])[-_KEEP:]
                checked_in[channel] = row
            if lasts[i] - starts[i] >= self.long_ns:
                long_rows[channel] = row
        for channel, row in checked_in.items():
            score = self._beacon(channel, out.channels[channel], out, flows, row, learning)
            if score is not None:
                out.scores.append(score)
        for channel, row in long_rows.items():
            score = self._long(channel, out.channels[channel], out, flows, row, learning)
            if score is not None:
                out.scores.append(score)
        return out

    def _channel(self, out: _Assessment, channel: Channel) -> ChannelHistory:
        h = out.channels.get(channel)
        if h is None:
            known = self.state.channels.get(channel)
            h = out.channels[channel] = known.copy() if known is not None else ChannelHistory()
        return h

    def _destination(self, out: _Assessment, address: str) -> DestinationUsers:
        d = out.destinations.get(address)
        if d is None:
            known = self.state.destinations.get(address)
            d = out.destinations[address] = DestinationUsers(list(known.subjects), known.last_ns) if known else \
                DestinationUsers()
        return d

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """The batch's connections join their channels' histories. The baseline is what was learned
        while learning (a channel regular by design); a flagged channel is never marked learned."""
        if assessment.first_ts is None:
            return
        self._start_clock(assessment.first_ts)
        if not assessment.channels:
            return
        self.touched = True
        for channel in flagged:  # protect the model (flagged only after learning, so this holds already)
            known = self.state.channels.get(channel)
            assessment.channels[channel].learned = bool(known and known.learned)
        self.state.channels.update(assessment.channels)
        self.state.destinations.update(assessment.destinations)
        self.state.channels = bounded(self.state.channels, self.max_pairs)
        self.state.destinations = bounded(self.state.destinations, self.max_pairs * 4)

    def _rare(self, out: _Assessment, channel: Channel) -> bool:
        users = out.destinations.get(channel.address) or self.state.destinations.get(channel.address)
        return len(users.subjects if users else []) < self.rare_below

    def _beacon(self, channel: Channel, h: ChannelHistory, out: _Assessment, flows: FlowRecords, row: int,
                learning: bool) -> Score | None:
        times = np.array(sorted(h.starts_ms), dtype=np.float64) / 1000.0
        intervals = np.diff(times)
        intervals = intervals[intervals > 1.0]
        if len(intervals) < self.min_intervals:
            return None
        skew, spread = skew_and_spread(intervals)
        timing = regularity(intervals)
        size = regularity(np.array(h.bytes_out, dtype=np.float64))
        floor = mad_floor(len(intervals))
        beacon = spread <= floor and size >= self.size_threshold
        if learning:
            h.learned |= beacon
            return None
        alarm = beacon and not h.learned and self._rare(out, channel)
        fresh = alarm and not h.reported
        h.reported |= alarm
        median = float(np.median(intervals))
        evidence = {"kind": "beacon", "destination": channel.destination, "connections": len(h.starts_ms),
                    "median_interval_s": round(median, 2), "timing_score": round(timing, 3),
                    "mad_over_median": round(spread, 4), "poisson_floor": round(floor, 4),
                    "skew_score": round(skew, 3),
                    "size_score": round(size, 3), "median_bytes_out": int(np.median(h.bytes_out))}
        first = int(times[0] * SECOND)
        return Score(channel, timing, alarm, source_endpoint(flows, row), first, int(flows["last_ts"][row]),
                     evidence, fresh=fresh, identity=("beacon", channel.destination), destination=_target(flows, row))

    def _long(self, channel: Channel, h: ChannelHistory, out: _Assessment, flows: FlowRecords, row: int,
              learning: bool) -> Score | None:
        if learning:
            h.learned = True
            return None
        alarm = not h.learned and self._rare(out, channel)
        fresh = alarm and not h.long
        h.long |= alarm
        held = (int(flows["last_ts"][row]) - int(flows["conn_start"][row])) / SECOND
        evidence = {"kind": "long_connection", "destination": channel.destination, "held_s": round(held, 1),
                    "bytes_out": int(flows["bytes_out"][row]), "bytes_in": int(flows["bytes_in"][row])}
        return Score(channel, 1.0, alarm, source_endpoint(flows, row), int(flows["conn_start"][row]),
                     int(flows["last_ts"][row]), evidence, fresh=fresh, identity=("long", channel.destination),
                     destination=_target(flows, row))


def _target(flows: FlowRecords, row: int) -> dict[str, Any]:
    return {"ip": address_text(flows["dst_addr"][row]), "port": int(flows["dst_port"][row])}
