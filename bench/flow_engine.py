"""Benchmark: the whole `kubesonar flows` process against softflowd and tcpdump's read floor on the same
capture, then the in-process engine against per-packet dpkt and scapy; peak memory; compressed bytes
per flow. One run, one machine, same capture; runs interleaved, each tool's best kept.

    python bench/flow_engine.py [--packets 1000000] [--repeat 5]

softflowd and tcpdump come from apt (installed here when missing, as root). The native kernels are
built first (python -m kubesonar.sensor.build_native) when a C compiler is there, as the image does.
The whole-process ``kubesonar`` is the package installed from its wheel into bench/out/venv, as the
image installs it; the checkout's editable install is timed beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def _ours(path: str) -> tuple[float, int]:
    from kubesonar.sensor.offline import CaptureStats, flows_from_captures

    stats = CaptureStats()
    start = time.perf_counter()
    for _ in flows_from_captures([path], stats=stats):
        pass
    return stats.packets / (time.perf_counter() - start), stats.flows


def _dpkt(path: str, limit: int) -> float:
    import dpkt

    flows: dict = {}
    n = 0
    start = time.perf_counter()
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            l4 = ip.data
            key = (ip.src, ip.dst, getattr(l4, "sport", 0), getattr(l4, "dport", 0), ip.p)
            rec = flows.setdefault(key, [0, 0])
            rec[0] += 1
            rec[1] += ip.len
            n += 1
            if n >= limit:
                break
    return n / (time.perf_counter() - start)


def _scapy(path: str, limit: int) -> float:
    from scapy.all import IP, PcapReader

    flows: dict = {}
    n = 0
    start = time.perf_counter()
    for pkt in PcapReader(path):
        ip = pkt[IP]
        key = (ip.src, ip.dst, getattr(ip.payload, "sport", 0), getattr(ip.payload, "dport", 0), ip.proto)
        flows[key] = flows.get(key, 0) + 1
        n += 1
        if n >= limit:
            break
    return n / (time.perf_counter() - start)


def _ensure_tools() -> None:
    missing = [tool for tool in ("softflowd", "tcpdump") if not shutil.which(tool)]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, capture_output=True, env=env)


def _ensure_native() -> bool:
    from kubesonar.sensor import record_walk

    if not record_walk.NATIVE and shutil.which("cc"):
        subprocess.run([sys.executable, "-m", "kubesonar.sensor.build_native"], check=True, capture_output=True)
    check = "from kubesonar.sensor.record_walk import NATIVE; print(NATIVE)"
    found = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True)
    return found.stdout.strip() == "True"


def _installed(checkout: Path) -> Path | None:
    """``kubesonar`` installed from its wheel into a venv of its own, as the image installs it (with the
    sensor and nats extras, native kernels built, bytecode compiled), or None where that fails (no
    index, no compiler). The checkout's editable install is timed beside it: its import hook and .pth
    files cost every start some 13 ms that no user's install pays."""
    venv, wheels = OUT / "venv", OUT / "wheels"
    python = str(venv / "bin" / "python")
    shutil.rmtree(wheels, ignore_errors=True)

    def run(*step: str) -> bool:
        # from OUT: in the checkout, its own kubesonar/ directory would shadow the installed package
        done = subprocess.run(step, check=False, capture_output=True, text=True, cwd=OUT)
        if done.returncode != 0:
            print(f"(installing from the wheel failed at `{' '.join(step[:4])}`: {done.stderr.strip()[-300:]}; "
                  "timing the editable checkout only)")
        return done.returncode == 0

    if not (run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(checkout))
            and run(sys.executable, "-m", "venv", "--clear", str(venv))):
        return None
    wheel = next(wheels.glob("kubesonar-*.whl"))
    print("installing kubesonar from its wheel into bench/out/venv, as the image does ...", flush=True)
    if (run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[sensor,nats]")
            and run(python, "-m", "kubesonar.sensor.build_native")
            and run(python, "-m", "compileall", "-q", "-f", str(venv / "lib"))):
        return venv / "bin" / "kubesonar"
    return None


def _compile_bytecode() -> None:
    """Write the package's .pyc files, as pip does when it installs a wheel (and the image does): an
    editable checkout under PYTHONDONTWRITEBYTECODE would otherwise compile every module at each start.
    Forced: compileall takes a .pyc written in the same second as its source's last change for current
    (it compares seconds), the import system does not (it also compares sizes) and compiles anew."""
    import compileall

    import kubesonar.functions
    import kubesonar.sensor
    import kubesonar.shared

    for package in (kubesonar, kubesonar.sensor, kubesonar.shared, kubesonar.functions):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1, force=True)


def _timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system) of a whole process, its output thrown away. The process is
    reaped with a blocking wait4, which also gives its own CPU to the microsecond: subprocess's wait
    with a timeout polls with sleeps that grow to 50 ms, which rounded every wall time up to the next
    step (0.114, 0.164, 0.214, 0.264, ... s), and os.times counts CPU in 10 ms ticks."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    watchdog = threading.Timer(600, proc.kill)
    watchdog.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        watchdog.cancel()
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait for it again
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, usage.ru_utime + usage.ru_stime


