"""The live sensor when its sink fails with something other than a queue outage (which the spool absorbs):
a bug, a full disk. No window's records are lost, capture goes on, and the error a user sees is the sink's
own, logged once. Captures on this host's loopback (root), traffic to 127.0.0.1 only."""

from __future__ import annotations

import logging
import socket
import threading
import time

import numpy as np
import pytest

from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.sensor.live import LiveSensor, SensorSettings, Window
from kubesonar.shared.pod_events import PodEvents

WINDOW_S = 0.5
QUICK = FlowTimeouts(active_s=5.0, idle_s=5.0, ended_s=0.2, unanswered_s=0.3)  # a lone datagram ends in 0.3 s


class FlakySink:
    def __init__(self) -> None:
        self.failing = threading.Event()
        self.windows: list[Window] = []

    def __call__(self, window: Window) -> None:
        if self.failing.is_set():
            raise RuntimeError("disk on fire")
        self.windows.append(window)


def _datagrams(to: int, ports: range) -> None:
    """One datagram from each source port: each its own flow, which no one answers."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            s.sendto(b"x", ("127.0.0.1", to))


class PodWatch:
    """One pod event for each batch: each must reach the sink, failures or not."""

    def __init__(self) -> None:
        self.taken = 0

    def __call__(self) -> PodEvents:
        self.taken += 1
        return PodEvents({c.name: np.zeros(1, dtype=c.dtype) for c in PodEvents.COLUMNS})


def _sensor(sink, pods=None) -> LiveSensor:
    if not hasattr(socket, "AF_PACKET"):
        pytest.skip("AF_PACKET: Linux only")
    try:
        return LiveSensor(SensorSettings(("lo",), window_s=WINDOW_S, timeouts=QUICK, node="node-1"), sink,
                          pod_events=pods)
    except PermissionError:
        pytest.skip("capturing needs CAP_NET_RAW")


def test_a_failing_sink_loses_no_window_and_capture_goes_on(caplog):
    sink, pods = FlakySink(), PodWatch()
    sensor = _sensor(sink, pods)
    stop, raised = threading.Event(), []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        to = listener.getsockname()[1]

        def run() -> None:
            try:
                sensor.run(stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                raised.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        with caplog.at_level(logging.ERROR, logger="kubesonar.sensor.live"):
            thread.start()
            time.sleep(2 * WINDOW_S)
            sink.failing.set()
            _datagrams(to, range(41000, 41020))  # published while the sink fails: three windows of failures
            time.sleep(4 * WINDOW_S)
            sink.failing.clear()
            time.sleep(3 * WINDOW_S)
            stop.set()
            thread.join(30)
    assert not thread.is_alive() and not raised, raised
    sent = {(w.header.sequence) for w in sink.windows}
    assert sent == set(range(len(sink.windows))), "the sequence has a gap the backend would count as lost"
    ports = {int(p) for w in sink.windows for p in w.flows["src_port"]}
    assert set(range(41000, 41020)) <= ports, f"lost: {sorted(set(range(41000, 41020)) - ports)}"
    assert sensor.counters.sink_errors >= 3
    assert sum(len(w.pods) for w in sink.windows) == pods.taken, "pod events taken for a failed batch were lost"
    failures = [r for r in caplog.records if "publishing a window failed" in r.getMessage()]
    assert len(failures) == 1 and "disk on fire" in failures[0].exc_text


def test_a_sink_that_never_recovers_raises_its_own_error_once_unmasked(caplog):
    sink = FlakySink()
    sink.failing.set()
    sensor = _sensor(sink)
    with caplog.at_level(logging.ERROR, logger="kubesonar.sensor.live"), pytest.raises(RuntimeError) as raised:
        sensor.run(duration_s=3 * WINDOW_S)
    assert str(raised.value) == "disk on fire"
    assert raised.value.__context__ is None, f"masks {raised.value.__context__!r}"
    assert len([r for r in caplog.records if "publishing a window failed" in r.getMessage()]) == 1
