"""Port scans, vertical, horizontal and mixed, by Threshold Random Walk (Jung et al., IEEE S&P 2004).

Catches: every probe style whose probes mostly fail: SYN, connect, FIN/NULL/Xmas, ACK and window scans
(RST or silence), UDP and IP-protocol scans (ICMP unreachable or silence), masscan. Each source's
*first contacts* (a destination address, protocol and port it had not tried before) are Bernoulli
trials: a benign host's first contacts succeed with probability theta0 = 0.8, a scanner's with
theta1 = 0.2. Every failure multiplies the likelihood ratio by (1 - theta1) / (1 - theta0) = 4, every
success by theta1 / theta0 = 1/4. The source is called a scanner when the ratio reaches
eta1 = PD / PF = 99 (four failures in a row from a fresh start: 4**4 = 256). The walk is floored at
eta0 = (1 - PD) / (1 - PF) (the CUSUM form of the test), so a long benign history cannot hide a later
scan: from the floor, seven failures in a row decide.

A second walk runs per (source, destination host) over the same trials, floored at 0 (Page's CUSUM):
a host's refused ports say nothing about the source's successes elsewhere, so a busy client's
successful first contacts to other hosts, which hold its source walk at the floor, cannot hide a
small vertical scan. Four refused or unanswered first contacts to distinct ports of one host decide,
as TRW intends from a fresh start, however much else the source did; each success on that host takes
one failure back. Only walks above 0 are kept (a walk at its floor is a fresh one). The walks are
computed vectorised for a whole batch (cumulative sums per group, the floor by Lindley's recursion)
and never loop per flow.

Misses: scans slower than the state's memory of contacts (the newest 131,072 to 262,144 across all
sources: two generations of sorted hashes, each of at most ``IDLE_FORGET_NS`` of data time) or than its
memory of a quiet source's walk (``IDLE_FORGET_NS``), scans of open ports only
(they succeed), and scans spread over many sources (each is tested alone).

False positives: a client retrying many endpoints that are all down; service discovery that probes
dead backends; a monitor finding four ports of one host closed; traceroute (UDP to rising ports,
answered by port unreachable). Busy healthy clients are safe: repeated contacts are not trials, and
successes pull each walk down.

Score: the source's log likelihood ratio, or its per-host one where that one decided (0 = no
evidence, ln 99 = 4.6 decides).

Example:
    >>> detector = PortScanDetector()
    >>> detector.observe(batch_of(flows))  # doctest: +SKIP
    >>> detector.observe(batch_of(more_flows))  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import IDLE_FORGET_NS, Detector, Pair, Score, bounded, clock_from_v0
from kubesonar.shared.flow import ConnState, FlowRecords, address_text, distinct_addresses, mix64
from kubesonar.shared.identity import endpoint, workload_key

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

_FAILED = (int(ConnState.ATTEMPTED), int(ConnState.REJECTED))


@dataclass
class SourceWalk:
    """A source's walk over its first contacts and what it tried (the evidence, if it is a scanner)."""

    first_ns: int
    last_ns: int = 0
    log_likelihood_ratio: float = 0.0
    failures: int = 0
    successes: int = 0
    failures_by_protocol: dict[str, int] = field(default_factory=dict)
    targets: list[str] = field(default_factory=list)  # the first 64 addresses of failed contacts
    ports: list[str] = field(default_factory=list)  # the first 256 "protocol/port" of failed contacts
    scanner: bool = False

    def copy(self) -> SourceWalk:
        return SourceWalk(self.first_ns, self.last_ns, self.log_likelihood_ratio, self.failures, self.successes,
                          dict(self.failures_by_protocol), list(self.targets), list(self.ports), self.scanner)


@dataclass
class HostWalk:
    """A source's walk over first contacts to one destination host, kept only while above 0."""

    log_likelihood_ratio: float
    last_ns: int


