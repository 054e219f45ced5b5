"""Batches that raise a known alert, a clock tests move by hand, and a local HTTP receiver that
stands in for Slack, Teams and webhook endpoints."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from kubesonar.shared.batch import Batch, BatchHeader
from kubesonar.shared.flow import ConnState, FlowRecords, address_bytes

T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z


def scan_batch(sequence: int, first_port: int = 1000, src: str = "10.0.0.9", cluster: str = "c") -> Batch:
    """20 rejected first contacts from ``src``: one port_scan finding per batch."""
    flows = FlowRecords.empty(20)
    flows.columns["first_ts"] = T0_NS + np.arange(20, dtype=np.int64) + sequence * 1000
    flows.columns["src_addr"] = np.array([address_bytes(src)] * 20, dtype="V16")
    flows.columns["dst_addr"] = np.array([address_bytes("10.0.0.1")] * 20, dtype="V16")
    flows.columns["dst_port"] = np.arange(first_port, first_port + 20, dtype=np.uint16)
    flows.columns["proto"][:] = 6
    flows.columns["state"][:] = ConnState.REJECTED
    return Batch(BatchHeader(cluster, "n", "node-1/abc", sequence, 0, 1, flow_count=20), flows)


def shell_batch(sequence: int, cluster: str = "c", t0_ns: int = T0_NS) -> Batch:
    """A web workload that serves clients outside opens a reverse shell to 203.0.113.77: one
    reverse_shell finding (type unusual_destination) per batch, each batch a new session."""
    from c2_flows import c2_flows, shell_session

    web = ("shop", "Deployment", "web")
    t = t0_ns + sequence * 3600 * 10**9
    flows = c2_flows([{"src": "198.51.100.77", "dst": "10.1.0.5", "t": t, "dport": 8080, "flags_in": 0x12,
                       "dst_workload": web}, shell_session("10.1.0.5", "203.0.113.77", t + 10**9, src_workload=web)])
    return Batch(BatchHeader(cluster, "n", "node-1/abc", sequence, t, t + 300 * 10**9, flow_count=len(flows)), flows)


@dataclass
class ManualClock:
    ns: int = T0_NS

    def now_ns(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += int(seconds * 1e9)


@dataclass
class Receiver:
    """Records each POST (path, headers, body); answers ``fail_next`` requests with 500 first."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    fail_next: int = 0

    def bodies(self, path: str | None = None) -> list[dict]:
        return [json.loads(b) for p, _, b in self.requests if path is None or p == path]


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if receiver.fail_next > 0:
                receiver.fail_next -= 1
                self.send_response(500)
                self.end_headers()
                return
            receiver.requests.append((self.path, dict(self.headers), body))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    return receiver, server


def grown_alert(comment_bytes: int, comments: int = 200) -> dict:
    """A port_scan alert that has grown under triage: `comments` comments of `comment_bytes` each (the most
    an alert keeps is 200, of any length), each repeated in its history entry, as shared/triage.py writes."""
    from kubesonar.shared.alerts import Finding, new_alert

    finding = Finding("port_scan", {"ip": "10.0.0.9", "namespace": "shop", "workload": "cart"}, T0_NS, T0_NS,
                      {"ports": list(range(1000, 1020))})
    alert = new_alert(finding, "prod")
    texts = [f"{i:03d} " + "x" * (comment_bytes - 4) for i in range(comments)]
    alert["comments"] = [{"at": "2026-01-01T00:00:00.000Z", "by": "ana", "text": t} for t in texts]
    alert["history"] = [{"at": "2026-01-01T00:00:00.000Z", "by": "ana", "changes": {"comment": [None, t]}}
                        for t in texts]
    return alert
