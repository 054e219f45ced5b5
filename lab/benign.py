"""The long benign run: days of simulated, realistic cluster traffic across dozens of workloads, through
the real batch format and the detection core on the embedded default. Every alert it raises is a false
alarm; the report counts them per workload-day.

The cluster (40 workloads, 6 nodes) is an online shop with its platform: an ingress, frontends, a dozen
backend services calling each other and their databases through connection pools, a Kafka, caches,
CronJobs (every 15 minutes, hourly, nightly), Prometheus scraping every pod every 30 s, metrics-server
reading the kubelets, a log shipper on every node sending to a SaaS every 10 s, and egress the way
shops have it: payment, e-mail and SMS APIs behind rotating addresses, a webhook sender reaching
hundreds of customer endpoints, an exchange-rate poller every minute, a licence check every five
minutes, a nightly backup to object storage. Load follows the day (a diurnal curve), requests arrive
as Poisson processes, and every day a third of the Deployments roll out a new release (new pods, new
addresses, clients briefly failing against the old ones, image tags that change).

Flows are generated per 10-minute window as flow records (not packets: days of packets would take
hours to write), enriched as the sensor's pod watch would, with the DNS questions the pods ask, and
encoded as the batches a sensor publishes.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.alerts import alert_rule
from kubesonar.shared.allowlist import AllowEntry, load_allowlist
from kubesonar.shared.batch import PUBSUB_LIMIT, BatchHeader, decode_batch, encode_batch
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.flow import SCHEMA_4_NAMES, ConnState, EndReason, FlowRecords
from kubesonar.shared.pipeline import CoreConfig, Dependencies, process_batch
from lab.benign_lookalikes import (
    ENDPOINTS,
    ENVOY,
    GO_HTTP,
    OPENSSL,
    Sessions,
    add_lookalikes,
    add_opening_lookalikes,
    cdn_pool,
    cdn_questions,
    egress_tls,
    gaps,
    openings,
)

SECOND = 1_000_000_000
WINDOW_S = 600
START_S = 1_767_225_600  # 2026-01-01T00:00:00Z, a Thursday


@dataclass
class Workload:
    namespace: str
    kind: str
    name: str
    replicas: int
    image: str
    addresses: list[int] = field(default_factory=list)
    release: int = 1

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"


def _w(spec: str, replicas: int) -> Workload:
    namespace, kind, name = spec.split("/")
    return Workload(namespace, kind, name, replicas, f"registry.example.com/{namespace}/{name}")


WORKLOADS = [
    _w("ingress/DaemonSet/ingress-nginx", 6), _w("shop/Deployment/storefront", 4), _w("shop/Deployment/mobile-bff", 3),
    _w("shop/Deployment/admin", 1), _w("shop/Deployment/cart", 3), _w("shop/Deployment/catalog", 3),
    _w("shop/Deployment/checkout", 2), _w("shop/Deployment/orders", 2), _w("shop/Deployment/payments", 2),
    _w("shop/Deployment/users", 2), _w("shop/Deployment/search", 2), _w("shop/Deployment/inventory", 2),
    _w("shop/Deployment/shipping", 2), _w("shop/Deployment/recommendations", 2), _w("shop/Deployment/reviews", 2),
    _w("shop/Deployment/notifications", 2), _w("shop/Deployment/webhooks", 2), _w("shop/Deployment/fx-rates", 1),
    _w("shop/StatefulSet/postgres-orders", 2), _w("shop/StatefulSet/postgres-users", 2),
    _w("shop/StatefulSet/postgres-catalog", 2), _w("shop/StatefulSet/redis-cart", 1),
    _w("shop/StatefulSet/redis-sessions", 1), _w("shop/StatefulSet/kafka", 3), _w("shop/StatefulSet/elasticsearch", 3),
    _w("shop/CronJob/report-gen", 1), _w("shop/CronJob/cleanup", 1), _w("shop/CronJob/nightly-backup", 1),
    _w("shop/Deployment/license-agent", 1), _w("shop/Deployment/image-resizer", 2),
    _w("monitoring/StatefulSet/prometheus", 1), _w("monitoring/DaemonSet/node-exporter", 6),
    _w("monitoring/Deployment/grafana", 1), _w("monitoring/Deployment/alertmanager", 1),
    _w("logging/DaemonSet/fluent-bit", 6), _w("kube-system/Deployment/coredns", 2),
    _w("kube-system/Deployment/metrics-server", 1), _w("kube-system/DaemonSet/kube-proxy", 6),
    _w("cert-manager/Deployment/cert-manager", 1), _w("argocd/Deployment/argocd-repo-server", 1),
    # the look-alikes of issue 17's signals (lab/benign_lookalikes.py)
    _w("kube-system/DaemonSet/chrony", 6), _w("monitoring/Deployment/blackbox-exporter", 1),
    _w("shop/Deployment/live-updates", 2), _w("observability/DaemonSet/otel-collector", 6),
    _w("istio-system/Deployment/istiod", 1), _w("shop/Deployment/fraud-check", 2), _w("shop/Deployment/media-proxy", 2),
]
NODES = [(10 << 24) | 11 + i for i in range(6)]  # 10.0.0.11 ..
API_SERVER = (10 << 24) | (96 << 16) | 1  # the kubernetes Service

# (client, server, port, new connections per second at peak, segments per connection)
EDGES = [
    ("ingress-nginx", "storefront", 8080, 6.0, 8), ("ingress-nginx", "mobile-bff", 8080, 3.0, 8),
    ("ingress-nginx", "admin", 8080, 0.05, 10), ("storefront", "catalog", 8080, 4.0, 6),
    ("storefront", "cart", 8080, 2.0, 6), ("storefront", "search", 8080, 1.5, 6),
    ("storefront", "recommendations", 8080, 1.0, 6), ("storefront", "reviews", 8080, 0.8, 6),
    ("mobile-bff", "catalog", 8080, 2.0, 6), ("mobile-bff", "cart", 8080, 1.0, 6), ("mobile-bff", "users", 8080, 0.8, 6),
    ("cart", "redis-cart", 6379, 0.3, 20), ("cart", "inventory", 8080, 0.8, 6), ("checkout", "payments", 8080, 0.2, 8),
    ("checkout", "orders", 8080, 0.2, 8), ("checkout", "shipping", 8080, 0.2, 6), ("storefront", "checkout", 8080, 0.2, 8),
    ("orders", "postgres-orders", 5432, 0.05, 40), ("users", "postgres-users", 5432, 0.05, 40),
    ("catalog", "postgres-catalog", 5432, 0.05, 40), ("search", "elasticsearch", 9200, 0.5, 8),
    ("orders", "kafka", 9092, 0.02, 60), ("notifications", "kafka", 9092, 0.02, 60), ("shipping", "kafka", 9092, 0.02, 60),
    ("storefront", "redis-sessions", 6379, 0.3, 20), ("users", "redis-sessions", 6379, 0.2, 20),
    ("admin", "orders", 8080, 0.02, 6), ("grafana", "prometheus", 9090, 0.05, 10),
    ("prometheus", "alertmanager", 9093, 0.03, 4), ("catalog", "image-resizer", 8080, 0.3, 10),
]
SCRAPED_PORT = 9090
# egress: (client, destination pool name, port, calls per second at peak)
SAAS = {  # name -> addresses (DNS rotates among them), the names asked
    "payments-api": ([f"198.51.100.{i}" for i in (10, 11, 12, 13)] + [f"203.0.113.{i}" for i in (40, 41, 42, 43)],
                     ["api.payments-provider.example"]),
    "email-api": ([f"192.0.2.{i}" for i in range(100, 116)], ["email.eu-west-1.mail-provider.example"]),
    "sms-api": ([f"198.18.{j}.{i}" for j in (3, 4) for i in (5, 6, 7)], ["api.sms-provider.example"]),
    "logs-saas": (["198.18.10.20", "198.18.10.21"], ["intake.logs-provider.example"]),
    "fx-api": (["198.18.20.8"], ["api.rates-provider.example"]),
    "license": (["198.18.30.9"], ["license.vendor.example"]),
    "object-storage": ([f"198.18.{j}.{i}" for j in (40, 41, 42) for i in range(1, 11)], ["s3.eu-west-1.objects.example"]),
    "git": (["198.18.50.3", "198.18.50.4"], ["github.example"]),
    "acme": (["198.18.60.7"], ["acme-v02.letsencrypt.example"]),
}
EGRESS = [("payments", "payments-api", 443, 0.2), ("notifications", "email-api", 443, 0.3),
          ("notifications", "sms-api", 443, 0.05), ("argocd-repo-server", "git", 443, 0.005),
          ("cert-manager", "acme", 443, 0.0005)]
WEBHOOK_TARGETS = 600  # customer endpoints across the internet
# the look-alikes' names (lab/benign_lookalikes.py); fraud-check asks its DoH servers' names, then uses DoH
LOOKALIKE_NAMES = {
    "chrony": ["time.cloudflare.com", "time.nist.gov", "ntp.se", "pool.ntp.org"],
    "blackbox-exporter": [ENDPOINTS["shop-public"][1], "api.payments-provider.example"],
    "live-updates": [ENDPOINTS["push"][1]], "otel-collector": [ENDPOINTS["otlp"][1]],
    "prometheus": [ENDPOINTS["metrics"][1]], "fraud-check": ["cloudflare-dns.com", "dns.google"],
}


def _ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _v16(values: np.ndarray) -> np.ndarray:
    words = np.zeros((len(values), 2), dtype=">u8")
    words[:, 1] = np.asarray(values, dtype=np.uint64) | np.uint64(0xFFFF << 32)
    return words.view("V16").ravel()


def diurnal(t_s: np.ndarray | float) -> np.ndarray | float:
    """Load relative to the peak: 0.15 at 4 am, 1 at 4 pm (UTC as local time)."""
    hour = (np.asarray(t_s) / 3600.0) % 24
    return 0.575 - 0.425 * np.cos((hour - 4) / 24 * 2 * math.pi)


class Cluster:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.by_name = {w.name: w for w in WORKLOADS}
        self._next = 1
        for w in WORKLOADS:
            w.addresses = self._new_addresses(w.replicas)
        self.webhook_ips = rng.integers(_ip("11.0.0.0"), _ip("99.255.255.255"), WEBHOOK_TARGETS)
        self.retired: list[tuple[int, str, float]] = []  # (address, workload, retired at)
        self.sessions = Sessions(rng, mean_life_s=6 * 3600)  # long-lived connections reconnect every few hours
        self.cdn_names = cdn_pool(rng)

    def _new_addresses(self, n: int) -> list[int]:
        out = [(10 << 24) | (244 << 16) | (self._next + i) for i in range(n)]
        self._next += n
        return out

    def roll_out(self, w: Workload, at_s: float) -> None:
        """A release: new pods (new addresses) with a new image tag; the old addresses linger a moment."""
        self.retired += [(a, w.name, at_s) for a in w.addresses]
        w.addresses = self._new_addresses(w.replicas)
        w.release += 1

    def endpoint(self, address: int) -> tuple[str, str, str, str, str]:
        """(namespace, pod, kind, name, images) of an address, as the sensor's pod watch names it."""
        for w in WORKLOADS:
            if address in w.addresses:
                return (w.namespace, f"{w.name}-{w.release:x}-{address & 0xFFFF:05d}", w.kind, w.name,
                        f"{w.image}:1.{w.release}.0")
        if address == API_SERVER:
            return ("default", "", "Service", "kubernetes", "")
        return ("", "", "", "", "")


