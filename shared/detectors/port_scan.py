"""Port scans, vertical, horizontal and mixed, by Threshold Random Walk (Jung et al., IEEE S&P 2004).

Catches: every probe style whose probes mostly fail: SYN, connect, FIN/NULL/Xmas, ACK and window scans
(RST or silence), UDP and IP-protocol scans (ICMP unreachable or silence), masscan. Each source's
*first contacts* (a destination address, protocol and port it had not tried before) are Bernoulli
trials: a benign host's first contacts succeed with probability theta0 = 0.8, a scanner's with
theta1 = 0.2. Every failure multiplies the likelihood ratio by (1 - theta1) / (1 - theta0) = 4, every
success by theta1 / theta0 = 1/4. The source is called a scanner when the ratio reaches
eta1 = PD / PF = 99 (four failures in a row from a fresh start: 4**4 = 256). The walk is floored at
eta0 = (1 - PD) / (1 - PF) (the CUSUM form of the test), so a long benign history cannot hide a later
scan: from the floor, seven failures in a row decide. The walk is computed vectorised for a whole
batch (cumulative sums per source, the floor by Lindley's recursion) and never loops per flow.

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
from kubesonar.shared.flow import ConnState, FlowRecords, address_text, address_words, mix64

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
    return address_text(np.asarray(words, dtype=">u4").tobytes())


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
        flows = flows.take(np.argsort(flows["first_ts"], kind="stable"))
        src_key, keys = _source_keys(flows)
        contact = mix64([*address_words(flows["dst_addr"]).T, flows["proto"], flows["dst_port"]])
        # first contacts: the first flow of each (source, contact) in this batch, not seen in earlier ones
        pair = mix64([src_key, contact.view(np.int64)])
        _, first = np.unique(pair, return_index=True)
        first.sort()
        known = self._known_pairs(keys)
        first = first[~np.isin(pair[first], known)] if len(known) else first
        if not len(first):
            return []
        trial_src, trial_contact = src_key[first], contact[first]
        failed = np.isin(flows["state"][first], _FAILED)
        order = np.argsort(trial_src, kind="stable")  # by source, time order kept within each
        trial_src, trial_contact, failed, rows = trial_src[order], trial_contact[order], failed[order], first[order]
        starts = np.flatnonzero(np.r_[True, trial_src[1:] != trial_src[:-1]])
        sources = trial_src[starts]

        fail_step = math.log((1 - self.theta1) / (1 - self.theta0))
        ok_step = math.log(self.theta1 / self.theta0)
        steps = np.where(failed, fail_step, ok_step)
        prior = np.array([self._sources.get(keys[k], {}).get("llr", 0.0) for k in sources.tolist()])
        walk, peak = _floored_walks(steps, starts, prior, self._lower)
        ends = np.r_[starts[1:], len(steps)] - 1

        dst_text = _Texts(address_words(flows["dst_addr"][rows]))
        proto, port, ts = flows["proto"][rows], flows["dst_port"][rows], flows["first_ts"][rows]
        endpoints = {name: flows[f"src_{name}"][rows] for name in ("namespace", "pod", "node", "labels")}
        ip_text = _Texts(address_words(flows["src_addr"][rows]))
        scores = []
        for g, (lo, hi) in enumerate(zip(starts.tolist(), (ends + 1).tolist())):
            key = keys[int(sources[g])]
            s = self._sources.setdefault(key, {"llr": 0.0, "contacts": [], "failures": 0, "successes": 0,
                                               "failures_by_proto": {}, "targets": [], "ports": [],
                                               "scanner": False, "first_ts": int(ts[lo])})
            f = failed[lo:hi]
            s["llr"] = float(walk[hi - 1])
            s["scanner"] = bool(s["scanner"] or peak[g] >= self._upper)
            s["failures"] += int(f.sum())
            s["successes"] += int((~f).sum())
            s["last_ts"] = int(ts[hi - 1])
            s["contacts"] = (s["contacts"] + trial_contact[lo:hi].view(np.int64).tolist())[-self.max_contacts :]
            failed_rows = np.arange(lo, hi)[f]
            if len(failed_rows):
                for p, n in zip(*np.unique(proto[failed_rows], return_counts=True)):
                    s["failures_by_proto"][str(p)] = s["failures_by_proto"].get(str(p), 0) + int(n)
                for i in failed_rows[: max(0, 256 - len(s["ports"]))].tolist():
                    _remember(s["targets"], dst_text[i], 64)
                    _remember(s["ports"], f"{proto[i]}/{port[i]}", 256)
            endpoint = {"ip": ip_text[lo], "namespace": str(endpoints["namespace"][lo]), "pod": str(endpoints["pod"][lo]),
                        "workload": key if "/" in key else "", "node": str(endpoints["node"][lo]),
                        "labels": str(endpoints["labels"][lo])}
            evidence = _evidence(s) if s["scanner"] else {}  # only a scanner's evidence is ever shown
            scores.append(SourceScore(key, endpoint, s["llr"], s["scanner"], len(failed_rows), int(ts[lo]),
                                      int(ts[hi - 1]), evidence))
        self._forget_oldest()
        return scores

    def _known_pairs(self, keys: list[str]) -> np.ndarray:
        """(source, contact) hashes of contacts the sources in this batch made in earlier batches."""
        codes, contacts = [], []
        for code, key in enumerate(keys):
            known = self._sources.get(key, {}).get("contacts")
            if known:
                contacts.append(np.asarray(known, dtype=np.int64))
                codes.append(np.full(len(known), code, dtype=np.int64))
        if not contacts:
            return np.zeros(0, dtype=np.uint64)
        return mix64([np.concatenate(codes), np.concatenate(contacts)])

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


def _source_keys(flows: FlowRecords) -> tuple[np.ndarray, list[str]]:
    """A code per flow for its source (its workload when known, else its address) and the codes' names."""
    ips, ip_code = _factorize_addresses(address_words(flows["src_addr"]))
    ip_names = [_ip_text(w) for w in ips]
    if not (flows["src_workload_name"] != "").any():  # no inventory: sources are addresses
        return ip_code, ip_names
    names: dict[str, int] = {}
    workload = [f"{a}/{b}/{c}" if c else "" for a, b, c in zip(
        flows["src_namespace"].tolist(), flows["src_workload_kind"].tolist(), flows["src_workload_name"].tolist())]
    codes = np.fromiter(
        (names.setdefault(w or ip_names[i], len(names)) for w, i in zip(workload, ip_code.tolist())),
        dtype=np.int64, count=len(flows),
    )
    return codes, list(names)


