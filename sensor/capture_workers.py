"""``--workers N``: N capture processes, each with its own rings, flow table and DNS parser.

Each worker's socket on an interface joins one PACKET_FANOUT group (PACKET_FANOUT_HASH: the kernel's
symmetric flow hash, so both directions of a flow reach one worker; fragments reassembled first), so
every flow lives in one worker's table and the sensor's batch is the concatenation of theirs. The
sensor process keeps the window clock and publishes; it asks the workers for what ended at each
window's end, and a worker sends on its own when it holds its share of a batch.

What a worker's table holds apart: an ICMP error is hashed by its own addresses, not those of the
flow it quotes, so its count can land in another worker's record of that flow; and while a group
is joined (the workers start, a new interface appears) the hash's modulus changes, so a flow seen
in that moment can be split. Both leave records for one flow, never a packet counted twice.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

from kubesonar.sensor.bpf import capture_program
from kubesonar.sensor.capture import CAPTURE_COUNTERS, Capture
from kubesonar.shared.errors import CaptureError

if TYPE_CHECKING:
    from kubesonar.sensor.live import SensorSettings
    from kubesonar.shared.dns import DnsMessages
    from kubesonar.shared.flow import FlowRecords

_STATE, _PUSH = "state", "push"
_RING_LOG = "kubesonar.sensor.af_packet"
# A worker answers a command in milliseconds (an expiry of its whole table in well under a second); one
# that has not answered in a minute is stuck, and the sensor loop waiting on it forever stopped
# publishing while the pod looked alive. Its first answer may wait for the kernels to compile.
ANSWER_TIMEOUT_S, START_TIMEOUT_S = 60.0, 600.0


class CaptureWorkers:
    """The capture processes, driven as one :class:`Capture` is by the sensor loop."""

    def __init__(self, settings: SensorSettings, workers: int):
        capture_program(settings.capture_filter, False, settings.ring.snaplen)  # a bad filter fails here, once
        self.settings = settings
        self.workers = workers
        self.pending: list[FlowRecords] = []
        self.pending_dns: list[DnsMessages] = []
        self.pending_count = 0
        self.errors: list[str] = []
        self._counts = [dict.fromkeys(CAPTURE_COUNTERS, 0) for _ in range(workers)]
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.Process] = []
        self.answer_timeout_s = ANSWER_TIMEOUT_S

    def _start(self) -> None:
        # spawn, not fork: the sensor may already run threads (the pod watch), which a fork would copy mid-step
        context = multiprocessing.get_context("spawn")
        log_rings = bool(logging.getLogger(_RING_LOG).handlers)  # the CLI logs which ring each interface got
        for i in range(self.workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_work, args=(self.settings, os.getpid(), i, log_rings, theirs),
                                      name=f"kubesonar-capture-{i}", daemon=True)
            process.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(process)

    @property
    def interfaces(self) -> int:
        return max(c["interfaces"] for c in self._counts)

    def refresh_interfaces(self) -> None:
        if not self._procs:
            self._start()
            self._ask("refresh", timeout_s=max(START_TIMEOUT_S, self.answer_timeout_s))
            return
        self._ask("refresh")

    def read_ready(self, timeout_s: float) -> None:
        """Take what the workers sent, waiting at most ``timeout_s`` for something."""
        running = [c for c in self._conns if not isinstance(c, _Ended)]
        if not running:
            time.sleep(timeout_s)
            return
        for conn in wait(running, timeout_s):
            worker = self._conns.index(conn)
            try:
                while conn.poll():
                    self._receive(worker, conn.recv())
            except (EOFError, OSError):  # the worker died: the others go on; its counters stay as last sent
                self._fail(f"capture worker {worker} ended")
                self._conns[worker] = _Ended()

    def take(self) -> tuple[list[FlowRecords], list[DnsMessages]]:
        taken = self.pending, self.pending_dns
        self.pending, self.pending_dns, self.pending_count = [], [], 0
        return taken

    def expire(self, now_ns: int, most: int | None = None) -> bool:
        """Each worker ends what is due and sends it in parts of its share (``most`` is for one capture).
        The parts gather here until every worker has answered, so with workers a mass expiry is bounded
        by the node's ``--max-flows`` (the workers' tables together), not by one batch."""
        self._ask("expire", now_ns)
        return False

    def finish(self, most: int | None = None) -> bool:
        self._ask("finish")
        for process in self._procs:
            process.join(timeout=10)
            if process.is_alive():  # pragma: no cover - a stuck worker must not keep the sensor from exiting
                process.kill()
        return False

    def counters(self) -> dict[str, int]:
        total = {name: sum(c[name] for c in self._counts) for name in CAPTURE_COUNTERS}
        total["interfaces"] = self.interfaces  # every worker captures every interface
        return total

    def _ask(self, command: str, argument: int = 0, timeout_s: float | None = None) -> None:
        """Send a command to every worker and wait for each one's state after it; a worker that does
        not answer within the timeout is killed and raises CaptureError (the sensor exits, and
        Kubernetes restarts it)."""
        timeout_s = self.answer_timeout_s if timeout_s is None else timeout_s
        for conn in self._conns:
            try:
                conn.send((command, argument))
            except OSError:
                pass  # a worker that ended: recv says so below
        for i, conn in enumerate(self._conns):
            while not isinstance(conn, _Ended):
                try:
                    if not conn.poll(timeout_s):
                        self._stuck(i, command, timeout_s)
                    message = conn.recv()
                except (EOFError, OSError):
                    self._fail(f"capture worker {i} ended")
                    self._conns[i] = _Ended()
                    break
                self._receive(i, message)
                if message[0] == _STATE:
                    break

    def _stuck(self, worker: int, command: str, timeout_s: float) -> None:
        self._procs[worker].kill()
        self._conns[worker] = _Ended()
        message = f"capture worker {worker} did not answer {command!r} within {timeout_s:g} s: stopped it"
        self._fail(message)
        raise CaptureError(message)

    def _receive(self, worker: int, message: tuple) -> None:
        kind, flows, dns = message[:3]
        self.pending += flows
        self.pending_dns += dns
        self.pending_count += sum(len(f) for f in flows)
        if kind == _STATE:
            self._counts[worker] = message[3]
            for error in message[4]:
                self._fail(error)

    def _fail(self, message: str) -> None:
        if len(self.errors) < 100:
            self.errors.append(message)


class _Ended:
    """Stands in for the pipe of a worker that died: left out of every wait, never sent to."""

    def send(self, _message: tuple) -> None:
        raise OSError("capture worker ended")


def worker_settings(settings: SensorSettings) -> SensorSettings:
    """One worker's settings: the sensor's, with its share of ``--max-flows``. The fanout hash gives each
    worker about 1/N of the flows, so N tables of max_flows / N bound the node's memory as one table of
    max_flows does (N full tables would hold N times the cap)."""
    return dataclasses.replace(settings, max_flows=max(1, settings.max_flows // settings.workers))


def _work(settings: SensorSettings, sensor_pid: int, index: int, log_rings: bool, conn: Connection) -> None:
    """A worker: capture until the sensor says finish (or goes away); signals are the sensor's to take."""
    from kubesonar.sensor.live import _steady_heap
    from kubesonar.sensor.observe import warm_up

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if log_rings:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"kubesonar: capture worker {index}: %(message)s"))
        logging.getLogger(_RING_LOG).addHandler(handler)
        logging.getLogger(_RING_LOG).setLevel(logging.INFO)
    _steady_heap()
    warm_up()
    capture = Capture(worker_settings(settings), fanout_of=sensor_pid)
    share = max(1, settings.max_pending_flows // settings.workers)  # a worker sends on its own past its share
    try:
        while True:
            if not capture.interfaces:
                conn.poll(0.2)
            if conn.poll():
                try:
                    command, argument = conn.recv()
                except EOFError:
                    command, argument = "finish", 0
                # a mass end goes in parts of the worker's share, never all in memory at once
                if command == "expire":
                    while capture.expire(argument, share):
                        conn.send((_PUSH, *capture.take()))
                elif command == "refresh":
                    capture.refresh_interfaces()
                elif command == "finish":
                    while capture.finish(share):
                        conn.send((_PUSH, *capture.take()))
                errors, capture.errors = capture.errors, []
                conn.send((_STATE, *capture.take(), capture.counters(), errors))
                if command == "finish":
                    return
                continue
            if capture.interfaces:
                capture.read_ready(0.05)
            if capture.pending_count >= share:
                conn.send((_PUSH, *capture.take()))
    except (BrokenPipeError, ConnectionResetError):  # the sensor is gone
        capture.finish()
