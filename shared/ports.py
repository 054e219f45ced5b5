"""The small interfaces the core needs from a runtime; every cloud, and the local default, implements them.

Object store semantics are those of S3 conditional writes, GCS generations and Azure ETags:
``put(..., create_only=True)`` succeeds only if the key does not exist; ``put(..., if_version=v)`` only
if the stored version is still ``v``. A lost race raises :class:`VersionConflict`, never overwrites.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

from kubesonar.shared.errors import StoreError

_KEY = re.compile(r"^[A-Za-z0-9._=@+-]+(/[A-Za-z0-9._=@+-]+)*$")


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    version: str  # opaque: an ETag, a generation, a content hash


class ObjectStore(Protocol):
    def get(self, key: str) -> StoredObject | None:
        """The object and its version, or None if there is none."""

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        """Write; return the new version. Raise VersionConflict when a condition does not hold."""

    def list(self, prefix: str) -> Iterator[str]:
        """Keys that start with ``prefix``, in lexicographic order."""


class Notifier(Protocol):
    def notify(self, alert: dict[str, Any]) -> None:
        """Push one alert to whoever subscribed."""


class Clock(Protocol):
    def now_ns(self) -> int:
        """Nanoseconds since the epoch."""


class SystemClock:
    def now_ns(self) -> int:
        return time.time_ns()


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated, of safe characters: no '..', no empty or absolute paths."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise StoreError(f"invalid object key {key!r}: use '/'-separated names of letters, digits and ._=@+-")
    return key
