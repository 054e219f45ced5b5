"""Benchmark: the live sensor's capture rate and drops, against tcpdump on the same replay, and its
memory under a flood of 1,000,000 distinct 5-tuples. Needs root, iproute2, tcpreplay and tcpdump.

    sudo python bench/live_capture.py [--rounds 3] [--sensor v3/1 --sensor v2/1 --sensor v3/2]

A node of network namespaces (tests/netns/node.py): tcpreplay --topspeed sends a capture from inside
a pod namespace and the capture runs on that pod's interface, where every packet sent passes (past it,
the veth's backlog drops what a CPU cannot forward, which would hide the capture's own drops). Rounds
alternate the sensor configurations (``--sensor RING/WORKERS``: the capture ring, TPACKET_V3 or V2,
and the number of capture processes) and tcpdump on the same replay; every round is printed (the
replay's own speed varies between rounds, and so does what a capture must keep up with). CPU and
memory are summed over the sensor's processes (its workers are its children).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))  # the lab (lab/netns.py), never installed


def _replay(node, capture: Path) -> tuple[int, float]:
    """Replay at top speed from the 'replayer' pod; return (packets sent, seconds)."""
    out = node.run("replayer", "tcpreplay", "--topspeed", "-i", node.interface("replayer"), str(capture),
                   capture_output=True, text=True, timeout=600, check=True).stdout
    sent = int(re.search(r"Actual: (\d+) packets", out).group(1))
    seconds = float(re.search(r"packets \(\d+ bytes\) sent in ([\d.]+) seconds", out).group(1))
    return sent, seconds


def _tree(pid: int) -> list[int]:
    """The process and its descendants (the sensor and its capture workers)."""
    pids = [pid]
    for p in pids:
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


def _peak_rss_mib(pid: int) -> float:
    """Peak resident memory summed over the process tree (each process's own peak: an upper bound)."""
    total = 0.0
    for p in _tree(pid):
        try:
            found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        total += int(found.group(1)) / 1024 if found else 0.0  # a zombie has no memory left to report
    return total


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of a live process tree (/proc/PID/stat fields 14 and 15), children
    that ended and were waited for included (fields 16 and 17)."""
    total = 0.0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def _ensure_native() -> bool:
    """Build the native kernels when missing and a C compiler is there, as the image does (and
    bench/flow_engine.py): the JIT path loads numba and LLVM, ~110 MiB the shipped sensor never has.
    ``KUBESONAR_NATIVE=0`` still measures the JIT path."""
    from kubesonar.sensor import record_walk

    if not record_walk.NATIVE and shutil.which("cc"):
        subprocess.run([sys.executable, "-m", "kubesonar.sensor.build_native"], check=True, capture_output=True)
    check = "from kubesonar.sensor.record_walk import NATIVE; print(NATIVE)"
    found = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True)
    return found.stdout.strip() == "True"


def _startup_s(repeat: int = 5) -> list[float]:
    """Wall seconds of a fresh process that imports what ``kubesonar sensor`` imports and loads the
    per-packet kernels (warm cache or native module), as the sensor does before opening its rings."""
    code = ("from kubesonar.cli import main\nfrom kubesonar.compose import build_sensor\n"
            "from kubesonar.sensor.observe import warm_up\nwarm_up()")
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        runs.append(time.perf_counter() - start)
    return runs


def _kubesonar(node, capture: Path, queue: Path, config: str = "auto/1") -> dict:
    from kubesonar.shared.batch import decode_batch

    ring, workers = config.split("/")
    # the kubesonar installed beside this interpreter, whatever PATH sudo keeps
    sensor = node.start("replayer", str(Path(sys.executable).parent / "kubesonar"), "sensor", "-i", node.interface("replayer"),
                        "--window", "2", "--ring", ring, *(["--workers", workers] if workers != "1" else []),
                        "--queue", f"file://{queue}",
                        "--spool", str(queue.parent / "spool"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3 + int(workers))  # numba's cache warm, rings mapped, workers started
    cpu_before = _cpu_s(sensor.pid)
    sent, seconds = _replay(node, capture)
    peak = 0.0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # the last windows drain; watch the memory meanwhile
        peak = max(peak, _peak_rss_mib(sensor.pid))
        time.sleep(0.1)
    cpu = _cpu_s(sensor.pid) - cpu_before  # capture, flows and windows of the replay; not start or exit
    sensor.send_signal(signal.SIGTERM)
    while sensor.poll() is None:
        peak = max(peak, _peak_rss_mib(sensor.pid))
        time.sleep(0.05)
    batches = [decode_batch(p.read_bytes()) for p in sorted(queue.glob("*.ksfb"))]
    last = max(batches, key=lambda b: b.header.sequence).header.counters
    return {"sent": sent, "seconds": seconds, "captured": last["packets"], "kernel_drops": last["kernel_drops"],
            "peak_rss_mib": peak, "flows": sum(len(b.flows) for b in batches), "batches": batches, "cpu_s": cpu}


def _tcpdump(node, capture: Path) -> dict:
    dump = node.start("replayer", "tcpdump", "-i", node.interface("replayer"), "-w", "/dev/null", "-s", "256",
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    sent, seconds = _replay(node, capture)
    time.sleep(2)
    dump.send_signal(signal.SIGINT)
    err = dump.communicate(timeout=30)[1]
    captured = int(re.search(r"(\d+) packets captured", err).group(1))
    dropped = int(re.search(r"(\d+) packets dropped by kernel", err).group(1))
    return {"sent": sent, "seconds": seconds, "captured": captured, "kernel_drops": dropped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood", type=int, default=1_000_000, help="distinct 5-tuples of the flood; 0: none")
    parser.add_argument("--sensor", action="append", metavar="RING/WORKERS",
                        help="a sensor configuration to measure, e.g. v3/1, v2/1, v3/2 (repeat to compare; "
                             "the flood uses the first) [default: auto/1]")
    args = parser.parse_args()
    configs = args.sensor or ["auto/1"]

    import numpy as np

    from kubesonar.functions.local.backend import LocalBackend
    from kubesonar.sensor.synthetic import syn_flood, write_synthetic_capture, write_traffic
    from lab.netns import namespace_node

    native = _ensure_native()
    print(f"native kernels: {native}")
    OUT.mkdir(exist_ok=True)
    traffic = OUT / "bench-full.pcap"
    if not traffic.exists():
        write_synthetic_capture(traffic, packets=1_000_000)
    flood = OUT / f"flood-{args.flood}.pcap"
    if args.flood and not flood.exists():
        rng = np.random.default_rng(3)
        write_traffic(flood, [syn_flood(rng, (10 << 24) | 99, (10 << 24) | (1 << 8) | np.arange(1, 17), args.flood,
                                        10.0)], 1.7e9)

    with namespace_node(["replayer", "sink"]) as node:
        results: dict[str, list[dict]] = {f"kubesonar {c}": [] for c in configs} | {"tcpdump": []}
        for r in range(args.rounds):
            for config in configs:
                with tempfile.TemporaryDirectory() as tmp:
                    results[f"kubesonar {config}"].append(_kubesonar(node, traffic, Path(tmp) / "queue", config))
            results["tcpdump"].append(_tcpdump(node, traffic))
            for name in results:
                x = results[name][-1]
                print(f"round {r + 1} {name:14}: sent {x['sent']:,} in {x['seconds']:.2f} s, captured "
                      f"{x['captured']:,}, kernel drops {x['kernel_drops']:,}")
        if args.rounds:
            print(f"\nlive capture of {traffic.name} replayed with tcpreplay --topspeed, every round:")
            print(f"(load average {os.getloadavg()[0]:.1f})")
            print("| engine (ring/workers) | replay packets/s | captured | kernel drops | CPU per captured packet |")
            print("|---|---:|---:|---:|---:|")
            for name, runs in results.items():
                for x in runs:
                    per_packet = f"{x['cpu_s'] / max(x['captured'], 1) * 1e6:.2f} µs" if "cpu_s" in x else ""
                    print(f"| {name} | {x['sent'] / x['seconds']:,.0f} | {x['captured']:,} of {x['sent']:,} | "
                          f"{x['kernel_drops'] / x['sent']:.2%} | {per_packet} |")
        startup = _startup_s()
        print(f"\nsensor startup (imports and kernels, warm cache), {len(startup)} runs: "
              f"{', '.join(f'{s:.2f}' for s in sorted(startup))} s")

        if not args.flood:
            return
        with tempfile.TemporaryDirectory() as tmp:
            run = _kubesonar(node, flood, Path(tmp) / "queue", configs[0])
            backend = LocalBackend(Path(tmp) / "state")
            alerts = []
            for b in sorted(run["batches"], key=lambda b: (b.header.sequence, b.header.part)):
                from kubesonar.shared.batch import encode_batch

                for message in encode_batch(b.header, b.flows):
                    result = backend.receive(f"{b.header.sequence}/{b.header.part}/{len(alerts)}", message)
                    alerts += result.new_alerts if result else []
        print(f"\nflood of {args.flood:,} distinct 5-tuples, kubesonar {configs[0]} (native kernels: {native}): sent {run['sent']:,} at "
              f"{run['sent'] / run['seconds']:,.0f} packets/s; captured {run['captured']:,}, kernel drops "
              f"{run['kernel_drops']:,}; {run['flows']:,} flow records; sensor peak RSS {run['peak_rss_mib']:.0f} MiB; "
              f"alerts: {[(a['type'], a['source']['ip']) for a in alerts]}")


if __name__ == "__main__":
    main()
