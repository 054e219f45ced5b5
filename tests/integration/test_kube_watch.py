"""Kubernetes enrichment with the real kubernetes client against an API server stand-in over HTTP on
127.0.0.1, serving responses in the API's JSON shapes (tests/fixtures/kube): a pod list, a watch stream
(a pod added, then given an IP, another changing IP, one deleted, a bookmark), the watch expiring
(410 Gone), a fresh list, and the API server and DNS services. The stand-in records every request, so
the tests see which watches were resumed from a remembered resourceVersion and which needed a list."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from kubernetes import client

from kubesonar.sensor.kube import KubeWatcher
from kubesonar.shared.flow import FlowRecords, address_bytes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "kube"


WATCH_LINES = (FIXTURES / "pods-watch-1.jsonl").read_bytes().splitlines()
OWN_POD = ("kubesonar", "kubesonar-sensor-q8m4z")  # the sensor's pod on node-1: POD_NAMESPACE, POD_NAME


class _ApiServer(BaseHTTPRequestHandler):
    lists = 0
    watches = 0
    watch_answer = ""  # "", "forbidden" or "closed"
    watch_script: list = [WATCH_LINES]  # the lines of each watch in turn; later watches are quiet
    requests: list = []
    closing = threading.Event()
    restored_at = 0  # once set: etcd restored from a backup, its resourceVersions back at this one
    node: dict = {}  # node-1's Node, as GET /api/v1/nodes/node-1 returns it
    node_forbidden = False  # RBAC without get on nodes
    node_stalls = False  # an API server that takes the Node's GET and never answers it (overloaded)
    node_delay_s = 0.0  # one that answers it, late
    own_pod: dict = {}  # the sensor's own Pod, as GET /api/v1/namespaces/kubesonar/pods/<name> returns it
    pod_forbidden = False  # RBAC without get on pods (a ClusterRole from before the rollout rule)
    pod_stalls = False

    def log_message(self, *_):
        pass

    def _json(self, name: str) -> None:
        body = (FIXTURES / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - the http.server API
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append((url.path, query))
        if url.path == "/api/v1/pods" and type(self).restored_at:
            return self._restored(query)
        if url.path == "/api/v1/pods" and query.get("watch") in ("true", "True"):
            return self._watch(query)
        if url.path == "/api/v1/pods":
            type(self).lists += 1
            return self._json("pods-list-1.json" if type(self).lists == 1 else "pods-list-2.json")
        routes = {
            "/api/v1/namespaces/default/services/kubernetes": "service-kubernetes.json",
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices": "endpointslices-kubernetes.json",
            "/api/v1/namespaces/kube-system/services": "services-kube-dns.json",
        }
        if url.path in routes:
            return self._json(routes[url.path])
        server = type(self)
        if url.path == "/api/v1/nodes/node-1":
            time.sleep(server.node_delay_s)
            if not server.node:
                return self._not_found("nodes", "node-1")
            return self._read(server.node, "nodes", server.node_forbidden, server.node_stalls)
        if url.path == f"/api/v1/namespaces/kubesonar/pods/{OWN_POD[1]}":
            return self._read(server.own_pod, "pods", server.pod_forbidden, server.pod_stalls)
        self.send_error(404)

    def _not_found(self, resource: str, name: str) -> None:
        body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                           "code": 404, "message": f'{resource} "{name}" not found',
                           "details": {"name": name, "kind": resource}}).encode()
        self._send(404, body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read(self, found: dict, resource: str, forbidden: bool, stalls: bool) -> None:
        if stalls:
            type(self).closing.wait(60)
            return
        if forbidden:
            name = found["metadata"]["name"]
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                               "code": 403, "message": f'{resource} "{name}" is forbidden: User "system:'
                               f'serviceaccount:kubesonar:kubesonar-sensor" cannot get resource "{resource}"'}).encode()
            self._send(403, body)
        else:
            self._send(200, json.dumps(found).encode())

    def _restored(self, query: dict) -> None:
        """An API server whose etcd went back to an older snapshot: a version newer than its own is answered
        as the watch cache does after waiting for it, 504 ResourceVersionTooLarge; others are served."""
        current, asked = type(self).restored_at, int(query.get("resourceVersion") or 0)
        if asked > current:
            body = json.dumps({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Timeout", "code": 504,
                "message": f"Too large resource version: {asked}, current: {current}",
                "details": {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                            "retryAfterSeconds": 1}}).encode()
            self.send_response(504)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if query.get("watch") in ("true", "True"):
            type(self).watch_script = []  # quiet from here on
            return self._watch(query)
        type(self).lists += 1
        listed = json.loads((FIXTURES / "pods-list-2.json").read_bytes())
        listed["metadata"]["resourceVersion"] = str(current)
        body = json.dumps(listed).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _watch(self, query: dict) -> None:
        type(self).watches += 1
        if type(self).watch_answer == "forbidden":  # RBAC that grants list but not watch
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                               "code": 403, "message": 'pods is forbidden: cannot watch resource "pods"'}).encode()
            self.send_response(403)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if type(self).watch_answer == "closed":  # a proxy that ends every watch at once, no event, no error
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        script = type(self).watch_script
        lines = script[type(self).watches - 1] if type(self).watches <= len(script) else []
        for line in lines:
            self._chunk(line + b"\n")
            time.sleep(0.05)
        if not lines or b'"ERROR"' not in lines[-1]:
            # hold the watch open until the timeout the client asked for (or the end), then close it
            # cleanly: the normal end of every watch
            type(self).closing.wait(float(query.get("timeoutSeconds", "1")))
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


@pytest.fixture
def api_server():
    _ApiServer.lists = _ApiServer.watches = 0
    _ApiServer.watch_answer = ""
    _ApiServer.watch_script = [WATCH_LINES]
    _ApiServer.requests = []
    _ApiServer.closing = threading.Event()
    _ApiServer.restored_at = 0
    _ApiServer.node = json.loads((FIXTURES / "node-1.json").read_bytes())
    _ApiServer.node_forbidden = False
    _ApiServer.node_stalls = False
    _ApiServer.node_delay_s = 0.0
    _ApiServer.own_pod = json.loads((FIXTURES / "pod-sensor.json").read_bytes())
    _ApiServer.pod_forbidden = False
    _ApiServer.pod_stalls = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _ApiServer.closing.set()
    server.shutdown()


def _client(host: str) -> client.ApiClient:
    config = client.Configuration()
    config.host = host
    return client.ApiClient(config)


def _names(watcher: KubeWatcher, *ips: str) -> list[str]:
    flows = FlowRecords.empty(len(ips))
    flows.columns["src_addr"] = np.array([address_bytes(ip) for ip in ips], dtype="V16")
    enriched = watcher.enrich(flows)
    return [f"{n}/{k}/{w}" if w else "" for n, k, w in zip(
        enriched["src_namespace"], enriched["src_workload_kind"], enriched["src_workload_name"])]


def _until(condition, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_pods_appear_change_address_and_go_and_the_watch_resyncs_after_410(api_server):
    watcher = KubeWatcher(_client(api_server), "node-1", linger_s=1.0)
    watcher.start()
    try:
        assert watcher.wait_synced(10)
        assert _names(watcher, "10.244.1.11", "10.244.1.12", "172.18.0.3") == [
            "shop/Deployment/frontend", "shop/StatefulSet/redis", ""]  # a host-network pod is not the node
        assert _names(watcher, "10.96.0.1", "172.18.0.2", "10.96.0.10") == [
            "default/Service/kubernetes", "default/Service/kubernetes", "kube-system/Service/kube-dns"]
        _until(lambda: watcher.stats["kube_lists"] == 2)  # the watch expired (410) and was relisted
        assert _names(watcher, "10.244.1.40", "10.244.1.51", "10.244.1.60") == [
            "default/Deployment/debug-tools", "shop/Deployment/frontend", "shop/Deployment/cart"]
        assert _names(watcher, "10.244.1.11", "10.244.1.12") == ["shop/Deployment/frontend", "shop/StatefulSet/redis"]
        time.sleep(1.2)  # past the linger: old addresses of moved and deleted pods are forgotten
        watcher.stop()  # stop first so nothing rebuilds meanwhile; then one rebuild drops the lingering
        watcher._rebuild()
        assert _names(watcher, "10.244.1.11", "10.244.1.12") == ["", ""]
    finally:
        watcher.stop()
    events = list(watcher.take_events().iter_dicts())
    seen = [(e["event"], e["pod"], e["addr"]) for e in events]
    assert seen[:3] == [("added", "frontend-7d9f8b6c5-x7k2p", "10.244.1.11"), ("added", "redis-0", "10.244.1.12"),
                        ("added", "node-exporter-4xk9z", "172.18.0.3")]
    assert ("added", "debug-tools-5c8d7f9b4-q2w8e", "") in seen
    assert ("modified", "debug-tools-5c8d7f9b4-q2w8e", "10.244.1.40") in seen
    assert ("modified", "frontend-7d9f8b6c5-x7k2p", "10.244.1.51") in seen
    assert ("deleted", "redis-0", "10.244.1.12") in seen
    assert ("added", "cart-6b5d4c3f2-m9n8b", "10.244.1.60") in seen  # found by the relist
    debug = next(e for e in events if e["pod"].startswith("debug-tools"))
    assert (debug["images"], debug["service_account"], debug["workload_kind"]) == (
        "docker.io/nicolaka/netshoot:latest", "default", "Deployment")
    # every pod request asked for this node's pods only
    pod_requests = [q for path, q in _ApiServer.requests if path == "/api/v1/pods"]
    assert pod_requests and all(q["fieldSelector"] == "spec.nodeName=node-1" for q in pod_requests)
    assert any(q.get("resourceVersion") == "48210" for q in pod_requests)  # watched from the list's version


def test_an_unreachable_api_server_is_counted_and_retried_not_fatal():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    watcher = KubeWatcher(_client(f"http://127.0.0.1:{port}"), "node-1")
    watcher.start()
    try:
        _until(lambda: watcher.stats["kube_errors"] >= 2)
        assert "unreachable" in watcher.last_error and not watcher.wait_synced(0.1)
    finally:
        watcher.stop()
    assert json.dumps(watcher.counters())


@pytest.mark.parametrize("answer", ["forbidden", "closed"])
def test_a_watch_that_fails_or_ends_at_once_backs_off_instead_of_relisting_in_a_loop(api_server, answer):
    """A list that works followed by a watch that does not (RBAC without "watch", a proxy closing the
    stream) must not become a loop of full relists: on a large cluster every node's sensor would do it."""
    _ApiServer.watch_answer = answer
    watcher = KubeWatcher(_client(api_server), "node-1")
    watcher.start()
    try:
        assert watcher.wait_synced(10)
        time.sleep(4.0)
    finally:
        watcher.stop()
    # backoff with full jitter, 0.2 s doubling: about 5 rounds in 4 s, 10 only by a rare run of short draws
    assert 2 <= _ApiServer.watches <= 10, _ApiServer.watches
    assert _names(watcher, "10.244.1.11") == ["shop/Deployment/frontend"]  # the listed pods still resolve
    if answer == "forbidden":  # an error: each round lists again
        assert watcher.stats["kube_errors"] >= 2 and "403" in watcher.last_error
        assert _ApiServer.lists == _ApiServer.watches
    else:  # a clean end, however short: the next watch resumes where this one was, without a list
        assert _ApiServer.lists == 1 and watcher.stats["kube_watch_resumes"] == _ApiServer.watches - 1
        assert all(q.get("resourceVersion") == "48210" for q in _watch_requests())


