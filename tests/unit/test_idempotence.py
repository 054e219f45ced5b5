"""At-least-once delivery: a batch delivered twice changes nothing the second time, and a batch whose
first delivery died half-way is completed by the second."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.alert_query import triage_alert
from kubesonar.shared.batch import Batch, BatchHeader
from kubesonar.shared.errors import StoreError
from kubesonar.shared.flow import ConnState, FlowRecords, address_bytes
from kubesonar.shared.pipeline import Dependencies, process_batch
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.state import update_document
from kubesonar.shared.triage import TriageChange


def _scan(sequence: int, first_port: int) -> Batch:
    flows = FlowRecords.empty(20)
    flows.columns["first_ts"] = 10**18 + np.arange(20, dtype=np.int64) + sequence * 1000
    flows.columns["src_addr"] = np.array([address_bytes("10.0.0.9")] * 20, dtype="V16")
    flows.columns["dst_addr"] = np.array([address_bytes("10.0.0.1")] * 20, dtype="V16")
    flows.columns["dst_port"] = np.arange(first_port, first_port + 20, dtype=np.uint16)
    flows.columns["proto"][:] = 6
    flows.columns["state"][:] = ConnState.REJECTED
    return Batch(BatchHeader("c", "n", "node-1/abc", sequence, 0, 1, flow_count=20), flows)


def _documents(root) -> dict[str, object]:
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))}


def test_a_redelivered_batch_changes_nothing(tmp_path):
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), SystemClock())
    first = process_batch(_scan(1, 1000), deps)
    before = _documents(tmp_path)
    again = process_batch(_scan(1, 1000), deps)
    assert len(first.new_alerts) == 1 and again.alerts == [] and len(deps.notifier.sent) == 1
    after = _documents(tmp_path)
    for doc in (before, after):
        for alert in (v for k, v in doc.items() if k.startswith("alerts/")):
            alert.pop("updated_at_ns")
    assert after == before
    process_batch(_scan(2, 2000), deps)  # the next batch is new: the alert counts it
    (alert,) = [v for k, v in _documents(tmp_path).items() if k.startswith("alerts/")]
    assert alert["count"] == 2


def test_a_redelivery_older_than_the_alerts_last_merged_batches_is_not_merged_again(tmp_path):
    """An alert remembers the keys of its last 64 batches; a batch merged before those, redelivered
    (a Lambda that timed out after its writes, a dead-letter redrive), must neither count again nor
    reopen the alert once resolved."""
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), SystemClock())
    for sequence in range(1, 67):
        process_batch(_scan(sequence, 1000 + 20 * sequence), deps)
    (alert,) = [v for k, v in _documents(tmp_path).items() if k.startswith("alerts/")]
    assert alert["count"] == 66 and "node-1/abc/1/0" not in alert["batches"] and len(deps.notifier.sent) == 1
    triage_alert(deps.store, alert["id"], TriageChange(status="resolved"), "alice", SystemClock().now_ns())
    again = process_batch(_scan(1, 1020), deps)
    (alert,) = [v for k, v in _documents(tmp_path).items() if k.startswith("alerts/")]
    assert (alert["count"], alert["status"]) == (66, "resolved")
    assert again.alerts == [] and len(deps.notifier.sent) == 1


class _FailingAlertWrites(LocalObjectStore):
    """Dies once on the first alert write, as a Lambda timing out half-way would."""

    failed = False

    def put(self, key, data, **kw):
        if key.startswith("alerts/") and not type(self).failed:
            type(self).failed = True
            raise StoreError("injected: the invocation died here")
        return super().put(key, data, **kw)


def test_a_delivery_that_died_half_way_is_completed_by_the_redelivery(tmp_path):
    deps = Dependencies(_FailingAlertWrites(tmp_path), CollectingNotifier(), SystemClock())
    with pytest.raises(StoreError):
        process_batch(_scan(1, 1000), deps)  # the scan state was written, its alert was not
    retry = process_batch(_scan(1, 1000), deps)
    (alert,) = retry.new_alerts
    assert alert["type"] == "port_scan" and alert["count"] == 1 and alert["evidence"]["failed_first_contacts"] == 20



def test_a_redelivery_whose_replayed_finding_has_a_field_a_later_version_added_changes_nothing(tmp_path):
    """A redelivered batch's findings are read back from the replay log, which the version before reads in
    a rollback or a mixed rollout: 19ae552's severity was a field that version's Finding(**document)
    refused, a TypeError on every redelivery of such a batch. A field this version does not know is left
    out, and the redelivery is the no-op it always was."""
    deps = Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), SystemClock())
    assert len(process_batch(_scan(1, 1000), deps).new_alerts) == 1

    def later_version(doc: dict) -> dict:
        return {**doc, "findings": {key: [{**f, "confidence": 0.9} for f in findings]  # a field it might add
                                    for key, findings in doc["findings"].items()}}

    update_document(deps.store, "state/c/detectors.json", later_version)
    again = process_batch(_scan(1, 1000), deps)
    assert again.alerts == [] and not again.errors and len(deps.notifier.sent) == 1