@dataclass
class PortScanState:
    sources: dict[str, SourceWalk] = field(default_factory=dict)  # by workload key or address
    hosts: dict[Pair, HostWalk] = field(default_factory=dict)  # (source, destination address)
    # (source, contact) hashes already tried, sorted, in two generations: when the newer one holds
    # half of max_contacts it becomes the older one and the oldest contacts are forgotten
    newer_contacts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    older_contacts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    # data time the newer generation started: it also turns older after IDLE_FORGET_NS, so the contacts
    # of a cluster whose pods' addresses churn are those of the last days, not as many as the cap allows
    newer_since_ns: int | None = None


@dataclass
class _Contacts:
    """A batch's contact-eligible flows, in time order."""

    col: dict[str, np.ndarray]  # the columns the walk reads
    source: np.ndarray  # per row, its source's code
    keys: list[str]  # source names by code
    pairs: np.ndarray  # per row, the (source, contact) hash


@dataclass
class _Trials:
    """A batch's first contacts (trials), grouped by source, time order kept within each."""

    col: dict[str, np.ndarray]  # the columns the walk reads, of the trial-eligible rows in time order
    keys: list[str]  # source names by code
    new_contacts: np.ndarray  # (source, contact) hashes never tried before, sorted
    order: np.ndarray  # rows of ``col`` that are first contacts, by source then time
    starts: np.ndarray  # where each source's run starts in ``order``
    ends: np.ndarray
    sources: np.ndarray  # each run's source code
    failed: np.ndarray  # per trial


@dataclass
class _Assessment:
    scores: list[Score] = field(default_factory=list)
    new_contacts: np.ndarray | None = None
    end_ns: int = 0  # the batch's latest flow end
    sources: dict[str, SourceWalk] = field(default_factory=dict)  # the walks as this batch leaves them
    hosts: dict[Pair, HostWalk | None] = field(default_factory=dict)  # per-host walks it changed (None: back to 0)


@dataclass
class _HostPeaks:
    """Per source code of a batch's trials: its highest per-host walk and that host."""

    peak: dict[int, float] = field(default_factory=dict)
    host: dict[int, str] = field(default_factory=dict)


