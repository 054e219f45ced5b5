"""How long a publish takes with N heartbeat-sized entries already spooled (the queue down), how long a
start takes over them, and what the spool keeps in memory for them (and needs at most while starting).

    python bench/spool_backlog.py 10000 100000 300000
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from kubesonar.sensor.queues import Message
from kubesonar.sensor.queues.directory import DirectoryQueue
from kubesonar.sensor.spool import SpoolingPublisher

HEARTBEAT = 900  # bytes: an idle node's window (docs/sensor.md)


def _fill(spool: Path, entries: int) -> None:
    spool.mkdir()
    key = b"node-1/abc/0/0"
    entry = len(key).to_bytes(2, "little") + key + b"x" * (HEARTBEAT - 2 - len(key))
    for n in range(entries):
        (spool / f"{n:020d}.spool").write_bytes(entry)


def bench(entries: int, publishes: int = 3) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        root = Path(tmp)
        (root / "queue").write_text("not a directory")  # the queue is down
        _fill(root / "spool", entries)
        tracemalloc.start()
        started = time.perf_counter()
        publisher = SpoolingPublisher(DirectoryQueue(root / "queue", limit=8192), root / "spool",
                                      max_bytes=1 << 40, attempts=1, outage_backoff_s=(3600.0, 3600.0))
        start_s = time.perf_counter() - started
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        best = float("inf")
        for n in range(publishes):
            message = Message(f"node-1/abc/{entries + n}/0", b"x" * (HEARTBEAT - 20))
            started = time.perf_counter()
            publisher.publish([message])
            best = min(best, time.perf_counter() - started)
        assert publisher.stats.depth == entries + publishes
        return {"entries": entries, "start_s": start_s, "publish_best_s": best, "memory_mib": held / 2**20,
                "start_peak_mib": peak / 2**20}


if __name__ == "__main__":
    for count in map(int, sys.argv[1:]):
        print(bench(count), flush=True)
