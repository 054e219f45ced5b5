"""Benchmark: a simulated cluster against the real AWS function on moto, with S3-like latency.

    python bench/scale.py [--nodes 1000] [--windows 6] [--cloud aws] [--batch-size 100] [--batching-window 10]

Every node's sensor sends one message per window (``--window-s``, 10 s), at a random phase within it, as
unsynchronised sensors do: 1,000 nodes make 100 messages a second. A tenth of the nodes are busy (their
messages carry the flows of examples/cluster-traffic.pcap, less its own port scan); the rest send
heartbeats only. In every
window one busy node also carries a real port scan (a scanner address of its own per window), so each
window must raise one alert, and the time from that window's end to its alert is measured.

The SQS poller of Lambda is played in real time: messages wait until ``--batch-size`` are there or the
first has waited ``--batching-window`` seconds, then one invocation takes them, at most
``--concurrency`` at a time (the Terraform module's maximum concurrency). Each invocation is the real
handler (``functions/aws/handler.py``) with its real boto3 clients against moto in server mode on
127.0.0.1; every S3 request is counted and delayed on the client (15 ms GET and LIST, 30 ms PUT) by
botocore's own event hooks, so contention is that of S3, not of the emulator. Records the handler
reports as failed are redelivered (as SQS would, after the visibility timeout: here at once).

Cost per node-month uses list prices of us-east-1 (printed with the figures) and one message per node
per window for 30 days. Threads share one process, so the CPU of 16 invocations is that of one core:
the throughput is a floor of what Lambda's separate containers give.
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import os
import random
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

# list prices, us-east-1, as of 2026-11 (docs/cost.md cites them)
PRICES = {
    "s3_get_per_1000": 0.0004, "s3_put_per_1000": 0.005,  # S3 Standard: GET/LIST... LIST is billed as PUT
    "sqs_per_million_64k": 0.40,  # standard queue, per 64 KiB chunk of each request
    "lambda_per_million": 0.20, "lambda_gb_s_arm64": 0.0000133334,
    "sns_per_million": 0.50,
}
MONTH_S = 30 * 24 * 3600
DEMO_SCANNER = "10.244.15.2"  # the pod that port-scans in examples/cluster-traffic.pcap (kubesonar analyze names it)


class S3Meter:
    """Counts and delays the handler's S3 requests through botocore's event hooks."""

    def __init__(self, client, get_s: float, put_s: float):
        self.counts = {"GetObject": 0, "PutObject": 0, "ListObjectsV2": 0, "PutObject_ok": 0}
        self._lock = threading.Lock()
        self._delay = {"GetObject": get_s, "PutObject": put_s, "ListObjectsV2": get_s}
        for op in self._delay:
            client.meta.events.register(f"before-send.s3.{op}", self._before(op))
        client.meta.events.register("after-call.s3.PutObject", self._put_ok)

    def _before(self, op):
        def hook(**_):
            with self._lock:
                self.counts[op] += 1
            time.sleep(self._delay[op])
        return hook

    def _put_ok(self, http_response=None, **_):
        if http_response is not None and http_response.status_code == 200:
            with self._lock:
                self.counts["PutObject_ok"] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class _Context:
    function_name = "kubesonar-scoring"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:kubesonar-scoring"
    aws_request_id = "00000000-0000-0000-0000-000000000000"


def _messages(args, t0: float) -> list[tuple[float, str, bytes, int | None]]:
    """(arrival time, node, message, scan window or None), in arrival order."""
    import numpy as np

    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.queues import window_messages
    from kubesonar.sensor.queues.sqs import LIMIT
    from kubesonar.shared.batch import BatchHeader
    from kubesonar.shared.flow import FlowRecords, address_bytes

    demo = FlowRecords.concat(list(flows_from_captures([REPO / "examples" / "cluster-traffic.pcap"])))
    # the capture carries the demo's own port scan: without its scanner's flows a busy node's window is
    # normal traffic, and only the scans planted below raise alerts ("no attack" was two alerts a run)
    traffic = demo.take(demo["src_addr"] != np.array(address_bytes(DEMO_SCANNER), dtype="V16"))
    scan = FlowRecords.concat(list(flows_from_captures(
        [Path(os.environ.get("KUBESONAR_PCAPS", REPO.parent / "shared" / "data" / "pcaps"))
         / "portscan" / "evilfingers_nmap_TCP_SYN_SCAN.pcap"])))
    rng = random.Random(7)
    # none busy when the share is 0: the idle cluster measured apart had one busy node
    busy = set(rng.sample(range(args.nodes), max(int(args.busy_fraction > 0), int(args.nodes * args.busy_fraction))))
    phase = {n: rng.uniform(0, args.window_s) for n in range(args.nodes)}
    window_ns = int(args.window_s * 1e9)
    out = []
    for w in range(args.windows):
        scanner_node = sorted(busy)[w % len(busy)] if args.attacks else -1
        for n in range(args.nodes):
            arrival = t0 + w * args.window_s + phase[n]
            end_ns = int(arrival * 1e9)
            parts = []
            if n in busy:
                parts.append(_shifted(traffic, end_ns - window_ns))
            if n == scanner_node:
                s = _shifted(scan, end_ns - window_ns)
                s.columns["src_addr"] = np.full(len(s), address_bytes(f"10.250.{w}.1"), dtype="V16")
                parts.append(s)
            flows = FlowRecords.concat(parts) if parts else FlowRecords.empty()
            header = BatchHeader(args.cluster, f"node-{n}", f"node-{n}/s", w, end_ns - window_ns, end_ns,
                                 counters={"packets": 1000 * (w + 1), "kernel_packets": 1000 * (w + 1),
                                           "kernel_drops": 0})
            for m in window_messages(header, flows, LIMIT):
                out.append((arrival, f"node-{n}", m.data, w if n == scanner_node else None))
    out.sort(key=lambda m: m[0])
    return out


def _shifted(flows, start_ns: int):
    from kubesonar.shared.flow import FlowRecords

    moved = FlowRecords({k: v.copy() for k, v in flows.columns.items()})
    offset = start_ns - int(flows["first_ts"].min())
    moved.columns["first_ts"] += offset
    moved.columns["last_ts"] += offset
    return moved


def run_aws(args) -> dict:
    from aws_emulator import CREDENTIALS, client, moto_server

    with moto_server() as endpoint:
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        s3, sns, sqs = (client(s, endpoint) for s in ("s3", "sns", "sqs"))
        for bucket in ("ks-state", "ks-alerts"):
            s3.create_bucket(Bucket=bucket)
        topic = sns.create_topic(Name="kubesonar-alerts")["TopicArn"]
        inbox = sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
        os.environ.update(KUBESONAR_STATE_BUCKET="ks-state", KUBESONAR_ALERTS_BUCKET="ks-alerts",
                          KUBESONAR_TOPIC_ARN=topic, KUBESONAR_LEARNING_PERIOD_S="0",
                          POWERTOOLS_METRICS_NAMESPACE="KubeSonar", POWERTOOLS_LOG_LEVEL="WARNING",
                          POWERTOOLS_DEV="true", POWERTOOLS_METRICS_DISABLED="true")
        import kubesonar.functions.aws.handler as handler

        meter = S3Meter(handler._s3, args.get_ms / 1000, args.put_ms / 1000)
        invoke = lambda event: handler.lambda_handler(event, _Context())  # noqa: E731
        # idle and busy apart: two windows of a smaller cluster of each kind, on clusters of their own
        apart = {}
        for kind, share in (("idle", 0.0), ("busy", 1.0)):
            small = argparse.Namespace(**{**vars(args), "nodes": min(args.nodes, 200), "windows": 2,
                                          "busy_fraction": share, "cluster": f"scale-{kind}",
                                          "attacks": False})
            before = meter.snapshot()
            run = _play(small, _messages(small, time.time() + 1.0), invoke)
            after = meter.snapshot()
            apart[kind] = {"reads": sum(after[k] - before[k] for k in ("GetObject", "ListObjectsV2")),
                           "writes": after["PutObject"] - before["PutObject"], "messages": run["messages"],
                           "invocations": run["invocations"], "seconds": sum(run["durations"])}
        _drain(sqs, inbox)
        before = meter.snapshot()
        t0 = time.time() + 3.0  # the messages are built first
        messages = _messages(args, t0)
        figures = _play(args, messages, invoke)
        counts = {k: v - before[k] for k, v in meter.snapshot().items()}
        alerts = _drain(sqs, inbox)
    return {**figures, "s3": counts, "alerts": alerts, "apart": apart}


def _play(args, messages, invoke) -> dict:
    """The SQS poller, in real time: batches by size or waiting time, at most ``concurrency`` at once."""
    pending: list[tuple[float, int, dict]] = []  # arrival, seq, record
    lock, wake = threading.Lock(), threading.Condition()
    stats = {"invocations": 0, "records": 0, "redelivered": 0, "durations": [], "busy_records": 0}
    flows_total = 0
    done_at: dict[int, float] = {}
    seq = 0
    pool = ThreadPoolExecutor(max_workers=args.concurrency)
    in_flight = threading.BoundedSemaphore(args.concurrency)

    def invocation(records: list[dict]) -> None:
        try:
            started = time.time()
            out = invoke({"Records": records})
            finished = time.time()
            failed = {f["itemIdentifier"] for f in out.get("batchItemFailures", [])}
            with lock:
                stats["invocations"] += 1
                stats["records"] += len(records)
                stats["durations"].append(finished - started)
                for r in records:
                    if r["messageId"] in failed:
                        stats["redelivered"] += 1
                    else:
                        done_at[int(r["messageId"])] = finished
            with wake:
                for r in records:
                    if r["messageId"] in failed:
                        heapq.heappush(pending, (time.time(), int(r["messageId"]), r))
                wake.notify()
        finally:
            in_flight.release()

    def record(i: int, data: bytes) -> dict:
        return {"messageId": str(i), "receiptHandle": "h", "body": base64.b64encode(data).decode(),
                "attributes": {}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:kubesonar-flows", "awsRegion": "us-east-1"}

    arrivals = {}

    def poller(stop_at: float) -> None:
        while time.time() < stop_at:
            with wake:
                ready = len(pending) >= args.batch_size or (
                    pending and time.time() - pending[0][0] >= args.batching_window)
                if not ready:
                    wake.wait(timeout=0.05)
                    continue
                batch = [heapq.heappop(pending)[2] for _ in range(min(args.batch_size, len(pending)))]
            in_flight.acquire()
            try:
                pool.submit(invocation, batch)
            except RuntimeError:  # the run is over (its time ran out): what is left is counted as lost
                return

    end = time.time() + messages[-1][0] - messages[0][0] + args.batching_window + 300
    thread = threading.Thread(target=poller, args=(end,), daemon=True)
    thread.start()
    started = time.time()
    shift = time.time() + 1.0 - messages[0][0]  # the clock starts once the messages are built
    messages = [(arrival + shift, node, data, scan) for arrival, node, data, scan in messages]
    for arrival, _node, data, _scan in messages:
        delay = arrival - time.time()
        if delay > 0:
            time.sleep(delay)
        with wake:
            heapq.heappush(pending, (time.time(), seq, record(seq, data)))
            arrivals[seq] = arrival
            wake.notify()
        seq += 1
    while True:
        with lock:
            if len(done_at) == len(messages):
                break
        if time.time() > end:
            break
        time.sleep(0.05)
    pool.shutdown(wait=True)
    wall = max(done_at.values()) - started if done_at else float("nan")
    from kubesonar.shared.batch import decode_batch

    for _a, _n, data, _s in messages:
        flows_total += decode_batch(data).header.flow_count
    lag = sorted(done_at[i] - arrivals[i] for i in done_at)
    return {"messages": len(messages), "processed": len(done_at), "flows": flows_total, "wall_s": wall,
            "scan_windows": {w: a for a, _n, _d, w in messages if w is not None},
            "lag_p50": lag[len(lag) // 2], "lag_p95": lag[int(len(lag) * 0.95)], **stats}


def _drain(sqs, inbox) -> list[tuple[dict, float]]:
    got = []
    for _ in range(50):
        out = sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10, AttributeNames=["SentTimestamp"],
                                  WaitTimeSeconds=0)
        batch = out.get("Messages", [])
        if not batch:
            break
        for m in batch:
            got.append((json.loads(m["Body"]), int(m["Attributes"]["SentTimestamp"]) / 1000))
            sqs.delete_message(QueueUrl=inbox, ReceiptHandle=m["ReceiptHandle"])
    return got


def report(args, f: dict) -> str:
    n = f["messages"]
    s3 = f["s3"]
    reads, writes = s3["GetObject"] + s3["ListObjectsV2"], s3["PutObject"]
    conflicts = s3["PutObject"] - s3["PutObject_ok"]
    scans = {a["source"]["ip"]: t for a, t in f["alerts"] if a["type"] == "port_scan" and a["cluster"] == "scale"}
    latencies = sorted(scans[f"10.250.{w}.1"] - arrival for w, arrival in f["scan_windows"].items()
                       if f"10.250.{w}.1" in scans)
    per_month = MONTH_S / args.window_s  # messages per node-month: one a window

    # Lambda's poller keeps 5 long polls of 20 s open on the queue, busy or not: a fixed cost per cluster
    idle_polls = 5 * MONTH_S / 20 / args.nodes

    def cost(reads: float, writes: float, invocations: float, seconds: float, alerts: float) -> dict[str, float]:
        """Per node-month from per-message figures; each message under 64 KiB is one SQS request to send,
        and the poller's receives and deletes take up to 10 a call."""
        return {"s3": per_month * (reads * PRICES["s3_get_per_1000"] + writes * PRICES["s3_put_per_1000"]) / 1000,
                "sqs": (per_month * (1 + 2 / 10) + idle_polls) * PRICES["sqs_per_million_64k"] / 1e6,
                "lambda": per_month * (invocations * PRICES["lambda_per_million"] / 1e6
                                       + seconds * 0.5 * PRICES["lambda_gb_s_arm64"]),  # 512 MB
                "sns": per_month * alerts * PRICES["sns_per_million"] / 1e6}

    idle, busy = f["apart"]["idle"], f["apart"]["busy"]
    share = args.busy_fraction
    normal = cost(*(((1 - share) * idle[k] / idle["messages"] + share * busy[k] / busy["messages"])
                    for k in ("reads", "writes", "invocations", "seconds")), 0.0)
    as_run = cost(reads / n, writes / n, f["invocations"] / n, sum(f["durations"]) / n, len(f["alerts"]) / n)
    lines = [
        f"# bench/scale.py --cloud aws --nodes {args.nodes} --windows {args.windows} --batch-size {args.batch_size}"
        f" --batching-window {args.batching_window:g} --concurrency {args.concurrency}",
        f"cluster: {args.nodes} nodes, one message per node every {args.window_s:g} s "
        f"({args.nodes / args.window_s:.0f} messages/s offered), {args.busy_fraction:.0%} busy; "
        f"S3 latency injected: GET {args.get_ms:g} ms, PUT {args.put_ms:g} ms",
        f"messages: {n} ({f['processed']} processed, {f['redelivered']} redelivered after a failure), "
        f"flows: {f['flows']}, invocations: {f['invocations']} "
        f"({f['records'] / max(1, f['invocations']):.1f} records each)",
        f"object-store requests per message: {(reads + writes) / n:.3f} "
        f"(reads {reads / n:.3f}, writes {writes / n:.3f}; one alert per window included)",
        f"object-store requests per message, apart ({min(args.nodes, 200)} nodes, 2 windows each, no attack): "
        + ", ".join(f"{kind} {(a['reads'] + a['writes']) / a['messages']:.3f}" for kind, a in f["apart"].items()),
        f"conflicts (conditional PUTs refused) per message: {conflicts / n:.4f} ({conflicts} in all)",
        f"sustained: {n / f['wall_s']:.1f} messages/s, {f['flows'] / f['wall_s']:.0f} flows/s over {f['wall_s']:.1f} s "
        f"(offered {args.nodes / args.window_s:.0f}/s); queue lag p50 {f['lag_p50']:.2f} s, p95 {f['lag_p95']:.2f} s",
        f"invocation duration: mean {statistics.mean(f['durations']):.2f} s, max {max(f['durations']):.2f} s",
        f"window end -> alert: {len(latencies)} of {len(f['scan_windows'])} scans alerted; "
        + (f"p50 {latencies[len(latencies) // 2]:.1f} s, p95 {latencies[int(len(latencies) * 0.95)]:.1f} s; "
           f"first packet -> alert adds up to one sensor window ({args.window_s:g} s)" if latencies else "none"),
        "cost per node-month (us-east-1 list prices: " + ", ".join(f"{k} {v}" for k, v in PRICES.items()) + "):",
        "  normal operation (idle and busy nodes mixed, no attack): "
        + ", ".join(f"{k} ${v:.4f}" for k, v in normal.items()) + f"; total ${sum(normal.values()):.3f}",
        "  as run (a port scan alerted every window): "
        + ", ".join(f"{k} ${v:.4f}" for k, v in as_run.items()) + f"; total ${sum(as_run.values()):.3f}",
        f"dead-lettered: {n - f['processed']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--cloud", choices=["aws"], default="aws")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--busy-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=100, help="the Terraform module's default")
    parser.add_argument("--batching-window", type=float, default=30.0, help="the Terraform module's default")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--get-ms", type=float, default=15.0)
    parser.add_argument("--put-ms", type=float, default=30.0)
    args = parser.parse_args()
    args.cluster, args.attacks = "scale", True
    figures = run_aws(args)
    text = report(args, figures)
    print(text)
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"scale-{args.cloud}.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
