"""Unusual destination: a workload, past its learning, reaching outside the cluster on a port it never
used, or, for a workload with a steady set of destinations, a network it never reached.

Per workload the baseline holds the remote ports (with protocol) and the destination networks (/24
for IPv4, /48 for IPv6: cloud services move within their ranges) it used outside the cluster, and
when it was first seen at all (a workload that never left the cluster has an empty baseline: its
first port out is unusual). A
workload is judged once the cluster's learning period is over *and* its own history spans a baseline
period (a day by default: a workload deployed this morning is still learning today).
- a remote port (or protocol) never used before: reported (GuardDuty's NetworkPortUnusual);
- a destination network never reached before: reported only for workloads whose baseline holds at
  most 16 networks; a workload that talks to the whole internet (crawlers, webhooks, SDKs of SaaS
  behind CDNs) makes new destinations all day, and those say nothing.
What was reported is never learned: the attacker's port stays unusual. Reports are rate-limited to one
finding an hour per workload and kind; the alert counts the rest and its evidence lists the latest.

*Cold judgment* (shared/detectors/protocol_mismatch.py, decided from the first window whatever the
learning period): a connection to an outside host on a web port that opened otherwise than the port's
service does (cleartext HTTP on 443 or 8443, TLS or a protocol of its own on 80), reported once per
workload and destination.

Catches: a compromised pod reaching a C2 on an odd port (4444, 7080, 8443 where it only used 443),
a reverse shell out, a database pod suddenly talking to the internet; from the first window, C2 that
borrows a web port for another protocol. Misses: C2 over the ports a
workload already uses, to a network it already reaches or, for busy workloads, any new network.
False positives: new integrations released after learning (a new API, a new port); allowlist by
workload and port.

Score: 1.0 for each new port or network of a judged workload.

Example:
    >>> d = UnusualDestinationDetector(learning_period_ns=24 * 3600 * 10**9)
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score, bounded, clock_from_v0
from kubesonar.shared.detectors.protocol_mismatch import mismatch_scores
from kubesonar.shared.flow import address_text
from kubesonar.shared.identity import source_endpoint, subject_keys, workloads_seen
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_PORTS_KEPT, _NETWORKS_KEPT = 256, 64


@lru_cache(maxsize=65_536)
def network_of(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an address is in: the unit a service's rotating addresses share."""
    if "." in address and ":" not in address:
        return f"{address.rsplit('.', 1)[0]}.0/24"
    return str(ipaddress.ip_network(f"{address}/48", strict=False))


class Reach(NamedTuple):
    """A workload reaching a remote port ("443/6": port and protocol) in a network."""

    source: str
    port: str
    network: str


@dataclass
class DestinationBaseline:
    """A workload's baseline: the remote ports and networks it used, each with when it last did."""

    since_ns: int  # first seen at all: the workload's own history starts here
    last_ns: int
    ports: dict[str, int] = field(default_factory=dict)
    networks: dict[str, int] = field(default_factory=dict)
    flagged: list[tuple[str, str]] = field(default_factory=list)  # (port, network) reported, never learned
    last_report: dict[str, int] = field(default_factory=dict)  # per kind ("port", "network")

    def copy(self) -> DestinationBaseline:
        return DestinationBaseline(self.since_ns, self.last_ns, dict(self.ports), dict(self.networks),
                                   list(self.flagged), dict(self.last_report))


@dataclass
class UnusualDestinationState:
    subjects: dict[str, DestinationBaseline] = field(default_factory=dict)  # by workload key or address
    mismatches: dict[Pair, None] = field(default_factory=dict)  # (subject, address:port) reported, oldest first


@dataclass
class _Assessment:
    scores: list[Score] = field(default_factory=list)
    subjects: dict[str, DestinationBaseline] = field(default_factory=dict)  # as this batch leaves them
    first_ts: int | None = None
    changed: bool = False


