"""Identity, built in one place: the workload key, a flow side's endpoint and a batch message's key.

Every other module calls these instead of formatting the strings itself, so a change of form is one edit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kubesonar.shared.errors import BatchFormatError
from kubesonar.shared.names import MAX_SENSOR_ID

if TYPE_CHECKING:
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import FlowRecords

Endpoint = dict[str, str]  # ip, namespace, pod, workload, node, labels: who an alert is about


def workload_key(namespace: str, kind: str, name: str) -> str:
    """``namespace/kind/name``: a workload across its pods and restarts; '' when the name is unknown."""
    return f"{namespace}/{kind}/{name}" if name else ""


def workload_keys(namespaces, kinds, names) -> list[str]:
    """:func:`workload_key` of many rows at once (the same form, formatted inline: a call per row costs)."""
    return [f"{ns}/{kind}/{name}" if name else "" for ns, kind, name in zip(namespaces, kinds, names, strict=False)]


def source_endpoint(flows: FlowRecords, row: int, side: str = "src") -> Endpoint:
    """The flow's ``side`` endpoint as an alert's ``source``."""
    from kubesonar.shared.flow import address_text

    return endpoint(address_text(flows[f"{side}_addr"][row]), str(flows[f"{side}_namespace"][row]),
                    str(flows[f"{side}_pod"][row]), str(flows[f"{side}_workload_kind"][row]),
                    str(flows[f"{side}_workload_name"][row]), str(flows[f"{side}_node"][row]),
                    str(flows[f"{side}_labels"][row]))


def dns_client_endpoint(dns: DnsMessages, i: int) -> Endpoint:
    """The querying pod of DNS message ``i`` as an alert's ``source`` (DNS messages carry no node)."""
    from kubesonar.shared.flow import address_text

    return endpoint(address_text(dns["client"][i]), str(dns["client_namespace"][i]), str(dns["client_pod"][i]),
                    str(dns["client_workload_kind"][i]), str(dns["client_workload_name"][i]), "", "")


def endpoint(ip: str, namespace: str, pod: str, kind: str, name: str, node: str, labels: str) -> Endpoint:
    """An alert's ``source``: the address, the pod and its workload key."""
    # the workload key's form inline: an endpoint is built per flow row in places
    return {"ip": ip, "namespace": namespace, "pod": pod, "workload": f"{namespace}/{kind}/{name}" if name else "",
            "node": node, "labels": labels}


# the longest batch key: a sensor id as long as names allow, the largest sequence (uint64) and part (uint32)
# of the batch header. Names are ASCII, so as many bytes as characters.
MAX_BATCH_KEY = MAX_SENSOR_ID + len(f"/{2**64 - 1}/{2**32 - 1}")


def batch_key(sensor_id: str, sequence: int, part: int) -> str:
    """What identifies a batch message across redeliveries: its sensor, sequence number and part."""
    return f"{sensor_id}/{sequence}/{part}"


def split_batch_key(key: str) -> tuple[str, int, int]:
    """(sensor id, sequence, part) of a batch key; a key of another form is a BatchFormatError."""
    try:
        sensor, sequence, part = key.rsplit("/", 2)
        return sensor, int(sequence), int(part)
    except ValueError:
        raise BatchFormatError(f"batch key {key!r} is not <sensor id>/<sequence>/<part>") from None


def subject_keys(flows: FlowRecords, rows, side: str = "src") -> list[str]:
    """Per row, what a baseline is kept for: the workload (namespace/kind/name) or, unknown, the address."""
    from kubesonar.shared.flow import address_text

    names = flows[f"{side}_workload_name"][rows]
    spaces, kinds = flows[f"{side}_namespace"][rows], flows[f"{side}_workload_kind"][rows]
    addresses = flows[f"{side}_addr"][rows]
    return [key or address_text(addr)
            for key, addr in zip(workload_keys(spaces.tolist(), kinds.tolist(), names.tolist()), addresses,
                                 strict=True)]


def workloads_seen(flows: FlowRecords) -> dict[str, int]:
    """Each named workload on either side of the batch's flows, with its earliest flow's time: baselines
    count a workload's history from when it was first seen at all, not from its first egress."""
    import numpy as np

    first: dict[str, int] = {}
    for side in ("src", "dst"):
        rows = np.flatnonzero(flows[f"{side}_workload_name"] != "")
        if not len(rows):
            continue
        keys = workload_keys(flows[f"{side}_namespace"][rows].tolist(), flows[f"{side}_workload_kind"][rows].tolist(),
                             flows[f"{side}_workload_name"][rows].tolist())
        for key, ts in zip(keys, flows["first_ts"][rows].tolist(), strict=False):
            if ts < first.get(key, ts + 1):
                first[key] = ts
    return first
