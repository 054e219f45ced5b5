"""Watchlist hit: traffic to or from an IP or network, a DNS question for a domain, or a TLS client
whose fingerprint (JA3, JA4) is on one of the user's watchlists (shared/watchlist.py: threat-intelligence
feeds such as abuse.ch SSLBL's JA3 list, known-bad hosts, banned services).

Every flow is checked on both ends (exact addresses at once by sorted search, networks one mask each);
every DNS question by its name and each parent domain; every TLS ClientHello's JA3 and JA4 (flow
schema 4) against the fingerprint entries. The pod involved is the alert's source: the initiator when
the responder is listed or its TLS client is, the responder when a listed host reached in. An entry
past its ``expires`` time no longer matches. No baseline: judged from the first window.

Catches: contact with anything listed, both directions, lookups of listed domains even when the
connection never happens, and known-bad TLS client software (malware families' default stacks) to any
destination. Misses: what the lists do not hold; domains reached without a DNS question the sensor sees
(hard-coded addresses, DNS over HTTPS); implants whose TLS stack is the platform's own (a JA3 shared
with browsers or a language runtime is no indicator, and SSLBL drops such entries).
False positives: stale or over-broad feed entries (shared hosting, CDN addresses, a fingerprint a
common library shares); give entries an expiry.

Score: 1.0 per (pod, indicator), reported once.

Example:
    >>> d = WatchlistDetector(LOADER.load(store)[0])
    >>> d.observe(batch_of(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score, clock_from_v0
from kubesonar.shared.flow import FlowRecords, address_bytes, address_text
from kubesonar.shared.identity import dns_client_endpoint, source_endpoint, subject_keys
from kubesonar.shared.netzones import Networks
from kubesonar.shared.watchlist import FINGERPRINT_KINDS, WatchEntry

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch


@dataclass
class WatchlistState:
    reported: dict[Pair, None] = field(default_factory=dict)  # (subject, indicator) pairs, oldest first


@dataclass
class _Assessment:
    scores: list[Score]
    reported: list[Pair]


class WatchlistDetector(Detector[WatchlistState, _Assessment]):
    rule_id = "watchlist_hit"
    max_pairs = 20_000

    def __init__(self, *lists: Sequence[WatchEntry]):
        super().__init__()
        index = _index(lists)
        self.entries, self._ips, self._ip_values, self._networks, self._nets, self._domains, self._fingerprints = index

    def new_state(self) -> WatchlistState:
        return WatchlistState()

    def _encode(self, state: WatchlistState) -> dict[str, Any]:
        return {"reported": [list(p) for p in state.reported]}

    def _decode(self, document: dict[str, Any]) -> WatchlistState:
        return WatchlistState(dict.fromkeys(Pair(*p) for p in document["reported"]))

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        return {"clock": clock_from_v0(document), "reported": [list(Pair.from_v0(p)) for p in document["seen"]]}

    def _assess(self, batch: Batch) -> _Assessment:
        flows, dns = batch.flows, batch.dns
        out = _Assessment([], [])
        if not self.entries:
            return out
        new: dict[Pair, None] = {}
        again: set[Pair] = set()

        def report(key: str, entry: WatchEntry, endpoint: dict, ts0: int, ts1: int, evidence: dict) -> None:
            pair = Pair(key, entry.indicator)
            if pair in new or pair in again or not entry.active(ts0):
                return
            reported = pair in self.state.reported  # scored again, reported once
            if reported:
                again.add(pair)
            else:
                new[pair] = None
            evidence |= {"indicator": entry.indicator, "indicator_kind": entry.kind, "watchlist": entry.list_name,
                         "reason": entry.reason}
            out.scores.append(Score(pair, 1.0, True, endpoint, ts0, ts1, evidence, fresh=not reported,
                                    identity=(entry.indicator,)))

        if len(flows):
            for side, other in (("dst", "src"), ("src", "dst")):
                for row, entry in self._flow_hits(flows, side):
                    key = subject_keys(flows, [row], other)[0]
                    evidence = {"direction": "outbound" if side == "dst" else "inbound",
                                "remote": address_text(flows[f"{side}_addr"][row]),
                                "port": int(flows["dst_port"][row]), "protocol": int(flows["proto"][row])}
                    report(key, entry, source_endpoint(flows, row, other), int(flows["first_ts"][row]),
                           int(flows["last_ts"][row]), evidence)
        if len(flows) and self._fingerprints:
            for row, entry in self._tls_hits(flows):
                key = subject_keys(flows, [row])[0]
                evidence = {"direction": "tls client", "remote": address_text(flows["dst_addr"][row]),
                            "port": int(flows["dst_port"][row]), "protocol": int(flows["proto"][row]),
                            "sni": str(flows["tls_sni"][row])}
                report(key, entry, source_endpoint(flows, row), int(flows["first_ts"][row]),
                       int(flows["last_ts"][row]), evidence)
        if len(dns) and self._domains:
            for i, name in enumerate(dns["qname"].tolist()):
                labels = name.split(".")
                for k in range(len(labels) - 1):
                    entry = self._domains.get(".".join(labels[k:]))
                    if entry is not None:
                        endpoint = dns_client_endpoint(dns, i)
                        report(endpoint["workload"] or endpoint["ip"], entry, endpoint, int(dns["ts"][i]),
                               int(dns["ts"][i]), {"direction": "dns", "name": name})
                        break
        out.reported = list(new)
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Hits are reported once: the pairs reported are remembered (there is no baseline to protect)."""
        if not assessment.reported:
            return
        reported = self.state.reported
        reported.update(dict.fromkeys(assessment.reported))
        if len(reported) > self.max_pairs:
            self.state.reported = dict.fromkeys(list(reported)[-self.max_pairs:])
        self.touched = True

    def _tls_hits(self, flows: FlowRecords) -> list[tuple[int, WatchEntry]]:
        hits: list[tuple[int, WatchEntry]] = []
        for kind in FINGERPRINT_KINDS:
            column = flows[f"tls_{kind}"]
            for row in np.flatnonzero(column != "").tolist():
                entry = self._fingerprints.get((kind, str(column[row]).lower()))
                if entry is not None:
                    hits.append((row, entry))
        return sorted(hits, key=lambda h: int(flows["first_ts"][h[0]]))

    def _flow_hits(self, flows: FlowRecords, side: str) -> list[tuple[int, WatchEntry]]:
        addresses = flows[f"{side}_addr"]
        hits: list[tuple[int, WatchEntry]] = []
        if len(self._ip_values):
            at = np.searchsorted(self._ip_values, addresses)
            found = self._ip_values[np.minimum(at, len(self._ip_values) - 1)] == addresses
            for row in np.flatnonzero(found).tolist():
                hits.append((row, self._ips[address_text(addresses[row])]))
        if self._networks:
            for entry, mask in zip(self._networks, self._nets.which(addresses), strict=False):
                hits += [(row, entry) for row in np.flatnonzero(mask).tolist()]
        return sorted(hits, key=lambda h: int(flows["first_ts"][h[0]]))


_COMPILED: list = []  # [(the lists it was built from, the index)]: the last one, reused while they stand


def _index(lists: tuple[Sequence[WatchEntry], ...]) -> tuple:
    """Lookup structures of the entries, built once per set of lists: the core makes a detector for every
    batch, and a threat feed can hold tens of thousands of entries."""
    if _COMPILED and len(_COMPILED[0][0]) == len(lists) and all(
            a is b for a, b in zip(_COMPILED[0][0], lists, strict=True)):
        return _COMPILED[0][1]
    entries = [e for entry_list in lists for e in entry_list]
    ips = {e.indicator: e for e in entries if e.kind == "ip"}
    ip_values = np.array(sorted(address_bytes(i) for i in ips), dtype="V16")
    networks = [e for e in entries if e.kind == "network"]
    index = (entries, ips, ip_values, networks, Networks([e.indicator for e in networks]),
             {e.indicator: e for e in entries if e.kind == "domain"},
             {(e.kind, e.indicator): e for e in entries if e.kind in FINGERPRINT_KINDS})
    _COMPILED[:] = [(lists, index)]
    return index
