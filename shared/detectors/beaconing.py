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
skew score is reported, not required: over two dozen intervals it swings too much to veto). The reasoning: connections that users or request load cause arrive
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
    >>> d.decide(d.update(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from kubesonar.shared.detectors import Score, StateDocument, bounded, source_endpoint, subject_keys
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import FlowRecords, address_text
from kubesonar.shared.netzones import Zones
from kubesonar.shared.pod_events import PodEvents

SECOND = 1_000_000_000
_KEEP = 65  # connections remembered per pair (64 intervals)
# 1e-5 quantile of MAD / median of n exponential intervals (bench/beacon_null.py, 400,000 samples each)
POISSON_MAD_FLOOR = ((6, 0.0097), (8, 0.0243), (10, 0.0495), (12, 0.0702), (16, 0.0975), (20, 0.1456),
                     (24, 0.1668), (32, 0.2124), (48, 0.2802), (64, 0.3529))


def mad_floor(intervals: int) -> float:
    n, q = zip(*POISSON_MAD_FLOOR)
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


class BeaconingDetector(StateDocument):
    rule_id = "beaconing"
    EMPTY = {"pairs": {}, "destinations": {}}

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 min_intervals: int = 6, size_threshold: float = 0.5,
                 long_connection_s: float = 3600.0, rare_below: int = 3, max_pairs: int = 5_000):
        super().__init__(learning_period_ns, force_learning)
        self.zones = zones or Zones()
        self.min_intervals, self.size_threshold = min_intervals, size_threshold
        self.long_ns, self.rare_below, self.max_pairs = int(long_connection_s * SECOND), rare_below, max_pairs
    def update(self, flows: FlowRecords, pods: PodEvents | None = None, dns: DnsMessages | None = None) -> list[Score]:
        self.touched = False
        if not len(flows):
            return []
        learning = self._learning(flows)
        candidates = np.isin(flows["proto"], (6, 17)) & ~np.isin(flows["dst_port"], _IGNORED_PORTS)
        candidates &= ~np.isin(flows["src_workload_kind"], _SCHEDULED)  # a CronJob's clock is declared
        rows = np.flatnonzero(candidates)
        if not len(rows):
            return []
        rows = self.zones.outside(flows, rows)
        if not len(rows):
            return []
        self.touched = True
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
        pairs, destinations = self._state["pairs"], self._state["destinations"]
        touched: dict[str, int] = {}
        long_rows: dict[str, int] = {}
        for i, row in enumerate(rows.tolist()):
            d = destinations.setdefault(dst[i], {"w": [], "t": 0})
            if keys[i] not in d["w"] and len(d["w"]) < self.rare_below:
                d["w"].append(keys[i])
            d["t"] = max(d["t"], lasts[i])
            pair = f"{keys[i]}>{dst[i]}:{ports[i]}/{protos[i]}"
            p = pairs.setdefault(pair, {"ts": [], "sz": [], "t": 0, "learned": False, "reported": False,
                                        "long": False})
            p["t"] = max(p["t"], lasts[i])
            if new_conn[i]:
                p["ts"] = (p["ts"] + [starts[i] // 1_000_000])[-_KEEP:]  # ms
                p["sz"] = (p["sz"] + [sizes[i]])[-_KEEP:]
                touched[pair] = row
            if lasts[i] - starts[i] >= self.long_ns:
                long_rows[pair] = row
        scores = []
        for pair, row in touched.items():
            score = self._beacon(pair, pairs[pair], destinations, flows, row, learning)
            if score is not None:
                scores.append(score)
        for pair, row in long_rows.items():
            score = self._long(pair, pairs[pair], destinations, flows, row, learning)
            if score is not None:
                scores.append(score)
        self._state["pairs"] = bounded(pairs, self.max_pairs)
        self._state["destinations"] = bounded(destinations, self.max_pairs * 4)
        return scores

    def _rare(self, destinations: dict, pair: str) -> bool:
        target = pair.rsplit(">", 1)[1].rsplit(":", 1)[0]
        return len(destinations.get(target, {"w": []})["w"]) < self.rare_below

    def _beacon(self, pair, p, destinations, flows, row, learning) -> Score | None:
        times = np.array(sorted(p["ts"]), dtype=np.float64) / 1000.0
        intervals = np.diff(times)
        intervals = intervals[intervals > 1.0]
        if len(intervals) < self.min_intervals:
            return None
        skew, spread = skew_and_spread(intervals)
        timing = regularity(intervals)
        size = regularity(np.array(p["sz"], dtype=np.float64))
        floor = mad_floor(len(intervals))
        beacon = spread <= floor and size >= self.size_threshold
        if learning:
            p["learned"] |= beacon
            return None
        alarm = beacon and not p["learned"] and self._rare(destinations, pair)
        fresh = alarm and not p["reported"]
        p["reported"] |= alarm
        median = float(np.median(intervals))
        evidence = {"kind": "beacon", "destination": pair.rsplit(">", 1)[1], "connections": len(p["ts"]),
                    "median_interval_s": round(median, 2), "timing_score": round(timing, 3),
                    "mad_over_median": round(spread, 4), "poisson_floor": round(floor, 4),
                    "skew_score": round(skew, 3),
                    "size_score": round(size, 3), "median_bytes_out": int(np.median(p["sz"]))}
        first = int(times[0] * SECOND)
        return Score(pair, timing, alarm, source_endpoint(flows, row), first, int(flows["last_ts"][row]),
                     evidence, fresh=fresh, identity=("beacon", pair.rsplit(">", 1)[1]), destination=_target(flows, row))

    def _long(self, pair, p, destinations, flows, row, learning) -> Score | None:
        if learning:
            p["learned"] = True
            return None
        alarm = not p["learned"] and self._rare(destinations, pair)
        fresh = alarm and not p["long"]
        p["long"] |= alarm
        held = (int(flows["last_ts"][row]) - int(flows["conn_start"][row])) / SECOND
        evidence = {"kind": "long_connection", "destination": pair.rsplit(">", 1)[1], "held_s": round(held, 1),
                    "bytes_out": int(flows["bytes_out"][row]), "bytes_in": int(flows["bytes_in"][row])}
        return Score(pair, 1.0, alarm, source_endpoint(flows, row), int(flows["conn_start"][row]),
                     int(flows["last_ts"][row]), evidence, fresh=fresh, identity=("long", pair.rsplit(">", 1)[1]),
                     destination=_target(flows, row))



def _target(flows: FlowRecords, row: int) -> dict[str, Any]:
    return {"ip": address_text(flows["dst_addr"][row]), "port": int(flows["dst_port"][row])}
