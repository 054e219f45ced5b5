"""ICMP tunnels: data carried in ICMP payloads, echo or otherwise, between two hosts.

Ping sends one fixed payload over and over: the same size every time (56 bytes from Linux, BSD and
macOS, 32 from Windows, whatever ``-s`` asked) and a known pattern (a timestamp then rising bytes, or
Windows' alphabet), echoed back unchanged. A tunnel (ptunnel-ng, icmpsh, hans, icmptunnel, Pingback)
puts its data in the payload: content that is no ping pattern, and sizes that follow the data. The
sensor counts, per flow, the distinct payload sizes (``icmp_sizes``) and the messages whose payload is
no ping pattern or that carry data beyond what their type defines (``icmp_odd``: unassigned types
with a payload, a timestamp past its three clocks, an information request with any; errors quote a
packet and discovery messages carry options, and are not counted).

Per pair of hosts (both directions: a tunnel's requests may come from either end), over a window of
an hour, the odd messages, the most distinct sizes one flow held and the pair's bytes and packets are
summed. A tunnel when, sustained over at least 10
odd messages (a single probe with a custom payload is one to four; ten is a conversation):
- *varying echo data*: a flow of the pair held 4 or more payload sizes (ping holds one; a path-MTU
  probe varies its size but keeps ping's pattern, so it is not odd), or
- *large echo data*: the odd messages average 128 payload bytes or more (monitors that stamp their own
  payload send a short fixed string; Pingback's commands are 788 bytes), or
- *non-echo data*: some of the odd messages are not echo at all (no ping sends those).

The alert names the end inside the cluster when the other is outside (whichever sent the requests: a
backdoor answering crafted echoes from outside, as Pingback does, is named too). Between two ends on
the same side, it names each end that sent crafted requests of its own: the tunnel's client (ptunnel,
hans, icmpsh's slave), and both ends of a channel where each side speaks first in turn (Pingback's
controller sends commands, its backdoor reports back in a request of its own). A plain responder only
echoes what it was sent and is not named.

Catches: ptunnel-ng and ptunnel, icmpsh, hans, icmptunnel, Pingback, hand-made exfiltration in echo
or timestamp payloads, from the first window (no baseline). Misses: a tunnel that mimics ping's
pattern and size; under ten odd messages an hour; data in sizes alone; flows from sensors older than
flow schema 4 (their ICMP columns are blank).
False positives: a monitor sending large custom payloads (allowlist the workload); ICMP-based
network tools that vary sizes with their own payloads.

Score: the pair's odd messages in the window once it is judged a tunnel, else 0.

Example:
    >>> d = IcmpTunnelingDetector()
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import Detector, Pair, Score, bounded
from kubesonar.shared.flow import IPPROTO_ICMP, IPPROTO_ICMPV6, address_text
from kubesonar.shared.identity import source_endpoint
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_ECHO = (0, 8, 128, 129)  # echo reply and request, ICMPv4 and ICMPv6
_HEADERS = {IPPROTO_ICMP: 28, IPPROTO_ICMPV6: 48}  # IP and ICMP header bytes before the payload


@dataclass
class IcmpWindow:
    """A pair's ICMP in the current window."""

    window_start_ns: int
    last_ns: int
    odd_messages: int = 0
    odd_non_echo: int = 0  # odd messages in flows whose type is not echo
    most_sizes: int = 0  # the most distinct payload sizes one flow held
    odd_payload_bytes: int = 0  # payload bytes of the flows with odd messages
    odd_flow_packets: int = 0  # packets of those flows
    odd_from_first: int = 0  # odd messages in flows the pair's first end initiated
    one_inside: bool = False  # one end is inside the cluster (the first), the other outside
    alarm: bool = False
    reported_ends: list[str] = field(default_factory=list)


@dataclass
class IcmpState:
    windows: dict[Pair, IcmpWindow] = field(default_factory=dict)  # the two ends' addresses, inside one first


@dataclass
class _Assessment:
    scores: list[Score] = field(default_factory=list)
    windows: dict[Pair, IcmpWindow] = field(default_factory=dict)


