"""Which batch messages a cluster's state has applied: the core's idempotence, bounded in size.

Queues deliver at least once, so the core must know a redelivered message. Remembering every batch key
does not scale (a 1,000-node cluster sends 100 messages a second), but a sensor numbers its windows, so
per sensor it is enough to keep the highest sequence seen and a bitmap of the ``WINDOW`` sequences
below it (bit i: sequence top - i is fully applied), plus the parts applied of windows that came in
several parts. A message older than the window is refused as a replay: it cannot be told from one,
and a sensor's real messages arrive within minutes (docs/cost.md). Sensors unheard for a day
(``FORGET_NS``) are forgotten (a restarted sensor has a new id).

Forgetting must not let a replay in: a captured message of a sensor silent for a day would be new again.
So a delivered message whose window ended ``MAX_AGE_NS`` ago or more is refused too (``TOO_OLD``), its
sensor known or not. The rule: a header's window times are its sender's clock when it sent the window
(signed with it), and the core's memory of a sensor lasts at least ``FORGET_NS`` past the end of every
window it applied (:meth:`AppliedLog.mark`), longer than any window it takes; a window ending as far
ahead of the core's clock is refused too, so that memory stays bounded. A live sensor stamps the
window it captured, ``kubesonar replay`` the time it publishes (its rows keep their capture times, what
the detectors judge). Batches ``analyze`` makes and hands the core decoded (:func:`process_batch`) came
through no transport, so nothing could replay them: they give no age and are never refused by it.

A key says which message it is, not what it holds, so each sequence also keeps a 16-bit digest of the
message that applied it (:func:`content_digest`; 1 KiB a sensor, slot i beside bit i). A message whose
key was applied with other content is a ``CONFLICT``: counted and refused, never skipped as a
redelivery. Windows sent in several parts keep no digest (0: unknown), so their parts are recognised by
key alone, as are batches the core was handed decoded (the offline paths number their own).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

WINDOW = 512  # sequences per sensor: at one window per 10 s, about 85 minutes
FORGET_NS = 24 * 3600 * 1_000_000_000
# an hour short of FORGET_NS: the clocks of the core's concurrent invocations may differ a little
MAX_AGE_NS = FORGET_NS - 3600 * 1_000_000_000
_DIGEST_BYTES = 2  # tells contents apart (1 in 65,536 conflicts passes unseen); forgery is the MAC's job

NEW, APPLIED, TOO_OLD, CONFLICT = "new", "applied", "too_old", "conflict"


def content_digest(message: bytes, parts: int = 1) -> int:
    """The digest kept for a message's key, never 0: of its bytes, since a redelivery is the same bytes.
    0 (unknown) for a part of a window sent in several parts, whose slot is shared."""
    if parts != 1:
        return 0
    return int.from_bytes(hashlib.blake2b(message, digest_size=_DIGEST_BYTES).digest(), "big") or 1


def _no_digests() -> bytearray:
    return bytearray(WINDOW * _DIGEST_BYTES)


@dataclass
class SensorLog:
    top: int = -1  # highest sequence seen
    done: int = 0  # bit i set: sequence top - i fully applied
    parts: dict[int, list[int]] = field(default_factory=dict)  # sequence -> parts applied, until complete
    seen_ns: int = 0
    digests: bytearray = field(default_factory=_no_digests)  # slot i: the digest of sequence top - i

    def digest(self, age: int) -> int:
        return int.from_bytes(self.digests[age * _DIGEST_BYTES : (age + 1) * _DIGEST_BYTES], "big")

    def shift(self, jump: int) -> None:
        """Move the window up by ``jump`` sequences (a jump past it clears it)."""
        keep = max(WINDOW - jump, 0) if self.top >= 0 else 0
        # shifting by the jump itself would allocate jump bits (a hostile sequence of 2**40 took 9 GB)
        self.done = (self.done << jump) & ((1 << WINDOW) - 1) if keep else 0
        self.digests = bytearray((WINDOW - keep) * _DIGEST_BYTES) + self.digests[: keep * _DIGEST_BYTES]


def _digests(text: Any) -> bytearray:
    raw = base64.b64decode(text) if isinstance(text, str) else b""
    return bytearray((raw + bytes(WINDOW * _DIGEST_BYTES))[: WINDOW * _DIGEST_BYTES])


class AppliedLog:
    def __init__(self, state: dict[str, Any] | None = None):
        self.sensors: dict[str, SensorLog] = {}
        for sensor, s in (state or {}).items():
            self.sensors[sensor] = SensorLog(int(s["top"]), int(s["done"], 16),
                                             {int(k): list(v) for k, v in s.get("parts", {}).items()},
                                             int(s.get("seen_ns", 0)), _digests(s.get("digests")))

    def to_state(self) -> dict[str, Any]:
        return {sensor: {"top": s.top, "done": format(s.done, "x"), "seen_ns": s.seen_ns,
                         **({"parts": {str(k): v for k, v in s.parts.items()}} if s.parts else {}),
                         **({"digests": base64.b64encode(s.digests).decode()} if any(s.digests) else {})}
                for sensor, s in self.sensors.items()}

    def status(self, sensor: str, sequence: int, part: int, digest: int = 0, age_ns: int = 0) -> str:
        """NEW, APPLIED (a redelivery), TOO_OLD, or CONFLICT: applied, with a digest other than
        ``digest`` (this message's, :func:`content_digest`; compared where both are known). ``age_ns``:
        how long ago the message's window ended, by the core's clock (0 for a batch handed decoded)."""
        # its sensor may have been forgotten since: it cannot be told from a replay. A window as far ahead
        # (a clock a day off) is refused too: it would keep its sensor remembered that much longer (mark)
        if not -MAX_AGE_NS < age_ns < MAX_AGE_NS:
            return TOO_OLD
        s = self.sensors.get(sensor)
        if s is None or sequence > s.top:
            return NEW
        age = s.top - sequence
        if age >= WINDOW:
            return TOO_OLD
        if part in s.parts.get(sequence, ()):
            return APPLIED
        if not (s.done >> age) & 1:
            return NEW
        kept = s.digest(age)
        return CONFLICT if digest and kept and digest != kept else APPLIED

    def mark(self, sensor: str, sequence: int, part: int, parts: int, now_ns: int, digest: int = 0,
             window_end_ns: int = 0) -> None:
        """Note the message applied. Its sensor is heard at the later of ``now_ns`` and the message's
        window end, so a sensor whose clock runs ahead is kept until its windows are too old to take."""
        s = self.sensors.setdefault(sensor, SensorLog())
        s.seen_ns = max(s.seen_ns, now_ns, window_end_ns)
        if sequence > s.top:
            s.shift(sequence - s.top)
            s.top = sequence
            s.parts = {q: p for q, p in s.parts.items() if s.top - q < WINDOW}
        got = sorted(set(s.parts.get(sequence, [])) | {part})
        if len(got) >= parts:
            s.parts.pop(sequence, None)
            age = s.top - sequence
            s.done |= 1 << age
            s.digests[age * _DIGEST_BYTES : (age + 1) * _DIGEST_BYTES] = digest.to_bytes(_DIGEST_BYTES, "big")
        else:
            s.parts[sequence] = got

    def forget_older_than(self, now_ns: int) -> None:
        self.sensors = {k: s for k, s in self.sensors.items() if now_ns - s.seen_ns < FORGET_NS}
