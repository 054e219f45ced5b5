"""Benchmark: the live sensor's capture rate and drops, against tcpdump on the same replay, and its
memory under a flood of 1,000,000 distinct 5-tuples. Needs root, iproute2, tcpreplay and tcpdump.

    sudo python bench/live_capture.py [--rounds 3] [--sensor v3/1 --sensor v2/1 --sensor v3/2]
                                      [--sender trafgen [--sender-cpus 1] [--packets 3000000]] [--capture-at node]

A node of network namespaces (tests/netns/node.py): tcpreplay --topspeed sends a capture from inside
a pod namespace and the capture runs on that pod's interface, where every packet sent passes (past it,
the veth's backlog drops what a CPU cannot forward, which would hide the capture's own drops). Rounds
alternate the sensor configurations (``--sensor RING/WORKERS``: the capture ring, TPACKET_V3 or V2,
and the number of capture processes) and tcpdump on the same replay; every round is printed (the
replay's own speed varies between rounds, and so does what a capture must keep up with). CPU and
memory are summed over the sensor's processes (its workers are its children).

tcpreplay tops out near 450,000 packets/s on a 2-core VM; ``--sender trafgen`` (netsniff-ng's, a TX
ring) sends ``--packets`` frames looped from the capture's first 2,000, faster, from ``--sender-cpus``
processes on the first CPUs, the capture pinned to the others when any are left. Either way the
sending CPU also runs the veth's receive path and copies every packet into the capture's ring.
``--capture-at node`` captures on the node's end of the pod's veth instead, in the node's namespace as
a hostNetwork DaemonSet does, with that end taken off the bridge: the node's stack drops the frames
(not addressed to it) instead of the bridge flooding them through a second veth to the sink, the
shortest path a sent packet can take past a capture. There the veth's backlog can drop packets
before the capture sees them: every round prints how many.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))  # the lab (lab/netns.py), never installed


@dataclass(frozen=True)
class Replay:
    """How the capture is sent, and where it is captured."""

    tool: str = "tcpreplay"
    cpus: int = 0  # trafgen's processes, on CPUs 0..cpus-1; 0: tcpreplay, unpinned
    packets: int = 0  # trafgen's total
    at_node: bool = False  # on the node's end of the pod's veth, taken off the bridge; else the pod's end

    def interface(self, node) -> str:
        return node.node_interface("replayer") if self.at_node else node.interface("replayer")

    def start_capture(self, node, *cmd: str, **kw) -> subprocess.Popen:
        """The capture, pinned to the CPUs the sender leaves when it leaves any, in the pod's namespace
        or the node's (as a hostNetwork DaemonSet captures a pod's egress)."""
        left = range(self.cpus, os.cpu_count() or 1) if self.cpus else ()
        pinned = ["taskset", "-c", ",".join(map(str, left))] if left else []
        return subprocess.Popen([*pinned, *cmd], **kw) if self.at_node else node.start("replayer", *pinned, *cmd, **kw)


def _replay(node, capture: Path, replay: Replay) -> tuple[int, float, int]:
    """Send at top speed from the 'replayer' pod; return (packets sent, seconds, packets the node's end of
    the veth dropped before its taps: its backlog overflowed, which only a capture there would miss)."""
    dropped = Path(f"/sys/class/net/{node.node_interface('replayer')}/statistics/rx_dropped")
    before = int(dropped.read_text())
    sent, seconds = _trafgen(node, capture, replay) if replay.tool == "trafgen" else _tcpreplay(node, capture)
    return sent, seconds, int(dropped.read_text()) - before


def _tcpreplay(node, capture: Path) -> tuple[int, float]:
    out = node.run("replayer", "tcpreplay", "--topspeed", "-i", node.interface("replayer"), str(capture),
                   capture_output=True, text=True, timeout=600, check=True).stdout
    sent = int(re.search(r"Actual: (\d+) packets", out).group(1))
    seconds = float(re.search(r"packets \(\d+ bytes\) sent in ([\d.]+) seconds", out).group(1))
    return sent, seconds


def _trafgen(node, config: Path, replay: Replay) -> tuple[int, float]:
    """trafgen's processes each send their share as fast as their ring goes; the slowest one's time is
    the replay's. ``-q``: through the qdisc, as a pod's socket sends, when the capture is on the pod's
    end (trafgen's default bypass skips the sending interface's taps); ``-Q``: leave IRQ affinity alone."""
    qdisc = [] if replay.at_node else ["-q"]
    done = node.run("replayer", "trafgen", "-o", node.interface("replayer"), "-i", str(config), "-n", str(replay.packets),
                    "-P", str(replay.cpus), *qdisc, "-Q", capture_output=True, text=True, timeout=600, check=True)
    per_cpu = re.findall(r"(\d+) sec, (\d+) usec on CPU\d+ \((\d+) packets\)", done.stdout + done.stderr)
    return sum(int(n) for _, _, n in per_cpu), max(int(s) + int(us) / 1e6 for s, us, _ in per_cpu)


def _trafgen_config(capture: Path, config: Path, frames: int = 2000) -> None:
    """The capture's first ``frames`` frames as trafgen packets (a classic pcap, either byte order)."""
    data = capture.read_bytes()
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    pos, lines = 24, []
    while pos + 16 <= len(data) and len(lines) < frames:
        caplen = struct.unpack_from(f"{order}I", data, pos + 8)[0]
        frame = data[pos + 16:pos + 16 + caplen]
        lines.append("{ " + ", ".join(f"0x{b:02x}" for b in frame) + " }")
        pos += 16 + caplen
    config.write_text("\n".join(lines) + "\n")


