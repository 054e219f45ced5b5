"""The per-cluster edge summary the service map is drawn from: workload to workload (or address), by
destination port and protocol, flows and bytes per hour.

Kept in ``summary/<cluster>/edges.json``, updated once per invocation with all of its batches (one
read and one compare-and-swap write), bounded: the last :data:`HOURS_KEPT` hours of data time, at
most :data:`EDGES_PER_HOUR` edges an hour (the smallest by bytes fold into one ``other`` edge). The
counting is vectorised (numpy), so it costs little next to scoring.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from kubesonar.shared.flow import FlowRecords, address_text
from kubesonar.shared.ports import ObjectStore
from kubesonar.shared.state import read_document, update_document

HOURS_KEPT = 24
EDGES_PER_HOUR = 400
OTHER = "other"
_SEP = "|"
_HOUR_NS = 3600 * 1_000_000_000


def summary_key(cluster: str) -> str:
    return f"summary/{cluster}/edges.json"


def _endpoint_labels(flows: FlowRecords, side: str) -> np.ndarray:
    names = flows[f"{side}_workload_name"].astype(object)
    known = names != ""
    labels = np.empty(len(flows), dtype=object)
    if known.any():
        labels[known] = (flows[f"{side}_namespace"][known].astype(object) + "/"
                         + flows[f"{side}_workload_kind"][known].astype(object) + "/" + names[known])
    unknown = np.flatnonzero(~known)
    if len(unknown):
        addrs, inverse = np.unique(flows[f"{side}_addr"][unknown], return_inverse=True)
        texts = np.array([address_text(bytes(a)) for a in addrs], dtype=object)
        labels[unknown] = texts[inverse]
    return labels


def count_edges(flows: FlowRecords) -> dict[str, dict[str, list[int]]]:
    """{hour ISO: {"src|dst|port|proto": [flows, bytes]}} of one set of flow records."""
    if not len(flows):
        return {}
    hours = (flows["first_ts"] // _HOUR_NS).astype(np.int64)
    keys = (_endpoint_labels(flows, "src") + _SEP + _endpoint_labels(flows, "dst") + _SEP
            + flows["dst_port"].astype(str).astype(object) + _SEP + flows["proto"].astype(str).astype(object))
    combined = hours.astype(str).astype(object) + "#" + keys
    unique, inverse = np.unique(combined.astype(str), return_inverse=True)
    counts = np.bincount(inverse)
    volume = np.bincount(inverse, weights=(flows["bytes_out"] + flows["bytes_in"]).astype(np.float64))
    out: dict[str, dict[str, list[int]]] = {}
    for key, n, b in zip(unique.tolist(), counts.tolist(), volume.tolist(), strict=True):
        hour, edge = key.split("#", 1)
        out.setdefault(_hour_iso(int(hour)), {})[edge] = [int(n), int(b)]
    return out


def _hour_iso(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y-%m-%dT%H:00Z")


def update_edge_summary(store: ObjectStore, cluster: str, flow_sets: Iterable[FlowRecords]) -> None:
    """Fold an invocation's flows into the cluster's summary (the pipeline calls this once per invocation)."""
    fresh: dict[str, dict[str, list[int]]] = {}
    for flows in flow_sets:
        for hour, edges in count_edges(flows).items():
            into = fresh.setdefault(hour, {})
            for edge, (n, b) in edges.items():
                total = into.setdefault(edge, [0, 0])
                total[0] += n
                total[1] += b
    if not fresh:
        return

    def merge(doc: dict | None) -> dict:
        hours = {h: dict(e) for h, e in ((doc or {}).get("hours") or {}).items()}
        for hour, edges in fresh.items():
            into = hours.setdefault(hour, {})
            for edge, (n, b) in edges.items():
                old = into.get(edge, [0, 0])
                into[edge] = [old[0] + n, old[1] + b]
            hours[hour] = _bounded(into)
        kept = sorted(hours)[-HOURS_KEPT:]
        return {"hours": {h: hours[h] for h in kept}}

    update_document(store, summary_key(cluster), merge)


def _bounded(edges: dict[str, list[int]]) -> dict[str, list[int]]:
    if len(edges) <= EDGES_PER_HOUR:
        return edges
    ranked = sorted(edges.items(), key=lambda kv: (-kv[1][1], kv[0]))
    keep = dict(ranked[:EDGES_PER_HOUR - 1])
    rest = ranked[EDGES_PER_HOUR - 1:]
    other = keep.get(OTHER, [0, 0])
    keep[OTHER] = [other[0] + sum(v[0] for _, v in rest), other[1] + sum(v[1] for _, v in rest)]
    return keep


def read_edges(store: ObjectStore, cluster: str | None = None) -> list[dict[str, Any]]:
    """Edges summed over the kept hours (of one cluster, or all), largest first."""
    clusters = [cluster] if cluster else sorted({k.split("/")[1] for k in store.list("summary/")
                                                 if k.endswith("/edges.json")})
    total: dict[tuple[str, str], dict[str, Any]] = {}
    for name in clusters:
        doc, _ = read_document(store, summary_key(name))
        for hour, edges in ((doc or {}).get("hours") or {}).items():
            for edge, (n, b) in edges.items():
                if edge == OTHER:
                    continue
                src, dst, port, proto = edge.split(_SEP)
                item = total.setdefault((name, edge), {"cluster": name, "src": src, "dst": dst, "port": int(port),
                                                       "proto": int(proto), "flows": 0, "bytes": 0, "hours": {}})
                item["flows"] += n
                item["bytes"] += b
                item["hours"][hour] = b
    return sorted(total.values(), key=lambda e: -e["bytes"])
