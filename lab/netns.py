"""A lab node made of network namespaces: pod-like namespaces on veth pairs joined by a bridge that
stands in for a CNI bridge. Addresses are in 10.77.0.0/24 (plus any the lab adds to stand for hosts
outside the cluster, reachable on the bridge only) with no route anywhere else; everything is removed
on exit. Used by the network tests and by ``python -m lab.evaluate``'s scenarios; needs root and iproute2.

Every name (namespaces, bridge, veths) starts with ``KUBESONAR_LAB_PREFIX`` (default ``ks``), so runs
on one machine that must not meet, people or CI jobs, each keep to their own prefix."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
# the node's pod range, the cluster's own: named to `kubesonar analyze` as its internal network, since a
# lab capture reaches no address beyond the private ranges and would otherwise be judged as taken outside
# a cluster (kubesonar/compose.py _boundary_known)
POD_NETWORK = f"{SUBNET}.0/24"
DEFAULT_PREFIX = "ks"
NETNS_ETC = "/etc/netns"  # per-namespace configuration files, bound over /etc's by `ip netns exec`


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Node:
    tag: str  # the name prefix and a random part
    bridge: str  # "" on a routed node
    pods: dict[str, str] = field(default_factory=dict)  # name -> address
    host: str = ""  # the namespace of the node's own end of the veths; "" is this one
    uplink: str = ""  # a routed node's link to the outside namespace, in ``host``
    prefix: str = DEFAULT_PREFIX
    etc_made: bool = False  # resolve_with created /etc/netns: removed with the node once empty

    def ns(self, pod: str) -> str:
        return f"{self.prefix}{self.tag}-{pod}"

    def interface(self, pod: str) -> str:
        """The pod's end of its veth pair, inside its namespace."""
        return f"{self.prefix}p{self.tag}{list(self.pods).index(pod)}"

    def node_interface(self, pod: str) -> str:
        """The node's end of the pod's veth pair: on the bridge, or in ``host`` on a routed node (where the
        ``outside`` namespace's link is ``uplink`` instead)."""
        return f"{self.prefix}v{self.tag}{list(self.pods).index(pod)}"

    def run(self, pod: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns(pod), *cmd], **kw)

    def start(self, pod: str, *cmd: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.ns(pod), *cmd], **kw)

    def resolve_with(self, pod: str, server: str) -> None:
        """Make ``pod`` resolve names through the name server at ``server`` (a cluster DNS stand-in), as
        a pod's resolv.conf points at CoreDNS: ``ip netns exec`` mounts /etc/netns/NAMESPACE/resolv.conf
        over /etc/resolv.conf for what runs in the namespace; removed with the node."""
        config = Path(NETNS_ETC, self.ns(pod))
        self.etc_made = self.etc_made or not Path(NETNS_ETC).exists()
        config.mkdir(parents=True, exist_ok=True)
        (config / "resolv.conf").write_text(f"nameserver {server}\noptions timeout:2 attempts:1\n")

    def add_address(self, pod: str, address: str) -> None:
        """Give ``pod`` one more address (standing for a host outside the cluster, a metadata service),
        reachable from the other pods over the bridge; nothing routes it off the machine."""
        _ip("-n", self.ns(pod), "addr", "add", f"{address}/32", "dev", self.interface(pod))
        for other in self.pods:
            if other != pod:
                _ip("-n", self.ns(other), "route", "add", f"{address}/32", "dev", self.interface(other))


class LabUnavailable(RuntimeError):
    """This machine cannot build the lab (not root, or no iproute2)."""


def require_netns() -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise LabUnavailable("network namespaces need root and iproute2")


def name_prefix() -> str:
    """``KUBESONAR_LAB_PREFIX``: letters and digits, at most 4 (Linux caps interface names at 15)."""
    prefix = os.environ.get("KUBESONAR_LAB_PREFIX", DEFAULT_PREFIX)
    if not (prefix.isascii() and prefix.isalnum() and 1 <= len(prefix) <= 4):
        raise ValueError(f"KUBESONAR_LAB_PREFIX={prefix!r}: give 1 to 4 letters or digits")
    return prefix


