"""`kubesonar backend` on the embedded default: a file:// queue directory and a directory store, consumed
by the same LocalBackend that `kubesonar watch` runs; a file that does not decode moves to dead/."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PCAPS
from helpers import assert_idle_connection_closed, backend_metrics
from nats_server import free_port

KUBESONAR = str(Path(sys.executable).parent / "kubesonar")


def _backend_until_drained(queue: Path, state: Path, *options: str) -> str:
    """Run ``kubesonar backend`` on the directory queue until no batch is left in it (120 s at most), stop
    it with SIGTERM; what it printed. It must have exited cleanly."""
    backend = subprocess.Popen([KUBESONAR, "backend", "--queue", f"file://{queue}", "--store", str(state), *options,
                                "--listen", f"127.0.0.1:{free_port()}", "--duration", "120"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while list(queue.glob("*.ksfb")):
            assert backend.poll() is None and time.monotonic() < deadline, backend.stderr.read()
            time.sleep(0.2)
    finally:
        backend.send_signal(signal.SIGTERM)
        out, err = backend.communicate(timeout=60)
    assert backend.returncode == 0, err
    return out


def test_the_directory_backend_consumes_the_queue_into_the_store(tmp_path):
    queue, state = tmp_path / "queue", tmp_path / "state"
    done = subprocess.run([KUBESONAR, "replay", str(PCAPS / "portscan" / "chrissanders_synscan.pcapng"),
                           "--queue", f"file://{queue}", "--cluster", "node1"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (queue / "zz-garbage-00000000000000000000-00000.ksfb").write_bytes(b"not a batch")
    out = _backend_until_drained(queue, state)
    assert [p.name for p in (queue / "dead").iterdir()] == ["zz-garbage-00000000000000000000-00000.ksfb"]
    printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    listed = subprocess.run([KUBESONAR, "alerts", "list", "--store", str(state), "--format", "json"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    stored = [json.loads(line) for line in listed.splitlines()]
    scans = [a for a in stored if a["type"] == "port_scan"]
    assert len(scans) == 1 and scans[0]["source"]["ip"] == "172.16.0.8"
    assert {a["id"] for a in printed} == {a["id"] for a in stored}


def _backend_in_process(queue: Path, state: Path, seconds: float, *, max_deliveries: int = 5,
                        check_interval_s: float = 60.0, sensor_silent_after_s: float = 60.0) -> list:
    """`kubesonar backend --queue file://QUEUE --store STATE` run here for ``seconds``; its LocalBackends."""
    from kubesonar.backend_runner import BackendSettings, run_backend
    from kubesonar.functions.local import backend as local

    made = []

    class Watched(local.LocalBackend):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    original, local.LocalBackend = local.LocalBackend, Watched
    try:
        run_backend(BackendSettings(f"file://{queue}", str(state), max_deliveries=max_deliveries,
                                    check_interval_s=check_interval_s, sensor_silent_after_s=sensor_silent_after_s,
                                    listen=f"127.0.0.1:{free_port()}", duration_s=seconds), install_signals=False)
    finally:
        local.LocalBackend = original
    return made


def _replayed_queue(queue: Path) -> list[str]:
    from kubesonar.compose import replay
    from kubesonar.sensor.queues.directory import open_directory_queue

    replay([PCAPS / "portscan" / "chrissanders_synscan.pcapng"], open_directory_queue(f"file://{queue}"),
           cluster="node1")
    return sorted(p.name for p in queue.glob("*.ksfb"))


def test_a_batch_the_store_fails_on_is_kept_then_applied_not_deleted(tmp_path):
    """The runner took a message the store failed on (LocalBackend counts it and leaves it unapplied) for
    an applied one and deleted its file: a corrupt state document, a full or read-only disk lost every
    batch that met it. It is kept and tried again, as a nak on NATS."""
    from kubesonar.functions.local.store import LocalObjectStore

    queue, state = tmp_path / "queue", tmp_path / "state"
    sent = _replayed_queue(queue)
    LocalObjectStore(state).put("state/node1/detectors.json", b"not json")
    _backend_in_process(queue, state, 2.0)
    assert sorted(p.name for p in queue.glob("*.ksfb")) == sent  # none applied, none lost

    (state / "state" / "node1" / "detectors.json").unlink()  # the store repaired
    _backend_in_process(queue, state, 3.0)
    assert not list(queue.glob("*.ksfb")) and not (queue / "dead").exists()
    listed = subprocess.run([KUBESONAR, "alerts", "list", "--store", str(state), "--format", "json"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    assert [a["source"]["ip"] for a in map(json.loads, listed.splitlines()) if a["type"] == "port_scan"] == \
        ["172.16.0.8"]


def test_a_batch_that_keeps_failing_goes_to_dead_after_max_deliveries(tmp_path, caplog):
    from kubesonar.functions.local.store import LocalObjectStore

    queue, state = tmp_path / "queue", tmp_path / "state"
    sent = _replayed_queue(queue)
    LocalObjectStore(state).put("state/node1/detectors.json", b"not json")
    (queue / "zz-garbage-00000000000000000000-00000.ksfb").write_bytes(b"not a batch")
    with caplog.at_level("WARNING", logger="kubesonar.backend"):
        made = _backend_in_process(queue, state, 4.0, max_deliveries=2)  # tried at once, then after 1 s
    assert not list(queue.glob("*.ksfb"))
    assert sorted(p.name for p in (queue / "dead").iterdir()) == [*sent, "zz-garbage-00000000000000000000-00000.ksfb"]
    assert "not a JSON document" in caplog.text and "zz-garbage-00000000000000000000-00000.ksfb: message of 11 bytes" in caplog.text  # each says why
    assert made[0].errors == []  # logged, then let go: a process that runs for months keeps no list of them


def test_readiness_drops_at_sigterm_not_when_the_step_in_hand_ends(tmp_path):
    """/readyz said 200 until the step in hand ended, however long it took: a Service went on sending
    work to a replica told to stop. Here a step is held while SIGTERM arrives."""
    import os
    import threading
    import urllib.request

    from kubesonar.backend_runner import BackendSettings, run_backend
    from kubesonar.functions.local import backend as local

    queue, state = tmp_path / "queue", tmp_path / "state"
    _replayed_queue(queue)
    port, in_step, release, seen = free_port(), threading.Event(), threading.Event(), {}

    def readyz() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status
        except OSError as exc:
            return getattr(exc, "code", 0)

    class Held(local.LocalBackend):
        def receive(self, key, message):
            in_step.set()
            while not release.is_set():  # a long step (sleep lets the signal handler run meanwhile)
                time.sleep(0.05)
            return super().receive(key, message)

    def signal_mid_step() -> None:
        in_step.wait(60)
        seen["before"] = readyz()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while readyz() == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["during"] = readyz()
        release.set()

    helper = threading.Thread(target=signal_mid_step, daemon=True)
    original, local.LocalBackend = local.LocalBackend, Held
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        helper.start()
        run_backend(BackendSettings(f"file://{queue}", str(state), listen=f"127.0.0.1:{port}", duration_s=60))
    finally:
        release.set()
        local.LocalBackend = original
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    helper.join(10)
    assert seen == {"before": 200, "during": 503}


@pytest.mark.parametrize("stage", ["decode_batch", "process_batch"])
def test_an_unexpected_fault_while_scoring_is_retried_then_dead_lettered_not_a_crash(tmp_path, caplog,
                                                                                    monkeypatch, stage):
    """LocalBackend caught only KubeSonarError: anything else raised while scoring one file (a fault of
    ours) ended the process, and the restarted one met the same file first: a crash loop. It is now a
    failed message, as on NATS: logged with why, retried, dead after --max-deliveries; the rest applied."""
    from kubesonar.functions.local import backend as local

    queue, state = tmp_path / "queue", tmp_path / "state"
    sent = _replayed_queue(queue)
    decode, scored = local.decode_batch, local.process_batch

    def faulty_decode(message):
        batch = decode(message)
        if batch.header.sequence == 0:
            raise RuntimeError("a fault of ours")
        return batch

    def faulty_scoring(batch, deps, digest=0, delivered=False):
        if batch.header.sequence == 0:
            raise RuntimeError("a fault of ours")
        return scored(batch, deps, digest, delivered)

    monkeypatch.setattr(local, stage, faulty_decode if stage == "decode_batch" else faulty_scoring)
    with caplog.at_level("WARNING", logger="kubesonar.backend"):
        _backend_in_process(queue, state, 4.0, max_deliveries=2)  # tried at once, then after 1 s
    assert not list(queue.glob("*.ksfb")) and [p.name for p in (queue / "dead").iterdir()] == sent[:1]
    assert "retrying: " in caplog.text and "RuntimeError: a fault of ours" in caplog.text
    assert "dead-lettered after 2 attempts" in caplog.text


def test_a_queue_file_that_cannot_be_read_is_retried_then_dead_lettered_not_a_crash(tmp_path, caplog):
    """Reading a queue file that fails (here a directory named like one: root reads any file) ended the
    process with the error, and the restarted one met it first again. It is now a message not applied:
    retried, dead after --max-deliveries, and the others applied."""
    queue, state = tmp_path / "queue", tmp_path / "state"
    sent = _replayed_queue(queue)
    (queue / "0-unreadable.ksfb").mkdir()  # listed first
    with caplog.at_level("WARNING", logger="kubesonar.backend"):
        _backend_in_process(queue, state, 4.0, max_deliveries=2)  # tried at once, then after 1 s
    assert not list(queue.glob("*.ksfb")) and [p.name for p in (queue / "dead").iterdir()] == ["0-unreadable.ksfb"]
    assert "0-unreadable.ksfb cannot be read: Is a directory" in caplog.text
    assert "dead-lettered after 2 attempts" in caplog.text and len(sent) > 1


def test_a_listen_address_that_cannot_be_used_is_one_line(tmp_path):
    """A --listen that is no HOST:PORT, or a port already taken, was a traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for listen, message in (("nonsense", "--listen 'nonsense' is not HOST:PORT"),
                                (f"127.0.0.1:{port}", f"cannot listen on 127.0.0.1:{port}")):
            done = subprocess.run([KUBESONAR, "backend", "--queue", f"file://{tmp_path / 'queue'}", "--store",
                                   str(tmp_path / "state"), "--listen", listen, "--duration", "1"],
                                  capture_output=True, text=True, timeout=120, check=False)
            assert done.returncode == 1 and done.stderr.startswith("kubesonar: error: ") and message in done.stderr
            assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_one_clusters_unreadable_health_document_stops_neither_the_backend_nor_the_others_check(tmp_path, caplog):
    """The scheduled check once raised out of the directory loop at the first cluster whose health document
    could not be read: the process ended at every check, and clusters after it were never checked."""
    from kubesonar.functions.local.store import LocalObjectStore

    queue, state = tmp_path / "queue", tmp_path / "state"
    _replayed_queue(queue)
    store = LocalObjectStore(state)
    store.put("state/aaa-broken/sensor_health.json", b"not json")
    heard = {"sensor_id": "n1/1", "last_seen_ns": time.time_ns() - 10**12, "window_end_ns": 0, "kernel_drops": 0,
             "kernel_packets": 1, "silent": False, "dropping": False}  # last heard 1,000 s ago
    store.put("state/node1/sensor_health.json", json.dumps({"state": {"nodes": {"n1": heard}}}).encode())
    with caplog.at_level("WARNING", logger="kubesonar.backend"):
        _backend_in_process(queue, state, 4.0, check_interval_s=1.0, sensor_silent_after_s=1.0)
    assert not list(queue.glob("*.ksfb"))  # it went on scoring
    assert "state/aaa-broken/sensor_health.json is not a JSON document" in caplog.text  # and said why
    listed = subprocess.run([KUBESONAR, "alerts", "list", "--store", str(state), "--format", "json",
                             "--type", "sensor_silent"], capture_output=True, text=True, timeout=120, check=True)
    assert [a["cluster"] for a in map(json.loads, listed.stdout.splitlines())] == ["node1"]


