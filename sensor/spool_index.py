"""The spool's entries in memory, oldest first, so a publish need not list the spool directory: each
entry's sequence number (its file name), size and write time, in flat arrays (20 bytes an entry: the
300,000 heartbeats of a month take about 6 MB). Entries leave from the front (drained, dropped,
expired); one that cannot be removed stays while later ones go, so a slot is marked gone (size 0) and
the gone front is cut off as entries are added.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

_COMPACT_AFTER = 4096  # gone slots at the front before they are cut off (and only when half are gone)


class SpoolIndex:
    def __init__(self) -> None:
        self._sequences = array("Q")
        self._sizes = array("I")  # 0: the entry is gone; an entry is at most a message and its key
        self._written = array("d")  # seconds since the epoch
        self._head = 0  # the slots before it are gone
        self.count = 0
        self.bytes = 0

    def add(self, sequence: int, size: int, written: float) -> None:
        """Append the newest entry; never while :meth:`entries` is being iterated (slots move)."""
        if self._head >= _COMPACT_AFTER and 2 * self._head >= len(self._sizes):
            for column in (self._sequences, self._sizes, self._written):
                del column[: self._head]
            self._head = 0
        self._sequences.append(sequence)
        self._sizes.append(size)
        self._written.append(written)
        self.count += 1
        self.bytes += size

    def entries(self) -> Iterator[tuple[int, int, int, float]]:
        """(slot, sequence, size, written) of each entry, oldest first; the entry just yielded may be
        removed meanwhile."""
        for slot in range(self._head, len(self._sizes)):
            size = self._sizes[slot]
            if size:
                yield slot, self._sequences[slot], size, self._written[slot]

    def remove(self, slot: int) -> None:
        size = self._sizes[slot]
        if not size:
            return
        self._sizes[slot] = 0
        self.count -= 1
        self.bytes -= size
        while self._head < len(self._sizes) and not self._sizes[self._head]:
            self._head += 1

    def last_sequence(self) -> int | None:
        """The newest sequence added, gone or not (its name is not to be used again)."""
        return self._sequences[-1] if self._sequences else None
