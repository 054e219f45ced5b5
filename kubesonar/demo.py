"""``kubesonar demo``: a small cluster's traffic, a learning day, then an attack phase, through the whole
pipeline on the embedded default. No root, no network.

The attacks: a new workload (debug-tools) reads the instance metadata service, probes a kubelet,
brute-forces the database, tunnels data through DNS, beacons to a command server every ten seconds
with jitter and contacts a watchlisted host; a frontend pod port-scans its neighbours; the GPU
trainer, hijacked, mines Monero on a pool; the payments API uploads 80 MB to a new host and opens a
port it never used."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kubesonar.compose import AnalysisResult, analyze
from kubesonar.sensor.synthetic import bulk_upload, dns_lookups, syn_scan, tcp_sessions, write_traffic
from kubesonar.shared.watchlist import parse_watchlist

START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PHASE_S = 300.0  # the busy part of each phase
LEARN_S = 26 * 3600.0  # the learning capture: a day of sparse egress, then PHASE_S of everything
METADATA_IP = (169 << 24) | (254 << 16) | (169 << 8) | 254
NODE_IP = (10 << 24) | (0 << 16) | (0 << 8) | 11  # node-1


def _ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


# outside the cluster (documentation ranges, RFC 5737)
GATEWAY_IP, DROP_IP = _ip("198.51.100.20"), _ip("198.51.100.99")  # the payment gateway; a new host
C2_IP, POOL_IP, LISTED_IP = _ip("203.0.113.50"), _ip("203.0.113.77"), _ip("192.0.2.66")
WATCHLIST = json.dumps({"entries": [{"indicator": "192.0.2.66", "reason": "demo threat feed: known C2"},
                                    {"indicator": "stealer.example", "reason": "demo threat feed"}]})
NORMAL_NAMES = ["cart.shop.svc.cluster.local", "redis.shop.svc.cluster.local", "api.payments.svc.cluster.local",
                "postgres.payments.svc.cluster.local", "api.stripe.com", "hooks.slack.com",
                "s3.eu-west-1.amazonaws.com", "sts.amazonaws.com"]


@dataclass(frozen=True)
class _Workload:
    namespace: str
    kind: str
    name: str
    replicas: int
    image: str


_WORKLOADS = [
    _Workload("kube-system", "Deployment", "coredns", 2, "registry.k8s.io/coredns/coredns:v1.11.3"),
    _Workload("shop", "Deployment", "frontend", 3, "ghcr.io/example/shop-frontend:2.4.1"),
    _Workload("shop", "Deployment", "cart", 2, "ghcr.io/example/shop-cart:2.4.1"),
    _Workload("shop", "StatefulSet", "redis", 1, "docker.io/library/redis:7.4"),
    _Workload("payments", "Deployment", "api", 2, "ghcr.io/example/payments-api:1.9.0"),
    _Workload("payments", "StatefulSet", "postgres", 1, "docker.io/library/postgres:16"),
    _Workload("monitoring", "DaemonSet", "node-exporter", 3, "quay.io/prometheus/node-exporter:v1.8.2"),
    _Workload("monitoring", "Deployment", "prometheus", 1, "quay.io/prometheus/prometheus:v2.54.1"),
    _Workload("ml", "Deployment", "trainer", 1, "nvcr.io/nvidia/pytorch:24.08-py3"),
]
_INTRUDER = _Workload("default", "Deployment", "debug-tools", 1, "docker.io/nicolaka/netshoot:latest")
# who talks to whom, on which port, how many sessions per phase
_EDGES = [
    ("frontend", "cart", 8080, 400), ("cart", "redis", 6379, 600), ("frontend", "api", 8443, 150),
    ("api", "postgres", 5432, 300), ("prometheus", "node-exporter", 9100, 120), ("prometheus", "trainer", 9400, 30),
]


def _pods(workloads: list[_Workload]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Pod IPs per workload name, and the pods as `kubectl get pods -A -o json` items."""
    ips: dict[str, np.ndarray] = {}
    items: list[dict] = []
    host = 10
    for w in workloads:
        addrs = []
        for r in range(w.replicas):
            ip = (10 << 24) | (244 << 16) | (len(ips) + 1) << 8 | host
            host += 1
            addrs.append(ip)
            items.append(_pod_item(w, r, ip))
        ips[w.name] = np.array(addrs)
    return ips, items


