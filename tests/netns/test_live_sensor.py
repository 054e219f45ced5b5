"""The live sensor on a node of network namespaces: alerts within two windows, flow totals equal to a
tcpdump capture of the same traffic, and a heartbeat every window."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.batch import decode_batch
from kubesonar.shared.flow import FlowRecords, address_text
from netns.node import POD_TRAFFIC, namespace_node

from conftest import REPO, require_tool

pytestmark = pytest.mark.slow  # real tools and timers: tens of seconds each

WINDOW_S = 3.0



def _lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put((time.monotonic(), line))


def test_watch_reports_an_nmap_scan_within_two_windows_amid_normal_traffic():
    require_tool("nmap")
    with namespace_node(["scanner", "web", "client"]) as node:
        web = node.pods["web"]
        server = node.start("web", sys.executable, "-m", "http.server", "8080", "--bind", web,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        watch = subprocess.Popen(["kubesonar", "watch", "-i", node.bridge, "--window", str(WINDOW_S),
                                  "--format", "json", "--duration", "40"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(watch.stdout, lines), daemon=True).start()
        try:
            time.sleep(2)
            client = node.start("client", sys.executable, "-c", POD_TRAFFIC, web, "15")
            time.sleep(4)
            node.run("scanner", "nmap", "-n", "-Pn", "-T4", "-sS", "-p", "1-500", web,
                     check=True, capture_output=True, timeout=60)
            scanned = time.monotonic()
            at, line = lines.get(timeout=3 * WINDOW_S + 5)
            client.wait(timeout=30)
        finally:
            watch.terminate()
            server.kill()
        rest, err = watch.communicate(timeout=30)
        alert = json.loads(line)
        assert (alert["type"], alert["source"]["ip"]) == ("port_scan", node.pods["scanner"])
        assert at - scanned <= 2 * WINDOW_S + 1.0, f"alert {at - scanned:.1f} s after the scan"
        assert client.returncode == 0
        later = [json.loads(x) for x in rest.splitlines()] + [json.loads(x) for _, x in _drain(lines)]
        assert all(a["source"]["ip"] == node.pods["scanner"] for a in later), "only the scanner is reported"
        assert "Traceback" not in err


def test_watch_parses_dns_and_mining_payloads_live_within_the_snap_length():
    """The live path reads DNS names (up to 255 bytes) and a Stratum request from the ring's 928 bytes."""
    with namespace_node(["victim", "dns", "gpu", "pool"]) as node:
        dns = node.pods["dns"]
        node.add_address("pool", "203.0.113.77")
        tool = [sys.executable, str(REPO / "lab" / "lab_tools.py")]
        servers = [node.start("dns", *tool, "dns-server", dns, "40", stdout=subprocess.DEVNULL),
                   node.start("pool", *tool, "stratum-pool", "203.0.113.77", "3333", "40", stdout=subprocess.DEVNULL)]
        watch = subprocess.Popen(["kubesonar", "watch", "-i", node.bridge, "--window", str(WINDOW_S),
                                  "--format", "json", "--duration", "20"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2)
            node.run("victim", *tool, "dns-tunnel", dns, "t.tunnel-lab.example", "iodine", "80", "0.01",
                     check=True, timeout=60)
            node.run("gpu", *tool, "stratum-client", "203.0.113.77", "3333", "3", check=True, timeout=60)
            out, err = watch.communicate(timeout=60)
        finally:
            watch.kill()
            for s in servers:
                s.kill()
        alerts = {(a["type"], a["source"]["ip"]) for a in map(json.loads, out.splitlines())}
        assert alerts == {("dns_tunneling", node.pods["victim"]), ("crypto_mining", node.pods["gpu"])}, err


def _drain(q: queue.Queue) -> list:
    items = []
    while not q.empty():
        items.append(q.get())
    return items


def _totals(records: FlowRecords, hosts: set[str]) -> Counter:
    """Packets and bytes per (initiator, responder, ports, protocol) between ``hosts``: invariant however
    flows are cut. (IGMP and ND the kernel sends as links come up fall between the two captures' starts.)"""
    totals: Counter = Counter()
    for r in records.iter_dicts():
        if not {r["src_ip"], r["dst_ip"]} <= hosts:
            continue
        key = (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["proto"])
        totals[key + ("packets",)] += r["packets_out"] + r["packets_in"]
        totals[key + ("bytes",)] += r["bytes_out"] + r["bytes_in"]
    return totals


def test_live_flow_totals_equal_a_tcpdump_capture_and_every_window_has_a_heartbeat(tmp_path):
    require_tool("tcpdump")
    queue_dir, capture = tmp_path / "queue", tmp_path / "same.pcap"
    with namespace_node(["web", "client"]) as node:
        web = node.pods["web"]
        server = node.start("web", sys.executable, "-m", "http.server", "8080", "--bind", web,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(capture), "-U", "-s", "256", "ip"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sensor = subprocess.Popen(["kubesonar", "sensor", "-i", node.bridge, "--window", "2", "--filter", "ip",
                                   "--queue", f"file://{queue_dir}", "--spool", str(tmp_path / "spool"),
                                   "--duration", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(2)
            # 8 s of requests: a busy machine (tests in parallel) completes fewer of them in the time
            node.run("client", sys.executable, "-c", POD_TRAFFIC, web, "8", check=True, timeout=30)
            node.run("client", "ping", "-c", "5", "-i", "0.2", web, check=True, capture_output=True)
            _, err = sensor.communicate(timeout=60)
        finally:
            time.sleep(0.5)
            dump.terminate()
            dump.wait(timeout=10)
            server.kill()
        assert sensor.returncode == 0, err
    batches = [decode_batch(p.read_bytes()) for p in sorted(queue_dir.glob("*.ksfb"))]
    live = FlowRecords.concat([b.flows for b in batches])
    reference = FlowRecords.concat(list(flows_from_captures([capture])))
    assert len(reference) > 100
    pods = set(node.pods.values())
    assert _totals(live, pods) == _totals(reference, pods)
    # a heartbeat every window, quiet ones included, with the kernel's counters
    sequences = sorted(b.header.sequence for b in batches if b.header.part == 0)
    assert sequences == list(range(len(sequences))) and len(sequences) >= 16 / 2
    last = max(batches, key=lambda b: b.header.sequence).header.counters
    assert last["kernel_drops"] == 0 and last["kernel_packets"] >= last["packets"] > 0
    assert {address_text(a) for a in live["src_addr"]} >= {node.pods["client"]}
