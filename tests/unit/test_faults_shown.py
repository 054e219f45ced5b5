"""Issue 19: faults the core meets and goes on from are shown, never silent: a baseline stored as
``{}`` or ``null`` (or unreadable) is started afresh with its reason, and a watchlist that does not parse
is skipped with its reason; ``analyze`` prints each as one warning line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.batch import BatchHeader, encode_batch
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.pipeline import Delivery, Dependencies, process_deliveries
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.state import read_document

from conftest import PCAPS
from helpers import LIVE_WINDOW

KUBESONAR = Path(sys.executable).with_name("kubesonar")


def _message(sensor: str = "n/1") -> bytes:
    flows = FlowRecords.empty(5)
    flows.columns["first_ts"] = 10**18 + np.arange(5, dtype=np.int64)
    flows.columns["last_ts"] = flows.columns["first_ts"]
    (message,) = encode_batch(BatchHeader("c", "n", sensor, 1, *LIVE_WINDOW), flows)
    return message


@pytest.mark.parametrize("stored, shown", [
    ("{}", "port_scan: stored state is {}"), ("null", "port_scan: stored state is null"),
    ('{"state_version": 99}', "port_scan: stored state of version 99 dropped"),
])
def test_a_baseline_started_afresh_says_why(tmp_path, stored, shown):
    store = LocalObjectStore(tmp_path)
    store.put("state/c/detectors.json", f'{{"layout": 2, "detectors": {{"port_scan": {stored}}}}}'.encode())
    outcome = process_deliveries([Delivery("m", _message())], Dependencies(store, CollectingNotifier(), SystemClock()))
    assert outcome.applied == ["m"]
    assert [e for e in outcome.result.errors if "port_scan" in e] == [
        e for e in outcome.result.errors if e.startswith(f"state/c/detectors.json: {shown}")]
    assert len([e for e in outcome.result.errors if "port_scan" in e]) == 1
    assert read_document(store, "state/c/detectors.json")[0]["detectors"]["port_scan"]["state_version"] >= 1
    again = process_deliveries([Delivery("m2", _message("n/2"))], Dependencies(store, CollectingNotifier(),
                                                                               SystemClock()))
    assert again.applied == ["m2"] and not again.result.errors  # shown once: the baseline is whole again


def test_a_broken_watchlist_is_shown_and_the_others_still_score(tmp_path):
    store = LocalObjectStore(tmp_path)
    store.put("watchlists/bad.json", b'{"entries": [')
    outcome = process_deliveries([Delivery("m", _message())], Dependencies(store, CollectingNotifier(), SystemClock()))
    assert outcome.applied == ["m"] and any(e.startswith("watchlist bad:") for e in outcome.result.errors)


def test_analyze_prints_each_fault_as_one_warning_line(tmp_path):
    state = tmp_path / "state"
    store = LocalObjectStore(state)
    store.put("watchlists/bad.json", b'{"entries": [')
    store.put("state/default/detectors.json", json.dumps(
        {"layout": 2, "detectors": {"port_scan": {}, "exfiltration": {"state_version": 99}}}).encode())
    done = subprocess.run([str(KUBESONAR), "analyze", "--state", str(state),
                           str(PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap")],
                          capture_output=True, text=True, timeout=300, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 0 and "port_scan" in done.stdout  # the baseline started afresh still finds the scan
    warnings = [line for line in lines if line.startswith("kubesonar: warning: ")]
    # besides the warnings, only the note that every responder is inside the cluster's networks
    assert len(warnings) == 3 and all(line.startswith("kubesonar: note: ") for line in lines if line not in warnings)
    assert any("watchlist bad" in x for x in warnings) and any("port_scan: stored state is {}" in x for x in warnings)
    assert any("exfiltration: stored state of version 99" in x for x in warnings)
