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

Catches: a compromised pod reaching a C2 on an odd port (4444, 7080, 8443 where it only used 443),
a reverse shell out, a database pod suddenly talking to the internet. Misses: C2 over the ports a
workload already uses, to a network it already reaches or, for busy workloads, any new network.
False positives: new integrations released after learning (a new API, a new port); allowlist by
workload and port.

Score: 1.0 for each new port or network of a judged workload.

Example:
    >>> d = UnusualDestinationDetector(learning_period_ns=24 * 3600 * 10**9)
    >>> d.decide(d.update(flows))  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

import numpy as np
from kubesonar.shared.detectors import (
    Score,
    StateDocument,
    bounded,
    source_endpoint,
    subject_keys,
    workloads_seen,
)
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import FlowRecords, address_text
from kubesonar.shared.netzones import Zones
from kubesonar.shared.pod_events import PodEvents

SECOND = 1_000_000_000
_PORTS_KEPT, _NETWORKS_KEPT = 256, 64


@lru_cache(maxsize=65_536)
def network_of(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) an address is in: the unit a service's rotating addresses share."""
    if "." in address and ":" not in address:
        return f"{address.rsplit('.', 1)[0]}.0/24"
    return str(ipaddress.ip_network(f"{address}/48", strict=False))


class UnusualDestinationDetector(StateDocument):
    rule_id = "unusual_destination"
    EMPTY = {"subjects": {}}

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 baseline_ns: int | None = None, steady_networks: int = 16, rate_limit_s: float = 3600.0,
                 max_subjects: int = 5_000):
        super().__init__(learning_period_ns, force_learning)
        self.baseline_ns = learning_period_ns if baseline_ns is None else baseline_ns
        self.zones = zones or Zones()
        self.steady_networks, self.rate_limit_ns = steady_networks, int(rate_limit_s * SECOND)
        self.max_subjects = max_subjects
    def update(self, flows: FlowRecords, pods: PodEvents | None = None, dns: DnsMessages | None = None) -> list[Score]:
        self.touched = False
        if not len(flows):
            return []
        cluster_learning = self._learning(flows)
        subjects = self._state["subjects"]
        for key, ts in workloads_seen(flows).items():  # a workload's history starts when it is first seen
            if key not in subjects:
                subjects[key] = self._new_subject(ts)
                self.touched = True
            subjects[key]["since"] = min(subjects[key]["since"], ts)
            subjects[key]["t"] = max(subjects[key]["t"], ts)
        answered = np.flatnonzero(flows["packets_in"] > 0)  # reached, not merely tried (scans are port_scan's)
        rows = self.zones.outside(flows, answered)
        if not len(rows):
            self._state["subjects"] = bounded(subjects, self.max_subjects)
            return []
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        ports = [f"{p}/{q}" for p, q in zip(flows["dst_port"][rows].tolist(), flows["proto"][rows].tolist())]
        targets = [address_text(a) for a in flows["dst_addr"][rows]]
        times = flows["first_ts"][rows].tolist()
        scores = []
        for i, row in enumerate(rows.tolist()):
            s = subjects.get(keys[i])
            if s is None:
                s = subjects[keys[i]] = self._new_subject(times[i])
                self.touched = True
            s["t"] = max(s["t"], times[i])
            network = network_of(targets[i])
            new_port, new_net = ports[i] not in s["ports"], network not in s["networks"]
            if not (new_port or new_net):
                continue
            learning = cluster_learning or times[i] - s["since"] < self.baseline_ns
            flagged = f"{ports[i]}|{network}"
            if learning:
                s["ports"][ports[i]] = times[i]
                s["networks"][network] = times[i]
                self.touched = True
                continue
            if flagged in s["flagged"]:
                continue
            kind = "port" if new_port else "network"
            if kind == "network" and len(s["networks"]) > self.steady_networks:
                s["networks"][network] = times[i]  # a busy workload: new networks are its normal
                self.touched = True
                continue
            s["flagged"] = (s["flagged"] + [flagged])[-_PORTS_KEPT:]
            self.touched = True
            last = s["last_report"].get(kind, 0)
            fresh = times[i] - last >= self.rate_limit_ns
            if fresh:
                s["last_report"][kind] = times[i]
            evidence = {"kind": kind, "destination": targets[i], "port": int(flows["dst_port"][row]),
                        "protocol": int(flows["proto"][row]), "network": network,
                        "known_ports": sorted(s["ports"])[:20], "known_networks": len(s["networks"])}
            scores.append(Score(f"{keys[i]}>{flagged}", 1.0, True, source_endpoint(flows, row), times[i],
                                int(flows["last_ts"][row]), evidence, fresh=fresh, identity=(kind,),
                                destination={"ip": targets[i], "port": int(flows["dst_port"][row])}))
        for s in subjects.values():
            for field, most in (("ports", _PORTS_KEPT), ("networks", _NETWORKS_KEPT)):
                if len(s[field]) > most:  # the most recently used ones
                    s[field] = dict(sorted(s[field].items(), key=lambda kv: kv[1])[-most:])
        self._state["subjects"] = bounded(subjects, self.max_subjects)
        return scores

    @staticmethod
    def _new_subject(ts: int) -> dict[str, Any]:
        return {"since": ts, "t": ts, "ports": {}, "networks": {}, "flagged": [], "last_report": {}}

