"""The TPACKET_V3 ring and ``--workers 2`` (PACKET_FANOUT) on a node of network namespaces: a bounded,
known set of UDP and TCP flows, captured at once by a one-worker V3 sensor, a two-worker V3 sensor and a
V2 sensor, each counts every flow exactly once, with the packets and bytes of a tcpdump capture of the
same traffic (and, for UDP, of the sender's own counts)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kubesonar.sensor.offline import flows_from_captures
from kubesonar.shared.batch import decode_batch
from kubesonar.shared.flow import FlowRecords
from netns.node import namespace_node

from conftest import require_tool

pytestmark = pytest.mark.slow  # real tools and timers: tens of seconds each

UDP_FLOWS, TCP_FLOWS, UDP_PORTS = 200, 100, 7

_SERVER = """
import socket, socketserver, sys, threading
host = sys.argv[1]
sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(int(sys.argv[2]))]
for i, sink in enumerate(sinks):  # open UDP ports, so no port-unreachable errors
    sink.bind((host, 9000 + i))
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while self.request.recv(4096):
            pass
        self.request.sendall(b"ok")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((host, 8080), Echo).serve_forever()
"""

_SENDER = """
import json, socket, sys
server, udp_flows, tcp_flows, udp_ports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sent = {}
for i in range(udp_flows):  # 1 to 5 datagrams of known sizes per flow
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", 20000 + i))
    sizes = [10 + 37 * k + i % 13 for k in range(1 + i % 5)]
    for size in sizes:
        s.sendto(b"u" * size, (server, 9000 + i % udp_ports))
    sent[f"{20000 + i} {9000 + i % udp_ports}"] = [len(sizes), sum(28 + n for n in sizes)]
    s.close()
for i in range(tcp_flows):
    c = socket.create_connection((server, 8080))
    c.sendall(b"t" * (100 + 11 * i))
    c.shutdown(socket.SHUT_WR)
    c.recv(16)
    c.close()
print(json.dumps(sent))
"""


def _records(queue: Path) -> FlowRecords:
    return FlowRecords.concat([decode_batch(p.read_bytes()).flows for p in sorted(queue.glob("*.ksfb"))])


def _by_flow(records: FlowRecords, hosts: set[str]) -> tuple[Counter, Counter]:
    """Records per 5-tuple (initiator first), and their packets and bytes, between ``hosts``."""
    records_of, totals = Counter(), Counter()
    for r in records.iter_dicts():
        if {r["src_ip"], r["dst_ip"]} <= hosts:
            key = (r["src_ip"], r["src_port"], r["dst_ip"], r["dst_port"], r["proto"])
            records_of[key] += 1
            totals[key + ("packets",)] += r["packets_out"] + r["packets_in"]
            totals[key + ("bytes",)] += r["bytes_out"] + r["bytes_in"]
    return records_of, totals


def test_v3_ring_and_two_fanout_workers_see_every_flow_exactly_once(tmp_path):
    require_tool("tcpdump")
    sensors = {"v3-1": ("v3", 1), "v3-2": ("v3", 2), "v2-1": ("v2", 1)}
    with namespace_node(["client", "server"]) as node:
        server_ip, client_ip = node.pods["server"], node.pods["client"]
        server = node.start("server", sys.executable, "-c", _SERVER, server_ip, str(UDP_PORTS))
        dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(tmp_path / "ref.pcap"), "-U", "-s", "256",
                                 "ip"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        running = {
            name: subprocess.Popen(
                ["kubesonar", "sensor", "-i", node.bridge, "--ring", ring, "--workers", str(workers), "--filter",
                 "ip", "--window", "2", "--queue", f"file://{tmp_path / name}", "--spool",
                 str(tmp_path / f"spool-{name}"), "--duration", "10"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for name, (ring, workers) in sensors.items()
        }
        try:
            deadline = time.monotonic() + 60  # every sensor's rings are open once it has published
            while not all(any((tmp_path / name).glob("*.ksfb")) for name in sensors):
                assert time.monotonic() < deadline, "a sensor never published its first window"
                time.sleep(0.1)
            out = node.run("client", sys.executable, "-c", _SENDER, server_ip, str(UDP_FLOWS), str(TCP_FLOWS),
                           str(UDP_PORTS), check=True, capture_output=True, text=True, timeout=60).stdout
            errors = {name: s.communicate(timeout=60)[1] for name, s in running.items()}
        finally:
            time.sleep(0.5)
            dump.terminate()
            dump.wait(timeout=10)
            server.kill()
        assert all(s.returncode == 0 for s in running.values()), errors
    hosts = {server_ip, client_ip}
    reference_records, reference = _by_flow(FlowRecords.concat(list(flows_from_captures([tmp_path / "ref.pcap"]))),
                                            hosts)
    assert len(reference_records) == UDP_FLOWS + TCP_FLOWS
    sent = json.loads(out)
    udp = {k: v for k, v in reference.items() if k[4] == 17}
    assert udp == {(client_ip, int(sport), server_ip, int(dport), 17, what): count
                   for ports, counts in sent.items() for what, count in zip(("packets", "bytes"), counts)
                   for sport, dport in [ports.split()]}
    found = {name: _by_flow(_records(tmp_path / name), hosts) for name in sensors}
    for name, (records_of, totals) in found.items():
        assert totals == reference, name
        assert set(records_of.values()) == {1}, f"{name}: a flow in more than one record"
    # merging the workers' records is concatenating them: the same records as one worker's table
    assert found["v3-2"][0] == found["v3-1"][0]
    assert "TPACKET_V2" in errors["v2-1"] and errors["v3-2"].count("TPACKET_V3") == 2


def test_a_v3_ring_left_unread_for_seconds_on_a_quiet_node_loses_nothing():
    """A quiet node hands every block over part full, one per block timeout: the ring must outlast a
    stall of the loop (a window's publishing) of several seconds; at 5 ms its 256 blocks held 1.3 s."""
    from kubesonar.sensor.af_packet import TPACKET_V3, RingSocket

    sent = 300
    with namespace_node(["client", "server"]) as node:
        ring = RingSocket(node.bridge)
        try:
            assert ring.version == TPACKET_V3 and ring.config.block_count == 256
            trickle = ("import socket, sys, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                       f"for i in range({sent}):\n    s.sendto(b'x' * 40, (sys.argv[1], 9)); time.sleep(0.01)\n")
            node.run("client", sys.executable, "-c", trickle, node.pods["server"], check=True, timeout=60)
            time.sleep(2 * ring.config.block_timeout_ms / 1000)  # the last block times out
            seen = 0
            while (batch := ring.read()) is not None:
                udp = batch.data[batch.offset + 23] == 17  # Ethernet + IPv4 protocol byte
                seen += int((udp & (batch.wirelen == 14 + 28 + 40)).sum())
            stats = ring.read_stats()
        finally:
            ring.close()
    assert stats.drops == 0 and seen == sent, (stats, seen)
