"""Benchmark: Blob Storage requests per sensor message through the Azure function's real code, by the
cost issue's method (a cluster of N nodes, W 10-second windows each, idle and busy, every request counted).

    python bench/azure_function.py [--nodes 30] [--windows 2] [--batch 10]

Azurite (npm azurite) serves Blob Storage and the Event Grid stand-in (tests/eventgrid_standin.py) the
alerts topic, both on 127.0.0.1. Requests are counted from azure-core's own HTTP logging, so the code
under test is unchanged. Two delivery shapes are measured:

- per event: what the Python Event Grid trigger does (one event per invocation, ``score_batch``);
- batched: ``process_deliveries`` over ``--batch`` events at once, what an invocation would do if the
  Python trigger took a list (it does not; docs/azure.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# List prices, East US, pay as you go (docs/azure.md says where they come from)
PRICES = {
    "blob_write_per_10k": 0.065,  # Hot LRS: Put Blob; List Blobs is billed at this rate too
    "blob_read_per_10k": 0.005,  # Hot LRS: Get Blob
    "eventgrid_per_million_ops": 0.60,  # Basic tier: each publish and each delivery attempt, per 64 KB
    "flex_gb_s": 0.000026,  # Flex Consumption on demand, per GB-second of instance memory
    "flex_per_million_executions": 0.40,
}
MESSAGES_PER_NODE_MONTH = 6 * 60 * 24 * 30  # one message per 10 s window


class _RequestCounter(logging.Handler):
    def __init__(self, host: str):
        super().__init__(logging.INFO)
        self.host, self.counts = host, Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "Request URL:" in text and self.host in text:
            method = text.split("Request method: '")[1].split("'")[0]
            kind = "list" if "comp=list" in text else {"GET": "read", "HEAD": "read"}.get(method, "write")
            self.counts[kind] += 1


def _messages(nodes: int, windows: int, busy: bool):
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.queues import window_messages
    from kubesonar.sensor.queues.eventgrid import LIMIT
    from kubesonar.shared.batch import BatchHeader
    from kubesonar.shared.flow import FlowRecords

    data = Path(os.environ.get("KUBESONAR_DATA", REPO.parent / "shared" / "data"))
    flows = FlowRecords.concat(list(flows_from_captures([data / "pcaps/benign/chrissanders_http_espn.pcapng"])))
    out = []
    sent = time.time_ns() - windows * 10**10  # windows end as they are sent: the core refuses a day-old one
    for w in range(windows):
        for n in range(nodes):
            header = BatchHeader("prod", f"node-{n}", f"node-{n}/b1", w, sent + w * 10**10, sent + (w + 1) * 10**10,
                                 counters={"packets": 100, "kernel_packets": 100, "kernel_drops": 0})
            out += window_messages(header, flows if busy else FlowRecords.empty(), LIMIT)
    return out, len(flows) if busy else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    args = parser.parse_args()

    import base64

    import trustme
    from azure.functions.eventgrid import EventGridEventInConverter
    from azure.functions.meta import Datum
    from azure.storage.blob import BlobServiceClient

    from azure_emulator import azurite_blob
    from eventgrid_standin import EventGridStandIn

    rows = []
    with azurite_blob() as connection_string, tempfile.TemporaryDirectory() as tls:
        alerts = EventGridStandIn(trustme.CA(), Path(tls), topic="kubesonar-alerts")
        os.environ.update(IDENTITY_ENDPOINT=alerts.identity_endpoint, IDENTITY_HEADER=alerts.identity_header,
                          REQUESTS_CA_BUNDLE=str(alerts.ca_file), KUBESONAR_ALERTS_TOPIC_ENDPOINT=alerts.endpoint,
                          KUBESONAR_STORAGE_CONNECTION_STRING=connection_string)
        host = connection_string.split("BlobEndpoint=")[1].split("/")[2]
        counter = _RequestCounter(host)
        http_log = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
        http_log.setLevel(logging.INFO)
        http_log.addHandler(counter)
        http_log.propagate = False
        import importlib

        for busy in (False, True):
            for shape in ("per event", "batched"):
                tag = uuid.uuid4().hex[:8]
                service = BlobServiceClient.from_connection_string(connection_string)
                for c in ("state", "alerts", "deadletter"):
                    service.create_container(f"{c}-{tag}")
                    os.environ[f"KUBESONAR_{c.upper()}_CONTAINER"] = f"{c}-{tag}"
                from kubesonar.functions.azure import function_app, runtime

                importlib.reload(runtime)
                app = importlib.reload(function_app)
                messages, flows = _messages(args.nodes, args.windows, busy)
                events = [{"id": m.key, "subject": "prod/node", "eventType": "KubeSonar.FlowBatch",
                           "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1", "metadataVersion": "1",
                           "topic": "/t", "data": base64.b64encode(m.data).decode()} for m in messages]
                counter.counts.clear()
                started = time.perf_counter()
                if shape == "per event":
                    for e in events:
                        app.score_batch(EventGridEventInConverter.decode(Datum(json.dumps(e), "json"),
                                                                         trigger_metadata={}))
                    invocations = len(events)
                else:
                    from kubesonar.shared.pipeline import Delivery, process_deliveries

                    for i in range(0, len(messages), args.batch):
                        process_deliveries([Delivery(m.key, m.data) for m in messages[i:i + args.batch]],
                                           runtime.deps)
                    invocations = -(-len(messages) // args.batch)
                seconds = time.perf_counter() - started
                n = len(messages)
                c = counter.counts
                rows.append({"traffic": "busy" if busy else "idle", "shape": shape, "messages": n,
                             "flows_per_message": flows, "reads": c["read"] / n, "writes": c["write"] / n,
                             "lists": c["list"] / n, "requests": sum(c.values()) / n,
                             "ms_per_invocation": 1000 * seconds / invocations,
                             "invocations_per_message": invocations / n})
        alerts.close()

    print(f"{args.nodes} nodes x {args.windows} windows; Blob Storage requests per sensor message (Azurite):")
    print("| traffic | delivery | reads | writes | lists | requests | ms per invocation | $ per node-month |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r["usd_node_month"] = _node_month(r)
        print(f"| {r['traffic']} | {r['shape']} | {r['reads']:.1f} | {r['writes']:.1f} | {r['lists']:.1f} | "
              f"{r['requests']:.1f} | {r['ms_per_invocation']:.0f} | {r['usd_node_month']:.2f} |")
    print("prices:", json.dumps(PRICES))
    (REPO / "bench" / "out").mkdir(exist_ok=True)
    (REPO / "bench" / "out" / "azure_function.json").write_text(json.dumps({"rows": rows, "prices": PRICES}, indent=1))


def _node_month(r: dict) -> float:
    """Blob requests, Event Grid (one publish and one delivery per message), Flex executions and memory
    time (2 GB instances; the measured time per invocation, which Azurite's loopback flatters)."""
    m = MESSAGES_PER_NODE_MONTH
    blob = m * ((r["writes"] + r["lists"]) * PRICES["blob_write_per_10k"]
                + r["reads"] * PRICES["blob_read_per_10k"]) / 1e4
    eventgrid = m * 2 * PRICES["eventgrid_per_million_ops"] / 1e6
    invocations = m * r["invocations_per_message"]
    compute = invocations * (r["ms_per_invocation"] / 1000 * 2 * PRICES["flex_gb_s"]
                             + PRICES["flex_per_million_executions"] / 1e6)
    return blob + eventgrid + compute


if __name__ == "__main__":
    main()
