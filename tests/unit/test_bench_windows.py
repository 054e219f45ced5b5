"""The benchmarks that send batches through a queue stamp their windows as a sensor would: when they are
sent. The core refuses a delivered message whose window ended 23 hours ago as a replay (shared/applied.py),
so a bench stamping its capture's times would time the refusal of every message, not their processing."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from kubesonar.shared.applied import MAX_AGE_NS
from kubesonar.shared.batch import decode_batch

REPO = Path(__file__).resolve().parents[2]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_nats_backend_bench_sends_windows_the_core_takes(tmp_path, monkeypatch):
    from kubesonar.sensor import synthetic

    bench = _bench("nats_backend")
    monkeypatch.setattr(bench, "OUT", tmp_path)  # a small capture of its own, not the 1M-packet one
    small = synthetic.write_synthetic_capture
    monkeypatch.setattr(synthetic, "write_synthetic_capture",
                        lambda path, packets: small(path, packets=5_000, flows=200, scan_ports=20))
    messages, _ = bench._messages(count=8, per=20, sensors=2, clusters=1)
    now = time.time_ns()
    for m in messages:
        age = now - decode_batch(m.data).header.window_end_ns
        assert -MAX_AGE_NS < age < MAX_AGE_NS, f"{m.key}: window ended {age / 3.6e12:.0f} h ago"