@contextmanager
def namespace_node(pods: list[str]) -> Iterator[Node]:
    """Namespaces named after ``pods``, at 10.77.0.2, .3, ... on one bridge."""
    require_netns()
    prefix, tag = name_prefix(), uuid.uuid4().hex[:5]
    node = Node(tag, f"{prefix}br{tag}", prefix=prefix)
    made: list[str] = []
    try:
        _ip("link", "add", node.bridge, "type", "bridge")
        _ip("link", "set", node.bridge, "up")
        for i, pod in enumerate(pods):
            ns, host_if, pod_if = node.ns(pod), f"{prefix}v{tag}{i}", f"{prefix}p{tag}{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", host_if, "type", "veth", "peer", "name", pod_if)
            _ip("link", "set", pod_if, "netns", ns)
            _ip("link", "set", host_if, "master", node.bridge)
            _ip("link", "set", host_if, "up")
            address = f"{SUBNET}.{i + 2}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", pod_if)
            _ip("-n", ns, "link", "set", pod_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # Linux answers at most one ICMP error a second by default; a UDP scan needs them all.
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"], check=True)
            node.pods[pod] = address
        yield node
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            _remove_etc(node, ns)
        subprocess.run(["ip", "link", "del", node.bridge], capture_output=True)


def _remove_etc(node: Node, ns: str) -> None:
    """What ``Node.resolve_with`` wrote for ``ns``; /etc/netns itself too when the node created it and
    nobody else's is in it (one that was there before, even empty, is the machine's, not the lab's)."""
    shutil.rmtree(Path(NETNS_ETC, ns), ignore_errors=True)
    if not node.etc_made:
        return
    try:
        Path(NETNS_ETC).rmdir()
    except OSError:
        pass  # absent, or another run's namespaces still have theirs


@contextmanager
def routed_node(pods: list[str], outside: str = "") -> Iterator[Node]:
    """A node as routed CNIs build it (Calico's cali*, AWS's eni*, Cilium's lxc*): no bridge; each pod
    has a /32 on a veth whose other end is in the node's namespace (``node.host``), which routes between
    them and answers the pods' ARP (proxy ARP). A packet between two pods crosses two veths, arriving on
    the sender's and leaving on the receiver's. ``outside``: one more namespace standing for the rest of
    the network (another node), reached over the node's uplink ``<prefix>u<tag>`` at 10.77.1.2."""
    require_netns()
    prefix, tag = name_prefix(), "P" + uuid.uuid4().hex[:4]
    node = Node(tag, "", host=f"{prefix}{tag}-node", prefix=prefix)
    made = [node.host]
    host = ("-n", node.host)

    def sysctl(ns: str, setting: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", setting], check=True)

    try:
        _ip("netns", "add", node.host)
        sysctl(node.host, "net.ipv4.ip_forward=1")
        _ip(*host, "link", "set", "lo", "up")
        for i, pod in enumerate([*pods, outside] if outside else pods):
            ns, pod_if = node.ns(pod), f"{prefix}p{tag}{i}"
            node.pods[pod] = address = f"{SUBNET}.{i + 2}" if pod != outside else "10.77.1.2"
            host_if = f"{prefix}u{tag}" if pod == outside else f"{prefix}v{tag}{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", host_if, "netns", node.host, "type", "veth", "peer", "name", pod_if, "netns", ns)
            _ip(*host, "link", "set", host_if, "up")
            _ip("-n", ns, "link", "set", pod_if, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if pod == outside:
                node.uplink = host_if
                _ip(*host, "addr", "add", "10.77.1.1/24", "dev", host_if)
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", pod_if)
                _ip("-n", ns, "route", "add", f"{SUBNET}.0/24", "via", "10.77.1.1")
                continue
            sysctl(node.host, f"net.ipv4.conf.{host_if}.proxy_arp=1")
            _ip(*host, "route", "add", f"{address}/32", "dev", host_if)
            _ip("-n", ns, "addr", "add", f"{address}/32", "dev", pod_if)
            _ip("-n", ns, "route", "add", f"{SUBNET}.0/24", "dev", pod_if)
            _ip("-n", ns, "route", "add", "10.77.1.0/24", "dev", pod_if)
        yield node
    finally:
        for ns in made:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            _remove_etc(node, ns)
