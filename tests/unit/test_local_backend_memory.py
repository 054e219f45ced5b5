"""What the embedded backend keeps in memory is bounded: `kubesonar watch` runs it for months, and its
collecting notifier (every alert), its faults list and its heartbeats (one more sensor id at each sensor
start) grew for the life of the process."""

from __future__ import annotations

from alert_fixtures import scan_batch

from kubesonar.functions.local import backend as local
from kubesonar.shared.batch import BatchHeader, encode_batch

from helpers import LIVE_WINDOW


def _restarted_scanners(n: int) -> list[bytes]:
    """One message per sensor life (a new sensor id each), from a scanner of its own: a new alert each."""
    messages = []
    for i in range(n):
        flows = scan_batch(1, src=f"10.0.{i // 250}.{i % 250 + 1}").flows
        messages += encode_batch(BatchHeader("c", "n", f"n/{i:x}", 1, *LIVE_WINDOW, flow_count=len(flows)), flows)
    return messages


def test_alerts_faults_and_heartbeats_kept_stay_within_their_bounds(tmp_path, monkeypatch):
    for name in ("ALERTS_KEEP", "ERRORS_KEEP", "HEARTBEATS_KEEP"):
        monkeypatch.setattr(local, name, 10, raising=False)
    backend = local.LocalBackend(tmp_path)  # as build_watch makes it
    for i, message in enumerate(_restarted_scanners(30)):
        assert backend.receive(f"k{i}", message).new_alerts
        backend.receive(f"garbage{i}", b"not a batch")  # a fault each
    assert backend.counters["alerts"] == 30 and backend.counters["decode_errors"] == 30  # all counted
    assert len(backend.alerts()) == 10 and backend.alerts()[-1]["source"]["ip"] == "10.0.0.30"  # the latest
    assert len(backend.errors) == 10 and backend.errors[-1].startswith("garbage29: ")
    assert list(backend.heartbeats) == [f"n/{i:x}" for i in range(20, 30)]  # the sensors heard last
