"""The lab node for tests: kubesonar.lab's, skipped (or, under CI, failed) where it cannot be built."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

from lab.netns import LabUnavailable, Node, require_netns  # noqa: F401
from lab.netns import namespace_node as _namespace_node
from lab.netns import routed_node as _routed_node


@contextmanager
def namespace_node(pods: list[str]):
    try:
        require_netns()
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI runs as root")
        pytest.skip(str(exc))
    with _namespace_node(pods) as node:
        yield node


@contextmanager
def routed_node(pods: list[str], outside: str = ""):
    try:
        require_netns()
    except LabUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI runs as root")
        pytest.skip(str(exc))
    with _routed_node(pods, outside) as node:
        yield node