class PortScanDetector(Detector[PortScanState, _Assessment]):
    rule_id = "port_scan"
    state_version = 2  # 2 added the per-host walks

    def __init__(self, theta0: float = 0.8, theta1: float = 0.2, detection: float = 0.99,
                 false_alarm: float = 0.01, max_sources: int = 20_000, max_contacts: int = 262_144):
        super().__init__()
        self.theta0, self.theta1 = theta0, theta1
        self.detection, self.false_alarm = detection, false_alarm
        self.max_sources, self.max_contacts = max_sources, max_contacts

    # -- state -------------------------------------------------------------------------------------

    def new_state(self) -> PortScanState:
        return PortScanState()

    def _encode(self, state: PortScanState) -> dict[str, Any]:
        return {"sources": {key: vars(w) for key, w in state.sources.items()},
                "hosts": [[*pair, w.log_likelihood_ratio, w.last_ns] for pair, w in state.hosts.items()],
                "newer_contacts": _pack(state.newer_contacts), "older_contacts": _pack(state.older_contacts),
                "newer_since_ns": state.newer_since_ns}

    def _decode(self, document: dict[str, Any]) -> PortScanState:
        sources = {key: SourceWalk(**w) for key, w in document["sources"].items()}
        hosts = {Pair(src, dst): HostWalk(float(llr), int(t)) for src, dst, llr, t in document["hosts"]}
        return PortScanState(sources, hosts, _unpack(document["newer_contacts"]), _unpack(document["older_contacts"]),
                             document.get("newer_since_ns"))

    def _upgrade(self, document: dict[str, Any], version: int) -> dict[str, Any]:
        """Version 1 had no per-host walks: they start at 0, as they would have after a quiet spell."""
        if version == 1:
            return {**document, "state_version": self.state_version, "hosts": []}
        return super()._upgrade(document, version)

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        newer, older = document.get("contacts", ("", ""))
        sources = {key: {"first_ns": s["first_ts"], "last_ns": s.get("last_ts", 0), "log_likelihood_ratio": s["llr"],
                         "failures": s["failures"], "successes": s["successes"],
                         "failures_by_protocol": s.get("failures_by_proto", {}), "targets": s["targets"],
                         "ports": s["ports"], "scanner": s["scanner"]}
                   for key, s in document.get("sources", {}).items()}
        return {"clock": clock_from_v0(document), "sources": sources, "hosts": [], "newer_contacts": newer,
                "older_contacts": older}

    # -- scoring and learning --------------------------------------------------------------------------

    @property
    def _upper(self) -> float:
        return math.log(self.detection / self.false_alarm)

    @property
    def _lower(self) -> float:
        return math.log((1 - self.detection) / (1 - self.false_alarm))

    def _assess(self, batch: Batch) -> _Assessment:
        """Walk every source's first contacts in time order; score the sources that made some, and the
        known scanners that came back with none."""
        out = _Assessment()
        contacts = self._contacts(batch.flows)
        if contacts is None:
            return out
        out.end_ns = int(batch.flows["last_ts"].max())
        trials = self._first_contacts(contacts)
        if trials is not None:
            walk, peak = self._walk(trials)
            out.new_contacts = trials.new_contacts
            self._file(trials, walk, peak, self._host_walks(trials, out), out)
        self._scanners_again(contacts, trials, out)
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Remember the contacts tried and the walks. A scan needs no baseline of normal: a flagged
        source's walk is its evidence and stays (a scanner is not forgiven by its next batch)."""
        if assessment.new_contacts is None:
            return
        self._remember(assessment.new_contacts, assessment.end_ns)
        self.state.sources.update(assessment.sources)
        for pair, host in assessment.hosts.items():
            if host is None:
                self.state.hosts.pop(pair, None)
            else:
                self.state.hosts[pair] = host
        since = assessment.end_ns - IDLE_FORGET_NS  # walks quiet this long are forgotten, as the contacts
        self.state.hosts = bounded(self.state.hosts, self.max_sources, since_ns=since)
        self.state.sources = bounded(self.state.sources, len(self.state.sources), since_ns=since)
        self._forget_oldest()
        self.touched = True

    def _contacts(self, flows: FlowRecords) -> _Contacts | None:
        """The batch's contacts, in time order, each with its source and (source, contact) hash."""
        rows = np.flatnonzero(_trials(flows))
        if not len(rows):
            return None
        times = flows["first_ts"][rows]
        if (np.diff(times) < 0).any():  # sensors send batches in time order; sort only when they did not
            rows = rows[np.argsort(times, kind="stable")]
        col = {name: flows[name][rows] for name in _COLUMNS}  # only what the walk reads
        src_key, keys = _source_keys(col)
        contact = mix64([*_halves(col["dst_addr"]).T, col["proto"], col["dst_port"]])
        owner_of = np.array([_key_hash(k) for k in keys], dtype=np.uint64)
        return _Contacts(col, src_key, keys, mix64([owner_of[src_key], contact]))

    def _first_contacts(self, contacts: _Contacts) -> _Trials | None:
        """The first flow of each (source, contact) in this batch that no earlier batch tried, grouped by
        source; None when there are none."""
        distinct, first = np.unique(contacts.pairs, return_index=True)
        new = ~self._tried(distinct)
        if not new.any():
            return None
        src_key = contacts.source
        first = np.sort(first[new])
        order = first[_stable_order(src_key[first], len(contacts.keys))]  # by source, time order kept in each
        trial_src = src_key[order]
        starts = np.flatnonzero(np.r_[True, trial_src[1:] != trial_src[:-1]])
        return _Trials(contacts.col, contacts.keys, distinct[new], order, starts, np.r_[starts[1:], len(order)],
                       trial_src[starts], np.isin(contacts.col["state"][order], _FAILED))

    def _scanners_again(self, contacts: _Contacts, trials: _Trials | None, out: _Assessment) -> None:
        """Known scanners whose contacts in this batch were all tried before: scored again (a scanner
        stays one), not fresh (nothing new to report)."""
        known = self.state.sources
        walked = set(trials.sources.tolist()) if trials is not None else set()
        again = [code for code, key in enumerate(contacts.keys)
                 if code not in walked and (w := known.get(key)) is not None and w.scanner]
        col = contacts.col
        for code in again:
            rows = np.flatnonzero(contacts.source == code)
            w, first, last = known[contacts.keys[code]], rows[0], rows[-1]
            source = endpoint(address_text(col["src_addr"][first]), *(str(col[f"src_{name}"][first]) for name in (
                "namespace", "pod", "workload_kind", "workload_name", "node", "labels")))
            out.scores.append(Score(contacts.keys[code], w.log_likelihood_ratio, True, source,
                                    int(col["first_ts"][first]), int(col["first_ts"][last]), _evidence(w),
                                    fresh=False))

    def _walk(self, trials: _Trials) -> tuple[np.ndarray, np.ndarray]:
        """Each trial's log likelihood ratio, floored, from the source's earlier walk, and each source's peak."""
        fail_step = math.log((1 - self.theta1) / (1 - self.theta0))
        ok_step = math.log(self.theta1 / self.theta0)
        steps = np.where(trials.failed, fail_step, ok_step)
        known = self.state.sources
        prior = np.array([w.log_likelihood_ratio if (w := known.get(trials.keys[k])) else 0.0
                          for k in trials.sources.tolist()])
        return _floored_walks(steps, trials.starts, prior, self._lower)

    def _host_walks(self, trials: _Trials, out: _Assessment) -> _HostPeaks:
        """The per-(source, host) walks over this batch's trials, floored at 0; the walks it leaves above
        0 go to ``out.hosts`` (None for a kept one that fell back to 0); each source's highest peak."""
        order = trials.order
        trial_src = np.repeat(trials.sources, trials.ends - trials.starts)
        group = mix64([trial_src.astype(np.uint64), *_halves(trials.col["dst_addr"][order]).T])
        by_group = np.argsort(group, kind="stable")  # time order kept within each (source, host)
        grouped = group[by_group]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        first = by_group[starts]  # each group's first trial, as an index into ``order``
        src_codes = trial_src[first]
        dst_text = _Texts(trials.col["dst_addr"][order[first]])
        stored = {p.source for p in self.state.hosts}  # only their sources' groups can have a prior
        known = np.array([trials.keys[code] in stored for code in range(len(trials.keys))], dtype=bool)[src_codes]
        prior = np.zeros(len(starts))
        for g in np.flatnonzero(known).tolist():
            w = self.state.hosts.get(Pair(trials.keys[src_codes[g]], dst_text[g]))
            prior[g] = w.log_likelihood_ratio if w else 0.0
        steps = np.where(trials.failed[by_group], math.log((1 - self.theta1) / (1 - self.theta0)),
                         math.log(self.theta1 / self.theta0))
        walk, peak = _floored_walks(steps, starts, prior, 0.0)
        ends = np.r_[starts[1:], len(grouped)] - 1
        final = walk[ends]
        best = np.full(len(trials.keys), -np.inf)
        np.maximum.at(best, src_codes, peak)
        peaks = _HostPeaks()
        for code in np.unique(src_codes).tolist():
            peaks.peak[code] = float(best[code])
        # the loop files only the groups whose walk is kept, was kept, or is the highest of a source it
        # decided (the evidence names that host)
        highest = (peak == best[src_codes]) & (best[src_codes] >= self._upper)
        filed = np.flatnonzero((final > 0) | known | highest)
        last_ts = trials.col["first_ts"][order[by_group[ends]]].tolist()
        names = trials.col["dst_addr"][order[first[filed]]]
        final_of, highest_of, source_of = final.tolist(), highest.tolist(), src_codes.tolist()
        for g, src, dst in _in_name_order(filed, src_codes[filed], trials.keys, names):
            # in name order, so the state and the evidence never depend on hash order
            pair = Pair(src, dst)
            if final_of[g] > 0:
                out.hosts[pair] = HostWalk(final_of[g], last_ts[g])
            elif pair in self.state.hosts:
                out.hosts[pair] = None
            if highest_of[g] and source_of[g] not in peaks.host:
                peaks.host[source_of[g]] = dst
        return peaks

    def _file(self, trials: _Trials, walk: np.ndarray, peak: np.ndarray, hosts: _HostPeaks,
              out: _Assessment) -> None:
        """Per source, its walk as this batch leaves it and its score: the figures are vectorised, the
        loop only files them."""
        col, order, starts, failed = trials.col, trials.order, trials.starts, trials.failed
        failures = np.add.reduceat(failed.astype(np.int64), starts)
        ts = col["first_ts"][order]
        first_row = order[starts]
        endpoint_cols = {name: col[f"src_{name}"][first_row].tolist()
                         for name in ("namespace", "workload_kind", "workload_name", "pod", "node", "labels")}
        failed_at = np.flatnonzero(failed)
        failed_group = np.searchsorted(starts, failed_at, side="right") - 1
        by_proto = _count_pairs(failed_group, col["proto"][order][failed_at])
        dst_text = _Texts(col["dst_addr"][order])
        proto, port = col["proto"][order], col["dst_port"][order]
        src_text = _Texts(col["src_addr"][first_row])
        failed_split = np.split(failed_at, np.searchsorted(failed_group, np.arange(1, len(starts))))
        runs = zip(trials.sources.tolist(), starts.tolist(), trials.ends.tolist(), strict=True)
        for g, (key_code, lo, hi) in enumerate(runs):
            key = trials.keys[key_code]
            known = self.state.sources.get(key)
            s = known.copy() if known is not None else SourceWalk(int(ts[lo]))
            n_failed = int(failures[g])
            s.log_likelihood_ratio = float(walk[hi - 1])
            host_peak = hosts.peak[key_code]
            s.scanner = bool(s.scanner or peak[g] >= self._upper or host_peak >= self._upper)
            s.failures += n_failed
            s.successes += hi - lo - n_failed
            s.last_ns = int(ts[hi - 1])
            if n_failed:
                for p, n in by_proto.get(g, {}).items():
                    s.failures_by_protocol[p] = s.failures_by_protocol.get(p, 0) + n
                for i in failed_split[g][: max(0, 256 - len(s.ports))].tolist():
                    _remember(s.targets, dst_text[i], 64)
                    _remember(s.ports, f"{proto[i]}/{port[i]}", 256)
            out.sources[key] = s
            source = endpoint(src_text[g], endpoint_cols["namespace"][g], endpoint_cols["pod"][g],
                              endpoint_cols["workload_kind"][g], endpoint_cols["workload_name"][g],
                              endpoint_cols["node"][g], endpoint_cols["labels"][g])
            evidence = _evidence(s) if s.scanner else {}  # only a scanner's evidence is ever shown
            if s.scanner and host_peak >= self._upper > peak[g]:  # the host walk decided, not the source's
                evidence["host_walk"] = {"target": hosts.host[key_code], "log_likelihood_ratio": round(host_peak, 3)}
            score = host_peak if host_peak >= self._upper > s.log_likelihood_ratio else s.log_likelihood_ratio
            out.scores.append(Score(key, score, s.scanner, source, int(ts[lo]), int(ts[hi - 1]), evidence,
                                    fresh=n_failed > 0))

    def _tried(self, pairs: np.ndarray) -> np.ndarray:
        return _in_sorted(pairs, self.state.newer_contacts) | _in_sorted(pairs, self.state.older_contacts)

    def _remember(self, pairs: np.ndarray, now_ns: int) -> None:
        """Merge sorted new pairs, none of them known, into the newer generation; it turns older when it
        holds half of max_contacts or is IDLE_FORGET_NS old (the oldest generation is then forgotten)."""
        state = self.state
        if state.newer_since_ns is None:
            state.newer_since_ns = now_ns
        newer = np.insert(state.newer_contacts, np.searchsorted(state.newer_contacts, pairs), pairs)
        if len(newer) >= self.max_contacts // 2 or now_ns - state.newer_since_ns >= IDLE_FORGET_NS:
            state.older_contacts, state.newer_since_ns = newer, now_ns
            state.newer_contacts = np.zeros(0, dtype=np.uint64)
        else:
            state.newer_contacts = newer

    def _forget_oldest(self) -> None:
        sources = self.state.sources
        if len(sources) > self.max_sources:
            keep = sorted(sources, key=lambda k: sources[k].last_ns)[-self.max_sources:]
            self.state.sources = {k: sources[k] for k in keep}


