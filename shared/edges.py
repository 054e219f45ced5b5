"""The per-cluster edge summary the service map is drawn from: workload to workload (or address), by
destination port and protocol, flows and bytes per hour.

Kept in ``summary/<cluster>/edges.json``, updated once per invocation with all of its batches (one
read and one compare-and-swap write), bounded: the last :data:`HOURS_KEPT` hours of data time, at
most :data:`EDGES_PER_HOUR` edges an hour (the smallest by bytes fold into one ``other`` edge). Flows
are grouped by integer codes (numpy), an invocation's batches together, and only the edges that may be
kept get their text: 17-19 ms for the 20,000 flows of bench/core_scoring.py, the update included (29-33
ms when every edge's text was built).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from kubesonar.shared.flow import FlowRecords, address_text, distinct_addresses
from kubesonar.shared.ports import ObjectStore
from kubesonar.shared.state import read_document, update_document

HOURS_KEPT = 24
EDGES_PER_HOUR = 400
OTHER = "other"
_SEP = "|"
_HOUR_NS = 3600 * 1_000_000_000


def summary_key(cluster: str) -> str:
    return f"summary/{cluster}/edges.json"


def _endpoint_codes(columns: dict[str, np.ndarray], side: str) -> tuple[np.ndarray, list[str]]:
    """Per flow, the index of its endpoint's label in the list returned: ``namespace/kind/name`` for a
    known workload, else the address."""
    names = columns[f"{side}_workload_name"]
    known = names != ""
    codes = np.empty(len(names), dtype=np.int64)
    labels: list[str] = []
    rows = np.flatnonzero(known)
    if len(rows):
        index: dict[tuple[str, str, str], int] = {}
        triples = zip(columns[f"{side}_namespace"][rows].tolist(), columns[f"{side}_workload_kind"][rows].tolist(),
                      names[rows].tolist(), strict=True)
        codes[rows] = np.fromiter((index.setdefault(t, len(index)) for t in triples), dtype=np.int64, count=len(rows))
        labels = [f"{namespace}/{kind}/{name}" for namespace, kind, name in index]
    rows = np.flatnonzero(~known)
    if len(rows):
        addresses, _, inverse = distinct_addresses(columns[f"{side}_addr"][rows])
        codes[rows] = len(labels) + inverse
        labels += [address_text(bytes(a)) for a in addresses]
    return codes, labels


_COLUMNS = ("first_ts", "dst_port", "proto", "bytes_out", "bytes_in",
            *(f"{side}_{name}" for side in ("src", "dst") for name in ("addr", "namespace", "workload_kind",
                                                                         "workload_name")))


class _Counted:
    """Flows grouped by edge (hour, source, destination, port, protocol), each group's figures summed;
    an edge's text is built only when asked for."""

    def __init__(self, flow_sets: list[FlowRecords]):
        columns = {name: np.concatenate([f[name] for f in flow_sets]) for name in _COLUMNS}
        src, self.src_labels = _endpoint_codes(columns, "src")
        dst, self.dst_labels = _endpoint_codes(columns, "dst")
        table = np.column_stack([(columns["first_ts"] // _HOUR_NS).astype(np.int64), src, dst,
                                 columns["dst_port"].astype(np.int64), columns["proto"].astype(np.int64)])
        volume = columns["bytes_out"] + columns["bytes_in"]
        groups, self.flows, self.volume = _group_sums(table, volume)
        self.hour, self.src, self.dst, self.port, self.proto = groups.T
        # one text per group: no label holds the separator and no two labels of a side read alike (names
        # holding separators could make two groups read alike; their figures then add up, text by text)
        self.texts_distinct = all(len(set(labels)) == len(labels) and not any(_SEP in t for t in labels)
                                  for labels in (self.src_labels, self.dst_labels))
        self._width = max(len(self.dst_labels), 1)  # of a group's code in find(): fits 64 bits below 2**39
        self.texts_distinct &= len(self.src_labels) * self._width < 2**38

    def by_hour(self) -> list[tuple[str, np.ndarray]]:
        """(hour ISO, its groups' indexes), each hour's groups in (source, destination, port, protocol) order."""
        starts = np.flatnonzero(np.r_[True, self.hour[1:] != self.hour[:-1]])
        ends = np.r_[starts[1:], len(self.hour)]
        return [(_hour_iso(int(self.hour[lo])), np.arange(lo, hi)) for lo, hi in zip(starts, ends, strict=True)]

    def edges(self, groups: np.ndarray) -> list[tuple[str, int, int]]:
        """(text, flows, bytes) of each group."""
        src, dst = self.src_labels, self.dst_labels
        return [(f"{src[s]}{_SEP}{dst[d]}{_SEP}{port}{_SEP}{proto}", n, b) for s, d, port, proto, n, b in zip(
            self.src[groups].tolist(), self.dst[groups].tolist(), self.port[groups].tolist(),
            self.proto[groups].tolist(), self.flows[groups].tolist(), self.volume[groups].tolist(), strict=True)]

    def find(self, texts: Iterable[str], groups: np.ndarray) -> np.ndarray:
        """Which of ``groups`` (one hour's, in order, with distinct texts) have their text among ``texts``."""
        src = {label: code for code, label in enumerate(self.src_labels)}
        dst = {label: code for code, label in enumerate(self.dst_labels)}
        wanted = []
        for text in texts:
            parts = text.split(_SEP)
            if len(parts) != 4 or parts[0] not in src or parts[1] not in dst:
                continue
            port, proto = parts[2], parts[3]
            if (port.isdecimal() and proto.isdecimal() and str(int(port)) == port and str(int(proto)) == proto
                    and int(port) < 65536 and int(proto) < 256):
                wanted.append((src[parts[0]], dst[parts[1]], int(port), int(proto)))
        found = np.zeros(len(groups), dtype=bool)
        if not wanted:
            return found
        # each group as one integer, in the groups' order (ports are 16-bit, protocols 8-bit)
        width = self._width
        key = ((self.src[groups] * width + self.dst[groups]) * 65536 + self.port[groups]) * 256 + self.proto[groups]
        s, d, port, proto = np.array(wanted, dtype=np.int64).T
        asked = ((s * width + d) * 65536 + port) * 256 + proto
        at = np.minimum(np.searchsorted(key, asked), len(key) - 1)
        found[at[key[at] == asked]] = True
        return found


def _group_sums(table: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct rows of an integer table, sorted, with each one's count and sum of ``values`` (exact
    integers). Rows are sorted as one integer each when their columns' ranges allow (0.9 ms for 20,000
    flows), else by the columns (2.6 ms; np.unique(axis=0) compares them as records, ten times as long)."""
    low = table.min(axis=0) if len(table) else np.zeros(table.shape[1], dtype=np.int64)
    spans = (table.max(axis=0) - low + 1).tolist() if len(table) else [1] * table.shape[1]
    if math.prod(spans) < 2**62:  # each row as one integer, in the columns' order
        key = np.zeros(len(table), dtype=np.int64)
        for column, span in enumerate(spans):
            key = key * span + (table[:, column] - low[column])
        order = np.argsort(key)
        ordered = key[order]
        starts = np.ones(len(table), dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
    else:
        order = np.lexsort(table.T[::-1])
        ordered = table[order]
        starts = np.ones(len(table), dtype=bool)
        starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    at = np.flatnonzero(starts)
    counts = np.diff(np.r_[at, len(table)])
    return table[order[at]], counts, np.add.reduceat(values[order], at)


def count_edges(flows: FlowRecords) -> dict[str, dict[str, list[int]]]:
    """{hour ISO: {"src|dst|port|proto": [flows, bytes]}} of one set of flow records. Flows are grouped by
    integer codes and only each edge's text is built: building the text of every flow and sorting the
    strings took 0.14 s per 20,000 flows, and formatting the hour of every edge 0.05 s more, several times
    what scoring them took."""
    if not len(flows):
        return {}
    counted = _Counted([flows])
    out: dict[str, dict[str, list[int]]] = {}
    for hour, groups in counted.by_hour():
        edges = out[hour] = {}
        for edge, n, b in counted.edges(groups):
            total = edges.setdefault(edge, [0, 0])  # two groups that read alike add up
            total[0] += n
            total[1] += b
    return out


def _hour_iso(hour: int) -> str:
    return datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y-%m-%dT%H:00Z")


def update_edge_summary(store: ObjectStore, cluster: str, flow_sets: Iterable[FlowRecords]) -> None:
    """Fold an invocation's flows into the cluster's summary (the pipeline calls this once per invocation)."""
    flow_sets = [flows for flows in flow_sets if len(flows)]
    if not flow_sets:
        return
    counted = _Counted(flow_sets)
    hours_counted = counted.by_hour()

    def merge(doc: dict | None) -> dict:
        hours = {h: dict(e) for h, e in ((doc or {}).get("hours") or {}).items()}
        for hour, groups in hours_counted:
            hours[hour] = _merge_hour(hours.get(hour, {}), counted, groups)
        kept = sorted(hours)[-HOURS_KEPT:]
        return {"hours": {h: hours[h] for h in kept}}

    update_document(store, summary_key(cluster), merge)


def _merge_hour(into: dict[str, list[int]], counted: _Counted, groups: np.ndarray) -> dict[str, list[int]]:
    """One hour's summary with its groups added, bounded. When the hour has more groups than it keeps, a
    group that has no edge yet and is smaller than the ``EDGES_PER_HOUR - 1``-th largest cannot rank
    (that many others rank above it): it folds into ``other`` without its text being built, which took
    most of the update's time on a batch of 20,000 flows (8,144 edges in one hour, 399 kept)."""
    rest = None
    if counted.texts_distinct and len(groups) > EDGES_PER_HOUR:
        volume = counted.volume[groups]
        nth = len(groups) - (EDGES_PER_HOUR - 1)
        named = (volume >= np.partition(volume, nth)[nth]) | counted.find(into, groups)
        unnamed = groups[~named]
        rest = (int(counted.flows[unnamed].sum()), int(counted.volume[unnamed].sum()))
        groups = groups[named]
    for edge, n, b in counted.edges(groups):
        old = into.get(edge, [0, 0])
        into[edge] = [old[0] + n, old[1] + b]
    return _bounded(into, rest)


def _bounded(edges: dict[str, list[int]], rest: tuple[int, int] | None = None) -> dict[str, list[int]]:
    """The ``EDGES_PER_HOUR - 1`` largest edges by bytes (by text among equals), the others summed as
    ``other``, with ``rest``: figures of edges left out already, all below those kept."""
    if len(edges) <= EDGES_PER_HOUR and rest is None:
        return edges
    ranked = sorted(edges.items(), key=lambda kv: (-kv[1][1], kv[0]))
    keep = dict(ranked[:EDGES_PER_HOUR - 1])
    folded = ranked[EDGES_PER_HOUR - 1:]
    other = keep.get(OTHER, [0, 0])
    extra = rest or (0, 0)
    keep[OTHER] = [other[0] + sum(v[0] for _, v in folded) + extra[0],
                   other[1] + sum(v[1] for _, v in folded) + extra[1]]
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
