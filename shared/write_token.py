"""Telling our own landed write from another writer's once a conditional write has failed.

The stores' SDKs retry a PUT whose answer was lost (a timeout, a reset connection, a 5xx): botocore in
its standard and legacy modes, azure-storage-blob's retry policy, google-cloud-storage for a write with a
precondition. When the first attempt landed, the retry of a create (If-None-Match: *) or of a replace
(If-Match on the version read) meets that very write and fails its condition (412; Blob Storage says 409
to a create). Calling that a conflict would have update_document apply its change again on its own
write (an edge summary counted twice, a comment added twice). So every write carries a token of its own
in the object's metadata, and after a failed condition the store reads the object back: our token
means our write landed. (Equal bytes would not do: two writers often create the same document.)

Another writer may read our landed write and replace it before our retry's answer is read back; the
object then bears its token, not ours. So a conditional replace also carries its lineage: the token of
the version it replaces, with that version, and that version's own lineage, newest first, trimmed to
LINEAGE_BUDGET characters (S3 allows 2 KB of user metadata in all, Blob Storage and Cloud Storage 8 KiB;
the budget holds the last 15 writes on S3, about 20 on the others). A read-back that finds our token
there knows our write landed and that the current object was built on it, and put returns the version
our write landed as: put's contract, the version this write made, holds as it is, that version is merely
superseded already (a replace conditioned on it conflicts, as after any write someone else followed).
update_document needs no "landed, but superseded" answer: its change is in the document, which it
returns as its change made it, as after any success.

Only a conditional replace carries a lineage, and only that of the very version it is conditioned on:
its bytes were built on that version, so every token in an object's lineage is a write whose change the
object holds. An unconditional put or a create starts a lineage afresh. The metadata of the version
replaced comes from the store's last read or write of the key (:class:`Lineages`: update_document reads
just before it writes, and S3 and Blob Storage reads return the metadata), else from a read of the
metadata, one request more (Cloud Storage's downloads do not return it). Objects written before lineages
had only their token, which a replace carries forward all the same.

Alternatives not taken: a "superseded" error from put (every caller of put would have to learn it, and
the ones that catch VersionConflict would apply again); tokens in the document itself (no size limit,
but the store's bookkeeping in every document the core and its users read, and nothing for the bytes
that are no JSON document); the bucket's object versions (unbounded, but a listing and a read per version
on every failed condition, and versioning is a bucket setting the store cannot count on).
A document replaced more than the budget's number of times between our write and its read-back still
loses our token, and is a VersionConflict as before.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubesonar.shared.errors import VersionConflict

# one name that S3 (an HTTP header), Blob Storage (a C# identifier) and Cloud Storage all accept as is
METADATA_KEY = "kubesonarwrite"
# the writes this one was built on: "token=version" entries, newest first, separated by spaces (none of
# the stores' versions, ETags or generations, has one)
LINEAGE_KEY = "kubesonarlineage"
LINEAGE_BUDGET = 1024  # characters: with the token, about half of S3's 2 KB of user metadata

# what a read-back finds: the object's metadata and version, or None when there is no object
Current = tuple[Mapping[str, str] | None, str] | None
Lineage = tuple[tuple[str, str], ...]  # (token, version it landed as), newest first


@dataclass(frozen=True)
class WriteToken:
    """One write's mark, sent with it as the object's metadata, with the marks of what it was built on."""

    value: str = field(default_factory=lambda: uuid.uuid4().hex)
    built_on: Lineage = ()

    @classmethod
    def replacing(cls, version: str, replaced: Current) -> WriteToken:
        """The token of a write conditioned on ``version``; ``replaced`` is what was read of the object's
        metadata, carried forward only if it is of that very version."""
        if replaced is None or replaced[1] != version:
            return cls()
        metadata = replaced[0] or {}
        own = metadata.get(METADATA_KEY)
        return cls(built_on=_within_budget((((own, version),) if own else ()) + _lineage(metadata)))

    @property
    def metadata(self) -> dict[str, str]:
        if not self.built_on:
            return {METADATA_KEY: self.value}
        return {METADATA_KEY: self.value, LINEAGE_KEY: " ".join(f"{t}={v}" for t, v in self.built_on)}

    def landed_or_conflict(self, key: str, read_back: Callable[[], Current]) -> str:
        """After a failed condition: the version our write landed as, if the object carries this token
        or was built on an object that did; else VersionConflict (another writer's object, or none)."""
        current = read_back()
        if current is not None:
            metadata = current[0] or {}
            if metadata.get(METADATA_KEY) == self.value:
                return current[1]  # our own first attempt landed; its answer was lost
            for token, version in _lineage(metadata):
                if token == self.value:
                    return version  # it landed, and others have built on it since
        raise VersionConflict(f"{key}: changed since it was read")


class Lineages:
    """The metadata of the version of each key a store last read or wrote (the last ``keys`` keys), so
    that a write replacing that version carries its lineage without reading it again."""

    def __init__(self, keys: int = 1024):
        self._known: OrderedDict[str, tuple[Mapping[str, str] | None, str]] = OrderedDict()
        self._keys, self._lock = keys, threading.Lock()

    def note(self, key: str, metadata: Mapping[str, str] | None, version: str) -> None:
        with self._lock:
            self._known[key] = (metadata, version)
            self._known.move_to_end(key)
            if len(self._known) > self._keys:
                self._known.popitem(last=False)

    def token_for(self, key: str, if_version: str | None, read_back: Callable[[], Current]) -> WriteToken:
        """The token of a write of ``key``: one that replaces ``if_version`` carries its lineage, from the
        last read if that was of this version, else from ``read_back``."""
        if if_version is None:
            return WriteToken()
        with self._lock:
            known = self._known.get(key)
        if known is None or known[1] != if_version:
            known = read_back()
        return WriteToken.replacing(if_version, known)


def _lineage(metadata: Mapping[str, str]) -> Lineage:
    entries = (entry.partition("=") for entry in (metadata.get(LINEAGE_KEY) or "").split())
    return tuple((token, version) for token, _, version in entries if token and version)


def _within_budget(lineage: Lineage) -> Lineage:
    kept, size = [], -1
    for token, version in lineage:
        size += len(token) + len(version) + 2  # '=' and the space before it
        if size > LINEAGE_BUDGET:
            break
        kept.append((token, version))
    return tuple(kept)