def _cpu_jiffies() -> dict[str, list[int]]:
    """Per-CPU user, nice, system, idle, iowait, irq, softirq jiffies (/proc/stat)."""
    rows = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            rows[name] = [int(f) for f in fields[:7]]
    return rows


def _cpu_split(before: dict[str, list[int]], after: dict[str, list[int]]) -> str:
    """Where each CPU's time went between two readings: user, system, softirq (the veth's receive path
    and the taps), idle."""
    parts = []
    for cpu, start in before.items():
        d = [b - a for a, b in zip(start, after[cpu])]
        total = sum(d) or 1
        parts.append(f"{cpu} user {(d[0] + d[1]) / total:.0%} sys {d[2] / total:.0%} softirq {d[6] / total:.0%} "
                     f"idle {(d[3] + d[4]) / total:.0%}")
    return "; ".join(parts)


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


def _kubesonar(node, capture: Path, queue: Path, config: str = "auto/1", replay: Replay = Replay()) -> dict:
    from kubesonar.shared.batch import decode_batch

    ring, workers = config.split("/")
    # the kubesonar installed beside this interpreter, whatever PATH sudo keeps
    sensor = replay.start_capture(node, str(Path(sys.executable).parent / "kubesonar"), "sensor", "-i", replay.interface(node),
                                  "--window", "2", "--ring", ring, *(["--workers", workers] if workers != "1" else []),
                                  "--queue", f"file://{queue}", "--spool", str(queue.parent / "spool"),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3 + int(workers))  # numba's cache warm, rings mapped, workers started
    cpu_before, jiffies = _cpu_s(sensor.pid), _cpu_jiffies()
    sent, seconds, unseen = _replay(node, capture, replay)
    split = _cpu_split(jiffies, _cpu_jiffies())
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
            "peak_rss_mib": peak, "flows": sum(len(b.flows) for b in batches), "batches": batches, "cpu_s": cpu,
            "cpu_split": split, "unseen": unseen}


def _tcpdump(node, capture: Path, replay: Replay = Replay()) -> dict:
    dump = replay.start_capture(node, "tcpdump", "-i", replay.interface(node), "-w", "/dev/null", "-s", "256",
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    cpu_before, jiffies = _cpu_s(dump.pid), _cpu_jiffies()  # taskset execs tcpdump in its place
    sent, seconds, unseen = _replay(node, capture, replay)
    split = _cpu_split(jiffies, _cpu_jiffies())
    time.sleep(2)
    cpu = _cpu_s(dump.pid) - cpu_before
    dump.send_signal(signal.SIGINT)
    err = dump.communicate(timeout=30)[1]
    captured = int(re.search(r"(\d+) packets captured", err).group(1))
    dropped = int(re.search(r"(\d+) packets dropped by kernel", err).group(1))
    return {"sent": sent, "seconds": seconds, "captured": captured, "kernel_drops": dropped, "cpu_s": cpu,
            "cpu_split": split, "unseen": unseen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood", type=int, default=1_000_000, help="distinct 5-tuples of the flood; 0: none")
    parser.add_argument("--sensor", action="append", metavar="RING/WORKERS",
                        help="a sensor configuration to measure, e.g. v3/1, v2/1, v3/2 (repeat to compare; "
                             "the flood uses the first) [default: auto/1]")
    parser.add_argument("--sender", choices=["tcpreplay", "trafgen"], default="tcpreplay",
                        help="what replays the capture [default: tcpreplay]")
    parser.add_argument("--sender-cpus", type=int, default=1, help="trafgen's processes, one a CPU [default: 1]")
    parser.add_argument("--packets", type=int, default=3_000_000, help="trafgen's packets a replay [default: 3,000,000]")
    parser.add_argument("--capture-at", choices=["pod", "node"], default="pod",
                        help="the pod's end of its veth, or the node's, off the bridge [default: pod]")
    args = parser.parse_args()
    configs = args.sensor or ["auto/1"]
    at_node = args.capture_at == "node"
    replay = Replay("trafgen", args.sender_cpus, args.packets, at_node) if args.sender == "trafgen" else Replay(at_node=at_node)

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

    source = traffic
    if replay.tool == "trafgen":
        source = OUT / f"{traffic.stem}.trafgen"
        _trafgen_config(traffic, source)

    with namespace_node(["replayer", "sink"]) as node:
        if at_node:  # the node's stack drops what is not addressed to it; the bridge would flood it to the sink
            subprocess.run(["ip", "link", "set", node.node_interface("replayer"), "nomaster"], check=True)
        results: dict[str, list[dict]] = {f"kubesonar {c}": [] for c in configs} | {"tcpdump": []}
        for r in range(args.rounds):
            for config in configs:
                with tempfile.TemporaryDirectory() as tmp:
                    results[f"kubesonar {config}"].append(_kubesonar(node, source, Path(tmp) / "queue", config, replay))
            results["tcpdump"].append(_tcpdump(node, source, replay))
            for name in results:
                x = results[name][-1]
                print(f"round {r + 1} {name:14}: sent {x['sent']:,} in {x['seconds']:.2f} s, captured "
                      f"{x['captured']:,}, kernel drops {x['kernel_drops']:,}"
                      + (f", dropped by the node's end before its taps {x['unseen']:,}" if at_node else "")
                      + f"; CPUs while sending: {x['cpu_split']}")
        if args.rounds:
            how = ("tcpreplay --topspeed" if replay.tool == "tcpreplay" else
                   f"trafgen from {replay.cpus} CPU(s) ({replay.packets:,} packets)")
            how += f", captured on the {args.capture_at}'s end of the veth"
            print(f"\nlive capture of {source.name} replayed with {how}, every round:")
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
