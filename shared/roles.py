"""A workload's role on the network: whether it serves (accepts connections) or only calls out.

Some behaviour means little from a client and much from a server: an interactive session or TLS to a
bare address opened by a workload that answers other hosts' connections is the shape of a reverse shell
or an implant in a compromised service. A subject (workload, or address when unnamed) is a *server*
once it has answered a TCP handshake (SYN-ACK) from another host within the detector's memory (UDP
replies are left out: a datagram's sender is not told apart from its answerer as surely): a role is
observed, not learned, so it counts from the first window.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from kubesonar.shared.flow import IPPROTO_TCP, TcpFlag, distinct_addresses
from kubesonar.shared.identity import subject_keys

if TYPE_CHECKING:
    from kubesonar.shared.flow import FlowRecords

_SYN = int(TcpFlag.SYN)


def servers_in(flows: FlowRecords) -> dict[str, int]:
    """Each subject that answered a connection from another host in ``flows``, with its latest answer's
    time (ns). A host talking to itself serves no one."""
    answered = (flows["proto"] == IPPROTO_TCP) & ((flows["flags_in"] & _SYN) != 0)
    rows = np.flatnonzero(answered & (flows["src_addr"] != flows["dst_addr"]))
    if not len(rows):
        return {}
    # one row per answering address, its latest: a busy server answers thousands of times a batch
    rows = rows[np.argsort(flows["last_ts"][rows], kind="stable")]
    _, last, _ = distinct_addresses(flows["dst_addr"][rows][::-1])
    rows = rows[::-1][last]
    served: dict[str, int] = {}
    for key, ts in zip(subject_keys(flows, rows, "dst"), flows["last_ts"][rows].tolist(), strict=True):
        served[key] = max(ts, served.get(key, ts))
    return served


def merge_servers(known: dict[str, int], seen: dict[str, int], most: int, since_ns: int | None = None
                  ) -> dict[str, int]:
    """``known`` with ``seen`` added, keeping the ``most`` subjects that answered most recently and,
    with ``since_ns``, only those that answered since then."""
    merged = dict(known) if since_ns is None else {k: ts for k, ts in known.items() if ts >= since_ns}
    for key, ts in seen.items():
        merged[key] = max(ts, merged.get(key, ts))
    if len(merged) > most:
        merged = dict(sorted(merged.items(), key=lambda kv: kv[1])[-most:])
    return merged
