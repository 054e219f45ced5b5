"""Beaconing: a workload calling out to one destination on a clock, the way implants check in.

RITA-style, per (workload, destination, port, protocol) outside the cluster. A clock shows two ways,
judged by one test:
- *repeated connections*: the intervals between a channel's connection starts (those over a second:
  retries and parallel connections are one check-in), over the last 64 connections kept across
  windows; their spread is MAD / median (``1 - MAD / median`` is RITA's dispersion score);
- *one long session*: the gaps between one side's small packets inside one connection, which the
  sensor keeps per side as a count, a mean and a coefficient of variation (flow schema 4: ``gaps_out``,
  ``gap_mean_us_out``, ``gap_cv_milli_out`` and their ``_in`` twins); their spread is that CV. The side
  that keeps the clock best is judged: an implant's check-ins may be too big to count as small (an
  HTTP POST with a body) while the server's short answers keep the same clock. A heartbeat every N seconds in a
  20-minute mTLS session is as much a beacon as 20 short connections. A session that also carries
  commands mixes the timer with the exchanges between its beats, so the sensor follows each side's
  burst timer too (flow schema 6, ``beat_*``): for a channel reached by address, MIN_BEATS bursts on
  one period, through no more bursts between them than on it, over at least half the session's gaps,
  are a clock whatever the gaps' CV.
The test: at least 6 intervals (or gaps) a second or more apart, and a spread smaller than traffic
without a clock would show but once in 100,000 tests. Connections and packets that users or request
load cause arrive like a Poisson process: exponential intervals, whose MAD / median is 0.69 and CV 1
on average but, over a handful of intervals, now and then far less. The bar for n intervals is that
null distribution's 1e-5 quantile (``bench/beacon_null.py``: MAD / median 0.01 for 6 intervals, 0.17
for 24, 0.35 for 64; CV 0.09 for 6 gaps, 0.44 for 24, 0.62 for 64), and never above 0.35, the spread
of a clock with +-60% uniform jitter (CV 0.6 / sqrt 3): past it a session's long history would let
loosely periodic traffic through. Repeated connections must also send much the same each time (size
score 0.5 or more: an implant uploading data varies); a session's packet sizes are not kept, so only
its timing is judged. Pairs are tested as connections come, so false alarms stay rare however many
pairs there are.

No baseline is needed: a low-jitter clock over many intervals is judged from the first window,
whatever the learning period, and a beacon seen while the cluster learns is reported, never learned.
Only destinations few workloads use are judged (fewer than 3 seen): a service half the cluster calls
is not a command server. Destinations inside the cluster (named pods and Services, the internal
networks) are never judged: health checks and scrapes are periodic by nature. DNS (53) and NTP (123)
are left out for the same reason, and so are CronJobs: their clock is declared in the cluster.

Catches: fixed-interval and jittered beacons (Cobalt Strike, Sliver, Empire, Metasploit reverse
HTTP(S), RATs) after 7 check-ins without jitter, about 17 with +-20%, in new connections or inside
one session (mTLS implants, RAT keep-alives). Misses: beacons with jitter over about +-60%,
randomised sizes across connections, intervals of a second or less or over three days (a channel quiet
for ``IDLE_FORGET_NS`` of data time is forgotten), C2 through a popular service
(domain fronting, cloud storage), or from a CronJob's pods; session heartbeats before the sensor
fills schema 4's gap columns.
False positives: periodic integrations to a rarely used external host (webhooks, licence checks,
telemetry, a websocket's or gRPC stream's application pings): allowlist them by workload and port.

Score: RITA's timing score of a channel (mean of the skew score and 1 - MAD / median; for a session
``1 - CV``); the decision is the test above, its figures in the evidence.

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

from kubesonar.shared.detectors.base import (
    IDLE_FORGET_NS,
    Detector,
    Score,
    StateMigrationError,
    bounded,
    clock_from_v0,
)
from kubesonar.shared.flow import FlowRecords, address_text, client_named, names_a_host
from kubesonar.shared.identity import source_endpoint, subject_keys
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_KEEP = 65  # connections remembered per pair (64 intervals)
# 1e-5 quantile of MAD / median of n exponential intervals (bench/beacon_null.py, 400,000 samples each)
POISSON_MAD_FLOOR = ((6, 0.0097), (8, 0.0243), (10, 0.0495), (12, 0.0702), (16, 0.0975), (20, 0.1456),
                     (24, 0.1668), (32, 0.2124), (48, 0.2802), (64, 0.3529))


# 1e-5 quantile of the CV (population std / mean) of n exponential gaps (bench/beacon_null.py, 400,000 each)
POISSON_CV_FLOOR = ((6, 0.0872), (8, 0.1423), (10, 0.2156), (12, 0.2560), (16, 0.3260), (20, 0.3844),
                    (24, 0.4422), (32, 0.4897), (48, 0.5689), (64, 0.6225), (128, 0.7131), (256, 0.7851))
CLOCK_SPREAD_CAP = 0.35  # a clock with +-60% uniform jitter: CV 0.6 / sqrt(3); looser is not judged a clock
# A session's burst timer (flow schema 6, sensor/flow_kernel.py _track_beat) is a clock when this many
# bursts came on its period, with no more bursts between them than on it: Poisson small packets at 0.05
# to 2 a second reach 8 beats in up to 7e-5 of sessions of 2,048 packets (280 to 1,950 bursts), 10 in up
# to 1e-5, 11 in none of 400,000 (bench/beacon_null.py); 12 leaves room for longer ones.
MIN_BEATS = 12


def mad_floor(intervals: int) -> float:
    return float(_floor(POISSON_MAD_FLOOR, intervals))


def cv_floor(gaps: int) -> float:
    return float(_floor(POISSON_CV_FLOOR, gaps))


def cv_floors(gaps: np.ndarray) -> np.ndarray:
    """:func:`cv_floor` of each count: the spread under which that many gaps are a clock."""
    return _floor(POISSON_CV_FLOOR, gaps)


def _floor(table: tuple[tuple[int, float], ...], n):
    sizes, quantiles = zip(*table, strict=True)
    return np.minimum(CLOCK_SPREAD_CAP, np.interp(n, sizes, quantiles))


_IGNORED_PORTS = (53, 123)
_SCHEDULED = ("CronJob",)


def skew_and_spread(values: np.ndarray | list[float]) -> tuple[float, float]:
    """(Bowley skew score ``1 - |skew|``, MAD / median) of ``values``.

    Quartiles and medians as numpy's default (linear) method computes them, bit for bit, on a sorted
    list: a channel holds at most 64 intervals, where ``np.percentile``'s call overhead cost more than
    the rest of the rule (tests/unit/test_beaconing_stats.py compares the two)."""
    ordered = sorted(map(float, values.tolist() if isinstance(values, np.ndarray) else values))
    q1, q2, q3 = (_quantile(ordered, q) for q in (0.25, 0.5, 0.75))
    skew = (q1 + q3 - 2 * q2) / (q3 - q1) if q3 > q1 else 0.0
    mad = median_of_sorted(sorted(abs(v - q2) for v in ordered))
    spread = 0.0 if mad == 0 else (mad / q2 if q2 > 0 else math.inf)
    return 1.0 - min(1.0, abs(skew)), spread


def regularity_of(skew: float, spread: float) -> float:
    """RITA's score: the mean of the skew score and ``1 - MAD / median`` (1: all alike, ~0.5: exponential)."""
    return (skew + max(0.0, 1.0 - spread)) / 2


