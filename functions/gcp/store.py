"""Cloud Storage as the core's object store: compare-and-swap on object generations
(ifGenerationMatch=0 to create, =<generation> to replace), so concurrent invocations never lose an update.

Every call goes with the library's DEFAULT_RETRY (its predicate: connection errors, timeouts, 408,
429, 500/502/503/504), cut to ``retry_s`` from its 120 s; on an upload too (3.x's default there as well;
2.x's retried only one with a precondition). So a create or a replace whose first attempt landed but
whose answer was lost comes back as 412 on the retry, which is checked by reading the object's metadata
back (shared/write_token.py). A replace carries the tokens of the version it replaces: a download does not
return the object's metadata, so it is read (one more request) unless this store wrote that version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import google.auth.exceptions
import requests
from google.api_core import exceptions as gexc
from google.cloud.storage.retry import DEFAULT_RETRY

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import STORE_RETRY_S, StoredObject, check_key, store_request_timeout_s
from kubesonar.shared.write_token import Current, Lineages

# GCS not reached, or its answer cut: google-cloud-storage 2.x raises the transport's own errors once its
# retries are spent (3.x wraps them in RetryError, a GoogleAPIError)
_FAILED = (gexc.GoogleAPIError, requests.RequestException, google.auth.exceptions.TransportError)


class GcsObjectStore:
    def __init__(self, client: Any, bucket: str, prefix: str = "", retry_s: float = STORE_RETRY_S):
        self._bucket, self.bucket, self.prefix = client.bucket(bucket), bucket, prefix
        # the library's own retries run to a 120 s timeout, each request's to 60 s (75-116 s measured on a
        # refused port, 60 s on a silent one)
        self._retry = DEFAULT_RETRY.with_timeout(retry_s)
        self._timeout = store_request_timeout_s(retry_s)
        self._lineages = Lineages()

    def get(self, key: str) -> StoredObject | None:
        blob = self._bucket.blob(self.prefix + check_key(key))
        try:
            # one request; the generation comes back in its headers
            data = blob.download_as_bytes(retry=self._retry, timeout=self._timeout)
        except gexc.NotFound:
            return None
        except _FAILED as exc:
            raise StoreError(f"GCS could not read {key!r}: {exc}") from None
        return StoredObject(data, str(blob.generation))

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        blob = self._bucket.blob(self.prefix + check_key(key))
        token = self._lineages.token_for(key, if_version, lambda: self._current(blob.name))
        blob.metadata = token.metadata
        condition = {"if_generation_match": 0} if create_only else (
            {"if_generation_match": int(if_version)} if if_version else {})
        try:
            blob.upload_from_string(data, content_type="application/json", retry=self._retry, timeout=self._timeout,
                                    **condition)
        except gexc.PreconditionFailed:
            if not (create_only or if_version):
                raise VersionConflict(f"{key}: changed since it was read") from None
            return token.landed_or_conflict(key, lambda: self._current(blob.name))
        except (*_FAILED, ValueError) as exc:
            raise StoreError(f"GCS could not write {key!r}: {exc}") from None
        self._lineages.note(key, token.metadata, str(blob.generation))
        return str(blob.generation)

    def _current(self, name: str) -> Current:
        try:
            current = self._bucket.get_blob(name, retry=self._retry, timeout=self._timeout)
        except _FAILED as exc:
            raise StoreError(f"GCS could not read {name!r}'s metadata: {exc}") from None
        return None if current is None else (current.metadata, str(current.generation))

    def list(self, prefix: str) -> Iterator[str]:
        try:
            for blob in self._bucket.client.list_blobs(self.bucket, prefix=self.prefix + prefix,
                                                         retry=self._retry, timeout=self._timeout):
                yield blob.name[len(self.prefix):]
        except _FAILED as exc:
            raise StoreError(f"GCS could not list {prefix!r}: {exc}") from None
