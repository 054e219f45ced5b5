"""``kubesonar demo``: a small cluster's traffic, a learning phase, then a new workload that reads the
instance metadata service, probes a kubelet and brute-forces the database, and a pod port-scanning
its neighbours, through the whole pipeline on the embedded default. No root, no network."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kubesonar.functions.local.runtime import AnalysisResult, analyze
from kubesonar.sensor.synthetic import dns_lookups, syn_scan, tcp_sessions, write_traffic

START_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PHASE_S = 300.0
METADATA_IP = (169 << 24) | (254 << 16) | (169 << 8) | 254
NODE_IP = (10 << 24) | (0 << 16) | (0 << 8) | 11  # node-1


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
]
_INTRUDER = _Workload("default", "Deployment", "debug-tools", 1, "docker.io/nicolaka/netshoot:latest")
# who talks to whom, on which port, how many sessions per phase
_EDGES = [
    ("frontend", "cart", 8080, 400), ("cart", "redis", 6379, 600), ("frontend", "api", 8443, 150),
    ("api", "postgres", 5432, 300), ("prometheus", "node-exporter", 9100, 120),
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
    parts.append(dns_lookups(rng, clients, 500, PHASE_S, offset, server=int(ips["coredns"][0])))
    return parts


def run_demo(workdir: str | None = None, seed: int = 11) -> tuple[AnalysisResult, dict[str, str]]:
    rng = np.random.default_rng(seed)
    ips, items = _pods(_WORKLOADS + [_INTRUDER])
    with tempfile.TemporaryDirectory(prefix="kubesonar-demo-") as tmp:
        root = Path(workdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        learn, detect, pods = root / "learning.pcap", root / "detection.pcap", root / "pods.json"
        write_traffic(learn, _normal_traffic(rng, ips, 0.0), START_S)
        scanner = int(ips["frontend"][1])
        attack = _normal_traffic(rng, ips, PHASE_S) + [
            tcp_sessions(rng, ips["debug-tools"], ips["cart"], np.full(len(ips["cart"]), 8080), 5, 4, 60.0, PHASE_S + 30),
            syn_scan(rng, scanner, int(ips["cart"][0]), 200, PHASE_S, start=PHASE_S + 120),
            syn_scan(rng, scanner, int(ips["redis"][0]), 200, PHASE_S, start=PHASE_S + 125),
            # the intruder guesses the database's password: 80 short sessions in two minutes
            tcp_sessions(rng, ips["debug-tools"], ips["postgres"], np.full(1, 5432), 80, 2, 120.0, PHASE_S + 90),
            # ... asks the instance metadata service for the node's credentials, and probes a kubelet
            tcp_sessions(rng, ips["debug-tools"], np.array([METADATA_IP]), np.full(1, 80), 2, 2, 5.0, PHASE_S + 40),
            tcp_sessions(rng, ips["debug-tools"], np.array([NODE_IP]), np.full(1, 10250), 3, 2, 5.0, PHASE_S + 50),
        ]
        write_traffic(detect, attack, START_S)
        pods.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        result = analyze([str(detect)], learn=[str(learn)], pods=str(pods), cluster="demo",
                         state_dir=str(root / "state"))
    truth = {"scanner": ".".join(str((scanner >> s) & 255) for s in (24, 16, 8, 0)),
             "new_workload": "default/Deployment/debug-tools", "brute_force": "default/Deployment/debug-tools",
             "metadata_access": "default/Deployment/debug-tools", "api_server_access": "default/Deployment/debug-tools"}
    return result, truth