def _column(value, dtype, n: int) -> np.ndarray:
    """``value`` as ``n`` values of ``dtype`` (a scalar repeated; np.broadcast_to cost a sixth of a run)."""
    array = np.asarray(value, dtype=dtype)
    return np.full(n, array, dtype=dtype) if array.ndim == 0 else np.broadcast_to(array, (n,)).copy()


@dataclass
class _Flows:
    parts: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, src, dst, dport, proto, start, duration, pkts_out, bytes_out, pkts_in, bytes_in,
            state=ConnState.CLOSED, sport=None, rng=None, conn_start=None, extra: dict | None = None) -> None:
        """Flows (scalars broadcast); ``conn_start`` for a long connection's later records (default: their
        start), ``extra`` for schema-4 columns (TLS fingerprints, in-session gaps) by name."""
        n = max(np.size(x) for x in (src, dst, dport, start, duration, bytes_out, bytes_in, sport if sport is not None else 0))
        if not n or not np.size(start):
            return
        b = lambda x, dt=np.int64: _column(x, dt, n)  # noqa: E731
        part = {
            "src": b(src), "dst": b(dst), "dport": b(dport), "proto": b(proto), "start": b(start, np.float64),
            "duration": b(duration, np.float64), "po": b(pkts_out), "bo": b(bytes_out), "pi": b(pkts_in),
            "bi": b(bytes_in), "state": b(int(state)),
            "sport": b(sport) if sport is not None else rng.integers(32768, 61000, n),
        }
        part["conn_start"] = part["start"] if conn_start is None else b(conn_start, np.float64)
        for name, value in (extra or {}).items():
            part[name] = b(value, object if isinstance(value, str) else np.int64)
        self.parts.append(part)


