"""The lab node for tests: kubesonar.lab's, skipped (or, under CI, failed) where it cannot be built."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

from lab.netns import LabUnavailable, Node, require_netns  # noqa: F401
from lab.netns import namespace_node as _namespace_node
from lab.netns import routed_node as _routed_node

# a pod's ordinary traffic for ``seconds``: HTTP to the web pod's port 8080 and UDP datagrams to 5353
POD_TRAFFIC = """
import socket, sys, time, urllib.request
web, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while time.time() < end:
    urllib.request.urlopen(f"http://{web}:8080/", timeout=2).read()
    udp.sendto(b"x" * 64, (web, 5353))
    time.sleep(0.05)
"""


def require_lab() -> None:
    """Skip where namespaces cannot be made; under CI, which runs as root, fail instead."""
    try:
        require_netns()
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI runs as root")
        pytest.skip(str(exc))


@contextmanager
def namespace_node(pods: list[str]):
    require_lab()
    with _namespace_node(pods) as node:
        yield node


@contextmanager
def routed_node(pods: list[str], outside: str = ""):
    require_lab()
    with _routed_node(pods, outside) as node:
        yield node