def regularity(values: np.ndarray | list[float]) -> float:
    return regularity_of(*skew_and_spread(values))


def _quantile(ordered: list[float], q: float) -> float:
    """``np.quantile(ordered, q)``: linear interpolation, with numpy's two-sided lerp."""
    virtual = (len(ordered) - 1) * q
    below = math.floor(virtual)
    gamma = virtual - below
    a, b = ordered[below], ordered[min(below + 1, len(ordered) - 1)]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def median_of_sorted(ordered: list[float]) -> float:
    """``np.median``: the middle value, or the mean of the two middle ones."""
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


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
    """A channel's last connections (start in ms, bytes sent) and whether it was reported as a beacon."""

    starts_ms: list[int] = field(default_factory=list)
    bytes_out: list[int] = field(default_factory=list)
    last_ns: int = 0
    reported: bool = False
    named_clock: bool = False  # kept a clock to a host it named while the cluster learned: an integration

    def copy(self) -> ChannelHistory:
        return ChannelHistory(list(self.starts_ms), list(self.bytes_out), self.last_ns, self.reported,
                              self.named_clock)


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
    named: np.ndarray | None = None  # per flow of the batch: its client named a host (SNI or HTTP Host)


class BeaconingDetector(Detector[BeaconingState, _Assessment]):
    rule_id = "beaconing"
    state_version = 2  # 2: no learned pairs (beacons are judged cold); long connections are long_connection's

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 min_intervals: int = 6, size_threshold: float = 0.5, rare_below: int = 3, max_pairs: int = 5_000):
        super().__init__(learning_period_ns, force_learning)
        self.zones = zones or Zones()
        self.min_intervals, self.size_threshold = min_intervals, size_threshold
        self.rare_below, self.max_pairs = rare_below, max_pairs

    def new_state(self) -> BeaconingState:
        return BeaconingState()

    def _encode(self, state: BeaconingState) -> dict[str, Any]:
        # vars(): the fields by name, without a copy (the biggest state there is: keep it cheap)
        return {"channels": [[*c, vars(h)] for c, h in state.channels.items()],
                "destinations": {a: vars(d) for a, d in state.destinations.items()}}

    def _decode(self, document: dict[str, Any]) -> BeaconingState:
        return BeaconingState(
            {Channel(src, addr, port, proto):
             ChannelHistory(h["starts_ms"], h["bytes_out"], h["last_ns"], h["reported"], h.get("named_clock", False))
             for src, addr, port, proto, h in document["channels"]},
            {a: DestinationUsers(d["subjects"], d["last_ns"]) for a, d in document["destinations"].items()})

    def _upgrade(self, document: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 kept pairs learned as regular while learning, and long connections: a beacon is now
        judged cold (a pair learned then is judged again) and long connections have a rule of their own."""
        if version == 0:
            document, version = super()._upgrade(document, 0), 1
        if version != 1:
            raise StateMigrationError(f"no migration from version {version}")
        channels = [[*key, {k: v for k, v in h.items() if k not in ("learned", "long")}]
                    for *key, h in document["channels"]]
        return {**document, "state_version": 2, "channels": channels}

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
        out.named = names_a_host(client_named(flows))
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
        # a session's gap statistics are cumulative: its latest record holds them all
        gaps = np.maximum(flows["gaps_out"][rows], flows["gaps_in"][rows]).tolist()
        src_ports = flows["src_port"][rows].tolist()
        checked_in: dict[Channel, int] = {}
        sessions: dict[tuple[Channel, int, int], tuple[int, int]] = {}
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
            session = (channel, starts[i], src_ports[i])
            if gaps[i] >= self.min_intervals and gaps[i] >= sessions.get(session, (row, 0))[1]:
                sessions[session] = (row, gaps[i])  # a connection's latest record holds all its gaps
        for channel, row in checked_in.items():
            score = self._beacon(channel, out.channels[channel], out, flows, row)
            if score is not None:
                out.scores.append(score)
        for (channel, _, _), (row, _) in sessions.items():  # every session tested, as every connection is
            score = self._session(channel, out.channels[channel], out, flows, row)
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
        """The batch's connections join their channels' histories: that is evidence, not a baseline of
        normal (nothing is learned as regular, so there is nothing an attacker could teach)."""
        if assessment.first_ts is None:
            return
        self._start_clock(assessment.first_ts)
        if not assessment.channels:
            return
        self.touched = True
        self.state.channels.update(assessment.channels)
        self.state.destinations.update(assessment.destinations)
        # channels and remote addresses quiet for IDLE_FORGET_NS of data time are forgotten: rotating
        # destinations (CDNs, SaaS, webhook customers) would otherwise fill the caps with the past
        since = max(h.last_ns for h in assessment.channels.values()) - IDLE_FORGET_NS
        self.state.channels = bounded(self.state.channels, self.max_pairs, since_ns=since)
        self.state.destinations = bounded(self.state.destinations, self.max_pairs * 4, since_ns=since)

    def _rare(self, out: _Assessment, channel: Channel) -> bool:
        users = out.destinations.get(channel.address) or self.state.destinations.get(channel.address)
        return len(users.subjects if users else []) < self.rare_below

    def _beacon(self, channel: Channel, h: ChannelHistory, out: _Assessment, flows: FlowRecords,
                row: int) -> Score | None:
        """The repeated-connection test: intervals between connection starts."""
        times = np.array(sorted(h.starts_ms), dtype=np.float64) / 1000.0
        intervals = np.diff(times)
        intervals = intervals[intervals > 1.0]
        if len(intervals) < self.min_intervals:
            return None
        skew, spread = skew_and_spread(intervals)
        timing = regularity_of(skew, spread)
        size = regularity(h.bytes_out)
        floor = mad_floor(len(intervals))
        median = median_of_sorted(sorted(intervals.tolist()))
        evidence = {"kind": "beacon", "destination": channel.destination, "connections": len(h.starts_ms),
                    "median_interval_s": round(median, 2), "timing_score": round(timing, 3),
                    "mad_over_median": round(spread, 4), "poisson_floor": round(floor, 4),
                    "skew_score": round(skew, 3), "size_score": round(size, 3),
                    "median_bytes_out": int(median_of_sorted(sorted(map(float, h.bytes_out))))}
        clock = spread <= floor and size >= self.size_threshold
        return self._decided(channel, h, out, flows, row, clock, timing, int(times[0] * SECOND), evidence)

    def _session(self, channel: Channel, h: ChannelHistory, out: _Assessment, flows: FlowRecords,
                 row: int) -> Score | None:
        """The in-session test: the gaps between small packets inside one connection, on the side that
        keeps the clock best. An exchange is paced by one clock: when the implant's check-ins are too
        big to count as small (an HTTP POST with a body), the server's small answers carry it."""
        judged = []
        for side in ("out", "in"):
            gaps, mean_s = int(flows[f"gaps_{side}"][row]), int(flows[f"gap_mean_us_{side}"][row]) / 1e6
            if gaps >= self.min_intervals and mean_s >= 1.0:  # under a second: a stream's pace, not a check-in
                judged.append((_cv(flows, row, side) - cv_floor(gaps), side))
        if not judged:
            return None
        side = min(judged)[1]
        clock = _cv(flows, row, side) <= cv_floor(int(flows[f"gaps_{side}"][row]))
        timer = None
        # the burst timer is judged for channels reached by address only (out.named: an SNI or HTTP Host
        # names a host): a named session's keep-alives are compared with the workload's past as its other
        # clocks are, and a cluster learned before flow schema 6 had no timer to learn
        named = bool(out.named[row]) if out.named is not None else False
        if not clock and not named:
            timer = _timer(flows, row)
            side = timer[0] if timer is not None else side
        gaps, cv = int(flows[f"gaps_{side}"][row]), _cv(flows, row, side)
        evidence = {"kind": "session_beacon", "destination": channel.destination, "gaps": gaps,
                    "side": "initiator" if side == "out" else "responder",
                    "mean_gap_s": round(int(flows[f"gap_mean_us_{side}"][row]) / 1e6, 2), "gap_cv": round(cv, 3),
                    "poisson_floor": round(cv_floor(gaps), 4),
                    "held_s": round((int(flows["last_ts"][row]) - int(flows["conn_start"][row])) / SECOND, 1)}
        timing = max(0.0, 1.0 - cv)
        if timer is not None:  # the gaps mix a timer with the exchanges between its beats: the timer is the clock
            _, beats, between, period_s = timer
            evidence.update(beats=beats, beats_between=between, beat_period_s=round(period_s, 2))
            clock, timing = True, beats / (beats + between)
        return self._decided(channel, h, out, flows, row, clock, timing, int(flows["conn_start"][row]), evidence)

    def _decided(self, channel: Channel, h: ChannelHistory, out: _Assessment, flows: FlowRecords, row: int,
                 clock: bool, timing: float, first_ns: int, evidence: dict[str, Any]) -> Score:
        """A clock to an address reached by no name (no SNI or HTTP Host, or an IP as one; other TCP and
        UDP) is judged cold: implants are configured with their server's address. A clock to a host the
        workload named, in its ClientHello or its plain-HTTP request's Host, is what integrations,
        exporters, uptime probes and streams keep too, so it is compared with the workload's past: kept
        while the cluster learned, it is known; new after, it is reported."""
        named = bool(out.named[row]) if out.named is not None else False
        if named and clock and self._learning(first_ns):
            h.named_clock = True
        alarm = clock and self._rare(out, channel) and not (named and h.named_clock)
        fresh = alarm and not h.reported
        h.reported |= alarm
        if named:  # the name, under the field that carried it
            sni = str(flows["tls_sni"][row])
            evidence = {**evidence, **({"sni": sni} if sni else {"http_host": str(flows["http_host"][row])})}
        return Score(channel, timing, alarm, source_endpoint(flows, row), first_ns, int(flows["last_ts"][row]),
                     evidence, fresh=fresh, identity=("beacon", channel.destination), destination=_target(flows, row),
                     needs_baseline=named)


def _cv(flows: FlowRecords, row: int, side: str) -> float:
    return int(flows[f"gap_cv_milli_{side}"][row]) / 1000.0


def _timer(flows: FlowRecords, row: int) -> tuple[str, int, int, float] | None:
    """(side, beats, bursts between them, period in s) of a session's burst timer that counts as a clock,
    the side with more beats; None if neither side has one. A clock: MIN_BEATS on a period of a second
    or more, no more bursts between them than on it, and a run that spans at least half the side's
    gaps: the timer paces the session, not one idle stretch of it (an SSH or VPN keep-alive fires only
    while nobody types or sends)."""
    timers = []
    for side in ("out", "in"):
        beats, between = int(flows[f"beats_{side}"][row]), int(flows[f"beat_between_{side}"][row])
        period_s = int(flows[f"beat_period_us_{side}"][row]) / 1e6
        spanned = beats + between + 1  # the run's gaps: its candidate, its beats, the bursts between
        if (beats >= MIN_BEATS and between <= beats and period_s >= 1.0
                and 2 * spanned >= int(flows[f"gaps_{side}"][row])):
            timers.append((beats, side, between, period_s))
    if not timers:
        return None
    beats, side, between, period_s = max(timers)
    return side, beats, between, period_s


def _target(flows: FlowRecords, row: int) -> dict[str, Any]:
    return {"ip": address_text(flows["dst_addr"][row]), "port": int(flows["dst_port"][row])}