def _factorize_addresses(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct addresses and each row's index among them: grouped by a 64-bit hash, checked exactly."""
    hashed = mix64([words[:, k] for k in range(4)])
    _, first, codes = np.unique(hashed, return_index=True, return_inverse=True)
    codes = codes.ravel()
    if not (words == words[first][codes]).all():  # a hash collision: fall back to the exact sort
        uniq, codes = np.unique(words, axis=0, return_inverse=True)
        return uniq, codes.ravel()
    return words[first], codes


def _floored_walks(steps: np.ndarray, starts: np.ndarray, prior: np.ndarray, floor: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per segment, S_i = max(floor, S_(i-1) + step_i) from S_0 = prior; return every S_i and each
    segment's highest S_i. Lindley: with T = S - floor and C the running sum, T_i = C_i - min(-T_0,
    min_(j<=i) C_j); segments are kept apart by offsetting each below everything before it."""
    seg = np.cumsum(_segment_ids(starts, len(steps))) - 1
    base = np.cumsum(steps)
    before = np.r_[0.0, base][starts]  # running sum just before each segment
    c = base - before[seg]  # running sum within the segment
    t0 = np.maximum(prior - floor, 0.0)
    span = float(np.abs(steps).sum() + t0.max(initial=0.0) + 1.0)  # bounds |value| within a segment
    offset = -(2 * span + 1) * seg  # every later segment lies wholly below all earlier ones
    lows = np.minimum.accumulate(np.minimum(c, -t0[seg]) + offset) - offset
    walk = c - lows + floor
    return walk, np.maximum.reduceat(walk, starts)


def _segment_ids(starts: np.ndarray, n: int) -> np.ndarray:
    marks = np.zeros(n, dtype=np.int64)
    marks[starts] = 1
    return marks


class _Texts:
    """Address text per row, formatting each distinct address once."""

    def __init__(self, words: np.ndarray):
        self._uniq, self._inverse = _factorize_addresses(words)
        self._text: dict[int, str] = {}

    def __getitem__(self, i: int) -> str:
        code = int(self._inverse[i])
        text = self._text.get(code)
        if text is None:
            text = self._text[code] = _ip_text(self._uniq[code])
        return text


def _remember(items: list, value: str, limit: int) -> None:
    if value not in items and len(items) < limit:
        items.append(value)


def _evidence(s: dict[str, Any]) -> dict[str, Any]:
    hosts, ports = set(s["targets"]), set(s["ports"])
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
