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
  4444), so only long-held connections outside the cluster count.

Catches: cryptojacking with xmrig, cgminer, ethminer and their forks, plain or through a proxy that
keeps the protocol; pool lookups even when the connection is encrypted. Misses: Stratum inside TLS
to a pool not in the list on a port not in the list; Stratum v2 (binary, encrypted). Crypto node
P2P traffic (Bitcoin 8333, Ethereum 30303, Monero 18080) is not mining and is not reported.
False positives: a blockchain team's own pool or solo-mining tests; security tooling resolving pool
domains (allowlist it).

Score: 1.0 per (miner, pool) pair, reported once; one alert per miner, its count the pools and kinds
of evidence seen, its evidence the latest.

Example:
    >>> d = CryptoMiningDetector()
    >>> d.decide(d.update(flows, None, dns))  # doctest: +SKIP
"""

from __future__ import annotations


import numpy as np
from kubesonar.shared.detectors import Score, StateDocument, bounded, dns_client_endpoint, source_endpoint, subject_keys
from kubesonar.shared.dns import DnsMessages, registered_domain
from kubesonar.shared.flow import ConnState, FlowRecords, address_text
from kubesonar.shared.mining import POOL_DOMAINS, POOL_PORTS
from kubesonar.shared.netzones import Zones
from kubesonar.shared.pod_events import PodEvents

SECOND = 1_000_000_000
_POOL_PORTS = np.array(sorted(POOL_PORTS))
_OPEN = (int(ConnState.ESTABLISHED), int(ConnState.CLOSED), int(ConnState.RESET), int(ConnState.OTHER))


class CryptoMiningDetector(StateDocument):
    rule_id = "crypto_mining"
    EMPTY = {"seen": [], "held": {}}

    def __init__(self, zones: Zones | None = None, pool_port_min_s: float = 600.0, max_pairs: int = 20_000):
        super().__init__()
        self.zones = zones or Zones()
        self.pool_port_min_ns = int(pool_port_min_s * SECOND)
        self.max_pairs = max_pairs

    def update(self, flows: FlowRecords, pods: PodEvents | None = None, dns: DnsMessages | None = None) -> list[Score]:
        self.touched = False
        seen = dict.fromkeys(self._state["seen"])
        scores: list[Score] = []

        def report(pair: str, endpoint: dict, ts0: int, ts1: int, evidence: dict, identity: tuple) -> None:
            if pair in seen:
                return
            seen[pair] = None
            self.touched = True
            scores.append(Score(pair, 1.0, True, endpoint, ts0, ts1, evidence))  # one alert per miner

        if len(flows):
            self._protocol(flows, report)
            self._pool_ports(flows, report)
        if dns is not None and len(dns):
            self._pool_domains(dns, report)
        self._state["seen"] = list(seen)[-self.max_pairs :]
        return scores

    def _protocol(self, flows: FlowRecords, report) -> None:
        rows = np.flatnonzero(flows["rpc_method"] != "")
        if not len(rows):
            return
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        keys = subject_keys(flows, rows)
        methods: dict[str, set[str]] = {}
        for key, row in zip(keys, rows.tolist()):
            pool = f"{address_text(flows['dst_addr'][row])}:{int(flows['dst_port'][row])}"
            methods.setdefault(f"{key}>{pool}", set()).add(str(flows["rpc_method"][row]))
        for key, row in zip(keys, rows.tolist()):
            target, port = address_text(flows["dst_addr"][row]), int(flows["dst_port"][row])
            pair = f"{key}>{target}:{port}"
            evidence = {"evidence": "protocol", "pool": target, "port": port,
                        "methods": sorted(methods[pair]), "known_pool_port": port in POOL_PORTS,
                        "bytes_out": int(flows["bytes_out"][row]), "bytes_in": int(flows["bytes_in"][row])}
            report(pair, source_endpoint(flows, row), int(flows["first_ts"][row]), int(flows["last_ts"][row]),
                   evidence, (target, str(port)))

    def _pool_ports(self, flows: FlowRecords, report) -> None:
        candidates = (flows["proto"] == 6) & np.isin(flows["dst_port"], _POOL_PORTS) & np.isin(flows["state"], _OPEN)
        if not candidates.any():
            return
        rows = self.zones.outside(flows, np.flatnonzero(candidates))
        held = self._state["held"]
        keys = subject_keys(flows, rows)
        for key, row in zip(keys, rows.tolist()):
            target, port = address_text(flows["dst_addr"][row]), int(flows["dst_port"][row])
            pair = f"{key}>{target}:{port}"
            h = held.setdefault(pair, {"ns": 0, "t": 0})
            h["ns"] += int(flows["last_ts"][row] - flows["first_ts"][row])
            h["t"] = max(h["t"], int(flows["last_ts"][row]))
            self.touched = True
            if h["ns"] >= self.pool_port_min_ns:
                evidence = {"evidence": "pool_port", "pool": target, "port": port,
                            "held_s": round(h["ns"] / SECOND, 1)}
                report(pair, source_endpoint(flows, row), int(flows["first_ts"][row]), int(flows["last_ts"][row]),
                       evidence, (target, str(port)))
        self._state["held"] = bounded(held, self.max_pairs)

    def _pool_domains(self, dns: DnsMessages, report) -> None:
        names = dns["qname"].tolist()
        for i, name in enumerate(names):
            domain = registered_domain(name)
            if domain not in POOL_DOMAINS:
                continue
            endpoint = dns_client_endpoint(dns, i)
            pair = f"{endpoint['workload'] or endpoint['ip']}>{domain}"
            ts = int(dns["ts"][i])
            report(pair, endpoint, ts, ts, {"evidence": "pool_domain", "domain": domain, "name": name}, (domain,))