class UnusualDestinationDetector(Detector[UnusualDestinationState, _Assessment]):
    rule_id = "unusual_destination"
    needs_baseline = True  # judged against the cluster's and the workload's own past

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 baseline_ns: int | None = None, steady_networks: int = 16, rate_limit_s: float = 3600.0,
                 max_subjects: int = 5_000):
        super().__init__(learning_period_ns, force_learning)
        self.baseline_ns = learning_period_ns if baseline_ns is None else baseline_ns
        self.zones = zones or Zones()
        self.steady_networks, self.rate_limit_ns = steady_networks, int(rate_limit_s * SECOND)
        self.max_subjects = max_subjects

    def new_state(self) -> UnusualDestinationState:
        return UnusualDestinationState()

    def _encode(self, state: UnusualDestinationState) -> dict[str, Any]:
        return {"subjects": {key: {"since_ns": b.since_ns, "last_ns": b.last_ns, "ports": b.ports,
                                   "networks": b.networks, "flagged": [list(f) for f in b.flagged],
                                   "last_report": b.last_report} for key, b in state.subjects.items()},
                "mismatches": [list(p) for p in state.mismatches]}

    def _decode(self, document: dict[str, Any]) -> UnusualDestinationState:
        return UnusualDestinationState({
            key: DestinationBaseline(b["since_ns"], b["last_ns"], b["ports"], b["networks"],
                                     [(port, net) for port, net in b["flagged"]], b["last_report"])
            for key, b in document["subjects"].items()},
            # a document written before the cold judgment existed has reported none
            dict.fromkeys(Pair(*p) for p in document.get("mismatches", [])))

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        def flagged(text: str) -> list[str]:
            port, sep, network = text.partition("|")
            if not sep:
                raise ValueError(f"flagged entry {text!r} is not port|network")
            return [port, network]

        return {"clock": clock_from_v0(document), "subjects": {
            key: {"since_ns": s["since"], "last_ns": s["t"], "ports": s["ports"], "networks": s["networks"],
                  "flagged": [flagged(f) for f in s["flagged"]], "last_report": s["last_report"]}
            for key, s in document["subjects"].items()}}

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        out = _Assessment()
        if not len(flows):
            return out
        out.first_ts = int(flows["first_ts"].min())
        out.scores += mismatch_scores(flows, self.zones, self.state.mismatches)
        cluster_learning = self._learning(out.first_ts)
        subjects = out.subjects
        for key, ts in workloads_seen(flows).items():  # a workload's history starts when it is first seen
            s = self._staged(subjects, key, ts)
            s.since_ns = min(s.since_ns, ts)
            s.last_ns = max(s.last_ns, ts)
        answered = np.flatnonzero(flows["packets_in"] > 0)  # reached, not merely tried (scans are port_scan's)
        rows = self.zones.outside(flows, answered)
        if not len(rows):
            return out
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        ports = [f"{p}/{q}"
                 for p, q in zip(flows["dst_port"][rows].tolist(), flows["proto"][rows].tolist(), strict=True)]
        targets = [address_text(a) for a in flows["dst_addr"][rows]]
        times = flows["first_ts"][rows].tolist()
        again: set[Reach] = set()
        for i, row in enumerate(rows.tolist()):
            s = self._staged(subjects, keys[i], times[i])
            s.last_ns = max(s.last_ns, times[i])
            network = network_of(targets[i])
            new_port, new_net = ports[i] not in s.ports, network not in s.networks
            if not (new_port or new_net):
                continue
            learning = cluster_learning or times[i] - s.since_ns < self.baseline_ns
            flagged = (ports[i], network)
            if learning:
                s.ports[ports[i]] = times[i]
                s.networks[network] = times[i]
                out.changed = True
                continue
            kind = "port" if new_port else "network"
            if flagged in s.flagged:
                if Reach(keys[i], *flagged) not in again:  # scored again, reported once
                    again.add(Reach(keys[i], *flagged))
                    out.scores.append(Score(Reach(keys[i], *flagged), 1.0, True, source_endpoint(flows, row),
                                            times[i], int(flows["last_ts"][row]), {"kind": kind, "network": network},
                                            fresh=False, identity=(kind,),
                                            destination={"ip": targets[i], "port": int(flows["dst_port"][row])}))
                continue
            if kind == "network" and len(s.networks) > self.steady_networks:
                s.networks[network] = times[i]  # a busy workload: new networks are its normal
                out.changed = True
                continue
            s.flagged = (s.flagged + [flagged])[-_PORTS_KEPT:]  # kept apart from the baseline
            out.changed = True
            last = s.last_report.get(kind, 0)
            fresh = times[i] - last >= self.rate_limit_ns
            if fresh:
                s.last_report[kind] = times[i]
            evidence = {"kind": kind, "destination": targets[i], "port": int(flows["dst_port"][row]),
                        "protocol": int(flows["proto"][row]), "network": network,
                        "known_ports": sorted(s.ports)[:20], "known_networks": len(s.networks)}
            out.scores.append(Score(Reach(keys[i], *flagged), 1.0, True, source_endpoint(flows, row), times[i],
                                    int(flows["last_ts"][row]), evidence, fresh=fresh, identity=(kind,),
                                    destination={"ip": targets[i], "port": int(flows["dst_port"][row])}))
        return out

    def _staged(self, subjects: dict[str, DestinationBaseline], key: str, ts: int) -> DestinationBaseline:
        """The subject's baseline as this batch changes it: a copy, the learned state left as it is."""
        s = subjects.get(key)
        if s is None:
            known = self.state.subjects.get(key)
            s = subjects[key] = known.copy() if known is not None else DestinationBaseline(ts, ts)
        return s

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """The batch's ports and networks join the baseline; a flagged reach is kept in the subject's
        ``flagged`` list instead, so the attacker's port stays unusual."""
        if assessment.first_ts is None:
            return
        self._start_clock(assessment.first_ts)
        reported = [s.subject for s in assessment.scores if s.fresh and isinstance(s.subject, Pair)]
        if reported:
            self.touched = True
            self.state.mismatches.update(dict.fromkeys(reported))
            if len(self.state.mismatches) > self.max_subjects:
                self.state.mismatches = dict.fromkeys(list(self.state.mismatches)[-self.max_subjects:])
        subjects = self.state.subjects
        new = [key for key in assessment.subjects if key not in subjects]
        self.touched |= assessment.changed or bool(new)
        subjects.update(assessment.subjects)
        for s in assessment.subjects.values():
            for name, most in (("ports", _PORTS_KEPT), ("networks", _NETWORKS_KEPT)):
                kept = getattr(s, name)
                if len(kept) > most:  # the most recently used ones
                    setattr(s, name, dict(sorted(kept.items(), key=lambda kv: kv[1])[-most:]))
        self.state.subjects = bounded(subjects, self.max_subjects)
