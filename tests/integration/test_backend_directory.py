"""`kubesonar backend` on the embedded default: a file:// queue directory and a directory store, consumed
by the same LocalBackend that `kubesonar watch` runs; a file that does not decode moves to dead/."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import PCAPS
from nats_server import free_port

KUBESONAR = str(Path(sys.executable).parent / "kubesonar")


def test_the_directory_backend_consumes_the_queue_into_the_store(tmp_path):
    queue, state = tmp_path / "queue", tmp_path / "state"
    done = subprocess.run([KUBESONAR, "replay", str(PCAPS / "portscan" / "chrissanders_synscan.pcapng"),
                           "--queue", f"file://{queue}", "--cluster", "node1"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (queue / "zz-garbage-00000000000000000000-00000.ksfb").write_bytes(b"not a batch")
    backend = subprocess.Popen([KUBESONAR, "backend", "--queue", f"file://{queue}", "--store", str(state),
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
    assert [p.name for p in (queue / "dead").iterdir()] == ["zz-garbage-00000000000000000000-00000.ksfb"]
    printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    listed = subprocess.run([KUBESONAR, "alerts", "list", "--store", str(state), "--format", "json"],
                            capture_output=True, text=True, timeout=120, check=True).stdout
    stored = [json.loads(line) for line in listed.splitlines()]
    scans = [a for a in stored if a["type"] == "port_scan"]
    assert len(scans) == 1 and scans[0]["source"]["ip"] == "172.16.0.8"
    assert {a["id"] for a in printed} == {a["id"] for a in stored}
