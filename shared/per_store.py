"""What a loader read from a store, kept for a while per store object.

Keyed by the store itself, weakly, not by ``id(store)``: an id is reused once its object is gone, and a
new store then got what another store had held (a test's fresh store took the address of an earlier one
and was handed its broken watchlist). A store that is gone takes its entry with it, so the cache also
holds no more entries than there are stores alive.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerStore(Generic[T]):
    def __init__(self, fresh_s: float) -> None:
        self.fresh_s = fresh_s
        self._kept: weakref.WeakKeyDictionary[Any, tuple[float, T]] = weakref.WeakKeyDictionary()

    def get(self, store: Any) -> T | None:
        """What was kept for ``store`` less than ``fresh_s`` ago, else None."""
        kept = self._kept.get(store)
        return kept[1] if kept is not None and time.monotonic() - kept[0] < self.fresh_s else None

    def put(self, store: Any, value: T) -> None:
        self._kept[store] = (time.monotonic(), value)

    def clear(self) -> None:
        self._kept.clear()
