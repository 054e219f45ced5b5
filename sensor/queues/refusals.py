"""Messages a queue refuses for good are dropped, counted and logged, in front of any publisher; a queue
that refuses every window is held as an outage instead.

A refusal about the message itself (too large for the queue, an attribute it will not take) fails the
same way on every try. Treated as an outage, it held the head of the spool: every window behind it
waited, retried and spooled until the spool's bound dropped the oldest. A refusal about the queue or
the credentials (a missing queue, a denied key) stays QueueUnavailable: those heal, and the spool keeps
the batches meanwhile.

A queue that refuses everything is misconfigured (an Event Grid topic whose input schema is not the
Event Grid schema answers 400 to every event), and dropping would lose every window until someone fixes
it. So once :data:`WINDOWS_TO_HOLD` windows in a row are refused whole (every message of each, nothing
taken in between), refusals are no longer dropped: the send raises QueueRefusingAll (a QueueUnavailable),
the spool keeps the batches, and the first message the queue takes again ends it. Windows are counted, not
sends: the spool drains a window's parts one send each, and a single bad window must not look like several.

The spool offers its oldest window first, and a hold may have been started by two bad windows in a row on a
queue that takes the rest (its maximum message size lowered below the sensor's limit: heartbeats fit, busy
windows do not); the head would never be taken, and everything, heartbeats included, would wait until the
spool's bound dropped it or it expired (23 h). So while held, each try of the spool (once per backoff)
offers a newer window instead, in :meth:`DropRefused.probe`. Taken, the queue works: the hold ends, and the
held windows older than the probe that it refuses whole are bad on their own, dropped as refused (counted,
logged each) until the spool has offered them all (:meth:`DropRefused.held_offered`); then the usual rule.
Only if larger than the probe, though: the one refusal a sensor's windows meet is a size, so a held window
no larger refused says the queue refuses everything again (a fix rolled back), and the hold starts anew.
Refused whole, the hold stands and nothing is dropped. A hold is marked by a file (``marker``, in the
spool's directory), so a sensor restarted meanwhile holds still: what it drains first is a held window, not
one bad window to drop.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kubesonar.sensor.queues import Message, Publisher
from kubesonar.shared.errors import MessageRefused, QueueRefusingAll
from kubesonar.shared.identity import split_batch_key

log = logging.getLogger(__name__)

# The first window refused whole is dropped: it may be the one bad window among good ones. A second one in
# a row, with nothing taken between, is a queue that refuses what the sensor sends: held from there on.
WINDOWS_TO_HOLD = 2
REFUSING_ALL_MARKER = "queue-refusing-all"  # the marker's name in the spool's directory (not a spool entry's)


class DropRefused:
    def __init__(self, inner: Publisher, queue: str = "the queue", marker: str | os.PathLike[str] | None = None):
        self.inner, self.limit, self.queue = inner, inner.limit, queue
        self.refused = 0  # messages dropped because the queue refused them for good (a heartbeat counter)
        self.holds = 0  # times the queue was found refusing every window (a heartbeat counter)
        self.probes = 0  # windows offered while held in place of the oldest (a heartbeat counter)
        self._clearing = False  # a probe was taken: the held windows refused whole are dropped, not held
        self._probe_bytes = 0  # the largest message of that probe: a held one no larger is not bad on its own
        self._refused_windows: set[tuple[str, int]] = set()  # refused whole since the queue last took one
        self._marker = None if marker is None else Path(marker)  # exists while a hold lasts, across restarts
        # the queue refuses every window: batches are held (a heartbeat gauge)
        self.refusing_all = self._marker is not None and self._marker.exists()
        if self.refusing_all:
            log.warning("%s refused every window before the restart (%s): its batches stay held until it "
                        "takes one", self.queue, self._marker)

    def send(self, messages: list[Message]) -> None:
        try:
            self.inner.send(messages)
        except MessageRefused as exc:
            if len(exc.refused) < len({m.key for m in messages}):
                self._taken()  # the queue takes messages: the refused ones are bad, not the queue
            elif self._clearing and all(len(m.data) > self._probe_bytes for m in messages):
                pass  # a held window larger than the probe the queue took is bad on its own: dropped
            elif self._clearing:  # no larger, so not bad on its own: the queue refuses everything again
                self._clearing = False
                self._refused_windows |= {_window(m.key) for m in messages}
                self._hold(exc)
            else:
                if self.refusing_all:  # held already: a window more to remember would only grow the set
                    self._hold(exc)
                self._refused_windows |= {_window(m.key) for m in messages}
                if len(self._refused_windows) >= WINDOWS_TO_HOLD:
                    self._hold(exc)
            self._drop(exc)
        else:
            self._taken()

    def probe(self, messages: list[Message]) -> None:
        """While held, the spool offers a window newer than every held one in place of its oldest. Taken
        (any of it), the queue works: the hold ends, and the held windows it refuses whole are bad on their
        own, dropped as refused until :meth:`held_offered`, if larger than the probe (a held window no larger,
        refused, says the queue refuses everything again: held anew). Refused whole, the hold stands:
        QueueRefusingAll, and the window stays held."""
        self.probes += 1
        refused: dict[str, str] = {}
        try:
            self.inner.send(messages)
        except MessageRefused as exc:
            if len(exc.refused) >= len({m.key for m in messages}):
                self._hold(exc)
            self._drop(exc)
            refused = exc.refused
        self._taken(probed=True)
        self._clearing = True
        self._probe_bytes = max(len(m.data) for m in messages if m.key not in refused)

    def held_offered(self) -> None:
        """The spool has offered every window it held before a probe the queue took: the usual rule again."""
        self._clearing = False

    def _drop(self, exc: MessageRefused) -> None:
        self.refused += len(exc.refused)
        for key, why in exc.refused.items():
            log.error("the queue refused message %s for good, dropped: %s", key, why)

    def _hold(self, exc: MessageRefused) -> None:
        why = next(iter(exc.refused.values()), "")
        if not self.refusing_all:
            self.refusing_all, self.holds = True, self.holds + 1
            self._mark(True)
            log.error("%s refused every message of %d windows in a row: it is misconfigured, not fed bad "
                      "messages, so its batches are kept in the spool until it takes one again (fix the "
                      "queue; nothing more is dropped meanwhile; a newer window is offered at each try, and "
                      "if it is taken the held ones it refuses are dropped). Its refusal: %s", self.queue,
                      len(self._refused_windows), why)
        raise QueueRefusingAll(f"{self.queue} refuses every window, batches held: {why}") from None

    def _taken(self, probed: bool = False) -> None:
        if self.refusing_all:
            if probed:
                log.warning("%s took a window newer than the held ones: it works, so the held windows it "
                            "refuses are bad on their own, dropped as refused; the others are sent", self.queue)
            else:
                log.warning("%s takes messages again: the batches held while it refused every window are sent",
                            self.queue)
            self._mark(False)
        self.refusing_all = False
        self._refused_windows.clear()

    def _mark(self, holding: bool) -> None:
        """The marker follows the hold; if it cannot be written the hold still holds, until a restart."""
        if self._marker is None:
            return
        try:
            if holding:
                self._marker.touch()
            else:
                self._marker.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot %s %s: %s", "write" if holding else "remove", self._marker, exc.strerror)


def _window(key: str) -> tuple[str, int]:
    sensor, sequence, _part = split_batch_key(key)
    return sensor, sequence