def _pod_item(w: _Workload, replica: int, ip: int) -> dict:
    text = ".".join(str((ip >> s) & 255) for s in (24, 16, 8, 0))
    labels = {"app": w.name}
    if w.kind == "Deployment":
        labels["pod-template-hash"] = "7d9f8b6c5"
        owner, name = {"kind": "ReplicaSet", "name": f"{w.name}-7d9f8b6c5"}, f"{w.name}-7d9f8b6c5-{replica:05d}"
    else:
        owner, name = {"kind": w.kind, "name": w.name}, f"{w.name}-{replica}"
    return {
        "metadata": {"name": name, "namespace": w.namespace, "labels": labels,
                     "ownerReferences": [dict(owner, controller=True, apiVersion="apps/v1", uid="0")]},
        "spec": {"nodeName": f"node-{replica % 3 + 1}", "containers": [{"name": w.name, "image": w.image}]},
        "status": {"podIP": text, "podIPs": [{"ip": text}]},
    }


def _normal_traffic(rng, ips, offset: float) -> list[dict[str, np.ndarray]]:
    parts = [tcp_sessions(rng, ips[c], ips[s], np.full(len(ips[s]), port), n, 6, PHASE_S, offset)
             for c, s, port, n in _EDGES]
    clients = np.concatenate([ips[w] for w in ("frontend", "cart", "api", "prometheus")])
    parts.append(dns_lookups(rng, clients, 500, PHASE_S, offset, server=int(ips["coredns"][0]), names=NORMAL_NAMES))
    return parts


# what a client's first segment on 443 starts with (a TLS record header), so the demo's HTTPS is TLS to the
# sensor (flow schema 5's opening); the rest of the record is not read
TLS_RECORD = b"\x17\x03\x03\x00\x40"


def _egress_day(rng, ips) -> list[dict[str, np.ndarray]]:
    """The learning day's sparse traffic out of the cluster: the payments API calls its gateway a few
    times an hour (irregularly, as payments come)."""
    calls = np.r_[0.0, rng.uniform(0, LEARN_S - PHASE_S, 119)]  # from the first second: the day is whole
    return [tcp_sessions(rng, ips["api"], np.array([GATEWAY_IP]), np.array([443]), len(calls), 6, 0.0,
                         starts=np.sort(calls), opening=TLS_RECORD)]


