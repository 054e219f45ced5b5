"""The small interfaces the core needs from a runtime; every cloud, and the local default, implements them.

Object store semantics are those of S3 conditional writes, GCS generations and Azure ETags:
``put(..., create_only=True)`` succeeds only if the key does not exist; ``put(..., if_version=v)`` only
if the stored version is still ``v``. A lost race raises :class:`VersionConflict`, never overwrites.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kubesonar.shared.errors import StoreError

_KEY = re.compile(r"^[A-Za-z0-9._=@+-]+(/[A-Za-z0-9._=@+-]+)*$")

# How long a cloud store's SDK may keep retrying one call (KUBESONAR_STORE_RETRY_S): its retries' sleeps
# fit it, and so do its requests' connect and read timeouts, so a store that cannot be reached fails
# within about twice it. The SDKs' own defaults failed after 75-116 s on a refused port and 60-180 s on a
# silent one, too long for a CLI command or a function invocation.
STORE_RETRY_S = 20.0


def store_request_timeout_s(retry_s: float, attempts: int = 1) -> float:
    """Each request's connect and read timeout when ``attempts`` requests share ``retry_s`` (1 s at least:
    a budget of 0 means no retry, not no wait)."""
    return max(retry_s / attempts, 1.0)


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    version: str  # opaque: an ETag, a generation, a content hash


class ObjectStore(Protocol):
    def get(self, key: str) -> StoredObject | None:
        """The object and its version, or None if there is none."""

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        """Write; return the version it made (after a lost answer, possibly one that another writer has
        replaced since, building on it). Raise VersionConflict when a condition does not hold."""

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


class RoutedObjectStore:
    """Several stores behind one: each key goes to the store of its longest matching prefix (alerts in
    one bucket, baselines in another), else to the default."""

    def __init__(self, default: ObjectStore, routes: dict[str, ObjectStore]):
        self._default = default
        self._routes = sorted(routes.items(), key=lambda kv: -len(kv[0]))

    def _store(self, key: str) -> ObjectStore:
        return next((store for prefix, store in self._routes if key.startswith(prefix)), self._default)

    def get(self, key: str) -> StoredObject | None:
        return self._store(key).get(key)

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        return self._store(key).put(key, data, if_version=if_version, create_only=create_only)

    def list(self, prefix: str) -> Iterator[str]:
        stores = self._stores_under(prefix)
        yield from sorted(k for store in stores for k in store.list(prefix) if self._store(k) is store)

    def _stores_under(self, prefix: str) -> list[ObjectStore]:
        """The stores that can hold a key starting with ``prefix``: a route's store when one of the two
        prefixes starts the other; the default unless a route takes every such key. Asking every store
        made each listing of ``state/`` or ``allowlists/`` a list request on the alerts bucket too, which
        can hold none of them: 2 of the 9 requests of an idle GCP tick, and lists are billed as writes
        (12.5 times a read on S3 and Cloud Storage)."""
        found: dict[int, ObjectStore] = {}
        for route, store in self._routes:  # longest first
            if prefix.startswith(route):  # the longest route the prefix is within: every other key
                found.setdefault(id(store), store)
                return list(found.values())
            if route.startswith(prefix):  # a route within the prefix: some of the keys
                found.setdefault(id(store), store)
        found.setdefault(id(self._default), self._default)
        return list(found.values())
