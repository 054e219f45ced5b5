"""Cloud Storage as the core's object store: compare-and-swap on object generations
(ifGenerationMatch=0 to create, =<generation> to replace), so concurrent invocations never lose an update.

The client library retries an upload only when it carries a precondition; so a create whose first
attempt landed but whose answer was lost comes back as 412 on the retry. A 412 on a create or a replace
is therefore checked by reading the object back: every write carries a token of its own in the object's
metadata, and our token means we won. (Equal bytes would not do: two writers often create the same document.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import google.auth.exceptions
import requests
from google.api_core import exceptions as gexc

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import StoredObject, check_key

_TOKEN = "kubesonar-write"
# GCS not reached, or its answer cut: google-cloud-storage 2.x raises the transport's own errors once its
# retries are spent (3.x wraps them in RetryError, a GoogleAPIError)
_FAILED = (gexc.GoogleAPIError, requests.RequestException, google.auth.exceptions.TransportError)


class GcsObjectStore:
    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self._bucket, self.bucket, self.prefix = client.bucket(bucket), bucket, prefix

    def get(self, key: str) -> StoredObject | None:
        blob = self._bucket.blob(self.prefix + check_key(key))
        try:
            data = blob.download_as_bytes()  # one request; the generation comes back in its headers
        except gexc.NotFound:
            return None
        except _FAILED as exc:
            raise StoreError(f"GCS could not read {key!r}: {exc}") from None
        return StoredObject(data, str(blob.generation))

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        blob = self._bucket.blob(self.prefix + check_key(key))
        blob.metadata = {_TOKEN: uuid.uuid4().hex}
        condition = {"if_generation_match": 0} if create_only else (
            {"if_generation_match": int(if_version)} if if_version else {})
        try:
            blob.upload_from_string(data, content_type="application/json", **condition)
        except gexc.PreconditionFailed:
            if (create_only or if_version) and (landed := self._written_by(blob)) is not None:
                return landed  # our own first attempt landed; its answer was lost
            raise VersionConflict(f"{key}: changed since it was read") from None
        except (*_FAILED, ValueError) as exc:
            raise StoreError(f"GCS could not write {key!r}: {exc}") from None
        return str(blob.generation)

    def _written_by(self, blob: Any) -> str | None:
        """The generation of the object if this very write (its token) made it, else None."""
        try:
            current = self._bucket.get_blob(blob.name)
        except _FAILED as exc:
            raise StoreError(f"GCS could not read {blob.name!r} back after a 412: {exc}") from None
        mine = current is not None and (current.metadata or {}).get(_TOKEN) == blob.metadata[_TOKEN]
        return str(current.generation) if mine else None

    def list(self, prefix: str) -> Iterator[str]:
        try:
            for blob in self._bucket.client.list_blobs(self.bucket, prefix=self.prefix + prefix):
                yield blob.name[len(self.prefix):]
        except _FAILED as exc:
            raise StoreError(f"GCS could not list {prefix!r}: {exc}") from None
