"""Small helpers shared by tests: run the engine on a file, read records as dicts, find reference cycles."""

from __future__ import annotations

import gc
import socket
import time
import types
import urllib.request
from collections.abc import Callable

from kubesonar.sensor.flow_table import FlowTimeouts
from kubesonar.sensor.offline import CaptureStats, flows_from_captures
from kubesonar.shared.flow import FlowRecords

NO_TIMEOUTS = FlowTimeouts(active_s=1e9, idle_s=1e9)
# A batch window that ended as the test run started, as a live sensor stamps what it sends: the core
# refuses a delivered message whose window ended a day ago as a replay (shared/applied.py).
_STARTED_NS = time.time_ns()
LIVE_WINDOW = (_STARTED_NS - 10_000_000_000, _STARTED_NS)


def flows_of(path, timeouts: FlowTimeouts = NO_TIMEOUTS, stats: CaptureStats | None = None) -> list[dict]:
    records = FlowRecords.concat(list(flows_from_captures([path], timeouts=timeouts, stats=stats)))
    return sorted(records.iter_dicts(), key=lambda r: (r["first_ts"], r["src_port"]))


def scores_of(detector, flows, pods=None, dns=None) -> list:
    """What ``detector.observe`` does, returning the scores instead of the findings: score the batch,
    then learn it with the flagged subjects kept out of the baseline."""
    from kubesonar.shared.detectors import batch_of

    batch = batch_of(flows, pods, dns)
    scores = detector.score(batch)
    detector.learn(batch, {s.subject for s in scores if s.flagged})
    return scores


def cyclic_garbage_after(work: Callable[[], object]) -> list[str]:
    """What only a reference cycle still holds once ``work()`` is done, found with the cyclic collector
    off while it runs (so nothing is collected early): type names, frames with their function's."""
    gc.collect()
    gc.disable()
    try:
        work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return sorted(f"frame {o.f_code.co_name}" if isinstance(o, types.FrameType) else type(o).__name__
                      for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def assert_idle_connection_closed(port: int, partial_request: bytes) -> None:
    """A server on 127.0.0.1:``port`` closes a connection that sends ``partial_request`` and then nothing
    within 5 s (its idle bound set lower by the test), rather than holding a thread for it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(partial_request)
        started = time.monotonic()
        assert s.recv(1024) == b"" and time.monotonic() - started < 5  # closed by the server


def backend_metrics(port: int) -> dict[str, float]:
    """The samples ``kubesonar backend`` serves on 127.0.0.1:``port``/metrics, or {} while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return {line.split()[0]: float(line.split()[1]) for line in r.read().decode().splitlines()
                    if line and not line.startswith("#")}
    except OSError:
        return {}