def _watch_requests() -> list[dict]:
    return [q for path, q in _ApiServer.requests if path == "/api/v1/pods" and q.get("watch") in ("true", "True")]


def _list_requests() -> list[dict]:
    return [q for path, q in _ApiServer.requests if path == "/api/v1/pods" and q.get("watch") not in ("true", "True")]


def test_watches_that_end_normally_resume_from_the_last_version_seen_and_only_a_410_relists(api_server, monkeypatch):
    """An informer's behaviour: one list, then each watch that ends normally (its timeout, the server closing
    it cleanly) is followed by a watch from the newest resourceVersion seen, an event's or a bookmark's.
    Relisting every 300 s instead read every pod of the cluster from etcd, once per node."""
    from kubesonar.sensor import kube

    monkeypatch.setattr(kube, "_WATCH_HELD_S", 0.5)  # 1 s watches count as held: no backoff between them
    added, modified, bookmark, moved, deleted, gone = WATCH_LINES
    _ApiServer.watch_script = [[added, modified], [bookmark], [moved, deleted], [], [gone]]
    watcher = KubeWatcher(_client(api_server), "node-1", watch_timeout_s=1)
    watcher.start()
    try:
        _until(lambda: len(_watch_requests()) >= 6, timeout_s=20)
    finally:
        watcher.stop()
    assert [q.get("resourceVersion") for q in _watch_requests()[:6]] == [
        "48210",  # the list's
        "48232",  # the last event's (a pod given its address)
        "48235",  # the bookmark's
        "48250",  # a deletion's
        "48250",  # a quiet watch moves nothing on
        "48300"]  # the 410 (too old resource version): the fresh list's
    lists = _list_requests()
    assert len(lists) == 2, lists
    # the first list may come from the API server's watch cache ("0": any version; nothing was seen yet);
    # the relist after the 410 from the cache too, but never older than what was seen
    assert lists[0]["resourceVersion"] == "0"
    assert (lists[1]["resourceVersion"], lists[1]["resourceVersionMatch"]) == ("48250", "NotOlderThan")
    assert watcher.stats["kube_lists"] == 2 and watcher.stats["kube_watch_resumes"] == 4
    assert watcher.stats["kube_errors"] == 0
    # the API server's addresses are still re-read at every watch end, as when each one listed
    services = [path for path, _ in _ApiServer.requests if path == "/api/v1/namespaces/default/services/kubernetes"]
    assert len(services) == len(_watch_requests()), (len(services), len(_watch_requests()))
    assert _names(watcher, "10.244.1.40", "10.244.1.51", "10.244.1.60") == [
        "default/Deployment/debug-tools", "shop/Deployment/frontend", "shop/Deployment/cart"]