def test_a_metrics_connection_that_sends_nothing_is_closed(monkeypatch):
    """/metrics, /healthz and /readyz listen on 0.0.0.0 in the cluster, and their handler had no timeout:
    each connection that sent nothing held a thread for good."""

    from kubesonar import backend_metrics

    monkeypatch.setattr(backend_metrics, "_IDLE_S", 1.0, raising=False)
    port = free_port()
    server = backend_metrics.serve(f"127.0.0.1:{port}", backend_metrics.BackendMetrics(),
                                   backend_metrics.Health(liveness_s=300))
    try:
        assert_idle_connection_closed(port, b"GET /metrics HTTP/1.0\r\n")  # and nothing more
    finally:
        server.shutdown()
        server.server_close()


def test_a_window_too_old_to_take_is_counted_stale_in_the_metrics(tmp_path):
    """A delivered batch whose window ended a day ago is refused as a replay (shared/applied.py); the
    directory backend counts it in kubesonar_backend_stale_total, as the NATS one does (docs/onprem.md)."""
    import threading

    from kubesonar.backend_runner import BackendSettings, run_backend
    from kubesonar.sensor.offline import flows_from_captures
    from kubesonar.sensor.queues import window_messages
    from kubesonar.sensor.queues.directory import open_directory_queue
    from kubesonar.shared.batch import BatchHeader
    from kubesonar.shared.flow import FlowRecords

    queue, state, port = tmp_path / "queue", tmp_path / "state", free_port()
    day_ago = time.time_ns() - 25 * 3600 * 10**9
    publisher = open_directory_queue(f"file://{queue}")
    flows = FlowRecords.concat(list(flows_from_captures([PCAPS / "portscan" / "chrissanders_synscan.pcapng"])))
    publisher.send(window_messages(BatchHeader("c", "node-1", "node-1/old", 0, day_ago - 10**10, day_ago),
                                   flows.take(slice(0, 10)), publisher.limit))
    runner = threading.Thread(target=run_backend, args=(BackendSettings(
        f"file://{queue}", str(state), listen=f"127.0.0.1:{port}", duration_s=10),), kwargs={"install_signals": False})
    runner.start()
    try:
        deadline, scraped = time.monotonic() + 9, {}
        while time.monotonic() < deadline:
            scraped = backend_metrics(port) or scraped
            if scraped.get('kubesonar_backend_messages_total{outcome="applied"}'):
                break
            time.sleep(0.2)
        assert scraped.get('kubesonar_backend_messages_total{outcome="applied"}') == 1, scraped
        assert scraped.get("kubesonar_backend_stale_total") == 1
    finally:
        runner.join(timeout=60)