def _trials(flows: FlowRecords) -> np.ndarray:
    """Flows that are contacts at all: unicast, from a real address, not ICMP housekeeping (neighbour
    discovery, MLD, router solicitations expect no answer; only echo requests are probes), and with an
    outcome (UNKNOWN: the input ended before an answer was due, sensor/flow_table.py ANSWER_DUE_S)."""
    src, dst = _halves(flows["src_addr"]), _halves(flows["dst_addr"])
    dst_bytes = np.ascontiguousarray(flows["dst_addr"]).view(np.uint8).reshape(-1, 16)
    v4 = (dst[:, 0] == 0) & ((dst[:, 1] & _LOW32) == _V4_MARK)  # ::ffff:a.b.c.d
    multicast = np.where(v4, dst_bytes[:, 12] >= 224, dst_bytes[:, 0] == 0xFF)
    unspecified = (src[:, 0] == 0) & ((src[:, 1] == 0) | (src[:, 1] == _V4_MARK))  # :: or 0.0.0.0
    icmp = np.isin(flows["proto"], (1, 58))
    echo = np.isin(flows["icmp_type"], (8, 128))
    return ~multicast & ~unspecified & (~icmp | echo) & (flows["state"] != ConnState.UNKNOWN)


# bytes 8..15 of an IPv4-mapped address, read as a little-endian 64-bit integer: 00 00 ff ff a b c d
_LOW32 = np.uint64(0xFFFFFFFF)
_V4_MARK = np.uint64(int.from_bytes(b"\0\0\xff\xff\0\0\0\0", "little"))


