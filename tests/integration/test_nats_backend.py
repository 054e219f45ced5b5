"""The self-hosted backend on a real nats-server: `kubesonar replay` publishes a capture's windows, two
`kubesonar backend` processes share the durable consumer, and the store is JetStream KV.

End to end: one port_scan alert from the labelled scanner. A backend killed mid-stream: nothing lost
(every window applied, the stream drained), no alert announced twice. A poison message and a message that
keeps failing end in the dead-letter stream.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PCAPS
from nats_server import free_port, jetstream, nats  # noqa: F401 - the fixture

KUBESONAR = str(Path(sys.executable).parent / "kubesonar")
SUBJECT, BUCKET, CLUSTER = "kubesonar.batches", "kubesonar", "e2e"
SCAN = PCAPS / "portscan" / "chrissanders_synscan.pcapng"
SCANNER = "172.16.0.8"  # labels.csv


class Backend:
    """One `kubesonar backend` process with its metrics port."""

    def __init__(self, server_url: str, workdir: Path, name: str, *extra: str):
        self.port, self.name = free_port(), name
        self.out = open(workdir / f"{name}.out", "w+b")  # closed in stop()
        self.err = open(workdir / f"{name}.err", "w+b")
        self.proc = subprocess.Popen(
            [KUBESONAR, "backend", "--queue", f"{server_url}/{SUBJECT}", "--store", f"{server_url}/{BUCKET}",
             "--listen", f"127.0.0.1:{self.port}", "--duration", "300", *extra],
            stdout=self.out, stderr=self.err)
        deadline = time.monotonic() + 90
        while self._status("/readyz") != 200:
            assert self.proc.poll() is None, f"{name} exited: {self.stderr()}"
            assert time.monotonic() < deadline, f"{name} never ready: {self.stderr()}"
            time.sleep(0.2)

    def _status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status
        except OSError as exc:
            return getattr(exc, "code", 0)

    def metric(self, name: str, labels: str = "") -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith((f"{name}{labels} ", f"{name}{{{labels}}} ")):
                    return float(line.split()[-1])
        return 0.0

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return (Path(self.err.name).read_text())[-3000:]

    def printed_alerts(self) -> list[dict]:
        if not self.out.closed:
            self.out.flush()
        return [json.loads(line) for line in Path(self.out.name).read_text().splitlines() if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()
        self.err.close()
        return self.proc.returncode


@pytest.fixture
def backends(nats, tmp_path):  # noqa: F811
    started: list[Backend] = []

    def start(name: str, *extra: str) -> Backend:
        started.append(Backend(nats.url, tmp_path, name, *extra))
        return started[-1]

    yield start
    for backend in started:
        backend.stop()


def replay(url: str, *captures: Path, window: float = 1.0) -> int:
    """Publish captures as a sensor would; the number of windows (one message each: small captures)."""
    done = subprocess.run([KUBESONAR, "replay", *map(str, captures), "--queue", f"{url}/{SUBJECT}",
                           "--cluster", CLUSTER, "--window", str(window)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit(" in ", 1)[1].split()[0])


def wait_drained(url: str, timeout_s: float = 120) -> None:
    """Until every message is delivered and acknowledged (the work-queue stream empty)."""
    async def pending(js):
        info = await js.consumer_info("KUBESONAR_BATCHES", "kubesonar-backend")
        stream = await js.stream_info("KUBESONAR_BATCHES")
        return info.num_pending + info.num_ack_pending + stream.state.messages

    deadline = time.monotonic() + timeout_s
    while jetstream(url, pending):
        assert time.monotonic() < deadline, "the backends did not drain the stream"
        time.sleep(0.5)


def stored_alerts(url: str) -> list[dict]:
    done = subprocess.run([KUBESONAR, "alerts", "list", "--store", f"{url}/{BUCKET}", "--format", "json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def stream_messages(url: str, stream: str) -> list:
    async def read(js):
        info = await js.stream_info(stream)
        return [await js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)
                if info.state.messages]

    return jetstream(url, read)


def test_two_backends_raise_exactly_one_port_scan_from_the_scanner(nats, backends):  # noqa: F811
    first, second = backends("first", "--batch", "2"), backends("second", "--batch", "2")
    windows = replay(nats.url, SCAN)
    wait_drained(nats.url)
    scans = [a for a in stored_alerts(nats.url) if a["type"] == "port_scan"]
    assert len(scans) == 1 and scans[0]["source"]["ip"] == SCANNER and scans[0]["cluster"] == CLUSTER
    applied = first.metric("kubesonar_backend_messages_total", 'outcome="applied"') + \
        second.metric("kubesonar_backend_messages_total", 'outcome="applied"')
    assert applied == windows  # each window applied once, by one replica or the other
    flows = first.metric("kubesonar_backend_flows_total") + second.metric("kubesonar_backend_flows_total")
    assert flows > 1000  # the scan's ~2,000 probes reached the core
    announced = stream_messages(nats.url, "KUBESONAR_ALERTS")
    assert [m.subject for m in announced if "port_scan" in m.subject] == ["kubesonar.alerts.high.port_scan"]
    assert [m.headers["KubeSonar-Rule"] for m in announced if "port_scan" in m.subject] == ["port_scan"]


def _applied_log(url: str) -> dict:
    from kubesonar.stores import open_store

    doc = json.loads(open_store(f"{url}/{BUCKET}").get(f"state/{CLUSTER}/detectors.json").data)
    return doc["applied"]


def _held_unacknowledged(url: str) -> int:
    async def held(js):
        return (await js.consumer_info("KUBESONAR_BATCHES", "kubesonar-backend")).num_ack_pending

    return jetstream(url, held)


def test_a_backend_killed_mid_stream_loses_nothing_and_repeats_no_alert(nats, backends):  # noqa: F811
    doomed = backends("doomed", "--batch", "8", "--ack-wait", "5")  # it created the streams
    doomed.proc.send_signal(signal.SIGSTOP)  # a backlog first, so that it is caught between steps
    captures = [SCAN, *sorted((PCAPS / "benign").iterdir()), *sorted((PCAPS / "portscan").glob("evilfingers*"))]
    windows = replay(nats.url, *captures, window=0.5)
    doomed.proc.send_signal(signal.SIGCONT)
    # catch it holding fetched, unacknowledged messages after it applied some: frozen there, then killed
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline and doomed.proc.poll() is None, doomed.stderr()
        if doomed.metric("kubesonar_backend_messages_total", 'outcome="applied"') >= 1:
            doomed.proc.send_signal(signal.SIGSTOP)
            held = _held_unacknowledged(nats.url)
            if held:
                break
            doomed.proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    doomed.stop(signal.SIGKILL)  # no drain: what it held comes back to the survivor after the ack wait
    survivor = backends("survivor", "--batch", "8", "--ack-wait", "5")
    wait_drained(nats.url, timeout_s=240)
    assert survivor.metric("kubesonar_backend_redeliveries_total") >= held
    (log,) = _applied_log(nats.url).values()  # one sensor: the replay
    assert log["top"] == windows - 1 and int(log["done"], 16) == (1 << windows) - 1  # every window applied
    assert not stream_messages(nats.url, "KUBESONAR_BATCHES_DEAD")
    alerts = stored_alerts(nats.url)
    ids = [a["id"] for a in alerts]
    assert len(ids) == len(set(ids)) and any(a["type"] == "port_scan" and a["source"]["ip"] == SCANNER
                                             for a in alerts)
    announced = [_notification(json.loads(m.data)) for m in stream_messages(nats.url, "KUBESONAR_ALERTS")]
    assert {i for i, _ in announced} == set(ids)  # every alert announced, none lost with the killed replica
    printed = [_notification(a) for a in doomed.printed_alerts() + survivor.printed_alerts()]
    assert len(printed) == len(set(printed)) and set(printed) == set(announced)  # and none announced twice


def _notification(alert: dict) -> tuple[str, int]:
    """An alert's notification: its id and the outbox's sequence (an escalation is a new notification)."""
    return alert["id"], (alert.get("notify") or {}).get("seq", 0)


def test_poison_and_a_message_that_keeps_failing_end_in_the_dead_letter_stream(nats, backends):  # noqa: F811
    backend = backends("one", "--max-deliveries", "2")

    async def publish_garbage(js):
        await js.publish(SUBJECT, b"KSFB but not really", headers={"Nats-Msg-Id": "garbage/1/0"})

    jetstream(nats.url, publish_garbage)
    dead = _the_dead_letter(nats.url, backend)
    assert dead.data == b"KSFB but not really" and dead.headers["KubeSonar-Batch-Key"] == "garbage/1/0"
    assert dead.headers["KubeSonar-Reason"].startswith("does not decode")
    assert backend.metric("kubesonar_backend_decode_errors_total") == 1

    # a cluster whose state document is corrupt: its batches fail while applied, are retried, then dead
    from kubesonar.stores import open_store

    open_store(f"{nats.url}/{BUCKET}").put(f"state/{CLUSTER}/detectors.json", b"not json")
    windows = replay(nats.url, SCAN)
    deadline = time.monotonic() + 120
    while len(stream_messages(nats.url, "KUBESONAR_BATCHES_DEAD")) < 1 + windows:
        assert time.monotonic() < deadline, backend.stderr()
        time.sleep(0.5)
    failed = stream_messages(nats.url, "KUBESONAR_BATCHES_DEAD")[1:]
    assert {m.headers["KubeSonar-Deliveries"] for m in failed} == {"2"}
    assert all(m.headers["KubeSonar-Reason"].startswith("failed 2 times") for m in failed)
    assert backend.metric("kubesonar_backend_messages_total", 'outcome="retried"') == windows
    wait_drained(nats.url)


def test_sigterm_drains_and_exits_cleanly(nats, backends):  # noqa: F811
    backend = backends("one")
    assert backend._status("/healthz") == 200
    assert backend.stop(signal.SIGTERM) == 0
    assert "draining" in Path(backend.err.name).read_text()


def test_a_poison_message_near_the_max_payload_is_dead_lettered_and_the_backend_goes_on(nats, backends):  # noqa: F811
    """Its copy in the dead-letter stream, with our headers added, went over the server's max payload; the
    server answered with -ERR 'Maximum Payload Violation', nats-py closed the connection for good, and the
    backend failed every step after (while /healthz said 200): one message stopped all scoring."""
    backend = backends("one")
    big = b"KSFB" + b"x" * (1024 * 1024 - 104)  # the server takes it: it fits with its one header

    async def publish(js):
        await js.publish(SUBJECT, big, headers={"Nats-Msg-Id": "big/1/0"})

    jetstream(nats.url, publish)
    dead = _the_dead_letter(nats.url, backend)
    assert dead.headers["KubeSonar-Reason"].startswith("does not decode") and big.startswith(dead.data)
    assert dead.headers["KubeSonar-Truncated"] == f"{len(dead.data)} of {len(big)} bytes kept"
    windows = replay(nats.url, SCAN)
    wait_drained(nats.url)
    assert backend.metric("kubesonar_backend_messages_total", 'outcome="applied"') == windows
    assert backend.metric("kubesonar_backend_loop_errors_total") == 0


def test_a_server_restart_is_counted_and_loses_nothing(nats, backends):  # noqa: F811
    """nats-py reconnects by itself after a short outage, so no step fails and loop_errors stayed 0: an
    operator's dashboard showed nothing. The connection's losses are now counted, and whether it is up is
    a gauge; the windows published before and after the outage are all applied."""
    backend = backends("one")
    assert backend.metric("kubesonar_backend_connected") == 1
    windows = replay(nats.url, SCAN)
    wait_drained(nats.url)
    nats.restart()  # the JetStream store is kept: the stream and the durable consumer come back
    deadline = time.monotonic() + 60
    while backend.metric("kubesonar_backend_disconnects_total") < 1 or \
            backend.metric("kubesonar_backend_connected") != 1:
        assert time.monotonic() < deadline, backend.stderr()
        time.sleep(0.5)
    windows += replay(nats.url, SCAN)
    wait_drained(nats.url)
    assert backend.metric("kubesonar_backend_messages_total", 'outcome="applied"') == windows
    assert backend.metric("kubesonar_backend_disconnects_total") == 1


def test_a_connection_closed_for_good_ends_the_backend(nats):  # noqa: F811
    """nats-py reconnects after a network fault but not after a server's -ERR: the connection is then
    closed for good. The loop failed every step from then on, unready but alive to /healthz, so nothing
    restarted it; now it exits and its orchestrator starts it afresh."""
    from kubesonar.functions.nats import connection as shared
    from kubesonar.shared.errors import QueueUnavailable

    thread, ended = _backend_in_a_thread(nats.url)
    deadline = time.monotonic() + 30
    while not any(c.connected for c in shared._SHARED.values()) or not _has_consumer(nats.url):
        assert time.monotonic() < deadline and thread.is_alive(), ended
        time.sleep(0.2)
    (connection,) = shared._SHARED.values()
    connection.run(connection.nc.close())  # as nats-py does on a server's -ERR
    thread.join(timeout=15)
    assert not thread.is_alive(), "the backend went on with a closed connection"
    assert isinstance(ended[0], QueueUnavailable) and "closed for good" in str(ended[0])


def test_a_deleted_durable_consumer_ends_the_backend_and_the_next_start_makes_it_again(nats, backends):  # noqa: F811
    """An operator deleting the durable consumer left every fetch failing (503, no responders) for good,
    the replica unready but alive to /healthz, so nothing restarted it. It now exits, as for a connection
    closed for good, and the next start makes the consumer again and consumes."""
    from kubesonar.shared.errors import QueueUnavailable

    thread, ended = _backend_in_a_thread(nats.url)
    deadline = time.monotonic() + 30
    while not _has_consumer(nats.url):
        assert time.monotonic() < deadline and thread.is_alive(), ended
        time.sleep(0.2)

    async def delete(js):
        await js.delete_consumer("KUBESONAR_BATCHES", "kubesonar-backend")

    jetstream(nats.url, delete)
    thread.join(timeout=20)
    assert not thread.is_alive(), "the backend went on without its consumer"
    assert isinstance(ended[0], QueueUnavailable) and "no longer exists" in str(ended[0])
    windows = replay(nats.url, SCAN)  # while no replica runs: kept in the stream
    backend = backends("again")  # as Kubernetes restarts it: ready once the consumer is made
    assert _has_consumer(nats.url)
    wait_drained(nats.url)
    assert backend.metric("kubesonar_backend_messages_total", 'outcome="applied"') == windows


def _has_consumer(url: str) -> bool:
    async def look(js):
        try:
            await js.consumer_info("KUBESONAR_BATCHES", "kubesonar-backend")
            return True
        except Exception:  # noqa: BLE001 - not yet made
            return False

    return jetstream(url, look)


def _the_dead_letter(url: str, backend):
    """The one message the backend moved to the dead-letter stream, waited for up to 60 s."""
    deadline = time.monotonic() + 60
    while not stream_messages(url, "KUBESONAR_BATCHES_DEAD"):
        assert time.monotonic() < deadline, backend.stderr()
        time.sleep(0.2)
    (dead,) = stream_messages(url, "KUBESONAR_BATCHES_DEAD")
    return dead


def _backend_in_a_thread(url: str):
    """``run_backend`` for up to 30 s in a thread of this process (so the test can reach its connection):
    the thread, and a list that gets what it returned or raised."""
    import threading

    from kubesonar.backend_runner import BackendSettings, run_backend

    ended: list = []

    def run() -> None:
        try:
            run_backend(BackendSettings(f"{url}/{SUBJECT}", f"{url}/{BUCKET}", duration_s=30,
                                        listen=f"127.0.0.1:{free_port()}"), install_signals=False)
            ended.append("returned")
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ended
