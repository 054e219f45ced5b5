"""Kubernetes enrichment for the live sensor: watch (not poll) the pods of this node, as an informer does.

A background thread lists this node's pods (field selector ``spec.nodeName``), then watches from the
list's resourceVersion. It remembers the newest resourceVersion seen (every event's object, every
bookmark), so a watch that ends normally (its timeout, the server closing it cleanly) is followed by a
watch from there, without a list. Only an expired version (410 Gone) or an error brings a new list,
served from the API server's watch cache (``_relist`` says which versions and why), after a backoff with
jitter when the API server is unreachable or watches do not hold. Every change updates the address -> pod
map used to enrich flows and queues a pod event (added, modified, deleted) for the next batch. Addresses
of deleted pods stay resolvable for ``linger_s`` so the flows of their last window are still named.
The API server (service ``default/kubernetes`` and its endpoints) and the cluster DNS service resolve
as ``Service`` endpoints, re-read at every list and every resumed watch.

Stopped by SIGTERM (:meth:`KubeWatcher.terminating`), the sensor reads its own Node once: if the node is
leaving the cluster (sensor/node_leaving.py) the batches it publishes from then on, its last, carry
``node_retiring: 1`` and the backend does not report its silence; a read that fails is logged and counted
(``node_read_errors``), and the silence alerts as it would have. When a cordon is the only sign, it also
reads its own Pod: deleted through the API, it is being replaced on this node (a rollout), which is not
leaving; a Pod that cannot be read leaves the cordon's word standing (docs/sensor.md says why).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kubesonar.sensor.node_leaving import CORDONED, leaving_sign, replaced_on_this_node
from kubesonar.shared.flow import FlowRecords, address_bytes
from kubesonar.shared.inventory import Endpoint, PodInventory, endpoint_of
from kubesonar.shared.pod_events import PodEvents, PodEventType

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

_MAX_EVENTS = 1000  # per window; beyond it events are counted as dropped (the map stays exact)
_WATCH_HELD_S = 10.0  # a watch that ended sooner is a failure to back off from, even without an error
_LEAVING_READS_TIMEOUT_S = 5.0  # at SIGTERM, Node and Pod together, well within the pod's 30 s grace (daemonset.yaml)

log = logging.getLogger(__name__)


class KubeWatcher:
    def __init__(self, api_client: ApiClient, node: str, linger_s: float = 60.0, watch_timeout_s: int = 300,
                 own_pod: tuple[str, str] = ("", "")):
        from kubernetes import client

        self.node = node
        self._own_pod = own_pod  # (namespace, name) of the sensor's pod; ("", "") when not told
        self._api = api_client
        self._core = client.CoreV1Api(api_client)
        self._discovery = client.DiscoveryV1Api(api_client)
        self._selector = f"spec.nodeName={node}"
        self._linger_ns = int(linger_s * 1e9)
        self._watch_timeout_s = watch_timeout_s
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # uid -> pod as the API's JSON
        self._services: dict[bytes, Endpoint] = {}
        self._gone: dict[bytes, tuple[Endpoint, int]] = {}  # address -> (endpoint, forget after ns)
        self._inventory = PodInventory({})
        self._events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._watch = None
        self._thread: threading.Thread | None = None
        self._version = ""  # the newest resourceVersion seen: of the last list, event or bookmark
        self._resume = False  # the last watch ended normally: the next one starts at _version, no list
        self.stats = {"kube_lists": 0, "kube_watch_restarts": 0, "kube_watch_resumes": 0, "kube_errors": 0,
                      "pod_events": 0, "pod_events_dropped": 0, "node_read_errors": 0}
        self.last_error = ""
        self._terminating = False  # SIGTERM came: the next heartbeat reads this node's Node
        self._leaving: dict[str, int] | None = None  # what that one read found

    @classmethod
    def in_cluster(cls, node: str) -> KubeWatcher:
        """The watch of a sensor in a pod; POD_NAMESPACE and POD_NAME (the downward API, as NODE_NAME) name
        its own Pod, read at SIGTERM on a cordoned node."""
        from kubernetes import client, config

        config.load_incluster_config()
        return cls(client.ApiClient(), node, own_pod=own_pod(os.environ))

    # -- what the sensor uses ----------------------------------------------------------------------

    def enrich(self, records: FlowRecords) -> FlowRecords:
        with self._lock:
            inventory = self._inventory
        return inventory.enrich(records)

    def take_events(self) -> PodEvents:
        with self._lock:
            events, self._events = self._events, []
        return PodEvents.from_rows(events)

    def counters(self) -> dict[str, int]:
        leaving = self._node_leaving() if self._terminating else {}
        return dict(self.stats) | {"pods": len(self._pods)} | leaving

    def terminating(self) -> None:
        """SIGTERM came. Only a flag, as a signal handler calls it: the Node is read by the sensor loop, when
        it asks for the counters of its next batch (the last, as the loop is stopping)."""
        self._terminating = True

    def _node_leaving(self) -> dict[str, int]:
        """``{"node_retiring": 1}`` if this node is leaving the cluster; read once."""
        if self._leaving is not None:
            return self._leaving
        self._leaving = {}
        deadline = time.monotonic() + _LEAVING_READS_TIMEOUT_S  # the Node's read and the Pod's share it
        from kubernetes.client.exceptions import ApiException

        try:
            sign = leaving_sign(self._read_within(deadline, "node", lambda timeout: self._core.read_node(
                self.node, _request_timeout=timeout)))
        except ApiException as exc:
            if exc.status != 404:  # 403 (no get on nodes): the silence will alert
                return self._node_unknown(exc)
            # the Node is gone: deleted with no finalizer to hold it (kubectl delete node), the pod
            # garbage collector then deleting this sensor's Pod as the node's own
            sign = "the Node is gone (404): deleted"
        except Exception as exc:  # noqa: BLE001 - unreachable: the silence will alert
            return self._node_unknown(exc)
        if sign == CORDONED and self._replaced(deadline):
            log.info("stopping on a cordoned node, its Pod deleted through the API (a rollout, or kubectl "
                     "delete pod): replaced on this node, so its silence will be an alert")
        elif sign:
            self._leaving = {"node_retiring": 1}
            log.info("stopping on a node leaving the cluster (%s): the last batch says so, and its silence is "
                     "no alert", sign)
        else:
            log.info("stopping on a node in service: its silence will be an alert")
        return self._leaving

    def _node_unknown(self, exc: Exception) -> dict[str, int]:
        error = self._read_failed(f"node {self.node}", exc)
        log.warning("cannot tell whether node %s is leaving the cluster (%s): its silence will be an alert",
                    self.node, error)
        return self._leaving

    def _replaced(self, deadline: float) -> bool:
        """Whether the sensor's own Pod was deleted through the API. Not known (no POD_NAME, a failed read)
        is False: the cordon stands, as a failure here comes more likely from a node shutting down than
        from a rollout, which the API server has just carried out (docs/sensor.md)."""
        namespace, name = self._own_pod
        if not (namespace and name):
            log.warning("POD_NAMESPACE or POD_NAME unset (infra/k8s/base/daemonset.yaml sets them): a cordoned "
                        "node is taken as leaving, even in a rollout")
            return False
        try:
            pod = self._read_within(deadline, "pod", lambda timeout: self._core.read_namespaced_pod(
                name, namespace, _request_timeout=timeout))
        except Exception as exc:  # noqa: BLE001 - 403 (no get on pods) or unreachable: counted, the cordon stands
            error = self._read_failed(f"pod {namespace}/{name}", exc)
            log.warning("cannot read this sensor's Pod %s/%s (%s): the cordoned node is taken as leaving",
                        namespace, name, error)
            return False
        return replaced_on_this_node(pod, self.node)

    def _read_within(self, deadline: float, what: str, get: Callable[[float], Any]) -> dict[str, Any]:
        """One GET, as the API's JSON, waited for until ``deadline`` (monotonic) in all: the client retries a
        GET that timed out three times, each try with the whole timeout again (20 s of the 30 s grace, before
        the last batch), so it runs in a thread that is left behind if it hangs."""
        left = deadline - time.monotonic()
        answer: dict[str, Any] = {}

        def read() -> None:
            try:
                answer["object"] = self._api.sanitize_for_serialization(get(left))
            except Exception as exc:  # noqa: BLE001 - raised again in the sensor's thread, below
                answer["error"] = exc

        if left > 0:
            reader = threading.Thread(target=read, name=f"{what}-read", daemon=True)
            reader.start()
            reader.join(left)
        if "error" in answer:
            raise answer["error"]
        if "object" not in answer:
            raise TimeoutError(f"no answer in {_LEAVING_READS_TIMEOUT_S:g} s")
        return answer["object"]

    def _read_failed(self, what: str, exc: Exception) -> str:
        """Count a read at SIGTERM that failed; what went wrong, in words."""
        from kubernetes.client.exceptions import ApiException

        error = (f"Kubernetes API: {exc.status} {exc.reason}" if isinstance(exc, ApiException)
                 else f"Kubernetes API unreachable: {exc}")
        self.stats["node_read_errors"] += 1
        self.last_error = f"reading {what}: {error}"
        return error

    # -- the thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kube-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=1)  # a quiet watch may block in a read; the thread is a daemon

    def wait_synced(self, timeout_s: float) -> bool:
        """True once the first list has been applied."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.stats["kube_lists"]:
                return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0  # rounds since a watch last held: a list or a watch that opens is not enough (RBAC
        # without "watch", a proxy that closes the stream), or every node's sensor lists or watches in a loop
        while not self._stop.is_set():
            watching_since = None
            error = ""
            resume, self._resume = self._resume, False  # anything but a normal end lists again
            try:
                if resume:
                    self._refresh_services()
                    self.stats["kube_watch_resumes"] += 1
                else:
                    self._relist()
                watching_since = time.monotonic()
                self._follow()
                self._resume = True
                self.stats["kube_watch_restarts"] += 1
            except ApiException as exc:
                if exc.status != 410:  # 410: the watch expired; a fresh list is the cure
                    error = f"Kubernetes API: {exc.status} {exc.reason}"
                else:
                    self.stats["kube_watch_restarts"] += 1
            except Exception as exc:  # noqa: BLE001 - connection errors of every kind: back off, resync
                error = f"Kubernetes API unreachable: {exc}"
            held = watching_since is not None and time.monotonic() - watching_since >= _WATCH_HELD_S
            failures = 0 if held and not error else failures + 1
            if error:
                self.stats["kube_errors"] += 1
                self.last_error = error
            if failures:
                self._stop.wait(backoff_s(failures))

    def _relist(self) -> None:
        # The version asked for decides who answers (kubernetes.io/docs/reference/using-api/api-concepts,
        # "Resource versions", "Semantics for get and list"). None is "Most Recent": a quorum read from etcd
        # that scans every pod of the cluster to keep this node's, on every node. "0" is "Any", served from
        # the watch cache but possibly older than versions the client already saw (HA, a lagging cache):
        # fine at start, when nothing was seen and the watch from the list's version brings every later
        # change ("Efficient detection of changes"). A relist (after a 410 or an error) asks for the newest
        # version seen, resourceVersionMatch=NotOlderThan, which the page recommends over a quorum read:
        # from the cache too, and never back in time, which the diff below would report as pods deleted and
        # added again (a cache behind that version answers 504 after a short wait, and the list goes
        # without a version, below). client-go's reflector lists "" after a 410 because its lists are paged,
        # where a version means Exact and can be Gone again; one node's pods come in one page.
        from kubernetes.client.exceptions import ApiException

        try:
            listed = self._core.list_pod_for_all_namespaces(field_selector=self._selector,
                                                            resource_version=self._version or "0",
                                                            resource_version_match="NotOlderThan")
        except ApiException as exc:
            if not _too_large(exc):
                raise
            # Every version seen is newer than the API server's own: etcd was restored from a backup, and
            # the 504 would come back at every round for good. client-go's reflector lists without a
            # version then (relistResourceVersion), a quorum read that starts over from etcd's present.
            listed = self._core.list_pod_for_all_namespaces(field_selector=self._selector)
        services = self._cluster_services()
        pods = {p["metadata"]["uid"]: p for p in (self._api.sanitize_for_serialization(i) for i in listed.items)}
        with self._lock:
            for uid in self._pods.keys() - pods.keys():
                self._apply(PodEventType.DELETED, self._pods[uid])
            for uid, pod in pods.items():
                old = self._pods.get(uid)
                if old is None:
                    self._apply(PodEventType.ADDED, pod)
                elif (_addresses(old) != _addresses(pod)
                      or old["metadata"].get("labels") != pod["metadata"].get("labels")):
                    self._apply(PodEventType.MODIFIED, pod)
            self._services = services
            self._rebuild()
        self.stats["kube_lists"] += 1
        self._version = listed.metadata.resource_version

    def _refresh_services(self) -> None:
        """The API server's and DNS addresses, re-read at every watch end as when each one meant a list:
        a replaced control-plane node changes the EndpointSlices, and no pod watch tells."""
        services = self._cluster_services()
        with self._lock:
            self._services = services
            self._rebuild()

    def _follow(self) -> None:
        from kubernetes import watch

        self._watch = watch.Watch()
        for event in self._watch.stream(self._core.list_pod_for_all_namespaces, field_selector=self._selector,
                                        resource_version=self._version, timeout_seconds=self._watch_timeout_s,
                                        allow_watch_bookmarks=True):
            kind = event["type"]
            pod = event["raw_object"]
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                with self._lock:
                    self._apply(PodEventType[kind], pod)
                    self._rebuild()
            # a bookmark carries only this: it keeps a quiet watch's version recent enough to resume
            self._version = (pod.get("metadata") or {}).get("resourceVersion") or self._version
            if self._stop.is_set():
                break

    # -- state ---------------------------------------------------------------------------------------

    def _apply(self, kind: PodEventType, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        now = time.time_ns()
        old = self._pods.get(uid)
        if kind == PodEventType.DELETED:
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = pod
        for gone in _addresses(old) - (_addresses(pod) if kind != PodEventType.DELETED else set()):
            self._gone[gone] = (endpoint_of(old), now + self._linger_ns)
        self.stats["pod_events"] += 1
        if len(self._events) >= _MAX_EVENTS:
            self.stats["pod_events_dropped"] += 1
            return
        e = endpoint_of(pod)
        addresses = sorted(_addresses(pod))
        self._events.append({
            "ts": now, "event": int(kind), "addr": addresses[0] if addresses else b"", "namespace": e.namespace,
            "pod": e.pod, "workload_kind": e.workload_kind, "workload_name": e.workload_name, "node": e.node,
            "labels": e.labels, "images": ",".join(e.images), "service_account": e.service_account,
        })

    def _rebuild(self) -> None:
        now = time.time_ns()
        self._gone = {a: (e, t) for a, (e, t) in self._gone.items() if t > now}
        by_address = {a: e for a, (e, _) in self._gone.items()} | self._services
        for pod in self._pods.values():
            if pod.get("spec", {}).get("hostNetwork"):
                continue  # the node's own address: not this pod's
            endpoint = endpoint_of(pod)
            for address in _addresses(pod):
                by_address[address] = endpoint
        self._inventory = PodInventory(by_address)

    def _cluster_services(self) -> dict[bytes, Endpoint]:
        """Addresses of the API server (service and endpoints) and of the cluster DNS service."""
        as_json = self._api.sanitize_for_serialization  # the API's own JSON shape, whatever the model classes
        api = Endpoint(namespace="default", workload_kind="Service", workload_name="kubernetes")
        found = dict.fromkeys(_service_ips(as_json(self._core.read_namespaced_service("kubernetes", "default"))), api)
        slices = as_json(self._discovery.list_namespaced_endpoint_slice(
            "default", label_selector="kubernetes.io/service-name=kubernetes"))
        for item in slices.get("items") or []:
            for endpoint in item.get("endpoints") or []:
                found.update(dict.fromkeys(map(address_bytes, endpoint.get("addresses") or []), api))
        dns = as_json(self._core.list_namespaced_service("kube-system", label_selector="k8s-app=kube-dns"))
        for svc in dns.get("items") or []:
            name = replace(api, namespace="kube-system", workload_name=svc["metadata"]["name"])
            found.update(dict.fromkeys(_service_ips(svc), name))
        return found


def own_pod(environ: Mapping[str, str]) -> tuple[str, str]:
    """(namespace, name) of the sensor's Pod, as the DaemonSet's downward API names them; ("", "") outside."""
    return environ.get("POD_NAMESPACE", ""), environ.get("POD_NAME", "")


def backoff_s(failures: int) -> float:
    """Full jitter, 0.2 s doubling to 30 s. The exponent is capped: past 1,023 failures in a row (about
    four hours of an API server that refuses watches) 2**failures no longer converts to a float, and the
    OverflowError ended the watch thread for good, leaving enrichment frozen."""
    return random.uniform(0, min(30.0, 0.2 * 2 ** min(failures, 8)))


def _too_large(exc: Exception) -> bool:
    """The API server's "Too large resource version" (504, cause ResourceVersionTooLarge; older servers say
    it in the message only), as client-go's apierrors.IsTooLargeResourceVersion reads it."""
    body = str(getattr(exc, "body", "") or "")
    return getattr(exc, "status", None) == 504 and (
        "ResourceVersionTooLarge" in body or "Too large resource version" in body)


def _service_ips(service: dict[str, Any]) -> list[bytes]:
    spec = service.get("spec") or {}
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    return [address_bytes(ip) for ip in ips if ip and ip != "None"]


def _addresses(pod: dict[str, Any] | None) -> set[bytes]:
    if not pod:
        return set()
    status = pod.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]
    return {address_bytes(ip) for ip in ips if ip}
