"""Which batch messages a cluster's state has applied: the core's idempotence, bounded in size.

Queues deliver at least once, so the core must know a redelivered message. Remembering every batch key
does not scale (a 1,000-node cluster sends 100 messages a second), but a sensor numbers its windows, so
per sensor it is enough to keep the highest sequence seen and a bitmap of the ``WINDOW`` sequences
below it (bit i: sequence top - i is fully applied), plus the parts applied of windows that came in
several parts. A message older than the window is refused as a replay: it cannot be told from one,
and a sensor's real messages arrive within minutes (docs/cost.md). Sensors unheard for a day are
forgotten (a restarted sensor has a new id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WINDOW = 512  # sequences per sensor: at one window per 10 s, about 85 minutes
FORGET_NS = 24 * 3600 * 1_000_000_000

NEW, APPLIED, TOO_OLD = "new", "applied", "too_old"


@dataclass
class SensorLog:
    top: int = -1  # highest sequence seen
    done: int = 0  # bit i set: sequence top - i fully applied
    parts: dict[int, list[int]] = field(default_factory=dict)  # sequence -> parts applied, until complete
    seen_ns: int = 0


class AppliedLog:
    def __init__(self, state: dict[str, Any] | None = None):
        self.sensors: dict[str, SensorLog] = {}
        for sensor, s in (state or {}).items():
            self.sensors[sensor] = SensorLog(int(s["top"]), int(s["done"], 16),
                                             {int(k): list(v) for k, v in s.get("parts", {}).items()},
                                             int(s.get("seen_ns", 0)))

    def to_state(self) -> dict[str, Any]:
        return {sensor: {"top": s.top, "done": format(s.done, "x"), "seen_ns": s.seen_ns,
                         **({"parts": {str(k): v for k, v in s.parts.items()}} if s.parts else {})}
                for sensor, s in self.sensors.items()}

    def status(self, sensor: str, sequence: int, part: int) -> str:
        s = self.sensors.get(sensor)
        if s is None or sequence > s.top:
            return NEW
        age = s.top - sequence
        if age >= WINDOW:
            return TOO_OLD
        if (s.done >> age) & 1 or part in s.parts.get(sequence, ()):
            return APPLIED
        return NEW

    def mark(self, sensor: str, sequence: int, part: int, parts: int, now_ns: int) -> None:
        s = self.sensors.setdefault(sensor, SensorLog())
        s.seen_ns = max(s.seen_ns, now_ns)
        if sequence > s.top:
            jump = sequence - s.top
            # a jump past the window clears it; shifting by the jump itself would allocate jump bits
            # (a hostile sequence of 2**40 took 9 GB)
            s.done = (s.done << jump) & ((1 << WINDOW) - 1) if s.top >= 0 and jump < WINDOW else 0
            s.top = sequence
            s.parts = {q: p for q, p in s.parts.items() if s.top - q < WINDOW}
        got = sorted(set(s.parts.get(sequence, [])) | {part})
        if len(got) >= parts:
            s.parts.pop(sequence, None)
            s.done |= 1 << (s.top - sequence)
        else:
            s.parts[sequence] = got

    def forget_older_than(self, now_ns: int) -> None:
        self.sensors = {k: s for k, s in self.sensors.items() if now_ns - s.seen_ns < FORGET_NS}
