"""Benchmark: the Lambda handler's cold-start import time and its throughput on full SQS messages,
against moto in server mode on 127.0.0.1 (the handler's real S3/SNS calls over HTTP).

    python bench/aws_handler.py [--messages 20]

Baselines in the same run: importing boto3 alone (what any Python Lambda on AWS pays), and scoring
the same messages with the local directory store (the core without the network).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO / "tests"))


def _import_ms(statement: str, env: dict, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter(); {statement}; "
                              "print((time.perf_counter() - t) * 1000)"], env=env, capture_output=True,
                             text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--flows-per-message", type=int, default=15_500,
                        help="flows a window holds: the default fills one SQS message to its 256 KiB")
    args = parser.parse_args()

    import boto3
    import numpy as np

    from kubesonar.functions.local.notifier import CollectingNotifier
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.queues import window_messages
    from kubesonar.sensor.queues.sqs import LIMIT
    from kubesonar.sensor.synthetic import write_synthetic_capture
    from kubesonar.shared.batch import BatchHeader, decode_batch
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.pipeline import Dependencies, process_batch
    from kubesonar.shared.ports import SystemClock

    OUT.mkdir(exist_ok=True)
    capture = OUT / "bench-full.pcap"
    if not capture.exists():
        write_synthetic_capture(capture, packets=1_000_000)
    records = FlowRecords.concat(list(flows_from_captures([capture])))
    records = records.take(np.argsort(records["first_ts"], kind="stable"))

    # full messages: each window a slice of the capture, a day apart (new traffic for the baseline)
    messages = []
    per = args.flows_per_message
    sent = time.time_ns()  # header windows are when a sensor sends them: the core refuses a day-old one
    for n in range(args.messages):
        lo = (n * per) % max(1, len(records) - per)
        part = records.take(slice(lo, lo + per))
        shifted = FlowRecords(dict(part.columns, first_ts=part["first_ts"] + n * 86_400 * 10**9,
                                   conn_start=part["conn_start"] + n * 86_400 * 10**9))
        messages += window_messages(BatchHeader("bench", "node-1", "node-1/bench", n, sent - 10**10, sent), shifted, LIMIT)
    full = messages
    flows_per_message = statistics.mean(len(decode_batch(m.data).flows) for m in full)
    body_kib = statistics.mean(len(base64.b64encode(m.data)) for m in full) / 1024

    from aws_emulator import CREDENTIALS, moto_server

    with moto_server() as endpoint:
        env = dict(os.environ, **CREDENTIALS, AWS_ENDPOINT_URL=endpoint, KUBESONAR_STATE_BUCKET="bench-state",
                   KUBESONAR_ALERTS_BUCKET="bench-alerts", POWERTOOLS_METRICS_NAMESPACE="KubeSonar",
                   POWERTOOLS_LOG_LEVEL="WARNING", POWERTOOLS_METRICS_DISABLED="true")
        clients = {s: boto3.client(s, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                                   aws_secret_access_key="x") for s in ("s3", "sns")}
        for bucket in ("bench-state", "bench-alerts"):
            clients["s3"].create_bucket(Bucket=bucket)
        env["KUBESONAR_TOPIC_ARN"] = clients["sns"].create_topic(Name="bench")["TopicArn"]

        handler_ms = _import_ms("import kubesonar.functions.aws.handler", env)
        boto3_ms = _import_ms("import boto3; boto3.client('s3'); boto3.client('sns')", env)

        os.environ.update(env)
        from kubesonar.functions.aws import handler

        class Context:
            function_name, memory_limit_in_mb = "bench", 512
            invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
            aws_request_id = "bench"

        lambda_rates, durations = [], []
        for i, m in enumerate(messages):
            event = {"Records": [{"messageId": f"m{i}", "receiptHandle": "r", "body": base64.b64encode(m.data).decode(),
                                  "attributes": {}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
                                  "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:flows",
                                  "awsRegion": "us-east-1"}]}
            flows = len(decode_batch(m.data).flows)
            start = time.perf_counter()
            assert handler.lambda_handler(event, Context()) == {"batchItemFailures": []}
            elapsed = time.perf_counter() - start
            durations.append(elapsed)
            lambda_rates.append(flows / elapsed)
        state_kib = {o["Key"]: o["Size"] / 1024 for o in clients["s3"].list_objects_v2(Bucket="bench-state")["Contents"]}

    with tempfile.TemporaryDirectory() as root:
        deps = Dependencies(LocalObjectStore(root), CollectingNotifier(), SystemClock())
        local_rates = []
        for m in messages:
            batch = decode_batch(m.data)
            start = time.perf_counter()
            process_batch(batch, deps)
            local_rates.append(len(batch.flows) / (time.perf_counter() - start))

    peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024
    steady = lambda_rates[len(lambda_rates) // 2:]  # noqa: E731 - the warm half
    print(json.dumps({
        "cold_start_import_ms": round(handler_ms, 1), "boto3_import_and_clients_ms": round(boto3_ms, 1),
        "messages": len(messages), "flows_per_full_message": round(flows_per_message),
        "full_message_body_kib": round(body_kib, 1),
        "handler_flows_per_s_median_warm": round(statistics.median(steady)),
        "handler_seconds_per_message_median_warm": round(statistics.median(durations[len(durations) // 2:]), 3),
        "local_store_flows_per_s_median_warm": round(statistics.median(local_rates[len(local_rates) // 2:])),
        "state_document_kib": {k: round(v, 1) for k, v in state_kib.items()},
        "bench_process_peak_rss_mib": round(peak),
    }, indent=1))


if __name__ == "__main__":
    main()