class IcmpTunnelingDetector(Detector[IcmpState, _Assessment]):
    rule_id = "icmp_tunneling"

    def __init__(self, zones: Zones | None = None, min_odd: int = 10, min_sizes: int = 4,
                 min_payload: int = 128, window_s: float = 3600.0, max_pairs: int = 5_000):
        super().__init__()
        self.zones = zones or Zones()
        self.min_odd, self.min_sizes, self.min_payload = min_odd, min_sizes, min_payload
        self.window_ns, self.max_pairs = int(window_s * SECOND), max_pairs

    def new_state(self) -> IcmpState:
        return IcmpState()

    def _encode(self, state: IcmpState) -> dict[str, Any]:
        return {"windows": [[*pair, vars(w)] for pair, w in state.windows.items()]}

    def _decode(self, document: dict[str, Any]) -> IcmpState:
        return IcmpState({Pair(source, peer): _stored_window(source, peer, w)
                          for source, peer, w in document["windows"]})

    def _assess(self, batch: Batch) -> _Assessment:
        out = _Assessment()
        flows = batch.flows
        if not len(flows):
            return out
        rows = np.flatnonzero(np.isin(flows["proto"], (IPPROTO_ICMP, IPPROTO_ICMPV6)) & (flows["icmp_odd"] > 0))
        if not len(rows):
            return out
        rows = rows[np.argsort(flows["first_ts"][rows], kind="stable")]
        src_in = self.zones.inside(flows["src_addr"][rows]).tolist()
        dst_in = self.zones.inside(flows["dst_addr"][rows]).tolist()
        changed: dict[Pair, int] = {}
        for k, row in enumerate(rows.tolist()):
            src, dst = address_text(flows["src_addr"][row]), address_text(flows["dst_addr"][row])
            one_inside = src_in[k] != dst_in[k]
            first = src if (src_in[k] if one_inside else src <= dst) else dst  # the inside end first
            key = Pair(first, dst if first == src else src)
            w = self._window(key, int(flows["first_ts"][row]), out, changed, flows)
            w.one_inside = one_inside
            odd, packets = int(flows["icmp_odd"][row]), int(flows["packets_out"][row] + flows["packets_in"][row])
            w.odd_messages += odd
            w.odd_from_first += odd if first == src else 0
            w.odd_non_echo += odd if int(flows["icmp_type"][row]) not in _ECHO else 0
            w.most_sizes = max(w.most_sizes, int(flows["icmp_sizes"][row]))
            header = _HEADERS[int(flows["proto"][row])]
            w.odd_payload_bytes += max(0, int(flows["bytes_out"][row] + flows["bytes_in"][row]) - header * packets)
            w.odd_flow_packets += packets
            w.last_ns = max(w.last_ns, int(flows["last_ts"][row]))
            changed[key] = row
        out.scores += [s for key, row in changed.items() for s in self._score(key, out.windows[key], flows, row)]
        return out

    def _window(self, key: Pair, ts: int, out: _Assessment, changed: dict[Pair, int], flows) -> IcmpWindow:
        w = out.windows.get(key)
        if w is None and (known := self.state.windows.get(key)) is not None:
            w = out.windows[key] = IcmpWindow(**vars(known))
        if w is None or ts - w.window_start_ns > self.window_ns:
            if w is not None and key in changed:  # a window that ends inside this batch is judged before it goes
                out.scores += self._score(key, w, flows, changed.pop(key))
            alarmed = bool(w and w.alarm)
            w = out.windows[key] = IcmpWindow(ts, ts, alarm=alarmed,
                                              reported_ends=list(w.reported_ends) if w and alarmed else [])
        return w

    def _reasons(self, w: IcmpWindow) -> list[str]:
        if w.odd_messages < self.min_odd:
            return []
        mean_payload = w.odd_payload_bytes / w.odd_flow_packets if w.odd_flow_packets else 0.0
        tests = (("varying_echo_data", w.most_sizes >= self.min_sizes),
                 ("large_echo_data", mean_payload >= self.min_payload), ("non_echo_data", w.odd_non_echo > 0))
        return [name for name, met in tests if met]

    def _score(self, key: Pair, w: IcmpWindow, flows, row: int) -> list[Score]:
        """One score per end named: the inside end, else each end that initiated odd messages."""
        reasons = self._reasons(w)
        alarm = bool(reasons) or w.alarm
        w.alarm = alarm
        # odd messages (with their echoes) in the flows each end started
        sent = ((key.source, key.target, w.odd_from_first), (key.target, key.source, w.odd_messages - w.odd_from_first))
        ends = sent[:1] if w.one_inside else [end for end in sent if end[2] > 0]
        mean_payload = w.odd_payload_bytes / w.odd_flow_packets if w.odd_flow_packets else 0.0
        scores = []
        for named, peer, started in ends:
            fresh = alarm and named not in w.reported_ends
            if fresh:
                w.reported_ends = [*w.reported_ends, named]
            evidence = {"peer": peer, "odd_messages": w.odd_messages, "odd_in_flows_it_started": started,
                        "odd_non_echo_messages": w.odd_non_echo,
                        "most_payload_sizes": w.most_sizes, "mean_payload_bytes": round(mean_payload, 1),
                        "named_end": "inside" if w.one_inside else "initiator", "reasons": reasons,
                        "icmp_type": int(flows["icmp_type"][row])}
            side = "src" if address_text(flows["src_addr"][row]) == named else "dst"
            scores.append(Score(Pair(named, peer), float(w.odd_messages) if alarm else 0.0, alarm,
                                source_endpoint(flows, row, side), w.window_start_ns, w.last_ns, evidence,
                                fresh=fresh, identity=(peer,), destination={"ip": peer, "port": 0}))
        return scores

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """The windows take this batch's messages (no baseline: a tunnel is judged by its payloads)."""
        if assessment.windows:
            self.state.windows.update(assessment.windows)
            self.state.windows = bounded(self.state.windows, self.max_pairs)
            self.touched = True


def _stored_window(source: str, peer: str, stored: dict[str, Any]) -> IcmpWindow:
    """A stored window; one of a document written before ends were kept says only that some end was
    reported (``reported``), so both count as reported: no end is reported again."""
    w = dict(stored)
    if w.pop("reported", False) and not w.get("reported_ends"):
        w["reported_ends"] = [source, peer]
    return IcmpWindow(**w)
