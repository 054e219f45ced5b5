"""Who is behind an IP address: pods and their workloads, from ``kubectl get pods -A -o json``.

The workload is named after the pod's controller, found through ownerReferences: a ReplicaSet whose
name ends in the pod's ``pod-template-hash`` belongs to a Deployment; a Job named ``<name>-<digits>``
(the scheduled minute) belongs to a CronJob; StatefulSets, DaemonSets and bare ReplicaSets and Jobs
name themselves; a pod without an owner is its own workload. Pods on the host network share the
node's address and are not used to name it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubesonar.shared.config_text import load_json, read_text
from kubesonar.shared.dns import DnsMessages
from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import ENDPOINT_FIELDS, FlowRecords, address_bytes

_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")


@dataclass(frozen=True)
class Endpoint:
    namespace: str = ""
    pod: str = ""
    workload_kind: str = ""
    workload_name: str = ""
    node: str = ""
    labels: str = ""  # sorted key=value pairs joined by ','
    images: tuple[str, ...] = ()  # sorted, distinct
    service_account: str = ""


def workload_of(pod: dict) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller", True)]
    if not owners:
        return "Pod", meta.get("name") or ""
    kind, name = owners[0].get("kind") or "", owners[0].get("name") or ""  # null as the API may print it
    template_hash = (meta.get("labels") or {}).get("pod-template-hash") or ""
    if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
        return "Deployment", name[: -len(template_hash) - 1]
    if kind == "Job":
        match = _CRONJOB_JOB.match(name)
        if match:
            return "CronJob", match["cronjob"]
    return kind, name


def endpoint_of(pod: dict) -> Endpoint:
    """A pod (as the API's JSON) as a flow endpoint: its workload, labels, images, service account."""
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    kind, name = workload_of(pod)
    labels = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items()))
    return Endpoint(
        namespace=meta.get("namespace") or "", pod=meta.get("name") or "", workload_kind=kind, workload_name=name,
        node=spec.get("nodeName") or "", labels=labels,
        images=tuple(sorted({c.get("image") or "" for c in spec.get("containers") or []} - {""})),
        service_account=spec.get("serviceAccountName") or "",
    )


_OBJECTS = {"metadata": dict, "spec": dict, "status": dict}
_NESTED = (("metadata", "labels", dict), ("metadata", "ownerReferences", list), ("spec", "containers", list),
           ("status", "podIPs", list))


def _check_pod_shape(pod: Any) -> None:
    """A pod as the API prints it: the parts read here are objects and lists of objects, text is text."""
    if not isinstance(pod, dict):
        raise ConfigError(f"a pod is an object, not {type(pod).__name__}")
    for key, kind in _OBJECTS.items():
        if pod.get(key) is not None and not isinstance(pod[key], kind):
            raise ConfigError(f"'{key}' is {type(pod[key]).__name__}, not an object")
    for outer, inner, kind in _NESTED:
        value = (pod.get(outer) or {}).get(inner)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise ConfigError(f"'{outer}.{inner}' is {type(value).__name__}, not a {kind.__name__}")
        if kind is list and not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"'{outer}.{inner}' holds something that is not an object")
    for owner in (pod.get("metadata") or {}).get("ownerReferences") or []:
        _strings(owner, ("kind", "name"), "metadata.ownerReferences")
    for container in (pod.get("spec") or {}).get("containers") or []:
        _strings(container, ("image",), "spec.containers")
    _strings(pod.get("metadata") or {}, ("name", "namespace"), "metadata")
    _strings(pod.get("spec") or {}, ("nodeName", "serviceAccountName"), "spec")
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError("'metadata.labels' values must be text")


def _strings(obj: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise ConfigError(f"'{where}.{key}' is {type(obj[key]).__name__}, not text")


def _address(ip: Any) -> bytes:
    try:
        return address_bytes(ip)
    except ValueError:
        raise ConfigError(f"pod IP {str(ip)[:60]!r} is not an IP address") from None


def _text(value: str | tuple[str, ...]) -> str:
    return ",".join(value) if isinstance(value, tuple) else value


_DNS_FIELDS = ("namespace", "pod", "workload_kind", "workload_name")


class PodInventory:
    """IP address -> Endpoint for the pods of a cluster."""

    def __init__(self, endpoints: dict[bytes, Endpoint]):
        self._by_address = endpoints

    @classmethod
    def from_kubectl_json(cls, document: Any) -> PodInventory:
        if not isinstance(document, dict) or document.get("kind") not in ("List", "PodList") \
                or not isinstance(document.get("items"), list):
            raise ConfigError("a pod inventory is the output of 'kubectl get pods -A -o json' (kind List)")
        endpoints: dict[bytes, Endpoint] = {}
        for i, pod in enumerate(document["items"]):
            try:
                _check_pod_shape(pod)
                spec, status = pod.get("spec") or {}, pod.get("status") or {}
                if spec.get("hostNetwork"):
                    continue
                endpoint = endpoint_of(pod)
                ips = [p.get("ip") for p in status.get("podIPs") or []] or [status.get("podIP")]
                for ip in filter(None, ips):
                    endpoints[_address(ip)] = endpoint
            except ConfigError as exc:
                raise ConfigError(f"item {i + 1}: {exc}") from None
        return cls(endpoints)

    @classmethod
    def load(cls, path: str | Path) -> PodInventory:
        where = f"pod inventory {path}"
        try:
            return cls.from_kubectl_json(load_json(read_text(path, "pod inventory"), where))
        except ConfigError as exc:
            text = str(exc)
            raise ConfigError(text if str(path) in text else f"{where}: {text}") from None

    def __len__(self) -> int:
        return len(self._by_address)

    def resolve(self, address: bytes) -> Endpoint | None:
        return self._by_address.get(bytes(address))

    def enrich(self, records: FlowRecords | DnsMessages) -> FlowRecords | DnsMessages:
        """Fill the src_/dst_ enrichment columns of flow records (the client_ ones of DNS messages)
        whose addresses are known pods."""
        cols = dict(records.columns)
        sides = (("client", "client", _DNS_FIELDS),) if isinstance(records, DnsMessages) else (
            ("src_addr", "src", ENDPOINT_FIELDS), ("dst_addr", "dst", ENDPOINT_FIELDS))
        for column, side, names in sides:
            uniq, inverse = np.unique(cols[column], return_inverse=True)
            found = [self.resolve(a.tobytes()) or Endpoint() for a in uniq]
            for name in names:
                values = np.array([_text(getattr(e, name)) for e in found] + [""], dtype=object)[:-1]
                cols[f"{side}_{name}"] = values[inverse.ravel()] if len(values) else cols[f"{side}_{name}"]
        return type(records)(cols)