def test_versions_the_api_server_no_longer_has_are_dropped_for_a_list_of_its_newest(api_server, monkeypatch):
    """etcd restored from a backup: its resourceVersions went back, and every version the sensor saw is now
    newer than the API server's own. A watch or a list from one is answered 504 ResourceVersionTooLarge, for
    ever; relisting from the newest version seen failed at every round and froze enrichment. client-go's
    reflector then lists without a version (a quorum read), and so does the sensor, once."""
    from kubesonar.sensor import kube

    monkeypatch.setattr(kube, "_WATCH_HELD_S", 0.5)
    _ApiServer.watch_script = [[]]
    watcher = KubeWatcher(_client(api_server), "node-1", watch_timeout_s=1)
    watcher.start()
    try:
        assert watcher.wait_synced(10)
        _ApiServer.restored_at = 1000
        _until(lambda: any(q.get("resourceVersion") == "1000" for q in _watch_requests()), timeout_s=15)
    finally:
        watcher.stop()
    lists = _list_requests()
    assert lists[-1].get("resourceVersion") in (None, "") and "resourceVersionMatch" not in lists[-1]
    assert watcher.stats["kube_lists"] == 2
    assert _names(watcher, "10.244.1.60") == ["shop/Deployment/cart"]  # the restored API server's pods


