"""Telling our own landed write from another writer's once a conditional write has failed.

The stores' SDKs retry a PUT whose answer was lost (a timeout, a reset connection, a 5xx): botocore in
its standard and legacy modes, azure-storage-blob's retry policy, google-cloud-storage for a write with a
precondition. When the first attempt landed, the retry of a create (If-None-Match: *) or of a replace
(If-Match on the version read) meets that very write and fails its condition (412; Blob Storage says 409
to a create). Calling that a conflict would have update_document apply its change again on its own
write (an edge summary counted twice, a comment added twice). So every write carries a token of its own
in the object's metadata, and after a failed condition the store reads the object back: our token
means our write landed. (Equal bytes would not do: two writers often create the same document.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubesonar.shared.errors import VersionConflict

# one name that S3 (an HTTP header), Blob Storage (a C# identifier) and Cloud Storage all accept as is
METADATA_KEY = "kubesonarwrite"

# what a read-back finds: the object's metadata and version, or None when there is no object
Current = tuple[Mapping[str, str] | None, str] | None


@dataclass(frozen=True)
class WriteToken:
    """One write's mark, sent with it as the object's metadata."""

    value: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: self.value}

    def landed_or_conflict(self, key: str, read_back: Callable[[], Current]) -> str:
        """After a failed condition: the version our write landed as, if the object carries this token;
        else VersionConflict (another writer's object, or none)."""
        current = read_back()
        if current is not None and (current[0] or {}).get(METADATA_KEY) == self.value:
            return current[1]  # our own first attempt landed; its answer was lost
        raise VersionConflict(f"{key}: changed since it was read")
