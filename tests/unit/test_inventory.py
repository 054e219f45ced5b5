"""Pods to workloads, and flows named by them."""

from __future__ import annotations

import pytest

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.flow import FlowRecords, address_bytes
from kubesonar.shared.inventory import PodInventory, workload_of


def _pod(name, owner=None, labels=None, ip="10.244.0.5", host_network=False):
    meta = {"name": name, "namespace": "shop", "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner[0], "name": owner[1], "controller": True}]
    return {"metadata": meta, "spec": {"nodeName": "n1", "hostNetwork": host_network,
                                       "containers": [{"image": "img:1"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}


@pytest.mark.parametrize(
    "pod, workload",
    [
        (_pod("web-5d8f7-abcde", ("ReplicaSet", "web-5d8f7"), {"pod-template-hash": "5d8f7"}), ("Deployment", "web")),
        (_pod("rs-x", ("ReplicaSet", "plain-rs")), ("ReplicaSet", "plain-rs")),
        (_pod("db-0", ("StatefulSet", "db")), ("StatefulSet", "db")),
        (_pod("agent-x1", ("DaemonSet", "agent")), ("DaemonSet", "agent")),
        (_pod("backup-29012345-abc", ("Job", "backup-29012345")), ("CronJob", "backup")),
        (_pod("migrate-abc", ("Job", "migrate")), ("Job", "migrate")),
        (_pod("lonely"), ("Pod", "lonely")),
    ],
)
def test_workload_from_owner_references(pod, workload):
    assert workload_of(pod) == workload


def test_enrichment_names_both_sides_and_skips_host_network_pods():
    inv = PodInventory.from_kubectl_json({"kind": "List", "items": [
        _pod("web-5d8f7-abcde", ("ReplicaSet", "web-5d8f7"), {"pod-template-hash": "5d8f7", "app": "web"}, "10.244.0.5"),
        _pod("node-agent", ("DaemonSet", "agent"), ip="192.168.0.10", host_network=True),
    ]})
    records = FlowRecords.empty(2)
    records.columns["src_addr"] = __import__("numpy").array([address_bytes("10.244.0.5"), address_bytes("192.168.0.10")], dtype="V16")
    records.columns["dst_addr"] = records.columns["src_addr"][::-1].copy()
    out = inv.enrich(records)
    assert out["src_workload_name"].tolist() == ["web", ""]
    assert out["dst_workload_kind"].tolist() == ["", "Deployment"]
    assert out["src_labels"][0] == "app=web,pod-template-hash=5d8f7"


def test_a_file_that_is_not_a_pod_list_is_a_clear_error(tmp_path):
    (tmp_path / "p.json").write_text('{"kind": "Pod"}')
    with pytest.raises(ConfigError, match="kubectl get pods"):
        PodInventory.load(tmp_path / "p.json")
    (tmp_path / "q.json").write_text("{not json")
    with pytest.raises(ConfigError, match="line 1"):
        PodInventory.load(tmp_path / "q.json")
