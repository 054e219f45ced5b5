"""Long connection: a workload that does not usually hold long connections holding a quiet one open to
a rarely used host outside the cluster (RITA's long connections, judged against the workload's past).

A connection is *long* once it has been open an hour (``conn_start`` to its latest record: interim
records carry the whole connection): far past any request, download or pooled idle connection, which
clients close after a minute or two of idleness. It is *quiet* under 1 kB/s both ways on average: a
held command channel or shell idles between a few hundred bytes of heartbeat or command; moving more
is a transfer, which exfiltration judges by volume. The host is *rare* when fewer than 3 workloads
reach it (a service half the cluster holds a socket to is no command server).

Holding long connections is normal for some workloads (database and message-bus clients, websocket
and gRPC streams), so this compares a workload with its own past: one that held a long connection
while learning, or since without an alarm, is a *holder* and is not judged; one that never did is
judged. It needs the cluster's learning period (silent while it lasts, cold or not: a capture shorter
than a day reports nothing).

Catches: persistent C2 channels and reverse shells held for hours by workloads that never hold
connections (a web server, a batch worker). Misses: connections under an hour (beaconing judges their
heartbeats); channels from holders; busy channels (over 1 kB/s); hosts several workloads reach.
False positives: a new integration holding a stream to a new SaaS endpoint after learning: allowlist
the workload and port.

Score: hours held (1 decides); the evidence holds the duration, bytes and rate.

Example:
    >>> d = LongConnectionDetector(learning_period_ns=0)
    >>> d.observe(batch_of(flows))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kubesonar.shared.detectors.base import IDLE_FORGET_NS, Detector, Pair, Score
from kubesonar.shared.flow import address_text
from kubesonar.shared.identity import source_endpoint, subject_keys
from kubesonar.shared.netzones import Zones

if TYPE_CHECKING:
    from kubesonar.shared.batch import Batch

SECOND = 1_000_000_000
_HOUR = 3600 * SECOND
QUIET_BYTES_PER_S = 1000.0


@dataclass
class LongConnectionState:
    holders: dict[str, int] = field(default_factory=dict)  # subject -> last long connection held unflagged
    users: dict[str, list[str]] = field(default_factory=dict)  # remote address -> first few subjects
    reported: dict[Pair, None] = field(default_factory=dict)  # (subject, address:port), oldest first
    # remote address -> the hour (of data time) it was last reached: addresses quiet for IDLE_FORGET_NS are
    # forgotten, so rotating destinations do not fill ``users`` with the past (hours: a short number each)
    seen: dict[str, int] = field(default_factory=dict)


@dataclass
class _Assessment:
    first_ts: int | None = None
    holders: dict[str, int] = field(default_factory=dict)
    users: dict[str, list[str]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)


class LongConnectionDetector(Detector[LongConnectionState, _Assessment]):
    rule_id = "long_connection"
    needs_baseline = True  # whether a workload holds long connections is its own past

    def __init__(self, learning_period_ns: int, force_learning: bool = False, zones: Zones | None = None,
                 long_s: float = 3600.0, rare_below: int = 3, max_subjects: int = 20_000):
        super().__init__(learning_period_ns, force_learning)
        self.zones, self.long_ns = zones or Zones(), int(long_s * SECOND)
        self.rare_below, self.max_subjects = rare_below, max_subjects

    def new_state(self) -> LongConnectionState:
        return LongConnectionState()

    def _encode(self, state: LongConnectionState) -> dict[str, Any]:
        return {"holders": state.holders, "users": state.users, "reported": [list(p) for p in state.reported],
                "seen": state.seen}

    def _decode(self, document: dict[str, Any]) -> LongConnectionState:
        return LongConnectionState({k: int(v) for k, v in document["holders"].items()},
                                   {k: list(v) for k, v in document["users"].items()},
                                   dict.fromkeys(Pair(*p) for p in document["reported"]),
                                   {k: int(v) for k, v in document.get("seen", {}).items()})

    def _assess(self, batch: Batch) -> _Assessment:
        flows = batch.flows
        out = _Assessment()
        if not len(flows):
            return out
        out.first_ts = int(flows["first_ts"].min())
        rows = self.zones.outside(flows, np.flatnonzero(np.isin(flows["proto"], (6, 17))))
        keys = subject_keys(flows, rows)
        addresses = [address_text(a) for a in flows["dst_addr"][rows]]
        for address, ts in zip(addresses, flows["last_ts"][rows].tolist(), strict=True):
            out.seen[address] = max(ts // _HOUR, out.seen.get(address, 0))
        for key, address in zip(keys, addresses, strict=True):
            users = out.users.get(address) or list(self.state.users.get(address, []))
            if key not in users and len(users) < self.rare_below:
                out.users[address] = [*users, key]
        held = flows["last_ts"][rows] - flows["conn_start"][rows]
        scored: dict[Pair, Score] = {}
        for i in np.flatnonzero(held >= self.long_ns).tolist():
            row, key = int(rows[i]), keys[i]
            seconds = int(held[i]) / SECOND
            # a record's counters are its own (an interim record's too): its rate over its own span
            span = max(SECOND, int(flows["last_ts"][row]) - int(flows["first_ts"][row])) / SECOND
            rate = (int(flows["bytes_out"][row]) + int(flows["bytes_in"][row])) / span
            if rate >= QUIET_BYTES_PER_S:
                continue
            pair = Pair(key, f"{addresses[i]}:{int(flows['dst_port'][row])}")
            users = out.users.get(addresses[i]) or self.state.users.get(addresses[i], [])
            alarm = key not in self.state.holders and len(users) < self.rare_below
            evidence = {"destination": pair.target, "held_s": round(seconds, 1), "bytes_per_s": round(rate, 1),
                        "bytes_out": int(flows["bytes_out"][row]), "bytes_in": int(flows["bytes_in"][row]),
                        "workloads_reaching_it": len(users)}
            scored[pair] = Score(pair, seconds / 3600.0, alarm, source_endpoint(flows, row),
                                 int(flows["conn_start"][row]), int(flows["last_ts"][row]), evidence,
                                 fresh=alarm and pair not in self.state.reported, identity=(pair.target,),
                                 destination={"ip": addresses[i], "port": int(flows["dst_port"][row])})
            out.holders[key] = max(int(flows["last_ts"][row]), out.holders.get(key, 0))
        out.scores = list(scored.values())
        return out

    def _forget_quiet(self, seen: dict[str, int]) -> None:
        """Note the hour each address was reached; forget the users of those quiet for IDLE_FORGET_NS."""
        if not seen:
            return
        self.touched = True
        now = max(seen.values())
        known = self.state.seen
        for address in self.state.users.keys() - known.keys():  # a document of before: from now on
            known[address] = now
        for address, ts in seen.items():
            known[address] = max(ts, known.get(address, ts))
        since = now - IDLE_FORGET_NS // _HOUR
        self.state.seen = {a: ts for a, ts in known.items() if ts >= since}
        self.state.users = {a: u for a, u in self.state.users.items() if a in self.state.seen}

    def _scores(self, assessment: _Assessment) -> list[Score]:
        return assessment.scores

    def _commit(self, assessment: _Assessment, flagged: set[Hashable]) -> None:
        """A workload becomes a holder by a long connection that was not flagged (while learning, every
        one); a flagged one is remembered as reported and never makes its workload a holder."""
        if assessment.first_ts is not None:
            self._start_clock(assessment.first_ts)
        if assessment.scores or assessment.users:
            self.touched = True
        flagged_subjects = {p.source for p in flagged if isinstance(p, Pair)}
        for key, ts in assessment.holders.items():
            if key not in flagged_subjects:
                self.state.holders[key] = max(ts, self.state.holders.get(key, 0))
        self.state.users.update(assessment.users)
        self._forget_quiet(assessment.seen)
        self.state.reported.update(dict.fromkeys(s.subject for s in assessment.scores if s.flagged))
        for name in ("holders", "users", "seen", "reported"):
            table = getattr(self.state, name)
            if len(table) > self.max_subjects:
                setattr(self.state, name, dict(list(table.items())[-self.max_subjects:]))
