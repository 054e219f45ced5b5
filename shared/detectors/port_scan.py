"""Port scans, vertical, horizontal and mixed, by Threshold Random Walk (Jung et al., IEEE S&P 2004).

Catches: every probe style whose probes mostly fail: SYN, connect, FIN/NULL/Xmas, ACK and window scans
(RST or silence), UDP and IP-protocol scans (ICMP unreachable or silence), masscan. Each source's
*first contacts* (a destination address, protocol and port it had not tried before) are Bernoulli
trials: a benign host's first contacts succeed with probability theta0 = 0.8, a scanner's with
theta1 = 0.2. Every failure multiplies the likelihood ratio by (1 - theta1) / (1 - theta0) = 4, every
success by theta1 / theta0 = 1/4. The source is called a scanner when the ratio reaches
eta1 = PD / PF = 99 (four failures in a row: 4**4 = 256), and the walk restarts when it falls to
eta0 = (1 - PD) / (1 - PF), so a long benign history cannot hide a later scan.

Misses: scans slower than the state's memory of contacts (2,048 per source), scans of open ports only
(they succeed), and scans spread over many sources (each is tested alone).

False positives: a client retrying many endpoints that are all down; service discovery that probes
dead backends. Busy healthy clients are safe: repeated contacts are not trials, and their successes
pull the walk down.

Example:
    >>> detector = PortScanDetector()
    >>> detector.update(flows)  # doctest: +SKIP
    >>> detector.decide(detector.update(more_flows))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kubesonar.shared.alerts import Finding
from kubesonar.shared.flow import ConnState, FlowRecords, address_words

_FAILED = (int(ConnState.ATTEMPTED), int(ConnState.REJECTED))


@dataclass
class SourceScore:
    source: str
    endpoint: dict[str, str]
    log_ratio: float
    scanner: bool
    new_failures: int
    first_seen_ns: int
    last_seen_ns: int
    evidence: dict[str, Any]


def _ip_text(words: np.ndarray) -> str:
    import ipaddress

    raw = b"".join(int(w).to_bytes(4, "big") for w in words)
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped or addr)


class PortScanDetector:
    rule_id = "port_scan"

    def __init__(self, theta0: float = 0.8, theta1: float = 0.2, detection: float = 0.99,
                 false_alarm: float = 0.01, max_contacts: int = 2048, max_sources: int = 20_000):
        self.theta0, self.theta1 = theta0, theta1
        self.detection, self.false_alarm = detection, false_alarm
        self.max_contacts, self.max_sources = max_contacts, max_sources
        self._sources: dict[str, dict[str, Any]] = {}

    # -- state -------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {"sources": self._sources}

    def from_state(self, state: dict[str, Any] | None) -> PortScanDetector:
        self._sources = dict((state or {}).get("sources", {}))
        return self

    # -- learning and scoring ------------------------------------------------------------------------

    @property
    def _upper(self) -> float:
        return math.log(self.detection / self.false_alarm)

    @property
    def _lower(self) -> float:
        return math.log((1 - self.detection) / (1 - self.false_alarm))

    def update(self, flows: FlowRecords) -> list[SourceScore]:
        """Walk every source's first contacts in time order; return the sources that made some."""
        flows = flows.take(np.flatnonzero(_trials(flows)))
        if not len(flows):
            return []
        order = np.argsort(flows["first_ts"], kind="stable")
        src_words = address_words(flows["src_addr"][order])
        dst_words = address_words(flows["dst_addr"][order])
        proto = flows["proto"][order].tolist()
        port = flows["dst_port"][order].tolist()
        failed = np.isin(flows["state"][order], _FAILED).tolist()
        first_ts = flows["first_ts"][order].tolist()
        namespace = flows["src_namespace"][order].tolist()
        kind = flows["src_workload_kind"][order].tolist()
        workload = flows["src_workload_name"][order].tolist()
        pod = flows["src_pod"][order].tolist()
        node = flows["src_node"][order].tolist()
        labels = flows["src_labels"][order].tolist()
        src_text = _Texts(src_words)
        dst_text = _Texts(dst_words)
        fail_step = math.log((1 - self.theta1) / (1 - self.theta0))
        ok_step = math.log(self.theta1 / self.theta0)
        touched: dict[str, SourceScore] = {}
        for i in range(len(proto)):
            ip = src_text[i]
            wl = f"{namespace[i]}/{kind[i]}/{workload[i]}" if workload[i] else ""
            key = wl or ip
            s = self._sources.get(key)
            if s is None:
                s = self._sources[key] = {"llr": 0.0, "contacts": [], "failures": 0, "successes": 0,
                                          "targets": [], "ports": [], "scanner": False, "first_ts": first_ts[i]}
            contact = f"{dst_text[i]}|{proto[i]}|{port[i]}"
            contacts = s.setdefault("_set", set(s["contacts"]))
            if contact in contacts:
                continue
            contacts.add(contact)
            s["contacts"].append(contact)
            if len(s["contacts"]) > self.max_contacts:
                contacts.discard(s["contacts"].pop(0))
            score = touched.get(key)
            if score is None:
                score = touched[key] = SourceScore(
                    key, {"ip": ip, "namespace": namespace[i], "pod": pod[i], "workload": wl, "node": node[i],
                     "labels": labels[i]},
                    s["llr"], s["scanner"], 0, first_ts[i], first_ts[i], {},
                )
            score.last_seen_ns = first_ts[i]
            if failed[i]:
                s["failures"] += 1
                by_proto = s.setdefault("failures_by_proto", {})
                by_proto[str(proto[i])] = by_proto.get(str(proto[i]), 0) + 1
                score.new_failures += 1
                s["llr"] += fail_step
                _remember(s["targets"], dst_text[i], 64)
                _remember(s["ports"], f"{proto[i]}/{port[i]}", 256)
            else:
                s["successes"] += 1
                s["llr"] += ok_step
            if s["llr"] >= self._upper:
                s["scanner"] = True
            elif s["llr"] <= self._lower:
                s["llr"] = 0.0  # decided benign: start a new test
            s["last_ts"] = first_ts[i]
        for key, score in touched.items():
            s = self._sources[key]
            score.log_ratio, score.scanner = s["llr"], s["scanner"]
            score.evidence = _evidence(s)
        self._forget_oldest()
        for s in self._sources.values():
            s.pop("_set", None)
        return list(touched.values())

    def decide(self, scores: list[SourceScore]) -> list[Finding]:
        """A finding for each source judged a scanner that failed new contacts in this batch."""
        return [
            Finding(type=self.rule_id, source=s.endpoint, first_seen_ns=s.first_seen_ns,
                    last_seen_ns=s.last_seen_ns, evidence=s.evidence)
            for s in scores
            if s.scanner and s.new_failures
        ]

    def _forget_oldest(self) -> None:
        if len(self._sources) > self.max_sources:
            keep = sorted(self._sources, key=lambda k: self._sources[k].get("last_ts", 0))[-self.max_sources :]
            self._sources = {k: self._sources[k] for k in keep}


