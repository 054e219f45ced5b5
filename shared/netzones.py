"""Which destinations are outside the cluster: what beaconing, exfiltration and unusual_destination judge.

A destination is *inside* when the sensor named it (a pod or a Service), when it sits in one of the
configured internal networks (the cluster's pod and service CIDRs, the VPC; by default the private
ranges), or when it is special-use (loopback, link-local, multicast, broadcast). Everything else is
outside, the internet or a network the cluster does not own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import numpy as np

from kubesonar.shared.flow import FlowRecords

PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
_SPECIAL = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
            "::/128", "::1/128", "fe80::/10", "ff00::/8")


class Networks:
    """Vectorised membership of 16-byte addresses in a set of networks (IPv4 ones as IPv4-mapped)."""

    def __init__(self, networks: Iterable[str]):
        self.networks = tuple(networks)
        nets = [ipaddress.ip_network(n, strict=False) for n in self.networks]
        self._nets = []
        for net in nets:
            if net.version == 4:
                net = ipaddress.ip_network(f"::ffff:{net.network_address}/{96 + net.prefixlen}")
            value, prefix = int(net.network_address), net.prefixlen
            mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
            self._nets.append((np.uint64(value >> 64), np.uint64(value & (2**64 - 1)),
                               np.uint64(mask >> 64), np.uint64(mask & (2**64 - 1))))

    def contains(self, addresses: np.ndarray) -> np.ndarray:
        words = np.frombuffer(np.ascontiguousarray(addresses).tobytes(), dtype=">u8").reshape(-1, 2)
        hit = np.zeros(len(addresses), dtype=bool)
        for hi, lo, mask_hi, mask_lo in self._nets:
            hit |= ((words[:, 0] & mask_hi) == hi) & ((words[:, 1] & mask_lo) == lo)
        return hit

    def which(self, addresses: np.ndarray) -> list[np.ndarray]:
        """Per network, the mask of addresses in it."""
        words = np.frombuffer(np.ascontiguousarray(addresses).tobytes(), dtype=">u8").reshape(-1, 2)
        return [((words[:, 0] & mh) == hi) & ((words[:, 1] & ml) == lo) for hi, lo, mh, ml in self._nets]


class Zones:
    """Inside or outside the cluster (module docstring)."""

    def __init__(self, internal: Iterable[str] = PRIVATE_NETWORKS):
        self.internal = tuple(internal)
        self._inside = Networks(self.internal + _SPECIAL)
        self._last: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # side -> (its address column, outside mask)

    def inside(self, addresses: np.ndarray) -> np.ndarray:
        return self._inside.contains(addresses)

    def outside(self, flows: FlowRecords, rows: np.ndarray, side: str = "dst") -> np.ndarray:
        """Those of ``rows`` whose responder (``side`` "dst") or initiator ("src") is outside the cluster:
        not a named workload, not inside the networks. The detectors of a batch share one Zones, so the
        batch's mask is computed once a side."""
        column = flows[f"{side}_addr"]
        last = self._last.get(side)
        if last is None or last[0] is not column:
            last = self._last[side] = (column, (flows[f"{side}_workload_name"] == "") & ~self.inside(column))
        return rows[last[1][rows]]
