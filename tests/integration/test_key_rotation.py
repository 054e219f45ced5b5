"""Key rotation against a sensor's spool (docs/hardening.md): a sensor cut off from its queue keeps signed
batches on disk for up to 23 hours, signed with the key it had when it made them. After it restarts with
`sign_with` the new key, those batches drain first, still under the old key: accepted while the backend
holds both keys, refused (dead-lettered, counted, logged naming the key) once the old key is gone.

The production path: window_messages signing with a keyring file (as `kubesonar sensor --key-file`), the
SpoolingPublisher over a file:// queue, and `kubesonar backend --queue file://` with KUBESONAR_KEYRING_FILE."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from kubesonar.sensor.queues import window_messages
from kubesonar.sensor.queues.directory import DirectoryQueue
from kubesonar.sensor.spool import SpoolingPublisher
from kubesonar.shared.batch import BatchHeader
from kubesonar.shared.flow import FlowRecords
from kubesonar.shared.signing import Keyring

from helpers import backend_metrics
from nats_server import free_port

OLD, NEW = "prod-2026-11", "prod-2026-12"
SECRETS = {key_id: base64.b64encode(os.urandom(32)).decode() for key_id in (OLD, NEW)}


def _keyring_file(path: Path, keys: list[str], sign_with: str | None = None) -> Path:
    doc: dict = {"keys": [{"id": k, "cluster": "prod", "secret": SECRETS[k]} for k in keys]}
    if sign_with:
        doc["sign_with"] = sign_with
    path.write_text(json.dumps(doc))
    return path


class _Sensor:
    """A sensor's publishing half as build_sensor composes it: windows signed with the keyring file's
    `sign_with`, through the spool, to the queue. A new one over the same spool is a restarted sensor."""

    def __init__(self, key_file: Path, spool: Path, queue: Path, sensor_id: str):
        keyring = Keyring.load(key_file)
        keyring.check_signs_for("prod")
        self.sign, self.sensor_id, self.sequence = keyring.sign, sensor_id, 0
        self.publisher = SpoolingPublisher(DirectoryQueue(queue, limit=8192), spool, attempts=1,
                                           outage_backoff_s=(0.0, 0.0))

    def window(self) -> None:
        now = time.time_ns()
        flows = FlowRecords.empty(20)
        flows.columns["first_ts"] = now - np.arange(20, dtype=np.int64) * 10**8
        flows.columns["last_ts"] = flows.columns["first_ts"]
        header = BatchHeader("prod", "node-1", self.sensor_id, self.sequence, now - 10**10, now,
                             counters={"spool_depth": self.publisher.stats.depth})
        self.publisher.publish(window_messages(header, flows, self.publisher.limit, signer=self.sign))
        self.sequence += 1


def _rotated_while_cut_off(tmp_path: Path) -> Path:
    """Three windows signed with the old key spooled while the queue is down; the sensor restarted with
    `sign_with` the new key, the queue back: its first window drains them, then goes out under the new key."""
    queue, spool = tmp_path / "queue", tmp_path / "spool"
    queue.write_text("not a directory")  # the queue is down: writes fail with ENOTDIR
    before = _Sensor(_keyring_file(tmp_path / "old.json", [OLD], OLD), spool, queue, "node-1/before")
    for _ in range(3):
        before.window()
    assert before.publisher.stats.depth == 3 and before.publisher.stats.sent == 0
    queue.unlink()
    queue.mkdir()
    after = _Sensor(_keyring_file(tmp_path / "new.json", [OLD, NEW], NEW), spool, queue, "node-1/after")
    assert after.publisher.stats.depth == 3  # the spool outlived the restart
    after.window()
    assert after.publisher.stats.depth == 0 and after.publisher.stats.drained == 3
    return queue


def _run_backend(tmp_path: Path, queue: Path, keys: list[str], monkeypatch, settled: int) -> dict[str, float]:
    """`kubesonar backend --queue file://QUEUE` with a keyring of ``keys``, until ``settled`` messages are
    applied or dead-lettered; its /metrics then."""
    monkeypatch.setenv("KUBESONAR_KEYRING_FILE", str(_keyring_file(tmp_path / "backend.json", keys)))
    runner, port = _start_backend(tmp_path, queue, duration_s=6)
    try:
        return _settled(port, settled, within_s=5)
    finally:
        runner.join(timeout=60)


def _start_backend(tmp_path: Path, queue: Path, duration_s: float) -> tuple[threading.Thread, int]:
    """`kubesonar backend --queue file://QUEUE` for ``duration_s``, in a thread; its /metrics port."""
    from kubesonar.backend_runner import BackendSettings, run_backend

    port = free_port()
    runner = threading.Thread(target=run_backend, args=(BackendSettings(
        f"file://{queue}", str(tmp_path / "state"), listen=f"127.0.0.1:{port}", duration_s=duration_s),),
        kwargs={"install_signals": False})
    runner.start()
    return runner, port


def _settled(port: int, count: int, within_s: float) -> dict[str, float]:
    """The backend's /metrics once ``count`` messages are applied or dead-lettered, or after ``within_s``."""
    scraped: dict[str, float] = {}
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        scraped = backend_metrics(port) or scraped
        if sum(scraped.get(f'kubesonar_backend_messages_total{{outcome="{o}"}}', 0)
               for o in ("applied", "dead_lettered")) >= count:
            break
        time.sleep(0.2)
    return scraped


