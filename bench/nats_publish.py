"""Benchmark: how the sync sensor drives nats-py's asyncio client. One loop thread holding the connection
(sensor/queues/nats.py) against ``asyncio.run`` per send (connect, publish with ack, close each time).

    python bench/nats_publish.py [--sends 200]

Each send is one acknowledged JetStream publish of a 64 KiB message, on a nats-server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBJECT = "bench.batches"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=200)
    args = parser.parse_args()
    import nats

    from kubesonar.sensor.queues import Message
    from kubesonar.sensor.queues.nats import NatsQueue

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"nats://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as root:
        server = subprocess.Popen([str(Path(sys.executable).parent / "nats-server"), "-a", "127.0.0.1", "-p",
                                   str(port), "-js", "-sd", root], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)

            async def setup():
                nc = await nats.connect(url)
                await nc.jetstream().add_stream(name="BENCH", subjects=[SUBJECT])
                await nc.close()

            asyncio.run(setup())
            data = bytes(64 * 1024)
            queue = NatsQueue(f"{url}/{SUBJECT}")
            thread_ms = []
            for i in range(args.sends):
                t = time.perf_counter()
                queue.send([Message(f"t/{i}/0", data)])
                thread_ms.append((time.perf_counter() - t) * 1000)
            queue.close()

            async def once(i: int) -> None:
                nc = await nats.connect(url)
                await nc.jetstream().publish(SUBJECT, data, headers={"Nats-Msg-Id": f"r/{i}/0"})
                await nc.close()

            run_ms = []
            for i in range(args.sends):
                t = time.perf_counter()
                asyncio.run(once(i))
                run_ms.append((time.perf_counter() - t) * 1000)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps({"sends": args.sends, "message_kib": 64,
                      "loop_thread_ms_median": round(statistics.median(thread_ms[1:]), 2),
                      "loop_thread_first_send_ms": round(thread_ms[0], 1),
                      "asyncio_run_per_send_ms_median": round(statistics.median(run_ms), 2),
                      "load_average_1m_after": float(Path("/proc/loadavg").read_text().split()[0])}, indent=1))


if __name__ == "__main__":
    main()