def _trials(flows: FlowRecords) -> np.ndarray:
    """Flows that are contacts at all: unicast, from a real address, and not ICMP housekeeping
    (neighbour discovery, MLD, router solicitations expect no answer; only echo requests are probes)."""
    src, dst = address_words(flows["src_addr"]), address_words(flows["dst_addr"])
    v4 = (dst[:, 0] == 0) & (dst[:, 1] == 0) & (dst[:, 2] == 0xFFFF)
    first_octet = dst[:, 3] >> 24
    multicast = np.where(v4, (first_octet >= 224), (dst[:, 0] >> 24) == 0xFF)
    unspecified = ~src.any(axis=1) | ((src[:, 2] == 0xFFFF) & (src[:, 3] == 0) & (src[:, 0] == 0))
    icmp = np.isin(flows["proto"], (1, 58))
    echo = np.isin(flows["icmp_type"], (8, 128))
    return ~multicast & ~unspecified & (~icmp | echo)


class _Texts:
    """Address text per row, formatting each distinct address once."""

    def __init__(self, words: np.ndarray):
        uniq, self._inverse = np.unique(words, axis=0, return_inverse=True)
        self._text = [_ip_text(w) for w in uniq]
        self._inverse = self._inverse.ravel()

    def __getitem__(self, i: int) -> str:
        return self._text[self._inverse[i]]


def _remember(items: list, value: str, limit: int) -> None:
    if value not in items and len(items) < limit:
        items.append(value)


def _evidence(s: dict[str, Any]) -> dict[str, Any]:
    hosts = {t for t in s["targets"]}
    ports = {p for p in s["ports"]}
    kind = "vertical" if len(hosts) == 1 else "horizontal" if len(ports) == 1 else "mixed"
    return {
        "scan_kind": kind,
        "failed_first_contacts": s["failures"],
        "failed_by_protocol": dict(s.get("failures_by_proto", {})),
        "successful_first_contacts": s["successes"],
        "targets": sorted(hosts)[:20],
        "target_count": len(hosts),
        "ports": sorted(ports, key=lambda p: (p.split("/")[0], int(p.split("/")[1])))[:50],
        "port_count": len(ports),  # distinct ports among the first 256 failures
        "log_likelihood_ratio": round(s["llr"], 3),
    }
