"""The local directory store passes the object store contract, also across processes."""

from __future__ import annotations

import multiprocessing

import pytest
from contract.object_store import ObjectStoreContract

from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.state import read_document, update_document


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "bucket")


class TestLocalObjectStore(ObjectStoreContract):
    pass


def _bump_many(root: str, times: int) -> None:
    store = LocalObjectStore(root)

    def bump(doc):
        doc = dict(doc or {"n": 0, "seen": []})
        doc["n"] += 1
        return doc

    for _ in range(times):
        update_document(store, "baselines/c1/counter.json", bump)


def test_eight_processes_updating_one_baseline_lose_no_update(tmp_path):
    root = str(tmp_path / "bucket")
    LocalObjectStore(root)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_many, args=(root, 25)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert read_document(LocalObjectStore(root), "baselines/c1/counter.json")[0]["n"] == 200


def _learn_workloads(root: str, proc: int, batches: int) -> None:
    import numpy as np

    from kubesonar.functions.local.notifier import CollectingNotifier
    from kubesonar.shared.batch import Batch, BatchHeader
    from kubesonar.shared.flow import FlowRecords
    from kubesonar.shared.pipeline import CoreConfig, Dependencies, process_batch
    from kubesonar.shared.ports import SystemClock

    deps = Dependencies(LocalObjectStore(root), CollectingNotifier(), SystemClock(), CoreConfig(learning=True))
    for b in range(batches):
        flows = FlowRecords.empty(3)
        flows.columns["first_ts"] = np.full(3, 1_700_000_000 * 10**9, dtype=np.int64)
        flows.columns["src_namespace"][:] = "team"
        flows.columns["src_workload_kind"][:] = "Deployment"
        flows.columns["src_workload_name"] = np.array([f"p{proc}-b{b}-{i}" for i in range(3)], dtype=object)
        process_batch(Batch(BatchHeader("c1", f"node{proc}", f"s{proc}", b, 0, 1, flow_count=3), flows), deps)


def test_eight_processes_scoring_batches_lose_no_baseline_update(tmp_path):
    """Eight concurrent invocations learn different workloads into one cluster baseline."""
    root = str(tmp_path / "bucket")
    LocalObjectStore(root)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_learn_workloads, args=(root, p, 6)) for p in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    baseline = read_document(LocalObjectStore(root), "state/c1/detectors.json")[0]["detectors"]["new_workload"]
    assert len(baseline["workloads"]) == 8 * 6 * 3
