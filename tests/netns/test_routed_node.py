"""A routed CNI's node (no bridge: a veth per pod, the node routes): with ``--direction in`` every packet
counts once, where it enters the node, though a packet between two pods crosses two captured veths and
one from another node crosses the uplink and a veth."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest

from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.batch import decode_batch
from kubesonar.shared.flow import FlowRecords
from netns.node import POD_TRAFFIC, routed_node

from conftest import require_tool

pytestmark = pytest.mark.slow  # real tools and timers: tens of seconds each


def _packets(records: FlowRecords, hosts: set[str]) -> Counter:
    """Packets per (initiator, responder, ports, protocol) between ``hosts``, however flows are cut."""
    totals: Counter = Counter()
    for r in records.iter_dicts():
        if {r["src_ip"], r["dst_ip"]} <= hosts:
            totals[(r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["proto"])] += (
                r["packets_out"] + r["packets_in"])
    return totals


def _first_heartbeats(queues: list, timeout_s: float = 60.0) -> None:
    """Wait for a batch in each queue: its sensor's sockets are open (a loaded machine starts them late)."""
    deadline = time.monotonic() + timeout_s
    while not all(any(q.glob("*.ksfb")) for q in queues):
        assert time.monotonic() < deadline, "a sensor never published its first window"
        time.sleep(0.1)


def test_each_packet_counts_once_where_it_enters_a_routed_node(tmp_path):
    require_tool("tcpdump")
    with routed_node(["web", "client"], outside="far") as node:
        web = node.pods["web"]
        in_host = ["ip", "netns", "exec", node.host]
        # every packet of this test goes to or from web: its own interface sees each exactly once
        dump = node.start("web", "tcpdump", "-i", node.interface("web"), "-w", str(tmp_path / "web.pcap"), "-U",
                          "-s", "256", "ip", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = node.start("web", sys.executable, "-m", "http.server", "8080", "--bind", web,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sensors = {
            direction: subprocess.Popen(
                [*in_host, "kubesonar", "sensor", "-i", f"{node.prefix}v{node.tag}*", "-i", node.uplink, "--direction",
                 direction, "--filter", "ip", "--window", "2", "--queue", f"file://{tmp_path / direction}",
                 "--spool", str(tmp_path / f"spool-{direction}"), "--duration", "14"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for direction in ("in", "both")
        }
        try:
            _first_heartbeats([tmp_path / d for d in sensors])
            clients = [node.start(pod, sys.executable, "-c", POD_TRAFFIC, web, "3") for pod in ("client", "far")]
            node.run("far", "ping", "-c", "5", "-i", "0.2", web, check=True, capture_output=True)
            assert all(c.wait(timeout=30) == 0 for c in clients)
            errors = {d: s.communicate(timeout=60)[1] for d, s in sensors.items()}
        finally:
            time.sleep(0.5)
            dump.terminate()
            dump.wait(timeout=10)
            server.kill()
        assert all(s.returncode == 0 for s in sensors.values()), errors
    hosts = set(node.pods.values())
    reference = _packets(FlowRecords.concat(list(flows_from_captures([tmp_path / "web.pcap"]))), hosts)
    counted = {d: _packets(FlowRecords.concat([decode_batch(p.read_bytes()).flows
                                               for p in sorted((tmp_path / d).glob("*.ksfb"))]), hosts)
               for d in sensors}
    crossings = {src for src, *_ in reference}
    assert crossings == {node.pods["client"], node.pods["far"]}, "pod to pod and from outside the node"
    assert counted["in"] == reference
    # both directions: each of these packets crosses two captured interfaces, and was counted twice
    assert counted["both"] == Counter({key: 2 * n for key, n in reference.items()})
