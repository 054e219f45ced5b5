"""Crypto mining: a pod speaking a mining protocol, resolving a mining pool, or holding a pool port open.

Three kinds of evidence, each enough on its own:
- *protocol*: the sensor named a mining JSON-RPC method in the flow's payload (Stratum v1
  ``mining.subscribe`` / ``authorize`` / ``submit`` / ``notify``; Monero pools' ``login`` / ``job`` /
  ``submit``, counted only with the keys those protocols always send; Ethereum ``eth_submitLogin`` /
  ``eth_getWork``; ``getblocktemplate``). The miner is the flow's initiator.
- *pool domain*: a DNS question for a name under a public pool's registered domain
  (shared/mining.py), the querying pod being the miner.
- *pool port*: an established TCP connection to an address outside the cluster on a Stratum port,
  held for ``pool_port_min_s`` (10 minutes) in all. Ports alone mislead (dev servers use 3333 and
  4444), so only long-held connections outside the cluster count, and only those that opened as
  Stratum can: the miner's JSON line, or TLS. One that opened with an HTTP request is a web server (a
  getwork miner over HTTP shows its method, the protocol evidence), and one whose server spoke first
  (SMTP, FTP, a database) is not a pool.

Catches: cryptojacking with xmrig, cgminer, ethminer and their forks, plain or through a proxy that
keeps the protocol; pool lookups even when the connection is encrypted. Misses: Stratum inside TLS
to a pool not in the list on a port not in the list; Stratum v2 (binary, encrypted); Stratum over a
cleartext WebSocket (it opens with an HTTP request, and a client's frames are masked) on a pool port,
unless a pool's name is looked up. Crypto node P2P traffic (Bitcoin 8333, Ethereum 30303, Monero
18080) is not mining and is not reported.
False positives: a blockchain team's own pool or solo-mining tests; security tooling resolving pool
domains (allowlist it).

Score: 1.0 per (miner, pool) pair, reported once; one alert per miner, its count the pools and kinds
of evidence seen, its evidence the latest.

Example:
    >>> d = CryptoMiningDetector()
    >>> d.observe(batch_of(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score, bounded, clock_from_v0
from kubesonar.shared.dns import DnsMessages, registered_domain
from kubesonar.shared.flow import FlowRecords, Opening, address_text, answered
from kubesonar.shared.identity import dns_client_endpoint, source_endpoint, subject_keys
from kubesonar.shared.mining import POOL_DOMAINS, POOL_PORTS
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_POOL_PORTS = np.array(sorted(POOL_PORTS))
_NOT_STRATUM = (int(Opening.HTTP), int(Opening.RESPONDER_FIRST))  # openings no pool connection has


@dataclass
class HeldPort:
    """How long a subject has held connections to one pool address and port, in all."""

    held_ns: int = 0
    last_ns: int = 0


@dataclass
class MiningState:
    reported: dict[Pair, None] = field(default_factory=dict)  # (miner, pool) pairs, oldest first
    held: dict[Pair, HeldPort] = field(default_factory=dict)  # (subject, "address:port")


@dataclass
class _Assessment:
    scores: list[Score] = field(default_factory=list)
    held: dict[Pair, HeldPort] = field(default_factory=dict)  # entries this batch changed, as they become
    looked_at_pool_ports: bool = False


_Report = Callable[[Pair, dict, int, int, dict], None]


class CryptoMiningDetector(Detector[MiningState, _Assessment]):
    rule_id = "crypto_mining"

    def __init__(self, zones: Zones | None = None, pool_port_min_s: float = 600.0, max_pairs: int = 20_000):
        super().__init__()
        self.zones = zones or Zones()
        self.pool_port_min_ns = int(pool_port_min_s * SECOND)
        self.max_pairs = max_pairs

    def new_state(self) -> MiningState:
        return MiningState()

    def _encode(self, state: MiningState) -> dict[str, Any]:
        return {"reported": [list(p) for p in state.reported],
                "held": [[*p, h.held_ns, h.last_ns] for p, h in state.held.items()]}

    def _decode(self, document: dict[str, Any]) -> MiningState:
        return MiningState(dict.fromkeys(Pair(*p) for p in document["reported"]),
                           {Pair(src, dst): HeldPort(ns, t) for src, dst, ns, t in document["held"]})

    def _from_v0(self, document: dict[str, Any]) -> dict[str, Any]:
        return {"clock": clock_from_v0(document), "reported": [list(Pair.from_v0(p)) for p in document["seen"]],
                "held": [[*Pair.from_v0(k), h["ns"], h["t"]] for k, h in document["held"].items()]}

    def _assess(self, batch: Batch) -> _Assessment:
        out = _Assessment()
        seen: set[Pair] = set()

        def report(pair: Pair, endpoint: dict, ts0: int, ts1: int, evidence: dict) -> None:
            if pair in seen:
                return
            seen.add(pair)
            fresh = pair not in self.state.reported  # scored again, reported once
            out.scores.append(Score(pair, 1.0, True, endpoint, ts0, ts1, evidence, fresh=fresh))  # one alert per miner

        if len(batch.flows):
            self._protocol(batch.flows, report)
            self._pool_ports(batch.flows, report, out)
        if len(batch.dns):
            self._pool_domains(batch.dns, report)
        return out

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """Every pair scored is remembered as reported (mining needs no baseline); held times add up."""
        state = self.state
        state.reported.update(dict.fromkeys(s.subject for s in assessment.scores))
        if len(state.reported) > self.max_pairs:
            state.reported = dict.fromkeys(list(state.reported)[-self.max_pairs:])
        if assessment.looked_at_pool_ports:
            state.held.update(assessment.held)
            state.held = bounded(state.held, self.max_pairs)
        self.touched |= bool(assessment.scores or assessment.held)

    def _protocol(self, flows: FlowRecords, report: _Report) -> None:
        rows = np.flatnonzero(flows["rpc_method"] != "")
        if not len(rows):
            return
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        methods: dict[Pair, set[str]] = {}
        for key, row in zip(keys, rows.tolist(), strict=False):
            pool = f"{address_text(flows['dst_addr'][row])}:{int(flows['dst_port'][row])}"
            methods.setdefault(Pair(key, pool), set()).add(str(flows["rpc_method"][row]))
        for key, row in zip(keys, rows.tolist(), strict=False):
            target, port = address_text(flows["dst_addr"][row]), int(flows["dst_port"][row])
            pair = Pair(key, f"{target}:{port}")
            evidence = {"evidence": "protocol", "pool": target, "port": port,
                        "methods": sorted(methods[pair]), "known_pool_port": port in POOL_PORTS,
                        "bytes_out": int(flows["bytes_out"][row]), "bytes_in": int(flows["bytes_in"][row])}
            report(pair, source_endpoint(flows, row), int(flows["first_ts"][row]), int(flows["last_ts"][row]),
                   evidence)

    def _pool_ports(self, flows: FlowRecords, report: _Report, out: _Assessment) -> None:
        candidates = ((flows["proto"] == 6) & np.isin(flows["dst_port"], _POOL_PORTS) & answered(flows)
                      & ~np.isin(flows["opening"], _NOT_STRATUM))
        if not candidates.any():
            return
        out.looked_at_pool_ports = True
        rows = self.zones.outside(flows, np.flatnonzero(candidates))
        keys = subject_keys(flows, rows)
        for key, row in zip(keys, rows.tolist(), strict=False):
            target, port = address_text(flows["dst_addr"][row]), int(flows["dst_port"][row])
            pair = Pair(key, f"{target}:{port}")
            h = out.held.get(pair)
            if h is None:
                known = self.state.held.get(pair)
                h = out.held[pair] = HeldPort(known.held_ns, known.last_ns) if known else HeldPort()
            h.held_ns += int(flows["last_ts"][row] - flows["first_ts"][row])
            h.last_ns = max(h.last_ns, int(flows["last_ts"][row]))
            if h.held_ns >= self.pool_port_min_ns:
                evidence = {"evidence": "pool_port", "pool": target, "port": port,
                            "held_s": round(h.held_ns / SECOND, 1)}
                report(pair, source_endpoint(flows, row), int(flows["first_ts"][row]), int(flows["last_ts"][row]),
                       evidence)

    def _pool_domains(self, dns: DnsMessages, report: _Report) -> None:
        names = dns["qname"].tolist()
        for i, name in enumerate(names):
            domain = registered_domain(name)
            if domain not in POOL_DOMAINS:
                continue
            endpoint = dns_client_endpoint(dns, i)
            ts = int(dns["ts"][i])
            report(Pair(endpoint["workload"] or endpoint["ip"], domain), endpoint, ts, ts,
                   {"evidence": "pool_domain", "domain": domain, "name": name})
