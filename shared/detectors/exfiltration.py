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

*Cold judgments* (shared/detectors/exfil_channels.py, decided from the first window whatever the
learning period): one TCP connection to an outside address carrying at least 1 MiB up and ten times
more up than down, not TLS to a named host nor on port 443; an established SMTP (25, 465, 587) or FTP
(21) session to an outside host from a workload that does not serve that protocol itself.

Catches: bulk uploads from a compromised workload to a new or usual destination; ICMP and DNS
channels with volume. Misses: theft spread thin over many destinations or hours (each under the
bar); uploads to a destination inside the cluster's networks; data hidden in traffic the workload
normally sends in bulk (a backup job's destination).
False positives: a first backup, export or migration run after learning; allowlist the workload.

Score: the hour's bytes to the destination divided by the workload's threshold (1 decides).

Example:
    >>> d = ExfiltrationDetector(learning_period_ns=0)
    >>> d.observe(batch_of(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kubesonar.shared.detectors.base import Detector, Score, StateMigrationError, bounded, clock_from_v0
from kubesonar.shared.detectors.exfil_channels import ChannelState, protocol_scores, service_servers, upload_scores
from kubesonar.shared.detectors.unusual_destination import network_of
from kubesonar.shared.dns import DnsMessages, registered_domain
from kubesonar.shared.flow import IPPROTO_ICMP, IPPROTO_ICMPV6, FlowRecords, address_text
from kubesonar.shared.identity import dns_client_endpoint, source_endpoint, subject_keys, workloads_seen
from kubesonar.shared.netzones import Zones
from kubesonar.shared.roles import merge_servers

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
MiB = 1 << 20
_HISTORY = 256


class Outlet(NamedTuple):
    """Where a subject sends: ``kind`` volume (``target`` a network), icmp (an address) or dns (a domain)."""

    kind: str
    target: str

    @classmethod
    def from_v0(cls, joined: str) -> Outlet:
        kind, sep, target = joined.partition(":")
        if not sep:
            raise StateMigrationError(f"destination {joined!r} is not kind:target")
        return cls(kind, target)


class Egress(NamedTuple):
    """What a score is about: a subject sending to an outlet."""

    source: str
    kind: str
    target: str


@dataclass
class OpenHour:
    """The bytes a subject sent one outlet in an hour not yet over."""

    hour: int
    first_ns: int
    bytes: int = 0
    alarm: bool = False  # this hour raised an alarm: it never joins the baseline
    reported: bool = False


@dataclass
class EgressBaseline:
    """A subject's hourly bytes out per outlet, its active hours, and the hours still open."""

    hourly_bytes: list[int] = field(default_factory=list)  # the last 256 closed hours' sums (never mutated)
    open_hours: dict[Outlet, OpenHour] = field(default_factory=dict)
    last_ns: int = 0
    active_hours: int = 0  # hours the subject was seen at all
    egress_hours: int = 0  # hours it sent something out
    last_active_hour: int = -1
    last_egress_hour: int = -1
    latest_hour: int = -1  # the latest hour any of its outlets was open in

    def copy(self) -> EgressBaseline:
        hours = {o: OpenHour(h.hour, h.first_ns, h.bytes, h.alarm, h.reported) for o, h in self.open_hours.items()}
        return EgressBaseline(self.hourly_bytes, hours, self.last_ns, self.active_hours, self.egress_hours,
                              self.last_active_hour, self.last_egress_hour, self.latest_hour)


@dataclass
class ExfiltrationState:
    subjects: dict[str, EgressBaseline] = field(default_factory=dict)  # by workload key or address
    channels: ChannelState = field(default_factory=ChannelState)  # the baseline-free judgments' tallies


@dataclass
class _Assessment:
    first_ts: int | None = None
    scores: list[Score] = field(default_factory=list)
    subjects: dict[str, EgressBaseline] = field(default_factory=dict)  # as this batch leaves them
    channels: ChannelState | None = None  # as this batch leaves them; None: untouched
    changed: bool = False


class ExfiltrationDetector(Detector[ExfiltrationState, _Assessment]):
    rule_id = "exfiltration"
    needs_baseline = True  # judged against the cluster's and the workload's own past

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 bucket_s: float = 3600.0, min_history: int = 24, floor_bytes: int = 64 * MiB,
                 deviations: float = 10.0, record_factor: float = 3.0, icmp_bytes: int = MiB, dns_bytes: int = MiB,
                 max_subjects: int = 5_000):
        super().__init__(learning_period_ns, force_learning)
        self.record_factor = record_factor
        self.zones = zones or Zones()
        self.bucket_ns, self.min_history = int(bucket_s * SECOND), min_history
        self.floor, self.deviations = floor_bytes, deviations
        self.icmp_bytes, self.dns_bytes, self.max_subjects = icmp_bytes, dns_bytes, max_subjects

    def new_state(self) -> ExfiltrationState:
        return ExfiltrationState()

    def _encode(self, state: ExfiltrationState) -> dict[str, Any]:
        return {"subjects": {key: {
            "hourly_bytes": s.hourly_bytes, "last_ns": s.last_ns, "active_hours": s.active_hours,
            "egress_hours": s.egress_hours, "last_active_hour": s.last_active_hour,
            "last_egress_hour": s.last_egress_hour, "latest_hour": s.latest_hour,
            "open_hours": [[*o, h.hour, h.first_ns, h.bytes, h.alarm, h.reported] for o, h in s.open_hours.items()],
        } for key, s in state.subjects.items()}, "channels": state.channels.encode()}

    def _decode(self, document: dict[str, Any]) -> ExfiltrationState:
        return ExfiltrationState({key: EgressBaseline(
            s["hourly_bytes"],
            {Outlet(kind, target): OpenHour(hour, first, size, alarm, reported)
             for kind, target, hour, first, size, alarm, reported in s["open_hours"]},
            s["last_ns"], s["active_hours"], s["egress_hours"], s["last_active_hour"], s["last_egress_hour"],
            s["latest_hour"]) for key, s in document["subjects"].items()},
            ChannelState.decode(document.get("channels")))

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        def subject(s: dict[str, Any]) -> dict[str, Any]:
            open_hours = []
            for dest, b in s["open"].items():
                outlet = Outlet.from_v0(dest)
                if outlet.kind != b["kind"]:
                    raise StateMigrationError(f"open hour {dest!r} is of kind {b['kind']!r}")
                open_hours.append([*outlet, b["b"], b["t0"], b["bytes"], b["alarm"], b["reported"]])
            return {"hourly_bytes": s["history"], "last_ns": s["t"], "active_hours": s["hours"],
                    "egress_hours": s["egress_hours"], "last_active_hour": s["active"],
                    "last_egress_hour": s["egress"], "latest_hour": s.get("latest", -1), "open_hours": open_hours}

        return {"clock": clock_from_v0(document),
                "subjects": {key: subject(s) for key, s in document["subjects"].items()}}

    def _assess(self, batch: Batch) -> _Assessment:
        out = _Assessment()
        if len(batch.flows):
            out.first_ts = int(batch.flows["first_ts"].min())
            learning = self._learning(out.first_ts)
            self._mark_active(batch.flows, out)
            out.scores += self._volume(batch.flows, learning, out)
            out.scores += self._channels(batch.flows, out)
        if len(batch.dns):
            out.scores += self._dns(batch.dns, out)
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """The subjects take the batch's hours; an hour that raised an alarm is kept out of the baseline
        (hours the batch already closed were judged as they closed)."""
        if assessment.first_ts is not None:
            self._start_clock(assessment.first_ts)
        for egress in flagged:  # protect the model: a flagged hour never joins the history
            s = assessment.subjects.get(egress.source) if isinstance(egress, Egress) else None
            hour = s.open_hours.get(Outlet(egress.kind, egress.target)) if s is not None else None
            if hour is not None:
                hour.alarm = True
        self.state.subjects.update(assessment.subjects)
        if assessment.channels is not None:
            channels = assessment.channels
            channels.uploads = bounded(channels.uploads, self.max_subjects)
            channels.servers = {service: merge_servers({}, subjects, self.max_subjects)
                                for service, subjects in channels.servers.items()}
            self.state.channels = channels
        self.state.subjects = bounded(self.state.subjects, self.max_subjects)
        self.touched |= assessment.changed

    def _subject(self, out: _Assessment, key: str) -> EgressBaseline:
        s = out.subjects.get(key)
        if s is None:
            known = self.state.subjects.get(key)
            s = out.subjects[key] = known.copy() if known is not None else EgressBaseline()
            out.changed |= known is None
        return s

    def _channels(self, flows: FlowRecords, out: _Assessment) -> list[Score]:
        """The baseline-free judgments (exfil_channels): uploads in one connection, mail and FTP out."""
        known = self.state.channels
        channels = ChannelState(dict(known.uploads), service_servers(flows, known.servers))
        scores = upload_scores(flows, self.zones, channels.uploads) + protocol_scores(flows, self.zones,
                                                                                     channels.servers)
        if scores or channels.uploads != known.uploads or channels.servers != known.servers:
            out.channels, out.changed = channels, True
        return scores

    def _mark_active(self, flows: FlowRecords, out: _Assessment) -> None:
        """Count the hours each workload was seen at all: hours it sent nothing out are zeros of its
        baseline, so a workload that never talks outside has a baseline of nothing."""
        for key, ts in workloads_seen(flows).items():
            s = self._subject(out, key)
            bucket = ts // self.bucket_ns
            if bucket > s.last_active_hour:
                s.active_hours, s.last_active_hour = s.active_hours + 1, bucket
                out.changed = True
            s.last_ns = max(s.last_ns, ts)

    def _close_hours(self, s: EgressBaseline, bucket: int) -> None:
        """Hours that ended join the baseline, unless they raised an alarm. Only a later hour than any
        seen ends one (a busy workload's rows need not scan its open hours each)."""
        if bucket <= s.latest_hour:
            return
        s.latest_hour = bucket
        for outlet, h in list(s.open_hours.items()):
            if h.hour < bucket:
                if not h.alarm and outlet.kind == "volume":
                    s.hourly_bytes = (s.hourly_bytes + [h.bytes])[-_HISTORY:]
                del s.open_hours[outlet]

    def _volume(self, flows: FlowRecords, learning: bool, out: _Assessment) -> list[Score]:
        sending = np.flatnonzero(flows["bytes_out"] > 0)
        if not len(sending):
            return []
        rows = self.zones.outside(flows, sending)
        if not len(rows):
            return []
        out.changed = True
        rows = rows[np.argsort(flows["last_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        icmp = np.isin(flows["proto"][rows], (IPPROTO_ICMP, IPPROTO_ICMPV6)).tolist()
        sent, lasts = flows["bytes_out"][rows].tolist(), flows["last_ts"][rows].tolist()
        scored: dict[Egress, Score] = {}
        limits: dict[str, float | None] = {}
        for i, row in enumerate(rows.tolist()):
            s = self._subject(out, keys[i])
            bucket = lasts[i] // self.bucket_ns
            self._close_hours(s, bucket)
            kind = "icmp" if icmp[i] else "volume"
            target = address_text(flows["dst_addr"][row])
            outlet = Outlet(kind, network_of(target) if kind == "volume" else target)
            h = s.open_hours.get(outlet)
            if h is None:
                h = s.open_hours[outlet] = OpenHour(bucket, lasts[i])
            h.bytes += sent[i]
            s.last_ns = max(s.last_ns, lasts[i])
            if bucket > s.last_egress_hour:
                s.egress_hours, s.last_egress_hour = s.egress_hours + 1, bucket
            if kind == "icmp":
                limit: float | None = self.icmp_bytes
            else:
                if keys[i] not in limits:
                    limits[keys[i]] = None if learning else self._limit(s)
                limit = limits[keys[i]]
            if limit is not None:
                _keep(scored, self._score(Egress(keys[i], *outlet), h, limit, source_endpoint(flows, row), lasts[i]))
        return list(scored.values())

    def _limit(self, s: EgressBaseline) -> float | None:
        """The workload's hourly bar, or None while its baseline is too short."""
        quiet_hours = max(0, s.active_hours - s.egress_hours)
        if len(s.hourly_bytes) + quiet_hours < self.min_history:
            return None
        values = np.array(s.hourly_bytes + [0] * min(quiet_hours, _HISTORY), dtype=np.float64)
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        return max(self.floor, median + self.deviations * 1.4826 * mad, self.record_factor * float(values.max()))

    def _dns(self, dns: DnsMessages, out: _Assessment) -> list[Score]:
        queries = np.flatnonzero(dns["response"] == 0)
        scored: dict[Egress, Score] = {}
        for i in queries.tolist():
            endpoint = dns_client_endpoint(dns, i)
            key = endpoint["workload"] or endpoint["ip"]
            ts = int(dns["ts"][i])
            s = self._subject(out, key)
            bucket = ts // self.bucket_ns
            self._close_hours(s, bucket)
            outlet = Outlet("dns", registered_domain(str(dns["qname"][i])))
            h = s.open_hours.get(outlet)
            if h is None:
                h = s.open_hours[outlet] = OpenHour(bucket, ts)
            h.bytes += int(dns["size"][i])
            s.last_ns = max(s.last_ns, ts)
            out.changed = True
            _keep(scored, self._score(Egress(key, *outlet), h, self.dns_bytes, endpoint, ts))
        return list(scored.values())

    @staticmethod
    def _score(egress: Egress, h: OpenHour, limit: float, endpoint: dict[str, str], last: int) -> Score:
        ratio = h.bytes / limit
        alarm = ratio >= 1.0
        fresh = alarm and not h.reported
        h.alarm |= alarm
        h.reported |= alarm
        evidence = {"kind": egress.kind, "destination": egress.target, "bytes_this_hour": h.bytes,
                    "threshold_bytes": int(limit)}
        return Score(egress, ratio, alarm, endpoint, h.first_ns, last, evidence, fresh=fresh,
                     identity=(egress.kind, egress.target),
                     needs_baseline=egress.kind == "volume")  # ICMP and DNS bars are fixed: judged cold


def _keep(scored: dict[Egress, Score], score: Score) -> None:
    """The latest score of a pair in this batch, still fresh if an earlier one of the batch was."""
    earlier = scored.get(score.subject)
    if earlier is not None and earlier.fresh:
        score.fresh = True
    scored[score.subject] = score
