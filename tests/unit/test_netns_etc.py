"""What ``Node.resolve_with`` writes under /etc/netns and what the node's clean-up removes, on files only: no
namespace is made (``NETNS_ETC`` points into the test's directory, never at the machine's /etc)."""

from __future__ import annotations

import pytest

from lab import netns


@pytest.fixture
def etc(tmp_path, monkeypatch):
    monkeypatch.setattr(netns, "NETNS_ETC", str(tmp_path / "netns"))
    return tmp_path / "netns"


def _resolved_then_removed(*pods: str) -> netns.Node:
    node = netns.Node("abcde", "", prefix="kt")
    for pod in pods:
        node.resolve_with(pod, "10.77.0.9")
    for pod in pods:
        netns._remove_etc(node, node.ns(pod))
    return node


def test_a_node_removes_the_directory_it_made_and_what_it_wrote(etc):
    node = netns.Node("abcde", "", prefix="kt")
    node.resolve_with("implant", "10.77.0.9")
    assert (etc / node.ns("implant") / "resolv.conf").read_text().startswith("nameserver 10.77.0.9\n")
    netns._remove_etc(node, node.ns("implant"))
    assert not etc.exists()


def test_a_directory_that_was_there_before_stays_even_empty(etc):
    """/etc/netns made by the machine's own configuration (ip netns exec reads it for every namespace) is
    not the lab's to remove, as the files of other namespaces in it are not."""
    etc.mkdir()
    _resolved_then_removed("implant", "dns")
    assert etc.is_dir() and not any(etc.iterdir())
    (etc / "prod").mkdir()
    _resolved_then_removed("implant")
    assert [p.name for p in etc.iterdir()] == ["prod"]