_COLUMNS = ("first_ts", "src_addr", "dst_addr", "proto", "dst_port", "state", "src_namespace", "src_pod",
            "src_node", "src_labels", "src_workload_kind", "src_workload_name")


def _count_pairs(groups: np.ndarray, values: np.ndarray) -> dict[int, dict[str, int]]:
    """{group: {value: count}} for the (group, value) pairs given."""
    out: dict[int, dict[str, int]] = {}
    if len(groups):
        pairs, counts = np.unique(np.stack([groups, values.astype(np.int64)]), axis=1, return_counts=True)
        for g, v, n in zip(*pairs.tolist(), counts.tolist(), strict=False):
            out.setdefault(g, {})[str(v)] = n
    return out


def _source_keys(flows: dict[str, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """A code per flow for its source (its workload when known, else its address) and the codes' names."""
    address_hash = mix64(list(_halves(flows["src_addr"]).T))
    if (flows["src_workload_name"] != "").any():  # an address may change hands: group by workload too
        strings = [np.fromiter(map(hash, flows[f"src_{c}"].tolist()), dtype=np.int64, count=len(address_hash))
                   for c in ("namespace", "workload_kind", "workload_name")]
        address_hash = mix64([address_hash, *strings])
    _, first, codes = np.unique(address_hash, return_index=True, return_inverse=True)
    # codes in the order each source's first flow comes, not in the hashes' order: hash() of a string
    # differs from one process to the next, and so did the order in which sources' walks were summed,
    # and with it the stored walks' last bits (a walk kept at 2.6e-11 in one process, 0 in another)
    by_first = np.argsort(first, kind="stable")
    names: dict[str, int] = {}
    group_code = np.empty(len(first), dtype=np.int64)
    group_code[by_first] = [
        names.setdefault(workload_key(ns, kind, name) or address_text(addr), len(names))
        for ns, kind, name, addr in zip(*(flows[c][first[by_first]].tolist() for c in (
            "src_namespace", "src_workload_kind", "src_workload_name", "src_addr")), strict=False)
    ]  # distinct hashes of one workload's pods share its code; a collision would merge two (2**-64)
    return group_code[codes.ravel()], list(names)


def _halves(addresses: np.ndarray) -> np.ndarray:
    """16-byte addresses as (n, 2) 64-bit integers: half the work of four words when hashing."""
    return np.ascontiguousarray(addresses).view(np.uint64).reshape(-1, 2)


def _factorize_addresses(addresses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct addresses and each row's index among them: grouped by a 64-bit hash, checked exactly."""
    _, first, codes = np.unique(mix64(list(_halves(addresses).T)), return_index=True, return_inverse=True)
    codes = codes.ravel()
    if not (addresses == addresses[first][codes]).all():  # a hash collision: fall back to the exact sort
        uniq, codes = np.unique(addresses, return_inverse=True)
        return uniq, codes.ravel()
    return addresses[first], codes


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
    """Address text per row, formatting each distinct address once and only when asked."""

    def __init__(self, addresses: np.ndarray):
        self._addresses = addresses
        self._text: dict[bytes, str] = {}

    def __getitem__(self, i: int) -> str:
        raw = self._addresses[i].tobytes()
        text = self._text.get(raw)
        if text is None:
            text = self._text[raw] = address_text(raw)
        return text


def _in_name_order(groups: np.ndarray, sources: np.ndarray, keys: list[str], addresses: np.ndarray
                   ) -> list[tuple[int, str, str]]:
    """(group, source name, address text) of each group, ordered by source name, then address text: as
    sorting the pairs of text would, with each distinct address formatted once and the sort in numpy."""
    distinct, _, of_row = distinct_addresses(addresses)
    texts = [address_text(a.tobytes()) for a in distinct]
    order = np.lexsort((_ranks(texts)[of_row], _ranks(keys)[sources]))
    return [(g, keys[k], texts[t]) for g, k, t in zip(groups[order].tolist(), sources[order].tolist(),
                                                       of_row[order].tolist(), strict=True)]


def _ranks(texts: list[str]) -> np.ndarray:
    """Each text's place in the sorted texts (equal texts, equal places)."""
    ranks = np.empty(len(texts), dtype=np.int64)
    previous, place = None, -1
    for i in sorted(range(len(texts)), key=texts.__getitem__):
        if texts[i] != previous:
            previous, place = texts[i], place + 1
        ranks[i] = place
    return ranks


def _stable_order(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Stable argsort of small non-negative codes (16-bit codes sort by radix, far faster)."""
    return np.argsort(codes.astype(np.uint16) if n_codes <= 1 << 16 else codes, kind="stable")


def _in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def _pack(values: np.ndarray) -> str:
    """64-bit hashes as base64 text: a third of a JSON list's size, and fast to load."""
    return base64.b64encode(values.astype("<u8").tobytes()).decode("ascii")


def _unpack(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<u8").astype(np.uint64)


def _top(counts: dict[str, int], n: int) -> dict[str, int]:
    """The n largest counts, the rest summed as "other" (an IP-protocol scan tries 256 protocols)."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], int(kv[0])))
    top = dict(ranked[:n])
    if len(ranked) > n:
        top["other"] = sum(v for _, v in ranked[n:])
    return top


def _remember(items: list, value: str, limit: int) -> None:
    if value not in items and len(items) < limit:
        items.append(value)


def _evidence(s: SourceWalk) -> dict[str, Any]:
    hosts, ports = set(s.targets), set(s.ports)
    kind = "vertical" if len(hosts) == 1 else "horizontal" if len(ports) == 1 else "mixed"
    return {
        "scan_kind": kind,
        "failed_first_contacts": s.failures,
        "failed_by_protocol": _top(s.failures_by_protocol, 8),
        "successful_first_contacts": s.successes,
        "targets": sorted(hosts)[:20],
        "target_count": len(hosts),
        "ports": sorted(ports, key=lambda p: (p.split("/")[0], int(p.split("/")[1])))[:50],
        "port_count": len(ports),  # distinct ports among the first 256 failures
        "log_likelihood_ratio": round(s.log_likelihood_ratio, 3),
    }