_LEAVING = {  # node-1's Node as each remover leaves it before the node goes
    "deleted": lambda n: n["metadata"].update(deletionTimestamp="2026-12-02T05:00:00Z", finalizers=[
        "karpenter.sh/termination"]),
    "drained": lambda n: n["spec"].update(unschedulable=True, taints=[
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule", "timeAdded": "2026-12-02T05:00:00Z"}]),
    "cluster-autoscaler": lambda n: n["spec"].update(taints=[
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1796187600", "effect": "NoSchedule"}]),
    "karpenter": lambda n: n["spec"].update(taints=[{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]),
    "karpenter-v1beta1": lambda n: n["spec"].update(taints=[
        {"key": "karpenter.sh/disruption", "value": "disrupting", "effect": "NoSchedule"}]),
    "gone": lambda n: n.clear(),  # kubectl delete node: no finalizer holds it, the API answers 404
}


def _sensor_stopped_by_sigterm(api_server: str, tmp_path: Path) -> list:
    """The live sensor as `kubesonar sensor --kubernetes` runs it (capture on this host's loopback, the pod
    watch, a directory queue), stopped by a real SIGTERM; the headers it published, in order."""
    import os
    import signal
    import socket

    from kubesonar.cli import _run_until_signal
    from kubesonar.compose import build_sensor
    from kubesonar.sensor.live import SensorSettings
    from kubesonar.shared.batch import decode_batch

    if not hasattr(socket, "AF_PACKET") or os.geteuid() != 0:
        pytest.skip("capturing on loopback needs Linux and CAP_NET_RAW")
    watcher = KubeWatcher(_client(api_server), "node-1", own_pod=OWN_POD)
    watcher.start()
    assert watcher.wait_synced(10)
    settings = SensorSettings(("lo",), window_s=0.5, node="node-1")
    live = build_sensor(settings, f"file://{tmp_path}/queue", str(tmp_path / "spool"), 1 << 20,
                        watcher.enrich, watcher)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    queue = tmp_path / "queue"
    running = threading.Event()

    def terminate_after_two_batches() -> None:
        """SIGTERM once two windows were published (bounded at 20 s), not after a fixed time: on a loaded
        machine the sensor's start can take the whole of a fixed delay, and nothing would be left to see."""
        end = time.monotonic() + 20
        while running.is_set() and time.monotonic() < end:
            if queue.is_dir() and sum(not f.name.startswith(".") for f in queue.iterdir()) >= 2:
                break
            time.sleep(0.1)
        if running.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=terminate_after_two_batches, daemon=True)
    running.set()
    try:
        killer.start()
        _run_until_signal(live, 30, watcher.terminating)
    finally:
        running.clear()
        killer.join(5)
        for sig, handler in before.items():
            signal.signal(sig, handler)
        watcher.stop()
    batches = [decode_batch(f.read_bytes()) for f in (tmp_path / "queue").iterdir() if not f.name.startswith(".")]
    headers = sorted((b.header for b in batches), key=lambda h: (h.sequence, h.part))
    assert len(headers) >= 3 and headers[-1].window_end_ns - headers[0].window_end_ns < 10e9  # stopped by SIGTERM
    return headers


@pytest.mark.parametrize("remover", sorted(_LEAVING))
def test_a_sensor_stopped_on_a_node_leaving_the_cluster_says_so_in_its_last_batch(api_server, tmp_path, remover):
    """cluster-autoscaler (EKS, GKE, AKS), Karpenter, a drain or a deletion: at SIGTERM the sensor reads its
    Node once and its last batch carries node_retiring, so the backend does not report its silence."""
    _LEAVING[remover](_ApiServer.node)
    headers = _sensor_stopped_by_sigterm(api_server, tmp_path)
    flagged = ["node_retiring" in h.counters for h in headers]
    assert flagged[-1] and not flagged[0] and flagged == sorted(flagged)  # from SIGTERM on, the last batch's
    assert headers[-1].counters["node_retiring"] == 1 and headers[-1].counters["node_read_errors"] == 0
    assert [path for path, _ in _ApiServer.requests].count("/api/v1/nodes/node-1") == 1  # once, at SIGTERM
    assert _own_pod_reads() == (remover == "drained")  # a cordon alone: its Pod, not deleted, was read once


def _pod_deleted(pod: dict) -> None:
    """The sensor's Pod as a rollout or `kubectl delete pod` leaves it while the kubelet stops it."""
    pod["metadata"].update(deletionTimestamp="2026-12-02T05:00:30Z", deletionGracePeriodSeconds=30)


def _own_pod_reads() -> int:
    return [path for path, _ in _ApiServer.requests].count(f"/api/v1/namespaces/kubesonar/pods/{OWN_POD[1]}")


@pytest.mark.parametrize("remover", sorted(_LEAVING))
def test_a_rollout_on_a_cordoned_node_is_no_retirement_but_an_autoscaler_still_is(api_server, tmp_path, remover,
                                                                                   caplog):
    """The sensor's Pod deleted through the API (a rollout): the DaemonSet controller puts a new pod on the
    same node. On a node only cordoned (a drain leaves DaemonSet pods) that is no retirement, so a new pod
    that never starts (a bad image) is reported silent. A Node being deleted or tainted for removal stays
    leaving, Pod deleted or not: the autoscalers evict DaemonSet pods as they remove a node."""
    _LEAVING[remover](_ApiServer.node)
    _pod_deleted(_ApiServer.own_pod)
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        headers = _sensor_stopped_by_sigterm(api_server, tmp_path)
    cordon_only = remover == "drained"
    assert any("node_retiring" in h.counters for h in headers) is not cordon_only
    assert headers[-1].counters["node_read_errors"] == 0
    assert _own_pod_reads() == cordon_only  # no read, no time spent, where the Node decides alone
    assert ("its Pod deleted through the API" in caplog.text) is cordon_only


def test_a_pod_the_sensor_may_not_read_leaves_the_cordon_standing(api_server, tmp_path, caplog):
    """RBAC without get on pods (a ClusterRole from before this rule): 403, logged and counted, and the node
    taken as leaving as the cordon says: a failed read is likelier on a node shutting down than in a
    rollout, which the API server has just carried out (docs/sensor.md)."""
    _LEAVING["drained"](_ApiServer.node)
    _ApiServer.pod_forbidden = True
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        headers = _sensor_stopped_by_sigterm(api_server, tmp_path)
    assert headers[-1].counters["node_retiring"] == 1 and headers[-1].counters["node_read_errors"] == 1
    assert ("cannot read this sensor's Pod kubesonar/kubesonar-sensor-q8m4z (Kubernetes API: 403 Forbidden)"
            in caplog.text)


def test_a_sensor_stopped_on_a_node_in_service_does_not(api_server, tmp_path, caplog):
    """A SIGTERM on a node that is staying (the pod deleted, by a rollout or an intruder): silence alerts."""
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        headers = _sensor_stopped_by_sigterm(api_server, tmp_path)
    assert not any("node_retiring" in h.counters for h in headers)
    assert headers[-1].counters["node_read_errors"] == 0
    assert "stopping on a node in service" in caplog.text
    assert [path for path, _ in _ApiServer.requests].count("/api/v1/nodes/node-1") == 1


def test_a_node_the_sensor_may_not_read_is_counted_and_taken_as_staying(api_server, tmp_path, caplog):
    """RBAC without get on nodes (a ClusterRole from before this rule): 403, logged with its reason and
    counted; no flag, so the silence alerts as before."""
    _LEAVING["cluster-autoscaler"](_ApiServer.node)
    _ApiServer.node_forbidden = True
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        headers = _sensor_stopped_by_sigterm(api_server, tmp_path)
    assert not any("node_retiring" in h.counters for h in headers)
    assert headers[-1].counters["node_read_errors"] == 1
    assert "cannot tell whether node node-1 is leaving the cluster (Kubernetes API: 403 Forbidden)" in caplog.text


def test_an_api_server_that_never_answers_holds_the_last_batch_back_5_s_at_most(api_server, caplog):
    """The Node is read at SIGTERM, before the last batch and the spool's drain, within the pod's 30 s grace.
    An API server that takes the GET and never answers (overloaded by a mass scale-down) held it 20 s: the
    client retried the GET three times, each try with the whole 5 s again."""
    _ApiServer.node_stalls = True
    watcher = KubeWatcher(_client(api_server), "node-1")
    watcher.terminating()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        counters = watcher.counters()
    assert time.monotonic() - started < 6
    assert "node_retiring" not in counters and counters["node_read_errors"] == 1
    assert "cannot tell whether node node-1 is leaving the cluster" in caplog.text
    assert watcher.counters() == counters  # read once: the next batch does not wait again


def test_the_node_and_the_pod_are_read_within_the_same_5_s(api_server, caplog):
    """A Node answered late (3 s, an API server busy with a node-pool upgrade), then a Pod's GET never
    answered: the second read gets what the first left of the 5 s, not 5 s of its own. Counted; the cordon
    stands."""
    _LEAVING["drained"](_ApiServer.node)
    _ApiServer.node_delay_s = 3.0
    _ApiServer.pod_stalls = True
    watcher = KubeWatcher(_client(api_server), "node-1", own_pod=OWN_POD)
    watcher.terminating()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        counters = watcher.counters()
    assert time.monotonic() - started < 6
    assert counters["node_retiring"] == 1 and counters["node_read_errors"] == 1
    assert "cannot read this sensor's Pod kubesonar/kubesonar-sensor-q8m4z (Kubernetes API unreachable" in caplog.text


def test_a_deleted_pod_on_another_node_leaves_the_cordon_standing(api_server):
    """POD_NAME naming another pod (a manifest edited by hand, a copied environment): that pod, on node-2, is
    deleted in a rollout while node-1, cordoned, shuts down. Its deletion says nothing of node-1's sensor,
    whose silence is the node leaving, not an alert."""
    _LEAVING["drained"](_ApiServer.node)
    _pod_deleted(_ApiServer.own_pod)
    _ApiServer.own_pod["spec"]["nodeName"] = "node-2"
    watcher = KubeWatcher(_client(api_server), "node-1", own_pod=OWN_POD)
    watcher.terminating()
    counters = watcher.counters()
    assert counters["node_retiring"] == 1 and counters["node_read_errors"] == 0 and _own_pod_reads() == 1


def test_a_sensor_not_told_its_pod_takes_a_cordon_as_leaving(api_server, caplog):
    """No POD_NAME or POD_NAMESPACE (a DaemonSet from before this rule): the cordon decides, as it did, and
    the log says why a rollout on a cordoned node will not be reported."""
    _LEAVING["drained"](_ApiServer.node)
    watcher = KubeWatcher(_client(api_server), "node-1")
    watcher.terminating()
    with caplog.at_level(logging.INFO, logger="kubesonar.sensor.kube"):
        counters = watcher.counters()
    assert counters["node_retiring"] == 1 and counters["node_read_errors"] == 0 and _own_pod_reads() == 0
    assert "POD_NAMESPACE or POD_NAME unset" in caplog.text
