"""Exfiltration: a workload sending one destination far more than it ever does, or moving data over
ICMP or DNS.

*Volume*: per workload, bytes sent to each destination network outside the cluster (/24, /48: a
service behind rotating addresses is one destination) are summed per hour. The workload's baseline is
the distribution of those hourly sums over its past (the last 256 of them, merged from every node,
since the baseline is one cluster document), and a zero for every hour the workload was seen
sending nothing out. Once a workload has at least 24 such values and the cluster's learning period
is over, an hour in which one destination receives more than
``max(64 MiB, median + 10 x 1.4826 x MAD, 3 x the largest sum seen)`` is an exfiltration: ten robust
standard deviations above what the workload does, three times its record, and never a small amount.
An hour that raised an alarm is not learned, so repeating the theft does not make it normal.

*ICMP*: more than 1 MiB of ICMP sent to one destination in an hour (12,000 default pings, over
three a second without pause; monitoring pings are a few a minute): ptunnel, icmpsh, hand-made
exfiltration in echo payloads. *DNS*: more than 1 MiB of DNS questions to one registered domain in
an hour (15,000 questions), whatever their shape; dns_tunneling judges their shape.

Catches: bulk uploads from a compromised workload to a new or usual destination; ICMP and DNS
channels with volume. Misses: theft spread thin over many destinations or hours (each under the
bar); uploads to a destination inside the cluster's networks; data hidden in traffic the workload
normally sends in bulk (a backup job's destination).
False positives: a first backup, export or migration run after learning; allowlist the workload.

Score: the hour's bytes to the destination divided by the workload's threshold (1 decides).

Example:
    >>> d = ExfiltrationDetector(learning_period_ns=0)
    >>> d.decide(d.update(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kubesonar.shared.detectors.unusual_destination import network_of
from kubesonar.shared.detectors import (
    Score,
    StateDocument,
    bounded,
    dns_client_endpoint,
    source_endpoint,
    subject_keys,
    workloads_seen,
)
from kubesonar.shared.dns import DnsMessages, registered_domain
from kubesonar.shared.flow import IPPROTO_ICMP, IPPROTO_ICMPV6, FlowRecords, address_text
from kubesonar.shared.netzones import Zones
from kubesonar.shared.pod_events import PodEvents

SECOND = 1_000_000_000
MiB = 1 << 20
_HISTORY = 256


class ExfiltrationDetector(StateDocument):
    rule_id = "exfiltration"
    EMPTY = {"subjects": {}}

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 bucket_s: float = 3600.0, min_history: int = 24, floor_bytes: int = 64 * MiB,
                 deviations: float = 10.0, record_factor: float = 3.0, icmp_bytes: int = MiB, dns_bytes: int = MiB,
                 max_subjects: int = 5_000):
        self.record_factor = record_factor
        super().__init__(learning_period_ns, force_learning)
        self.zones = zones or Zones()
        self.bucket_ns, self.min_history = int(bucket_s * SECOND), min_history
        self.floor, self.deviations = floor_bytes, deviations
        self.icmp_bytes, self.dns_bytes, self.max_subjects = icmp_bytes, dns_bytes, max_subjects
    def update(self, flows: FlowRecords, pods: PodEvents | None = None, dns: DnsMessages | None = None) -> list[Score]:
        self.touched = False
        scores: list[Score] = []
        if len(flows):
            learning = self._learning(flows)
            self._mark_active(flows)
            scores += self._volume(flows, learning)
        if dns is not None and len(dns):
            scores += self._dns(dns)
        self._state["subjects"] = bounded(self._state["subjects"], self.max_subjects)
        return scores

    def _subject(self, key: str) -> dict[str, Any]:
        return self._state["subjects"].setdefault(key, {"history": [], "open": {}, "t": 0, "hours": 0,
                                                         "egress_hours": 0, "active": -1, "egress": -1})

    def _mark_active(self, flows: FlowRecords) -> None:
        """Count the hours each workload was seen at all: hours it sent nothing out are zeros of its
        baseline, so a workload that never talks outside has a baseline of nothing."""
        for key, ts in workloads_seen(flows).items():
            s = self._subject(key)
            bucket = ts // self.bucket_ns
            if bucket > s["active"]:
                s["hours"], s["active"] = s["hours"] + 1, bucket
                self.touched = True
            s["t"] = max(s["t"], ts)

    def _close_buckets(self, s: dict[str, Any], bucket: int) -> None:
        """Hours that ended join the baseline, unless they raised an alarm. Only a later hour than any
        seen ends one (a busy workload's rows need not scan its open hours each)."""
        if bucket <= s.get("latest", -1):
            return
        s["latest"] = bucket
        for dest, b in list(s["open"].items()):
            if b["b"] < bucket:
                if not b["alarm"] and b["kind"] == "volume":
                    s["history"] = (s["history"] + [b["bytes"]])[-_HISTORY:]
                del s["open"][dest]

    def _volume(self, flows: FlowRecords, learning: bool) -> list[Score]:
        sending = np.flatnonzero(flows["bytes_out"] > 0)
        if not len(sending):
            return []
        rows = self.zones.outside(flows, sending)
        if not len(rows):
            return []
        self.touched = True
        rows = rows[np.argsort(flows["last_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        icmp = np.isin(flows["proto"][rows], (IPPROTO_ICMP, IPPROTO_ICMPV6)).tolist()
        sent, lasts = flows["bytes_out"][rows].tolist(), flows["last_ts"][rows].tolist()
        scored: dict[tuple[str, str], Score] = {}
        limits: dict[str, float | None] = {}
        for i, row in enumerate(rows.tolist()):
            s = self._subject(keys[i])
            bucket = lasts[i] // self.bucket_ns
            self._close_buckets(s, bucket)
            kind = "icmp" if icmp[i] else "volume"
            target = address_text(flows["dst_addr"][row])
            dest = f"{kind}:{network_of(target) if kind == 'volume' else target}"
            b = s["open"].setdefault(dest, {"b": bucket, "bytes": 0, "alarm": False, "reported": False,
                                            "kind": kind, "t0": lasts[i]})
            b["bytes"] += sent[i]
            s["t"] = max(s["t"], lasts[i])
            if bucket > s["egress"]:
                s["egress_hours"], s["egress"] = s["egress_hours"] + 1, bucket
            if kind == "icmp":
                limit = self.icmp_bytes
            else:
                if keys[i] not in limits:
                    limits[keys[i]] = None if learning else self._limit(s)
                limit = limits[keys[i]]
            if limit is not None:
                _keep(scored, (keys[i], dest), self._score(f"{keys[i]}>{dest}", b, limit, source_endpoint(flows, row),
                                                           lasts[i]))
        return list(scored.values())

    def _limit(self, s: dict[str, Any]) -> float | None:
        """The workload's hourly bar, or None while its baseline is too short."""
        quiet_hours = max(0, s["hours"] - s["egress_hours"])
        if len(s["history"]) + quiet_hours < self.min_history:
            return None
        values = np.array(s["history"] + [0] * min(quiet_hours, _HISTORY), dtype=np.float64)
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        return max(self.floor, median + self.deviations * 1.4826 * mad, self.record_factor * float(values.max()))

    def _dns(self, dns: DnsMessages) -> list[Score]:
        queries = np.flatnonzero(dns["response"] == 0)
        scored: dict[tuple[str, str], Score] = {}
        for i in queries.tolist():
            endpoint = dns_client_endpoint(dns, i)
            key = endpoint["workload"] or endpoint["ip"]
            ts = int(dns["ts"][i])
            s = self._subject(key)
            bucket = ts // self.bucket_ns
            self._close_buckets(s, bucket)
            dest = f"dns:{registered_domain(str(dns['qname'][i]))}"
            b = s["open"].setdefault(dest, {"b": bucket, "bytes": 0, "alarm": False, "reported": False,
                                            "kind": "dns", "t0": ts})
            b["bytes"] += int(dns["size"][i])
            s["t"] = max(s["t"], ts)
            self.touched = True
            _keep(scored, (key, dest), self._score(f"{key}>{dest}", b, self.dns_bytes, endpoint, ts))
        return list(scored.values())

    @staticmethod
    def _score(pair: str, b: dict[str, Any], limit: float, endpoint: dict[str, str], last: int) -> Score:
        ratio = b["bytes"] / limit
        alarm = ratio >= 1.0
        fresh = alarm and not b["reported"]
        b["alarm"] |= alarm
        b["reported"] |= alarm
        kind, target = pair.rsplit(">", 1)[1].split(":", 1)
        evidence = {"kind": kind, "destination": target, "bytes_this_hour": b["bytes"], "threshold_bytes": int(limit)}
        return Score(pair, ratio, alarm, endpoint, b["t0"], last, evidence, fresh=fresh, identity=(kind, target))



def _keep(scored: dict, key: tuple[str, str], score: Score) -> None:
    """The latest score of a pair in this batch, still fresh if an earlier one of the batch was."""
    earlier = scored.get(key)
    if earlier is not None and earlier.fresh:
        score.fresh = True
    scored[key] = score
