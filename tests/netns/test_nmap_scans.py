"""Real nmap against a neighbour amid normal traffic, recorded with tcpdump on the node's bridge:
`kubesonar analyze` names exactly the scanner."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from lab.netns import POD_NETWORK
from netns.node import namespace_node

from conftest import require_tool

pytestmark = pytest.mark.slow  # real tools and timers: tens of seconds each

_HTTP_CLIENT = """
import sys, time, urllib.request
end = time.time() + float(sys.argv[2])
while time.time() < end:
    urllib.request.urlopen(f"http://{sys.argv[1]}:8080/", timeout=2).read()
    time.sleep(0.05)
"""


def test_nmap_syn_connect_and_udp_scans_are_reported_from_the_scanner_only(tmp_path):
    for tool in ("nmap", "tcpdump"):
        require_tool(tool)
    with namespace_node(["scanner", "web", "client", "db"]) as node:
        web, db = node.pods["web"], node.pods["db"]
        servers = [
            node.start("web", sys.executable, "-m", "http.server", "8080", "--bind", web,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            node.start("db", sys.executable, "-m", "http.server", "8080", "--bind", db,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        capture = tmp_path / "node.pcap"
        dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(capture), "-U", "-s", "128"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)  # servers listening, tcpdump capturing
            clients = [node.start("client", sys.executable, "-c", _HTTP_CLIENT, target, "25")
                       for target in (web, db)]
            for args in (["-sS", "-p", "1-1000"], ["-sT", "-p", "1-300"], ["-sU", "-p", "1-150"]):
                node.run("scanner", "nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "60s",
                         *args, web, check=True, capture_output=True, timeout=120)
            for c in clients:
                c.wait(timeout=60)
            assert all(c.returncode == 0 for c in clients), "normal traffic must have flowed"
        finally:
            time.sleep(1)
            dump.terminate()
            dump.wait(timeout=10)
            for s in servers:
                s.kill()
        out = subprocess.run(["kubesonar", "analyze", "--format", "json", "--internal-network", POD_NETWORK, str(capture)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        alerts = [json.loads(line) for line in out.stdout.splitlines()]
        assert [(a["type"], a["source"]["ip"]) for a in alerts] == [("port_scan", node.pods["scanner"])]
        evidence = alerts[0]["evidence"]
        assert evidence["targets"] == [web] and evidence["failed_first_contacts"] > 1000
        assert evidence["failed_by_protocol"]["17"] > 100, "the UDP scan counts too"


# every other scan type, each from a pod of its own: each must be caught alone
_SCANS = {
    "fin": ["nmap", "-sF", "-p", "1-200"],
    "null": ["nmap", "-sN", "-p", "1-200"],
    "xmas": ["nmap", "-sX", "-p", "1-200"],
    "ack": ["nmap", "-sA", "-p", "1-200"],
    "window": ["nmap", "-sW", "-p", "1-200"],
    "ipproto": ["nmap", "-sO"],
    "version": ["nmap", "-sV", "-p", "1-100,8080"],
    "masscan": ["masscan", "-p1-200,8080", "--rate", "2000", "--wait", "2"],
}


def test_fin_null_xmas_ack_window_protocol_version_scans_and_masscan_are_each_caught(tmp_path):
    for tool in ("nmap", "masscan", "tcpdump"):
        require_tool(tool)
    with namespace_node(["web", "client", *_SCANS]) as node:
        web = node.pods["web"]
        server = node.start("web", sys.executable, "-m", "http.server", "8080", "--bind", web,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        capture = tmp_path / "node.pcap"
        dump = subprocess.Popen(["tcpdump", "-i", node.bridge, "-w", str(capture), "-U", "-s", "128"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)
            client = node.start("client", sys.executable, "-c", _HTTP_CLIENT, web, "20")
            for pod, (tool, *args) in _SCANS.items():
                if tool == "nmap":
                    cmd = ["nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "--host-timeout", "60s", *args, web]
                else:  # masscan has its own TCP stack: name its interface, and ARP the target directly
                    cmd = ["masscan", web, *args, "--interface", node.interface(pod), "--router-ip", web]
                node.run(pod, *cmd, check=True, capture_output=True, timeout=120)
            client.wait(timeout=60)
            assert client.returncode == 0, "normal traffic must have flowed"
        finally:
            time.sleep(1)
            dump.terminate()
            dump.wait(timeout=10)
            server.kill()
        out = subprocess.run(["kubesonar", "analyze", "--format", "json", "--internal-network", POD_NETWORK, str(capture)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        alerts = [json.loads(line) for line in out.stdout.splitlines()]
        by_source = {a["source"]["ip"]: a for a in alerts}
        assert sorted(by_source) == sorted(node.pods[p] for p in _SCANS) and len(alerts) == len(_SCANS)
        assert {a["type"] for a in alerts} == {"port_scan"}
        assert all(a["evidence"]["targets"] == [web] for a in alerts)