def _attacks(rng, ips, at: float) -> list[dict[str, np.ndarray]]:
    intruder, dns = ips["debug-tools"], int(ips["coredns"][0])
    scanner = int(ips["frontend"][1])
    tunnel = [f"{rng.bytes(20).hex()}{i:04x}.t.stealer-dns.net" for i in range(80)]
    beacons = at + 20 + np.arange(25) * 10.0 + rng.uniform(-2, 2, 25)  # every 10 s, +-2 s jitter
    xmrig_login = (b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"48edfHu7V9Z84YzzMa6fUueoE'
                   b'LZ9ZRXq9VetWzYGzKt52XU5xvqgzYnDK9URnRoJMk1j8nLwEVsaSWJ4fhdUyZijBGUicoD","pass":"x",'
                   b'"agent":"XMRig/6.21.0"}}\n')
    return [
        tcp_sessions(rng, intruder, ips["cart"], np.full(len(ips["cart"]), 8080), 5, 4, 60.0, at + 30),
        syn_scan(rng, scanner, int(ips["cart"][0]), 200, PHASE_S, start=at + 120),
        syn_scan(rng, scanner, int(ips["redis"][0]), 200, PHASE_S, start=at + 125),
        # the intruder guesses the database's password: 80 short sessions in two minutes
        tcp_sessions(rng, intruder, ips["postgres"], np.full(1, 5432), 80, 2, 120.0, at + 90),
        # ... asks the instance metadata service for the node's credentials, and probes a kubelet
        tcp_sessions(rng, intruder, np.array([METADATA_IP]), np.full(1, 80), 2, 2, 5.0, at + 40,
                     opening=b"GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n\r\n"),
        tcp_sessions(rng, intruder, np.array([NODE_IP]), np.full(1, 10250), 3, 2, 5.0, at + 50),
        # ... tunnels data out through DNS TXT questions, beacons to its server, reaches a listed host
        dns_lookups(rng, intruder, len(tunnel), 60.0, at + 60, server=dns, names=tunnel, qtype=16, both_types=False),
        tcp_sessions(rng, intruder, np.array([C2_IP]), np.array([443]), len(beacons), 4, 0.0, starts=beacons,
                     opening=TLS_RECORD),
        tcp_sessions(rng, intruder, np.array([LISTED_IP]), np.array([8080]), 1, 4, 5.0, at + 70),
        # the hijacked trainer resolves a pool and mines on it
        dns_lookups(rng, ips["trainer"], 1, 1.0, at + 100, server=dns, names=["xmr-eu1.nanopool.org"]),
        tcp_sessions(rng, ips["trainer"], np.array([POOL_IP]), np.array([14444]), 1, 8, 1.0, at + 101,
                     first_request=xmrig_login),
        # the payments API uploads 80 MB to a host it never used, and opens a port it never used
        bulk_upload(int(ips["api"][0]), DROP_IP, 443, 80_000_000, at + 150, 60.0, first_bytes=TLS_RECORD),
        tcp_sessions(rng, ips["api"], np.array([GATEWAY_IP]), np.array([4444]), 1, 4, 5.0, at + 220),
    ]


def demo_captures(root: Path, seed: int = 11) -> tuple[Path, Path, Path, dict[str, np.ndarray]]:
    """Write the demo's learning capture, detection capture and pod list into ``root``."""
    rng = np.random.default_rng(seed)
    ips, items = _pods(_WORKLOADS + [_INTRUDER])
    root.mkdir(parents=True, exist_ok=True)
    learn, detect, pods = root / "learning.pcap", root / "detection.pcap", root / "pods.json"
    write_traffic(learn, _egress_day(rng, ips) + _normal_traffic(rng, ips, LEARN_S - PHASE_S), START_S)
    write_traffic(detect, _normal_traffic(rng, ips, LEARN_S) + _attacks(rng, ips, LEARN_S), START_S)
    pods.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return learn, detect, pods, ips


def run_demo(workdir: str | None = None, seed: int = 11) -> tuple[AnalysisResult, dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="kubesonar-demo-") as tmp:
        root = Path(workdir or tmp)
        learn, detect, pods, ips = demo_captures(root, seed)
        feed = root / "state" / "watchlists" / "demo-feed.json"
        feed.parent.mkdir(parents=True, exist_ok=True)
        feed.write_text(WATCHLIST)
        result = analyze([str(detect)], learn=[str(learn)], pods=str(pods), cluster="demo",
                         state_dir=str(root / "state"))
    scanner = int(ips["frontend"][1])
    intruder = "default/Deployment/debug-tools"
    truth = {"scanner": ".".join(str((scanner >> s) & 255) for s in (24, 16, 8, 0)),
             "new_workload": intruder, "brute_force": intruder, "metadata_access": intruder,
             "api_server_access": intruder, "dns_tunneling": intruder, "beaconing": intruder,
             "watchlist_hit": intruder, "crypto_mining": "ml/Deployment/trainer",
             "exfiltration": "payments/Deployment/api", "unusual_destination": "payments/Deployment/api"}
    return result, truth


def demo_watchlist():
    """The demo's threat feed as entries (tests give it to detectors directly)."""
    return parse_watchlist(WATCHLIST.encode(), "demo-feed")
