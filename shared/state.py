"""JSON documents in the object store, updated with compare-and-swap and retry: concurrent function
invocations never lose one another's updates."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import ObjectStore

Document = dict[str, Any]


def read_document(store: ObjectStore, key: str) -> tuple[Document | None, str | None]:
    obj = store.get(key)
    if obj is None:
        return None, None
    try:
        return json.loads(obj.data), obj.version
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{key} is not a JSON document: {exc}") from None


def update_document(
    store: ObjectStore, key: str, change: Callable[[Document | None], Document], attempts: int = 50,
    backoff_s: float = 0.005,
) -> Document:
    """Apply ``change`` to the current document (None if there is none) and write it back atomically.

    ``change`` must be a pure function of the document it is given: on a lost race it runs again on
    the newer document. Backoff is exponential with full jitter, capped at 0.5 s. When ``change``
    returns the very document it was given (and one exists), nothing is written.
    """
    for attempt in range(attempts):
        current, version = read_document(store, key)
        updated = change(current)
        if updated is current and current is not None:
            return current
        data = json.dumps(updated, separators=(",", ":"), sort_keys=True).encode()
        try:
            if version is None:
                store.put(key, data, create_only=True)
            else:
                store.put(key, data, if_version=version)
            return updated
        except VersionConflict:
            time.sleep(random.uniform(0, min(0.5, backoff_s * 2**attempt)))
    raise StoreError(f"gave up updating {key} after {attempts} conflicting attempts")
