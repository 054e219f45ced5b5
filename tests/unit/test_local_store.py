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
