"""Does the core's kept state stay bounded on a busy cluster? Weeks of lab/benign.py's shop with the churn
a real one has, through the real core as a function runs it (one invocation a window, a message per node's
sensor, :func:`process_deliveries`), recording per simulated day what the state costs.

The churn, on top of the benign run's own (a third of the Deployments released daily, a cleanup Job every
15 minutes): every Deployment is released every day (new pods, names and addresses); the autoscaler
replaces a node a day (a new node name, so a new sensor id and a new sensor-health entry); the SaaS and CDN
providers move to new addresses every day, across networks; a tenth of the webhook customers' endpoints
are new each day; and each day's release runs a bare migration Job of its own name.

Recorded at the end of every simulated day: the size of each state document (and of each detector's part
of ``detectors.json``), the alerts kept, the bytes read and written per message over the day, the time per
window and the process memory.

    python -m lab.state_growth --days 14 --out /tmp/growth.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.alerts import alert_rule
from kubesonar.shared.allowlist import load_allowlist
from kubesonar.shared.batch import PUBSUB_LIMIT, BatchHeader, encode_batch
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.pipeline import CoreConfig, Delivery, Dependencies, process_deliveries
from kubesonar.shared.ports import StoredObject
from lab import benign, benign_lookalikes
from lab.benign import PLATFORM_ALLOWLIST, START_S, WINDOW_S, WORKLOADS, Cluster, Workload, simulate_window

SECOND = 1_000_000_000
DAY_S = 86_400
CLUSTER = "churn"


class CountingStore:
    """An object store that counts the bytes the core reads and writes through it."""

    def __init__(self, inner: LocalObjectStore):
        self.inner = inner
        self.read = self.written = self.gets = self.puts = 0

    def get(self, key: str) -> StoredObject | None:
        obj = self.inner.get(key)
        self.gets += 1
        self.read += len(obj.data) if obj is not None else 0
        return obj

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        self.puts += 1
        self.written += len(data)
        return self.inner.put(key, data, if_version=if_version, create_only=create_only)

    def list(self, prefix: str) -> Iterator[str]:
        return self.inner.list(prefix)


@dataclass
class Nodes:
    """The cluster's nodes as sensors: a name per node slot, replaced by the autoscaler."""

    count: int = 6
    generation: int = 0
    names: list[str] = field(default_factory=list)
    sequences: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [self._name() for _ in range(self.count)]

    def _name(self) -> str:
        self.generation += 1
        return f"ip-10-0-{self.generation // 250}-{self.generation % 250}.internal"

    def replace_one(self, day: int) -> None:
        self.names[day % self.count] = self._name()

    def sensor_id(self, name: str) -> str:
        return f"{name}/{abs(hash(name)) % 16**8:08x}"


def _rotate_addresses(day: int, rng: np.random.Generator, saved: dict) -> None:
    """Every provider behind rotating addresses moves to new ones (often in another /24)."""
    for pool, (addresses, names) in saved["saas"].items():
        if pool in ("logs-saas", "fx-api", "license"):  # pinned integrations keep their addresses
            continue
        fresh = [f"198.{19 + day % 5}.{int(rng.integers(0, 256))}.{int(rng.integers(1, 255))}" for _ in addresses]
        benign.SAAS[pool] = (fresh, names)
    cdn = saved["cdn"]
    benign_lookalikes.ENDPOINTS["cdn"] = ([f"198.{24 + day % 3}.{int(rng.integers(0, 256))}.{i}"
                                           for i in range(1, len(cdn[0]) + 1)], cdn[1])