def test_internal_network_none_is_taken_as_analyze_takes_it(tmp_path):
    """docs/onprem.md gives the backend's --internal-network "as analyze": 'none' puts every address outside,
    so a beacon between two private addresses is judged (it was refused as "not a CIDR network"), and a
    wrong network is a usage error naming the flag, not an environment variable the backend never reads."""
    queue, state = tmp_path / "queue", tmp_path / "state"
    done = subprocess.run([KUBESONAR, "replay", str(PCAPS / "c2_beacon" / "chrissanders_ratinfected.pcapng"),
                           "--queue", f"file://{queue}"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    _backend_until_drained(queue, state, "--internal-network", "none")
    listed = subprocess.run([KUBESONAR, "alerts", "list", "--store", str(state), "--format", "json"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    assert [(a["type"], a["source"]["ip"]) for a in map(json.loads, listed.splitlines())] == \
        [("beaconing", "172.16.0.114")]

    wrong = subprocess.run([KUBESONAR, "backend", "--queue", f"file://{queue}", "--store", str(state),
                            "--internal-network", "10.0.0.0/33", "--duration", "1"],
                           capture_output=True, text=True, timeout=120, check=False)
    assert wrong.returncode == 2 and "--internal-network" in wrong.stderr and "10.0.0.0/33" in wrong.stderr, \
        wrong.stderr


def test_the_alerts_metric_names_the_rule_beside_the_type(tmp_path):
    """A reverse shell is counted as an unusual_destination raised by reverse_shell: a dashboard or an
    alerting rule on reverse shells still finds them (docs/onprem.md)."""
    import threading

    from alert_fixtures import shell_batch

    from kubesonar.backend_runner import BackendSettings, run_backend
    from kubesonar.sensor.queues import window_messages
    from kubesonar.sensor.queues.directory import open_directory_queue

    queue, state, port = tmp_path / "queue", tmp_path / "state", free_port()
    shell = shell_batch(0, t0_ns=time.time_ns() - 600 * 10**9)
    publisher = open_directory_queue(f"file://{queue}")
    publisher.send(window_messages(shell.header, shell.flows, publisher.limit))
    runner = threading.Thread(target=run_backend, args=(BackendSettings(
        f"file://{queue}", str(state), listen=f"127.0.0.1:{port}", duration_s=10),), kwargs={"install_signals": False})
    runner.start()
    wanted = 'kubesonar_backend_alerts_total{rule="reverse_shell",severity="critical",type="unusual_destination"}'
    try:
        deadline, scraped = time.monotonic() + 9, {}
        while time.monotonic() < deadline and not scraped.get(wanted):
            scraped = backend_metrics(port) or scraped
            time.sleep(0.2)
        assert scraped.get(wanted) == 1, scraped
    finally:
        runner.join(timeout=60)
