"""The edge summary: counted right, merged across invocations, named by workload, bounded in size."""

from __future__ import annotations

import numpy as np
from alert_fixtures import scan_batch

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared import edges
from kubesonar.shared.state import read_document

from conftest import shared_captures


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


def test_the_counts_are_those_of_flow_by_flow_counting_on_real_captures():
    """The grouped count against a plain loop over every flow (each edge's text built per flow), on the
    flows of every labelled capture and on a simulated cluster's workloads, hours apart."""
    from collections import Counter

    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.shared.flow import FlowRecords, address_text
    from lab.benign import Cluster, simulate_window

    captures = shared_captures()
    rng = np.random.default_rng(3)
    cluster = Cluster(rng)
    simulated = [simulate_window(cluster, 1_700_000_000 + w * 1800, rng)[0] for w in range(4)]
    flows = FlowRecords.concat([f for p in captures for f in flows_from_captures([p])] + simulated)
    assert len(flows) > 10_000 and (flows["src_workload_name"] != "").any() and (flows["src_workload_name"] == "").any()

    def label(row, side):
        name = row[f"{side}_workload_name"]
        return (f"{row[f'{side}_namespace']}/{row[f'{side}_workload_kind']}/{name}" if name
                else address_text(bytes(row[f"{side}_addr"])))

    expected: dict[str, Counter] = {}
    for i in range(len(flows)):
        row = {k: v[i] for k, v in flows.columns.items()}
        hour = edges._hour_iso(int(row["first_ts"]) // (3600 * 10**9))
        key = f"{label(row, 'src')}|{label(row, 'dst')}|{row['dst_port']}|{row['proto']}"
        counts = expected.setdefault(hour, Counter())
        counts[(key, "flows")] += 1
        counts[(key, "bytes")] += int(row["bytes_out"]) + int(row["bytes_in"])
    got = edges.count_edges(flows)
    assert {h: {(k, "flows"): n for k, (n, _) in e.items()} | {(k, "bytes"): b for k, (_, b) in e.items()}
            for h, e in got.items()} == {h: dict(c) for h, c in expected.items()}


def test_an_hour_of_more_edges_than_kept_is_what_counting_every_edge_then_bounding_gives(tmp_path, monkeypatch):
    """Edges too small to rank fold into "other" without their text: the summary is the one every
    edge's text, merged and then bounded, gives; with ties in bytes, edges already kept, several
    flow sets in one invocation and names holding the separator (where no edge is left unnamed)."""
    monkeypatch.setattr(edges, "EDGES_PER_HOUR", 8)
    rng = np.random.default_rng(7)
    store = LocalObjectStore(tmp_path)
    expected: dict[str, dict[str, list[int]]] = {}
    for invocation in range(6):
        sets = []
        for _ in range(1 + invocation % 2):
            flows = scan_batch(1).flows
            flows.columns["dst_port"][:] = rng.integers(1, 12, 20)
            flows.columns["bytes_out"][:] = rng.integers(0, 4, 20) * 100
            if invocation == 4:  # two workloads whose edges read alike
                flows.columns["src_namespace"] = np.array(["a|b"] * 10 + ["a"] * 10, dtype=object)
                flows.columns["src_workload_kind"] = np.array(["k"] * 10 + ["b|k"] * 10, dtype=object)
                flows.columns["src_workload_name"] = np.array(["n"] * 20, dtype=object)
            sets.append(flows)
        for flows in sets:
            for hour, counted in edges.count_edges(flows).items():
                into = expected.setdefault(hour, {})
                for edge, (n, b) in counted.items():
                    old = into.get(edge, [0, 0])
                    into[edge] = [old[0] + n, old[1] + b]
        expected = {hour: _bounded_by_sorting(into, 8) for hour, into in expected.items()}
        edges.update_edge_summary(store, "c", sets)
        doc, _ = read_document(store, edges.summary_key("c"))
        assert doc["hours"] == expected


def _bounded_by_sorting(into: dict[str, list[int]], most: int) -> dict[str, list[int]]:
    if len(into) <= most:
        return into
    ranked = sorted(into.items(), key=lambda kv: (-kv[1][1], kv[0]))
    keep = dict(ranked[:most - 1])
    other = keep.get(edges.OTHER, [0, 0])
    keep[edges.OTHER] = [other[0] + sum(v[0] for _, v in ranked[most - 1:]),
                         other[1] + sum(v[1] for _, v in ranked[most - 1:])]
    return keep


def test_rows_group_alike_whether_sorted_as_one_integer_or_by_their_columns():
    rng = np.random.default_rng(5)
    table = np.column_stack([rng.integers(0, 3, 5_000), rng.integers(0, 200, 5_000), rng.integers(0, 170, 5_000),
                             rng.integers(0, 65_536, 5_000), rng.integers(0, 256, 5_000)]).astype(np.int64)
    values = rng.integers(0, 2**40, 5_000).astype(np.uint64)
    distinct, inverse = np.unique(table, axis=0, return_inverse=True)
    sums = np.zeros(len(distinct), dtype=np.uint64)
    np.add.at(sums, inverse.ravel(), values)
    wide = table.copy()
    wide[:, 1] *= 2**40  # too wide for one integer: sorted by the columns
    for rows, got in ((table, edges._group_sums(table, values)), (wide, edges._group_sums(wide, values))):
        assert np.array_equal(got[0], np.unique(rows, axis=0))
        assert np.array_equal(got[1], np.bincount(inverse.ravel())) and np.array_equal(got[2], sums)
