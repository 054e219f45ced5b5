"""The edge summary: counted right, merged across invocations, named by workload, bounded in size."""

from __future__ import annotations

import numpy as np
from alert_fixtures import scan_batch

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared import edges
from kubesonar.shared.state import read_document


def test_counts_per_edge_and_hour_merge_across_invocations(tmp_path):
    store = LocalObjectStore(tmp_path)
    flows = scan_batch(1).flows
    flows.columns["bytes_out"][:] = 60
    flows.columns["bytes_in"][:] = 40
    flows.columns["dst_port"][:10] = 80
    flows.columns["dst_port"][10:] = 443
    edges.update_edge_summary(store, "c", [flows])
    edges.update_edge_summary(store, "c", [flows, flows])
    got = {(e["src"], e["dst"], e["port"]): (e["flows"], e["bytes"]) for e in edges.read_edges(store, "c")}
    assert got == {("10.0.0.9", "10.0.0.1", 80): (30, 3000), ("10.0.0.9", "10.0.0.1", 443): (30, 3000)}


def test_workloads_name_the_edges_when_known(tmp_path):
    store = LocalObjectStore(tmp_path)
    flows = scan_batch(1).flows
    flows.columns["src_namespace"] = np.array(["shop"] * 20, dtype=object)
    flows.columns["src_workload_kind"] = np.array(["Deployment"] * 20, dtype=object)
    flows.columns["src_workload_name"] = np.array(["frontend"] * 10 + [""] * 10, dtype=object)
    edges.update_edge_summary(store, "c", [flows])
    assert {e["src"] for e in edges.read_edges(store)} == {"shop/Deployment/frontend", "10.0.0.9"}


def test_the_summary_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(edges, "EDGES_PER_HOUR", 8)
    monkeypatch.setattr(edges, "HOURS_KEPT", 2)
    store = LocalObjectStore(tmp_path)
    for hour in range(4):
        flows = scan_batch(1).flows
        flows.columns["first_ts"] += hour * 3600 * 10**9
        flows.columns["bytes_out"][:] = np.arange(20) + 1
        edges.update_edge_summary(store, "c", [flows])
    doc, _ = read_document(store, edges.summary_key("c"))
    assert len(doc["hours"]) == 2 and all(len(e) == 8 for e in doc["hours"].values())
    for hour_edges in doc["hours"].values():
        assert sum(n for n, _ in hour_edges.values()) == 20  # nothing lost: the smallest fold into "other"
        assert hour_edges[edges.OTHER][0] == 13
