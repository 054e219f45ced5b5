"""A hung sensor is told from a live one: the liveness file stops moving when the loop stalls on its sink,
and a capture worker that stops answering becomes a clear error instead of a wait forever. Captures on this
host's loopback (root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from kubesonar.sensor.live import LiveSensor, SensorSettings, Window
from kubesonar.sensor.liveness import Heartbeat
from kubesonar.shared.errors import CaptureError

WINDOW_S = 0.5


def _probe(path) -> int:
    """The DaemonSet's livenessProbe command, run as the kubelet would."""
    return subprocess.run([sys.executable, "-m", "kubesonar.sensor.liveness", str(path)],
                          capture_output=True, timeout=30).returncode


def test_a_sensor_stalled_on_its_sink_reports_unhealthy(tmp_path):
    released, stalled = threading.Event(), threading.Event()

    def sink(window: Window) -> None:
        if window.header.sequence >= 4:  # a publish that never returns (until the test ends)
            stalled.set()
            released.wait(60)

    alive = tmp_path / "alive"
    try:
        sensor = LiveSensor(SensorSettings(("lo",), window_s=WINDOW_S, node="node-1"), sink,
                            heartbeat=Heartbeat(alive, stale_after_s=2.0).beat)
    except PermissionError:
        pytest.skip("capturing needs CAP_NET_RAW")
    stop = threading.Event()
    thread = threading.Thread(target=sensor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(3 * WINDOW_S)
        assert _probe(alive) == 0, "a sensor publishing every window is alive"
        assert stalled.wait(10)
        time.sleep(3.5)
        assert _probe(alive) == 1, "a sensor stuck in a publish is not"
    finally:
        stop.set()
        released.set()
        thread.join(30)


def test_a_capture_worker_that_stops_answering_is_a_clear_error():
    from kubesonar.sensor.capture_workers import CaptureWorkers

    workers = CaptureWorkers(SensorSettings(("lo",), window_s=WINDOW_S, node="node-1", workers=2), 2)
    workers.answer_timeout_s = 2.0
    workers.refresh_interfaces()  # the workers start and open their rings
    stuck = workers._procs[1]
    os.kill(stuck.pid, signal.SIGSTOP)
    raised: list[BaseException] = []

    def expire() -> None:
        try:
            workers.expire(time.time_ns())
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    try:
        thread = threading.Thread(target=expire, daemon=True)  # left waiting on the worker forever before the fix
        thread.start()
        thread.join(15)
        assert not thread.is_alive(), "the sensor still waits on a stuck capture worker"
        assert len(raised) == 1 and isinstance(raised[0], CaptureError), raised
        assert "capture worker 1 did not answer 'expire' within 2 s" in str(raised[0])
        stuck.join(5)
        assert not stuck.is_alive(), "the stuck worker was left running"
    finally:
        if stuck.is_alive():
            os.kill(stuck.pid, signal.SIGCONT)
        workers.finish()
