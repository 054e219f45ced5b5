"""Stored state that parses but has the wrong shape, and a state directory that cannot be written
(issue 19): a StoreError naming the document, never an AttributeError or a silent reset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.batch import BatchHeader, encode_batch
from kubesonar.shared.errors import StoreError
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pipeline import Delivery, Dependencies, process_deliveries
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.state import read_document, update_document

REPO = Path(__file__).resolve().parents[2]
KUBESONAR = Path(sys.executable).with_name("kubesonar")


@pytest.mark.parametrize("text, fault", [
    ("[1]", "holds list"), ("5", "holds int"), ("null", "holds null"), ("[]", "holds list"),
    ("{}", "empty object"), ('{"state": "x"}', "'state' is str"), ('{"applied": [1]}', "'applied' is list"),
    ('{"layout": 2, "detectors": {"port_scan": "x"}}', "'detectors.port_scan' is str"),
    ('{"layout": 2, "applied": {"n/1": 5}}', "'applied.n/1' is int"),
])
def test_a_state_document_of_the_wrong_shape_is_a_store_error(tmp_path, text, fault):
    store = LocalObjectStore(tmp_path)
    store.put("state/c/port_scan.json", text.encode())
    with pytest.raises(StoreError, match=fault):
        read_document(store, "state/c/port_scan.json")
    with pytest.raises(StoreError, match="state/c/port_scan.json"):
        update_document(store, "state/c/port_scan.json", lambda doc: {"state": {}})
    assert store.get("state/c/port_scan.json").data == text.encode()  # never silently replaced


@pytest.mark.parametrize("text", ["{}", '{"count": 1}',
                                  '{"count": "1", "first_seen": "a", "last_seen": "b", "status": "open"}'])
def test_an_alert_of_the_wrong_shape_is_a_store_error(tmp_path, text):
    store = LocalObjectStore(tmp_path)
    store.put("alerts/c/x.json", text.encode())
    with pytest.raises(StoreError, match="alerts/c/x.json"):
        read_document(store, "alerts/c/x.json")


def _scan_batch() -> bytes:
    n = 200
    flows = FlowRecords.empty(n)
    flows.columns["first_ts"] = np.arange(n, dtype=np.int64) * 1_000_000 + 1_700_000_000 * 10**9
    flows.columns["last_ts"] = flows.columns["first_ts"]
    flows.columns["dst_port"] = np.arange(1, n + 1).astype(np.uint16)
    (message,) = encode_batch(BatchHeader("c", "n", "n/1", 1, 0, 1), flows)
    return message


def test_a_broken_state_document_makes_the_batch_retry_with_a_clear_reason(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put("state/c/detectors.json", b'{"layout": 2, "detectors": {"port_scan": "x"}}')
    deps = Dependencies(store, CollectingNotifier(), SystemClock())
    outcome = process_deliveries([Delivery("m1", _scan_batch())], deps)
    assert outcome.retry and not outcome.applied
    assert "state/c/detectors.json" in next(why for _, why in outcome.retry)


def _read_only(path: Path) -> bool:
    """Make ``path`` read-only for this process: a read-only mount as root, permissions otherwise."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        for sub in path.rglob("*"):
            sub.chmod(0o555 if sub.is_dir() else 0o444)
        return True
    done = subprocess.run(["mount", "-o", "bind,ro", str(path), str(path)], capture_output=True, check=False)
    return done.returncode == 0


def test_a_state_directory_on_a_read_only_mount_is_one_clear_line(tmp_path):
    state = tmp_path / "state"
    LocalObjectStore(state).put("state/c/x.json", b'{"state": {}}')
    if not _read_only(state):
        pytest.skip("neither a read-only bind mount nor permissions can be used here")
    try:
        with pytest.raises(StoreError, match="cannot use .* as an object store"):
            LocalObjectStore(state)
        done = subprocess.run([str(KUBESONAR), "analyze", "--state", str(state),
                               str(REPO / "examples/cluster-traffic.pcap")],
                              capture_output=True, timeout=180, check=False)
        lines = done.stderr.decode().strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and str(state) in lines[0], done.stderr.decode()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(state)], check=False)