def _pick(rng, addresses, n):
    return np.asarray(addresses)[rng.integers(0, len(addresses), n)]


def simulate_window(cluster: Cluster, t0: float, rng: np.random.Generator) -> tuple[FlowRecords, list[dict]]:
    """Flow records and DNS rows of the window [t0, t0 + WINDOW_S)."""
    f = _Flows()
    load = float(diurnal(t0 + WINDOW_S / 2))
    by = cluster.by_name

    def connections(client: Workload, server_addrs, port, rate, segments, start_range=(0, WINDOW_S)):
        n = rng.poisson(rate * load * WINDOW_S * 0.1)  # connection reuse: a tenth of the requests open one
        if not n:
            return
        start = t0 + rng.uniform(*start_range, n)
        dur = rng.exponential(0.3 + segments * 0.02, n)
        req = rng.integers(200, 1500, n) * segments // 2
        resp = rng.integers(500, 20000, n) * segments // 2
        f.add(_pick(rng, client.addresses, n), _pick(rng, server_addrs, n), port, 6, start, dur,
              segments + 4, req + 40 * (segments + 4), segments + 3, resp + 40 * (segments + 3), rng=rng)

    for client, server, port, rate, segments in EDGES:
        connections(by[client], by[server].addresses, port, rate, segments)
        if by[client].namespace == by[server].namespace == "shop" and f.parts:  # the mesh's mTLS between sidecars
            f.parts[-1].update({k: np.full(len(f.parts[-1]["start"]), v, dtype=object) for k, v in
                                ENVOY.columns(f"outbound_.{port}_._.{server}.shop.svc.cluster.local").items()})
    # failures against pods that just went away in a rollout: a few refused connections per client
    for address, name, at in [r for r in cluster.retired if t0 - 120 <= r[2] < t0 + WINDOW_S]:
        callers = [e[0] for e in EDGES if e[1] == name]
        for caller in callers:
            n = int(rng.integers(1, 4))
            f.add(_pick(rng, by[caller].addresses, n), address, 8080, 6, at + rng.uniform(0, 20, n), 0.001,
                  1, 60, 1, 40, ConnState.REJECTED, rng=rng)
    # Prometheus scrapes every pod every 30 s on one long connection each (interim records per minute),
    # the cadence visible as in-session gaps
    targets = np.array([a for w in WORKLOADS for a in w.addresses])
    prom = by["prometheus"].addresses[0]
    for minute in range(WINDOW_S // 60):
        f.add(prom, targets, SCRAPED_PORT, 6, t0 + minute * 60.0, 59.0, 10, 2_000, 10, 60_000,
              ConnState.ESTABLISHED, sport=40_000 + np.arange(len(targets)), extra=gaps(90.0, 30.0, 0.02))
    # metrics-server reads every kubelet every 60 s; controllers watch the API server
    for k in range(WINDOW_S // 60):
        f.add(by["metrics-server"].addresses[0], NODES, 10250, 6, t0 + k * 60.0 + rng.uniform(0, 1, len(NODES)),
              0.2, 8, 900, 8, 30_000, rng=rng)
    for name in ("cert-manager", "argocd-repo-server", "metrics-server", "prometheus"):
        f.add(by[name].addresses, API_SERVER, 443, 6, t0 + rng.uniform(0, WINDOW_S, len(by[name].addresses)),
              WINDOW_S / 2, 20, 4_000, 20, 50_000, ConnState.ESTABLISHED, rng=rng)
    # egress through rotating addresses
    for client, pool, port, rate in EGRESS:
        n = rng.poisson(rate * load * WINDOW_S)
        f.add(_pick(rng, by[client].addresses, n), _pick(rng, [_ip(a) for a in SAAS[pool][0]], n), port, 6,
              t0 + rng.uniform(0, WINDOW_S, n), rng.exponential(0.4, n), 12, rng.integers(2_000, 8_000, n), 12,
              rng.integers(3_000, 30_000, n), rng=rng, extra=egress_tls(client, pool).columns(SAAS[pool][1][0]))
    n = rng.poisson(0.4 * load * WINDOW_S)  # webhooks to customers
    f.add(_pick(rng, by["webhooks"].addresses, n), _pick(rng, cluster.webhook_ips, n), 443, 6,
          t0 + rng.uniform(0, WINDOW_S, n), rng.exponential(0.5, n), 10, rng.integers(1_500, 6_000, n), 8,
          rng.integers(800, 3_000, n), rng=rng, extra=GO_HTTP.columns("hooks.customer.example"))
    # periodic egress by design: log shipping every 10 s from every node, rates every minute, licence every 5
    logs = [_ip(a) for a in SAAS["logs-saas"][0]]
    for k in range(WINDOW_S // 10):
        f.add(by["fluent-bit"].addresses, _pick(rng, logs, 6), 443, 6,
              t0 + k * 10.0 + rng.uniform(0, 0.5, 6), 0.3, 14, rng.integers(8_000, 12_000, 6), 10, 900, rng=rng,
              extra=OPENSSL.columns(SAAS["logs-saas"][1][0]))
    for k in range(WINDOW_S // 60):
        f.add(by["fx-rates"].addresses[0], _ip(SAAS["fx-api"][0][0]), 443, 6, [t0 + k * 60.0 + rng.uniform(0, 0.2)],
              0.2, 10, 1_400, 10, 5_200, rng=rng, extra=GO_HTTP.columns(SAAS["fx-api"][1][0]))
    for k in range(WINDOW_S // 300):
        f.add(by["license-agent"].addresses[0], _ip(SAAS["license"][0][0]), 443, 6, [t0 + k * 300.0], 0.3, 10,
              1_100, 10, 2_400, rng=rng, extra=OPENSSL.columns(SAAS["license"][1][0]))
    # CronJobs: cleanup every 15 minutes, reports hourly, backup nightly at 02:00 (about 2 GB)
    for k in range(WINDOW_S // 900 + 1):
        at = (math.floor(t0 / 900) + k) * 900.0
        if t0 <= at < t0 + WINDOW_S:
            job = by["cleanup"]
            cluster.roll_out(job, at)  # a Job pod each run: a new pod and address
            cluster.retired.pop()  # nobody calls a job: nothing fails against its old address
            f.add(job.addresses[0], _pick(rng, by["postgres-orders"].addresses, 3), 5432, 6, at + rng.uniform(1, 5, 3),
                  2.0, 20, 3_000, 20, 9_000, rng=rng)
    hour = math.floor(t0 / 3600) * 3600.0
    if t0 <= hour + 60 < t0 + WINDOW_S:
        f.add(by["report-gen"].addresses[0], _pick(rng, by["postgres-orders"].addresses, 4), 5432, 6,
              hour + 60 + rng.uniform(0, 30, 4), 40.0, 400, 60_000, 600, 5_000_000, rng=rng)
    day = math.floor(t0 / 86400) * 86400.0
    backup_at = day + 2 * 3600
    if t0 <= backup_at < t0 + WINDOW_S:
        stores = [_ip(a) for a in SAAS["object-storage"][0]]
        f.add(by["nightly-backup"].addresses[0], _pick(rng, by["postgres-orders"].addresses, 2), 5432, 6,
              [backup_at, backup_at + 1], 500.0, 200_000, 10_000_000, 1_400_000, 2_000_000_000, rng=rng)
        f.add(by["nightly-backup"].addresses[0], _pick(rng, stores, 40), 443, 6, backup_at + np.arange(40) * 12.0,
              11.0, 40_000, rng.integers(45_000_000, 55_000_000, 40), 20_000, 1_200_000, rng=rng,
              extra=GO_HTTP.columns(SAAS["object-storage"][1][0]))
    add_lookalikes(f, cluster, t0, rng, cluster.sessions, NODES)
    add_opening_lookalikes(f, cluster, t0)
    dns = _dns(cluster, t0, rng, load)
    return _records(cluster, f), dns


def _dns(cluster: Cluster, t0: float, rng, load: float) -> list[dict]:
    """The questions pods ask: their services (with the search-path misses ndots:5 causes) and their
    providers' names, a few CDN asset hosts; every question answered."""
    rows = []
    coredns = cluster.by_name["coredns"].addresses[0]
    askers = {e[0]: {e[1]} for e in EDGES}
    for client, server, *_ in EDGES:
        askers[client].add(server)
    for client, pool, *_ in EGRESS + [("fluent-bit", "logs-saas", 0, 0), ("fx-rates", "fx-api", 0, 0),
                                      ("license-agent", "license", 0, 0), ("nightly-backup", "object-storage", 0, 0)]:
        askers.setdefault(client, set()).add(f"@{pool}")
    for client, names in LOOKALIKE_NAMES.items():
        askers.setdefault(client, set()).update(f"={name}" for name in names)
    for client, wanted in askers.items():
        w = cluster.by_name[client]
        names = []
        for target in sorted(wanted):
            if target.startswith("@"):
                names += SAAS[target[1:]][1]
            elif target.startswith("="):
                names.append(target[1:])
            else:
                ns = cluster.by_name[target].namespace
                names += [f"{target}.{ns}.svc.cluster.local", f"{target}.{w.namespace}.svc.cluster.local"]
        n = rng.poisson(20 * load)
        for _ in range(n):
            name = names[int(rng.integers(0, len(names)))]
            rows += _dns_exchange(cluster, w, t0 + float(rng.uniform(0, WINDOW_S)), coredns, name, rng, 1)
    # the storefront's browsers are not in the cluster, but image-resizer fetches from a CDN: asset hosts
    for _ in range(rng.poisson(15 * load)):
        host = f"d{rng.integers(1, 40):02d}{'abcdefgh'[rng.integers(0, 8)]}.cdn-provider.example"
        rows += _dns_exchange(cluster, cluster.by_name["image-resizer"], t0 + float(rng.uniform(0, WINDOW_S)),
                              coredns, host, rng, 2)
    # media-proxy: hundreds of hashed CDN names, each answered by a CNAME chain
    for host in cdn_questions(rng, load, cluster.cdn_names):
        rows += _dns_exchange(cluster, cluster.by_name["media-proxy"], t0 + float(rng.uniform(0, WINDOW_S)), coredns,
                              host, rng, int(rng.integers(2, 5)))
    return rows


def _dns_exchange(cluster, w: Workload, ts: float, server: int, name: str, rng, answers: int) -> list[dict]:
    """A question and its answer (``answers`` records: an address, or a CDN's CNAME chain)."""
    address = int(w.addresses[int(rng.integers(0, len(w.addresses)))])
    namespace, pod, kind, wname, _ = cluster.endpoint(address)
    query = {"ts": int(ts * SECOND), "client": _v16(np.array([address]))[0].tobytes(),
             "server": _v16(np.array([server]))[0].tobytes(), "client_port": int(rng.integers(32768, 61000)),
             "response": 0, "qname": name, "qtype": 1 if rng.random() < 0.5 else 28, "rcode": 0, "answers": 0,
             "size": 30 + len(name), "client_namespace": namespace, "client_pod": pod, "client_workload_kind": kind,
             "client_workload_name": wname}
    answer = {**query, "ts": query["ts"] + int(rng.integers(200_000, 3_000_000)), "response": 1, "answers": answers,
              "size": query["size"] + 16 + 40 * answers}
    return [query, answer]


def _records(cluster: Cluster, f: _Flows) -> FlowRecords:
    if not f.parts:
        return FlowRecords.empty()
    blank = FlowRecords.empty(1).columns
    keys = dict.fromkeys(k for p in f.parts for k in p)
    c = {k: np.concatenate([p[k] if k in p else np.full(len(p["start"]), blank[k][0], dtype=blank[k].dtype)
                            for p in f.parts]) for k in keys}
    n = len(c["start"])
    rec = FlowRecords.empty(n)
    cols = rec.columns
    first = (c["start"] * SECOND).astype(np.int64)
    cols["first_ts"], cols["conn_start"] = first, (c["conn_start"] * SECOND).astype(np.int64)
    for name in (SCHEMA_4_NAMES | {"http_host"}) & set(c):
        cols[name] = c[name].astype(cols[name].dtype)
    cols["opening"] = openings(c)
    cols["last_ts"] = first + (c["duration"] * SECOND).astype(np.int64)
    cols["src_addr"], cols["dst_addr"] = _v16(c["src"]), _v16(c["dst"])
    cols["src_port"], cols["dst_port"] = c["sport"].astype(np.uint16), c["dport"].astype(np.uint16)
    cols["proto"] = c["proto"].astype(np.uint8)
    cols["packets_out"], cols["bytes_out"] = c["po"].astype(np.uint64), c["bo"].astype(np.uint64)
    cols["packets_in"], cols["bytes_in"] = c["pi"].astype(np.uint64), c["bi"].astype(np.uint64)
    state = c["state"]
    cols["state"] = state.astype(np.uint8)
    syn, ack, fin, rst = 0x02, 0x10, 0x01, 0x04
    cols["flags_out"] = np.select([state == ConnState.REJECTED, state == ConnState.ESTABLISHED],
                                  [syn, syn | ack | 0x08], syn | ack | fin | 0x08).astype(np.uint8)
    cols["flags_in"] = np.select([state == ConnState.REJECTED, state == ConnState.ESTABLISHED],
                                 [rst | ack, syn | ack | 0x08], syn | ack | fin | 0x08).astype(np.uint8)
    cols["end_reason"] = np.where(state == ConnState.ESTABLISHED, EndReason.ACTIVE_TIMEOUT,
                                  EndReason.IDLE_TIMEOUT).astype(np.uint8)
    for side in ("src", "dst"):
        uniq, inverse = np.unique(c[side], return_inverse=True)
        named = [cluster.endpoint(int(a)) for a in uniq]
        for k, field_name in enumerate(("namespace", "pod", "workload_kind", "workload_name", "images")):
            values = np.empty(len(uniq), dtype=object)
            values[:] = [e[k] for e in named]
            cols[f"{side}_{field_name}"] = values[inverse]
    return rec.take(np.argsort(cols["first_ts"], kind="stable"))


@dataclass
class BenignRun:
    days: float
    workloads: int
    flows: int
    dns_messages: int
    alerts: list[dict]
    learning_days: float
    allowlisted: int = 0  # findings the allowlist silenced

    @property
    def judged_workload_days(self) -> float:
        return self.workloads * (self.days - self.learning_days)

    def per_100_workload_days(self, alerts: list[dict] | None = None) -> float:
        return 100.0 * len(self.alerts if alerts is None else alerts) / self.judged_workload_days

    def by_rule(self) -> Counter:
        return Counter(alert_rule(a) for a in self.alerts)


PLATFORM_ALLOWLIST = Path(__file__).resolve().parent.parent / "infra" / "allowlists" / "kubernetes-platform.yaml"


INJECTED_C2 = "203.0.113.99"


def _injected(cluster: Cluster, t0: float, start_s: float, rng) -> FlowRecords:
    """The control: from ``start_s`` on, one pod of the reviews service checks in with a command server
    every 5 minutes (+-10%) and, two hours later, uploads 300 MB to it."""
    f = _Flows()
    if t0 + WINDOW_S > start_s:
        pod = cluster.by_name["reviews"].addresses[0]
        first = max(0, math.ceil((t0 - start_s) / 300))
        for k in range(first, first + WINDOW_S // 300 + 1):
            at = start_s + k * 300 + float(rng.uniform(-30, 30))
            if t0 <= at < t0 + WINDOW_S:
                f.add(pod, _ip(INJECTED_C2), 443, 6, [at], 0.4, 8, 900, 8, 2_400, rng=rng)
        upload = start_s + 7200
        if t0 <= upload < t0 + WINDOW_S:
            f.add(pod, _ip(INJECTED_C2), 443, 6, [upload], 120.0, 220_000, 300_000_000, 110_000, 6_000_000, rng=rng)
    return _records(cluster, f)


def run_benign(days: float = 7.0, seed: int = 5, state_dir: str | None = None,
               allowlist: tuple[AllowEntry, ...] | None = None,
               progress: Callable[[float], None] | None = None, inject_at_s: float | None = None) -> BenignRun:
    """Simulate ``days`` (the first one the learning period) and score it; return the alerts raised.
    The allowlist defaults to the platform one (infra/allowlists/kubernetes-platform.yaml).
    ``inject_at_s`` (seconds after the start) adds the control attack (:func:`_injected`): a run that
    reports nothing must still see it."""
    if allowlist is None:
        allowlist = tuple(load_allowlist(PLATFORM_ALLOWLIST))
    rng = np.random.default_rng(seed)
    for w in WORKLOADS:  # fresh addresses and releases for every run
        w.addresses, w.release = [], 1
    cluster = Cluster(rng)
    windows = int(days * 86400 // WINDOW_S)
    flows = dns_count = allowlisted = 0
    alerts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kubesonar-benign-") as tmp:
        store = LocalObjectStore(Path(state_dir or tmp))
        deps = Dependencies(store, CollectingNotifier(), _DataClock(), CoreConfig(allowlist=allowlist))
        deployments = [w for w in WORKLOADS if w.kind == "Deployment"]
        for k in range(windows):
            t0 = START_S + k * WINDOW_S
            if k and (t0 - START_S) % 86400 == 10 * 3600:  # 10 am: a third of the Deployments release
                for w in rng.choice(deployments, len(deployments) // 3, replace=False):
                    cluster.roll_out(w, t0 + float(rng.uniform(0, 300)))
            records, dns_rows = simulate_window(cluster, t0, rng)
            if inject_at_s is not None:
                records = FlowRecords.concat([records, _injected(cluster, t0, START_S + inject_at_s, rng)])
            dns = DnsMessages.from_rows(dns_rows)
            flows += len(records)
            dns_count += len(dns)
            deps.clock.now = int((t0 + WINDOW_S) * SECOND)
            header = BatchHeader("benign", "node-1", "simulated", k, int(t0 * SECOND), int((t0 + WINDOW_S) * SECOND))
            for message in encode_batch(header, records, limit=PUBSUB_LIMIT, level=3, dns=dns):  # fast: simulated
                result = process_batch(decode_batch(message), deps)
                allowlisted += result.allowlisted
                for alert in result.alerts:
                    alerts[alert["id"]] = alert
            cluster.retired = [r for r in cluster.retired if r[2] >= t0 - 300]
            if progress and k % 36 == 0:
                progress(k / windows)
    return BenignRun(days, len(WORKLOADS), flows, dns_count, sorted(alerts.values(), key=lambda a: a["first_seen"]),
                     learning_days=CoreConfig().learning_period_s / 86400, allowlisted=allowlisted)


@dataclass
class _DataClock:
    """Simulated time: sensor-health checks judge silence against the data's clock, not the wall's."""

    now: int = 0

    def now_ns(self) -> int:
        return self.now