def _whole_processes(path: str, repeat: int, installed: Path | None) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU time of each tool over ``repeat`` interleaved runs."""
    checkout = [str(Path(sys.executable).with_name("kubesonar")), "flows", "--format", "jsonl", path]
    commands = {"kubesonar": [str(installed), *checkout[1:]]} if installed else {"kubesonar": checkout}
    if installed:
        commands["kubesonar, editable checkout"] = checkout
        _same_output(commands["kubesonar"], checkout)
    if shutil.which("softflowd"):
        # softflowd 1.1.0 never exits after reading a file when its control socket path is longer than
        # about 12 characters, so keep it short
        commands["softflowd"] = ["softflowd", "-r", path, "-n", "127.0.0.1:9", "-d", "-c", "/tmp/ks.c",
                                 "-p", f"/tmp/ksb-{os.getpid()}.pid"]
    if shutil.which("tcpdump"):
        commands["tcpdump"] = ["tcpdump", "-r", path, "-w", "/dev/null"]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            runs[name].append(_timed(cmd))
            Path("/tmp/ks.c").unlink(missing_ok=True)
    return {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}


def _same_output(installed: list[str], checkout: list[str]) -> None:
    """Both installs must print the same flows, or the timing compares two programs."""
    outputs = {subprocess.run(cmd, check=True, capture_output=True).stdout for cmd in (installed, checkout)}
    if len(outputs) != 1:
        sys.exit("the installed wheel and the checkout print different flows: rebuild the wheel")


def _peak_rss_mib(path: str) -> float:
    """Peak RSS (VmHWM) of a fresh process that turns the capture into flows. Not ru_maxrss: Linux
    carries that over from the parent across fork and exec, and this parent holds whole captures."""
    code = (
        "import sys\nfrom kubesonar.sensor.offline import flows_from_captures\n"
        "for _ in flows_from_captures([sys.argv[1]]): pass\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code, path], check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def _bytes_per_flow(path: str) -> tuple[float, int]:
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.shared.batch import SQS_LIMIT, BatchHeader, encode_batch
    from kubesonar.shared.flow import FlowRecords

    records = FlowRecords.concat(list(flows_from_captures([path])))
    records = records.take(records["first_ts"].argsort(kind="stable"))  # how the sensor sends a window
    messages = encode_batch(BatchHeader("bench", "node-1", "sensor-1", 1, 0, 0), records, limit=SQS_LIMIT)
    return sum(map(len, messages)) / len(records), len(messages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each engine; the best counts")
    args = parser.parse_args()
    from kubesonar.sensor.synthetic import write_synthetic_capture

    _ensure_tools()
    native = _ensure_native()
    OUT.mkdir(exist_ok=True)
    big, small = OUT / "bench-full.pcap", OUT / "bench-quarter.pcap"
    truth = write_synthetic_capture(big, packets=args.packets, flows=args.flows)
    # the same traffic rate for a quarter of the time: memory must not depend on the capture's length
    write_synthetic_capture(small, packets=args.packets // 4, flows=args.flows // 4, duration_s=150.0)
    os.sync()  # the kernel writes the fresh captures back now, not on the CPUs during the timed runs
    print(f"capture: {truth.packets} packets, {truth.flows} flows, {big.stat().st_size / 1e6:.0f} MB; "
          f"native kernels: {native}; load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
          flush=True)

    from kubesonar.shared.flow import COLUMN_NAMES

    _compile_bytecode()
    installed = _installed(Path(__file__).resolve().parents[1])
    _ours(str(small))  # warm the page cache, imports and compiled code
    whole = _whole_processes(str(big), args.repeat, installed)
    ks_wall, ks_cpu = whole["kubesonar"]
    fields = len(COLUMN_NAMES) + 1  # every column of the record (addresses as text) and the flow id
    print("\nWhole process on the same capture. What each one produces: kubesonar, one JSON line per "
          f"bidirectional flow ({fields} fields, to /dev/null); softflowd, NetFlow v5 export (48 bytes a record) of its unidirectional "
          "flows over UDP to the discard port; tcpdump, the packets rewritten to /dev/null.")
    print("| tool | wall s | CPU s | kubesonar's speed relative to it (wall) | (CPU) |")
    print("|---|---:|---:|---:|---:|")
    for name, (wall, cpu) in whole.items():
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {wall / ks_wall:.2f}x | {cpu / ks_cpu:.2f}x |")
    for name in ("softflowd", "tcpdump"):
        if name not in whole:
            print(f"| {name} | not installed | | | |")

    ours_runs = [_ours(str(big)) for _ in range(args.repeat)]
    ours, flows = max(r for r, _ in ours_runs), ours_runs[0][1]
    dpkt_rate = _dpkt(str(big), 200_000)
    scapy_rate = _scapy(str(big), 10_000)
    rss_small, rss_big = _peak_rss_mib(str(small)), _peak_rss_mib(str(big))
    per_flow, messages = _bytes_per_flow(str(big))
    print(f"\nIn-process engine: flows found: {flows} (generated {truth.flows})")
    print("| engine | packets/s | kubesonar is x times |")
    print("|---|---:|---:|")
    for name, rate in (("kubesonar (compiled, in-process)", ours), ("dpkt, per packet", dpkt_rate),
                       ("scapy, per packet", scapy_rate)):
        print(f"| {name} | {rate:,.0f} | {ours / rate:.2f} |")
    print(f"peak RSS: {rss_small:.0f} MiB for {truth.packets // 4:,} packets, {rss_big:.0f} MiB for {truth.packets:,}")
    print(f"batch size: {per_flow:.2f} bytes per flow compressed, {messages} SQS-sized messages")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
