"""A detector merging evidence and people triaging the same alert, in separate processes on the local
store: every merge and every triage change survives (compare-and-swap, as for detector state)."""

from __future__ import annotations

import multiprocessing
import random
import time

from alert_fixtures import ManualClock, scan_batch

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.pipeline import Dependencies, process_batch
from kubesonar.shared.state import read_document, update_document
from kubesonar.shared.triage import TriageChange, apply_triage

DETECTORS, BATCHES_EACH = 3, 6
PEOPLE, CHANGES_EACH = 3, 6


def _detector(root: str, worker: int) -> None:
    deps = Dependencies(LocalObjectStore(root), CollectingNotifier(), ManualClock())
    for i in range(BATCHES_EACH):
        n = worker * BATCHES_EACH + i
        process_batch(scan_batch(100 + n, 2000 + 20 * n), deps)


def _person(root: str, key: str, worker: int) -> None:
    store = LocalObjectStore(root)
    rng = random.Random(worker)
    for i in range(CHANGES_EACH):
        change = TriageChange(add_tags=[f"p{worker}-{i}"], comment=f"note {worker}.{i}",
                              assignee=f"person-{worker}")
        update_document(store, key, lambda a, c=change: apply_triage(a, c, f"person-{worker}", time.time_ns()))
        time.sleep(rng.uniform(0, 0.01))


def test_merges_and_triage_from_concurrent_processes_all_survive(tmp_path):
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), ManualClock())
    process_batch(scan_batch(1), deps)
    (key,) = list(deps.store.list("alerts/"))
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_detector, args=(str(tmp_path), w)) for w in range(DETECTORS)]
    workers += [ctx.Process(target=_person, args=(str(tmp_path), key, w)) for w in range(PEOPLE)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0] * len(workers)
    alert, _ = read_document(deps.store, key)
    assert alert["count"] == 1 + DETECTORS * BATCHES_EACH
    assert sorted(alert["tags"]) == sorted(f"p{w}-{i}" for w in range(PEOPLE) for i in range(CHANGES_EACH))
    assert len(alert["comments"]) == PEOPLE * CHANGES_EACH
    people = [h for h in alert["history"] if h["by"].startswith("person-")]
    assert len(people) == PEOPLE * CHANGES_EACH
    assert alert["status"] == "open" and alert["assignee"].startswith("person-")
