"""Benchmark: flows scored per second by the detection core, and `kubesonar demo` wall time.

    python bench/core_scoring.py [--packets 1000000]

The flows of the 1,000,000-packet benchmark capture (see flow_engine.py) are encoded as SQS-sized batch
messages, then decoded and scored by process_batch on the local store, as a cloud function would.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    from kubesonar.functions.local.notifier import CollectingNotifier
    from kubesonar.functions.local.store import LocalObjectStore
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.synthetic import write_synthetic_capture
    from kubesonar.shared.batch import SQS_LIMIT, BatchHeader, decode_batch, encode_batch
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.frozen_start import freeze_what_loading_made
    from kubesonar.shared.pipeline import Dependencies, process_batch
    from kubesonar.shared.ports import SystemClock

    OUT.mkdir(exist_ok=True)
    capture = OUT / "bench-full.pcap"
    if not capture.exists():
        write_synthetic_capture(capture, packets=args.packets)
    records = FlowRecords.concat(list(flows_from_captures([capture])))
    records = records.take(records["first_ts"].argsort(kind="stable"))
    messages = encode_batch(BatchHeader("bench", "node-1", "sensor-1", 1, 0, 0), records, limit=SQS_LIMIT)

    # the same traffic a day later, scored against the state the first pass left (a warm baseline)
    later = FlowRecords(dict(records.columns, first_ts=records["first_ts"] + 86_400 * 10**9,
                             conn_start=records["conn_start"] + 86_400 * 10**9))
    warm_messages = encode_batch(BatchHeader("bench", "node-1", "sensor-1", 2, 0, 0), later, limit=SQS_LIMIT)

    freeze_what_loading_made()  # as every runtime does once it has loaded (shared/frozen_start.py)

    def score(deps: Dependencies, batch_messages: list[bytes]) -> tuple[float, int]:
        start = time.perf_counter()
        alerts = sum(len(process_batch(decode_batch(m), deps).new_alerts) for m in batch_messages)
        return len(records) / (time.perf_counter() - start), alerts

    fresh, warm = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as root:
            deps = Dependencies(LocalObjectStore(root), CollectingNotifier(), SystemClock())
            rate, alerts = score(deps, messages)
            fresh.append(rate)
            warm.append(score(deps, warm_messages)[0])
    print(f"core: {len(records)} flows in {len(messages)} SQS-sized messages, {alerts} new alerts")
    print(f"flows scored per second (decode + process_batch, best of {args.repeat}): fresh state "
          f"{max(fresh):,.0f}, warm state {max(warm):,.0f}")

    walls = []
    for _ in range(3):
        start = time.perf_counter()
        # this interpreter's command, as README's `python bench/core_scoring.py` runs without the venv on PATH
        subprocess.run([str(Path(sys.executable).with_name("kubesonar")), "demo"], check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    print(f"kubesonar demo wall time (best of 3, process start included): {min(walls):.2f} s")


if __name__ == "__main__":
    main()