def run(days: int, seed: int = 7, churn: bool = True, out: Path | None = None) -> list[dict]:
    """Simulate ``days`` days with churn; one record per day (see the module docstring)."""
    rng = np.random.default_rng(seed)
    saved = {"saas": dict(benign.SAAS), "cdn": benign_lookalikes.ENDPOINTS["cdn"], "workloads": list(WORKLOADS),
             "edges": list(benign.EDGES)}
    for w in WORKLOADS:
        w.addresses, w.release = [], 1
    cluster = Cluster(rng)
    nodes = Nodes()
    records: list[dict] = []
    allowlist = tuple(load_allowlist(PLATFORM_ALLOWLIST))
    try:
        with tempfile.TemporaryDirectory(prefix="kubesonar-growth-") as tmp:
            store = CountingStore(LocalObjectStore(Path(tmp)))
            deps = Dependencies(store, CollectingNotifier(), benign._DataClock(), CoreConfig(allowlist=allowlist))
            deployments = [w for w in WORKLOADS if w.kind == "Deployment"]
            alerts: Counter = Counter()
            started, messages = time.perf_counter(), 0
            for k in range(days * DAY_S // WINDOW_S):
                t0 = START_S + k * WINDOW_S
                day = (t0 - START_S) // DAY_S
                if k and (t0 - START_S) % DAY_S == 10 * 3600 and churn:
                    for w in deployments:
                        cluster.roll_out(w, t0 + float(rng.uniform(0, 300)))
                    _migration_job(cluster, day)
                    nodes.replace_one(day)
                    _rotate_addresses(day, rng, saved)
                    fresh = rng.integers(benign._ip("11.0.0.0"), benign._ip("99.255.255.255"), benign.WEBHOOK_TARGETS // 10)
                    cluster.webhook_ips[: len(fresh)] = fresh
                    cluster.webhook_ips = np.roll(cluster.webhook_ips, -len(fresh))
                flows, dns_rows = simulate_window(cluster, t0, rng)
                dns = DnsMessages.from_rows(dns_rows)
                deps.clock.now = int((t0 + WINDOW_S) * SECOND)
                deliveries = []
                for slot, name in enumerate(nodes.names):  # each node's sensor sends its share
                    rows = np.arange(slot, len(flows), len(nodes.names))
                    sensor = nodes.sensor_id(name)
                    sequence = nodes.sequences[sensor] = nodes.sequences.get(sensor, -1) + 1
                    header = BatchHeader(CLUSTER, name, sensor, sequence, int(t0 * SECOND),
                                         int((t0 + WINDOW_S) * SECOND),
                                         counters={"kernel_packets": 1_000 * (sequence + 1), "kernel_drops": 0})
                    share = dns.take(np.arange(slot, len(dns), len(nodes.names)))
                    for message in encode_batch(header, flows.take(rows), limit=PUBSUB_LIMIT, level=3, dns=share):
                        deliveries.append(Delivery(f"{sensor}/{sequence}/{len(deliveries)}", message))
                outcome = process_deliveries(deliveries, deps)
                messages += len(deliveries)
                assert not outcome.retry and not outcome.poison, (outcome.retry, outcome.poison)
                alerts.update(alert_rule(a) for a in outcome.result.new_alerts)
                cluster.retired = [r for r in cluster.retired if r[2] >= t0 - 300]
                if (t0 + WINDOW_S - START_S) % DAY_S == 0:
                    records.append(_day_record(day + 1, store, Path(tmp), messages,
                                               (time.perf_counter() - started) / (DAY_S // WINDOW_S), alerts))
                    print(json.dumps(_brief(records[-1])), file=sys.stderr, flush=True)
                    if out is not None:
                        out.write_text(json.dumps(records, indent=1))
                    store.read = store.written = store.gets = store.puts = messages = 0
                    started = time.perf_counter()
    finally:
        benign.SAAS.clear()
        benign.SAAS.update(saved["saas"])
        benign_lookalikes.ENDPOINTS["cdn"] = saved["cdn"]
        WORKLOADS[:] = saved["workloads"]
        benign.EDGES[:] = saved["edges"]
    return records


def _migration_job(cluster: Cluster, day: int) -> None:
    """A release's bare Job (a schema migration), named after the release: a workload of a day."""
    job = Workload("shop", "Job", f"db-migrate-{day:04d}", 1, "registry.example.com/shop/migrate")
    job.addresses = cluster._new_addresses(1)
    WORKLOADS[:] = [w for w in WORKLOADS if w.kind != "Job"] + [job]
    cluster.by_name = {w.name: w for w in WORKLOADS}
    benign.EDGES[:] = [e for e in benign.EDGES if not e[0].startswith("db-migrate-")]
    benign.EDGES.append((job.name, "postgres-orders", 5432, 0.01, 40))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _day_record(day: int, store: CountingStore, root: Path, messages: int, window_s: float,
                alerts: Counter) -> dict:
    sizes = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*.json")}
    detectors = json.loads((root / "state" / CLUSTER / "detectors.json").read_text())
    parts = {name: len(json.dumps(state, separators=(",", ":"))) for name, state in detectors["detectors"].items()}
    parts.update({name: len(json.dumps(detectors.get(name, {}), separators=(",", ":"))) for name in ("applied", "findings")})
    health = json.loads((root / "state" / CLUSTER / "sensor_health.json").read_text())
    alert_sizes = [v for k, v in sizes.items() if k.startswith("alerts/")]
    return {
        "day": day,
        "documents": {k: v for k, v in sorted(sizes.items()) if not k.startswith("alerts/")},
        "detectors_parts": parts,
        "health_nodes": len(health["state"]["nodes"]),
        "applied_sensors": len(detectors.get("applied", {})),
        "alerts": len(alert_sizes), "alert_bytes": sum(alert_sizes), "new_alerts_by_type": dict(alerts),
        "messages": messages, "read_per_message": store.read // max(messages, 1),
        "written_per_message": store.written // max(messages, 1),
        "gets_per_message": round(store.gets / max(messages, 1), 2),
        "puts_per_message": round(store.puts / max(messages, 1), 2),
        "seconds_per_window": round(window_s, 3),
        "rss_mib": round(_rss_kib() / 1024, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _brief(r: dict) -> dict:
    docs = r["documents"]
    return {"day": r["day"], "detectors.json": docs.get(f"state/{CLUSTER}/detectors.json"),
            "sensor_health.json": docs.get(f"state/{CLUSTER}/sensor_health.json"),
            "edges.json": docs.get(f"summary/{CLUSTER}/edges.json"), "alerts": r["alerts"],
            "read/msg": r["read_per_message"], "written/msg": r["written_per_message"],
            "s/window": r["seconds_per_window"], "rss_mib": r["rss_mib"],
            "largest": sorted(r["detectors_parts"].items(), key=lambda kv: -kv[1])[:5]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    run(args.days, args.seed, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