def test_batches_spooled_under_the_old_key_are_taken_while_the_backend_holds_both(tmp_path, monkeypatch, caplog):
    queue = _rotated_while_cut_off(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kubesonar.backend"):
        metrics = _run_backend(tmp_path, queue, [OLD, NEW], monkeypatch, settled=4)
    assert metrics.get('kubesonar_backend_messages_total{outcome="applied"}') == 4, metrics
    assert metrics.get("kubesonar_backend_decode_errors_total") == 0
    assert metrics.get("kubesonar_backend_flows_total") == 4 * 20
    assert not list(queue.glob("*.ksfb")) and not (queue / "dead").exists()
    assert "dead-lettered" not in caplog.text


def test_once_the_old_key_is_removed_they_are_refused_counted_and_logged_naming_it(tmp_path, monkeypatch, caplog):
    queue = _rotated_while_cut_off(tmp_path)
    with caplog.at_level(logging.WARNING, logger="kubesonar.backend"):
        metrics = _run_backend(tmp_path, queue, [NEW], monkeypatch, settled=4)
    assert metrics.get('kubesonar_backend_messages_total{outcome="applied"}') == 1, metrics  # the new key's
    assert metrics.get('kubesonar_backend_messages_total{outcome="dead_lettered"}') == 3
    assert metrics.get("kubesonar_backend_decode_errors_total") == 3
    dead = sorted(p.name for p in (queue / "dead").iterdir())
    assert len(dead) == 3 and all(name.startswith("node-1_before-") for name in dead)  # kept: they can be redriven
    refusals = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(refusals) == 3
    assert all(f"unknown_key: key id {OLD!r} is not in the keyring" in line for line in refusals), refusals
    assert all("removed too early?" in line and "docs/hardening.md" in line for line in refusals)  # what to read


def test_refused_ones_are_taken_when_the_old_key_is_put_back_and_they_are_redriven(tmp_path, monkeypatch):
    """The way back from a key removed too early (docs/hardening.md): dead-lettered, not lost."""
    queue = _rotated_while_cut_off(tmp_path)
    _run_backend(tmp_path, queue, [NEW], monkeypatch, settled=4)
    for path in (queue / "dead").iterdir():
        path.replace(queue / path.name)
    metrics = _run_backend(tmp_path, queue, [OLD, NEW], monkeypatch, settled=3)
    assert metrics.get('kubesonar_backend_messages_total{outcome="applied"}') == 3, metrics
    assert metrics.get("kubesonar_backend_decode_errors_total") == 0 and not list(queue.glob("*.ksfb"))


def _kubelet_update(mount: Path, keys: list[str]) -> Path:
    """A Secret volume as the kubelet keeps it: ``keyring.json`` -> ``..data/keyring.json``, and an update
    writes a new directory and swaps the ``..data`` link to it in one rename."""
    version = mount / f"..{time.monotonic_ns()}"
    version.mkdir(parents=True)
    _keyring_file(version / "keyring.json", keys)
    (mount / "..data_tmp").symlink_to(version.name)
    (mount / "..data_tmp").replace(mount / "..data")
    if not (mount / "keyring.json").is_symlink():
        (mount / "keyring.json").symlink_to("..data/keyring.json")
    return mount / "keyring.json"


def test_a_key_added_to_the_mounted_secret_is_taken_while_the_backend_runs(tmp_path, monkeypatch):
    """Rotation on-prem: the backend started with the old key only; the operator adds the new one to the
    Secret, the kubelet updates the mounted file, sensors sign with the new key: the running backend
    reads its keyring file again and takes their batches instead of dead-lettering them."""
    queue = tmp_path / "queue"
    queue.mkdir()
    monkeypatch.setenv("KUBESONAR_KEYRING_FILE", str(_kubelet_update(tmp_path / "mount", [OLD])))
    runner, port = _start_backend(tmp_path, queue, duration_s=8)
    try:
        _Sensor(_keyring_file(tmp_path / "old.json", [OLD], OLD), tmp_path / "spool-old", queue,
                "node-1/before").window()
        assert _settled(port, 1, within_s=6).get('kubesonar_backend_messages_total{outcome="applied"}') == 1  # warm, old keyring
        _kubelet_update(tmp_path / "mount", [OLD, NEW])
        _Sensor(_keyring_file(tmp_path / "new.json", [OLD, NEW], NEW), tmp_path / "spool-new", queue,
                "node-1/after").window()
        metrics = _settled(port, 2, within_s=6)
    finally:
        runner.join(timeout=60)
    assert metrics.get('kubesonar_backend_messages_total{outcome="applied"}') == 2, metrics
    assert metrics.get("kubesonar_backend_decode_errors_total") == 0
    assert metrics.get('kubesonar_backend_keyring_rereads{outcome="read"}') == 1
    assert metrics.get('kubesonar_backend_keyring_rereads{outcome="failed"}') == 0
    assert not (queue / "dead").exists()
