"""Azurite (npm ``azurite``, Microsoft's Blob Storage emulator) on a free port of 127.0.0.1, started by
the test run. Code under test reaches it through a connection string, as production reaches Blob
Storage through an account URL: the same SDK calls, no patching."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from conftest import require_tool

# Azurite's well-known development account (published in its README; not a secret)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def azurite_blob() -> Iterator[str]:
    """Azurite's blob service until the block ends; yields its connection string."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kubesonar-azurite-") as workspace:
        proc = subprocess.Popen([require_tool("azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                                 "--location", workspace, "--silent", "--skipApiVersionCheck",
                                 "--disableTelemetry"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("azurite-blob did not start") from None
                    time.sleep(0.1)
            yield (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                   f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite():
    with azurite_blob() as connection_string:
        yield connection_string


def new_container(connection_string: str, name: str):
    from azure.storage.blob import BlobServiceClient

    from kubesonar.functions.azure.store import client_options

    container = BlobServiceClient.from_connection_string(connection_string, **client_options()
                                                         ).get_container_client(name)
    container.create_container()
    return container
