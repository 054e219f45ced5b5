"""Issue 19: a batch reusing an applied key with other content is a counted conflict, never a silent
skip; and a failed alert write (a full disk) leaves the batch unapplied, so a retry or a rerun gives
the result a run with room would have given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kubesonar.functions.local.notifier import CollectingNotifier
from kubesonar.functions.local.store import LocalObjectStore
from kubesonar.shared.applied import APPLIED, CONFLICT, NEW, WINDOW, AppliedLog, content_digest
from kubesonar.shared.batch import BatchHeader, encode_batch
from kubesonar.shared.errors import StoreError
from kubesonar.shared.flow import ConnState, FlowRecords, address_bytes
from kubesonar.shared.pipeline import Delivery, Dependencies, process_deliveries
from kubesonar.shared.ports import SystemClock
from kubesonar.shared.state import read_document

from conftest import PCAPS
from helpers import LIVE_WINDOW

KUBESONAR = Path(sys.executable).with_name("kubesonar")


def _scan_message(sequence: int, ports: int, first_port: int = 1) -> bytes:
    """A port scan of ``ports`` rejected ports from one address: a message of sensor n/1."""
    flows = FlowRecords.empty(ports)
    flows.columns["first_ts"] = 10**18 + np.arange(ports, dtype=np.int64) * 1000
    flows.columns["last_ts"] = flows.columns["first_ts"]
    flows.columns["src_addr"] = np.array([address_bytes("10.0.0.9")] * ports, dtype="V16")
    flows.columns["dst_addr"] = np.array([address_bytes("10.0.0.1")] * ports, dtype="V16")
    flows.columns["dst_port"] = np.arange(first_port, first_port + ports, dtype=np.uint16)
    flows.columns["proto"][:] = 6
    flows.columns["state"][:] = ConnState.REJECTED
    (message,) = encode_batch(BatchHeader("c", "n", "n/1", sequence, *LIVE_WINDOW), flows)
    return message


@pytest.fixture()
def deps(tmp_path):
    return Dependencies(LocalObjectStore(tmp_path), CollectingNotifier(), SystemClock())


def _alerts(store) -> list[dict]:
    return [read_document(store, k)[0] for k in store.list("alerts/")]


def test_a_key_reused_with_other_content_is_a_counted_conflict_and_not_applied(deps):
    quiet, scan = _scan_message(1, 3), _scan_message(1, 200)
    process_deliveries([Delivery("first", quiet)], deps)
    before = read_document(deps.store, "state/c/detectors.json")[0]
    outcome = process_deliveries([Delivery("reused", scan)], deps)
    assert outcome.result.conflicts == 1 and outcome.result.flows == 0
    assert outcome.applied == ["reused"] and not outcome.retry  # acknowledged: a retry cannot help
    assert any("n/1/1/0" in e and "conflict" in e for e in outcome.result.errors)
    assert read_document(deps.store, "state/c/detectors.json")[0] == before and _alerts(deps.store) == []
    again = process_deliveries([Delivery("redelivered", quiet)], deps)  # the same bytes: a redelivery
    assert again.result.conflicts == 0 and again.result.flows == 3 and not again.result.errors


def test_one_key_twice_in_one_invocation_is_applied_once(deps):
    outcome = process_deliveries([Delivery("a", _scan_message(1, 200)), Delivery("b", _scan_message(1, 200, 300)),
                                  Delivery("c", _scan_message(1, 200))], deps)
    assert outcome.result.conflicts == 1 and sorted(outcome.applied) == ["a", "b", "c"]
    (alert,) = _alerts(deps.store)
    assert alert["count"] == 1 and alert["evidence"]["failed_first_contacts"] == 200


def test_the_digests_move_with_the_window_and_survive_the_document():
    log, first, other = AppliedLog(), content_digest(b"first"), content_digest(b"other")
    log.mark("s", 5, 0, 1, now_ns=1, digest=first)
    log.mark("s", 7, 0, 3, now_ns=1)  # a part of a window in three: no digest kept
    log.mark("s", 9, 0, 1, now_ns=1, digest=other)
    again = AppliedLog(json.loads(json.dumps(log.to_state())))
    assert again.status("s", 5, 0, first) == APPLIED and again.status("s", 5, 0, other) == CONFLICT
    assert again.status("s", 9, 0, other) == APPLIED and again.status("s", 9, 0, first) == CONFLICT
    assert again.status("s", 5, 0) == APPLIED  # a batch known only decoded is recognised by key alone
    assert again.status("s", 8, 0, first) == NEW
    again.mark("s", 9 + WINDOW - 5, 0, 1, now_ns=1, digest=first)  # 5 is now the window's oldest
    assert again.status("s", 5, 0, other) == CONFLICT and again.status("s", 9, 0, first) == CONFLICT
    assert content_digest(b"x", parts=2) == 0 and all(content_digest(bytes([i])) for i in range(256))


class _NoRoomForAlerts(LocalObjectStore):
    """A store whose alert writes fail as a full disk does (the local store's own StoreError)."""

    full = True

    def put(self, key, data, **kw):
        if key.startswith("alerts/") and self.full:
            raise StoreError(f"cannot write {key} under {self.root}: No space left on device")
        return super().put(key, data, **kw)


def test_a_failed_alert_write_leaves_the_batch_unapplied_and_its_retry_gives_the_same_result(tmp_path):
    store = _NoRoomForAlerts(tmp_path / "full")
    deps = Dependencies(store, CollectingNotifier(), SystemClock())
    failed = process_deliveries([Delivery("m", _scan_message(1, 200))], deps)
    assert [i for i, _ in failed.retry] == ["m"] and "No space left" in failed.retry[0][1]
    assert store.get("state/c/detectors.json") is None and store.get("state/c/sensor_health.json") is None
    store.full = False
    retried = process_deliveries([Delivery("m", _scan_message(1, 200))], deps)
    roomy = Dependencies(LocalObjectStore(tmp_path / "roomy"), CollectingNotifier(), SystemClock())
    reference = process_deliveries([Delivery("m", _scan_message(1, 200))], roomy)
    assert [a["type"] for a in retried.result.new_alerts] == [a["type"] for a in reference.result.new_alerts] \
        == ["port_scan"]
    assert retried.result.new_alerts[0]["evidence"] == reference.result.new_alerts[0]["evidence"]


def _mount_full_tmpfs(path: Path) -> bool:
    """A real full filesystem at ``path``: a 64 KiB tmpfs, filled (root only)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                                           capture_output=True, check=False).returncode:
        return False
    (path / "fill").write_bytes(b"")
    with open(path / "fill", "wb") as out:
        try:
            out.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return True


def test_analyze_on_a_full_disk_is_one_line_and_a_rerun_with_room_finds_what_a_fresh_run_finds(tmp_path):
    capture = PCAPS / "portscan/evilfingers_nmap_TCP_SYN_SCAN.pcap"
    state = tmp_path / "state"
    if not _mount_full_tmpfs(state / "alerts"):
        pytest.skip("a tmpfs cannot be mounted here (needs root)")
    try:
        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(KUBESONAR), "analyze", "--format", "json", *args, str(capture)],
                                  capture_output=True, timeout=300, check=False, text=True)

        full = run("--state", str(state))
        lines = full.stderr.strip().splitlines()
        assert full.returncode == 1 and len(lines) == 1 and "No space left on device" in lines[0], full.stderr
        assert "Traceback" not in full.stderr and not (state / "state/default/detectors.json").exists()
        (state / "alerts/fill").unlink()
        rerun, fresh = run("--state", str(state)), run()
        assert rerun.returncode == fresh.returncode == 0
        kinds = [(a["type"], a["count"], a["evidence"]) for a in map(json.loads, rerun.stdout.splitlines())]
        assert kinds == [(a["type"], a["count"], a["evidence"]) for a in map(json.loads, fresh.stdout.splitlines())]
        assert [k[0] for k in kinds] == ["port_scan"]
    finally:
        subprocess.run(["umount", str(state / "alerts")], check=False)
