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
        doc = json.loads(obj.data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{key} is not a JSON document: {exc}") from None
    except RecursionError:
        raise StoreError(f"{key} is nested too deeply to be a state document") from None
    check_shape(key, doc)
    return doc, obj.version


# Members whose type the core relies on, by key prefix: (name, allowed types, required).
_SHAPES: dict[str, tuple[tuple[str, tuple[type, ...], bool], ...]] = {
    "state/": (("state", (dict, type(None)), False), ("applied", (dict,), False), ("detectors", (dict,), False),
               ("findings", (dict,), False), ("layout", (int,), False)),
    "alerts/": (("count", (int,), True), ("first_seen", (str,), True), ("last_seen", (str,), True),
                ("status", (str,), True), ("batches", (list,), False)),
}


def check_shape(key: str, doc: Any) -> None:
    """A stored document that parses but is not what the core wrote is a StoreError naming it, never a
    silent reset: ``[]``, ``null`` or ``{}`` in place of a baseline would otherwise start it afresh,
    and a wrong member type would fail deep in a detector."""
    if not isinstance(doc, dict):
        raise StoreError(f"{key} holds {type(doc).__name__ if doc is not None else 'null'}, not a JSON object; "
                         "refusing to start it afresh (restore or delete the document)")
    if not doc:
        raise StoreError(f"{key} is an empty object; refusing to start it afresh (restore or delete the document)")
    for prefix, members in _SHAPES.items():
        if not key.startswith(prefix):
            continue
        for name, kinds, required in members:
            if name not in doc:
                if required:
                    raise StoreError(f"{key} lacks '{name}': not a document the core wrote")
                continue
            value = doc[name]
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise StoreError(f"{key}: '{name}' is {type(value).__name__}, not "
                                 f"{' or '.join('null' if k is type(None) else k.__name__ for k in kinds)}")
    # maps of objects in a layout-2 detectors document: a detector's state, a sensor's log (layout 1's
    # per-detector documents kept lists of findings under 'applied'; they are read once, to carry over)
    for name in ("detectors", "applied") if "layout" in doc or key.endswith("/detectors.json") else ():
        inner = doc.get(name)
        if isinstance(inner, dict):
            for member, value in inner.items():
                if value is not None and not isinstance(value, dict):
                    raise StoreError(f"{key}: '{name}.{member}' is {type(value).__name__}, not an object")


def update_document(
    store: ObjectStore, key: str, change: Callable[[Document | None], Document], attempts: int = 50,
    backoff_s: float = 0.005, before_write: Callable[[], None] | None = None,
) -> Document:
    """Apply ``change`` to the current document (None if there is none) and write it back atomically.

    ``change`` must be a pure function of the document it is given: on a lost race it runs again on
    the newer document. Backoff is exponential with full jitter, capped at 0.5 s. When ``change``
    returns the very document it was given, or None where there is none, nothing is written (a ``null``
    document would be refused by every later read). ``before_write`` runs
    after each ``change`` and before its write (what must be written first, such as the alerts the
    change found); if it raises, nothing is written.
    """
    for attempt in range(attempts):
        current, version = read_document(store, key)
        updated = change(current)
        if before_write is not None:
            before_write()
        if updated is current:
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
