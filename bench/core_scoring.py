"""Benchmark: flows scored per second by the detection core, and `kubesonar demo` wall time.

    python bench/core_scoring.py [--packets 1000000]

The flows of the 1,000,000-packet benchmark capture (see flow_engine.py) are encoded as SQS-sized batch
messages, then decoded and scored by process_batch on the local store, as a cloud function would.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from kubesonar.functions.local.runtime import CollectingNotifier
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.synthetic import write_synthetic_capture
    from kubesonar.shared.batch import SQS_LIMIT, BatchHeader, decode_batch, encode_batch
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.pipeline import Dependencies, process_batch
    from kubesonar.shared.ports import SystemClock

    OUT.mkdir(exist_ok=True)
    capture = OUT / "bench-full.pcap"
    if not capture.exists():
        write_synthetic_capture(capture, packets=args.packets)
    records = FlowRecords.concat(list(flows_from_captures([capture])))
    records = records.take(records["first_ts"].argsort(kind="stable"))
    messages = encode_batch(BatchHeader("bench", "node-1", "sensor-1", 1, 0, 0), records, limit=SQS_LIMIT)

    rates = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as root:
            deps = Dependencies(LocalObjectStore(root), CollectingNotifier(), SystemClock())
            start = time.perf_counter()
            alerts = 0
            for m in messages:
                alerts += len(process_batch(decode_batch(m), deps).new_alerts)
            rates.append(len(records) / (time.perf_counter() - start))
    print(f"core: {len(records)} flows in {len(messages)} SQS-sized messages, {alerts} new alerts")
    print(f"flows scored per second (decode + process_batch, best of {args.repeat}): {max(rates):,.0f}")

    walls = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        subprocess.run(["kubesonar", "demo"], check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    print(f"kubesonar demo wall time (best of {args.repeat}, process start included): {min(walls):.2f} s")


if __name__ == "__main__":
    main()
