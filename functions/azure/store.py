"""Blob Storage as the core's object store: conditional writes are Blob Storage's ETags (If-None-Match: *
to create, If-Match on the ETag to replace), so concurrent invocations never lose an update.

azure-storage-blob retries with its own policy (_shared/policies.py StorageRetryPolicy, ExponentialRetry
by default; azure-core's RetryPolicy is not in its pipeline), for any method, PUT included: after
ServiceResponseError (the request went out, its answer was lost: a read timeout, a reset connection),
ServiceRequestError, 408, and 5xx but 501/505. So a failed condition is checked by reading the blob's
metadata back (shared/write_token.py); a replace carries the tokens of the version it replaces, from the
metadata download_blob returned with it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import ContentSettings, ExponentialRetry

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import STORE_RETRY_S, StoredObject, check_key, store_request_timeout_s
from kubesonar.shared.write_token import Current, Lineages

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

_JSON = ContentSettings(content_type="application/json")
# ExponentialRetry's n-th retry sleeps initial_backoff + increment_base**n, +-jitter
_INITIAL_S, _BASE_S, _JITTER_S = 0.5, 1.5, 0.5

# KUBESONAR_STORE_RETRY_S unset in the function app: twice it must end before Event Grid stops waiting for
# the invocation's answer (30 s), where other runtimes take shared/ports.py's 20 s (infra/azure sets it too)
FUNCTION_STORE_RETRY_S = 12.0


def client_options(retry_s: float = STORE_RETRY_S) -> dict[str, Any]:
    """The Blob client's keyword arguments that bound a call: its own timeouts (20 s to connect, 60 s a
    read) took 122 s on a silent port, its retries 82 s on a refused one."""
    retry = retry_within(retry_s)
    timeout = store_request_timeout_s(retry_s, attempts=retry.total_retries + 1)
    return {"retry_policy": retry, "connection_timeout": timeout, "read_timeout": timeout}


def retry_within(retry_s: float = STORE_RETRY_S) -> ExponentialRetry:
    """The client's retry policy (retry_policy=) with as many retries as fit ``retry_s`` seconds of sleep,
    jitter included, up to its own default count (3; its sleeps, 15 + 3**n s, took 82 s on a refused port)."""
    retries, slept = 0, 0.0
    while retries < 3 and (sleep := _INITIAL_S + _BASE_S ** (retries + 1) + _JITTER_S) + slept <= retry_s:
        retries, slept = retries + 1, slept + sleep
    return ExponentialRetry(initial_backoff=_INITIAL_S, increment_base=_BASE_S, retry_total=retries,
                            random_jitter_range=_JITTER_S)


class BlobObjectStore:
    def __init__(self, container: ContainerClient, prefix: str = ""):
        self._container, self.prefix = container, prefix
        self._lineages = Lineages()

    def get(self, key: str) -> StoredObject | None:
        try:
            download = self._container.download_blob(self.prefix + check_key(key))
            data = download.readall()
            self._lineages.note(key, download.properties.metadata, download.properties.etag)
            return StoredObject(data, download.properties.etag)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _store_error("read", key, exc) from None

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        name = self.prefix + check_key(key)
        condition = {"etag": if_version, "match_condition": MatchConditions.IfNotModified} if if_version else {}
        token = self._lineages.token_for(key, if_version, lambda: self._current(key))
        try:
            result = self._container.get_blob_client(name).upload_blob(data, overwrite=not create_only,
                                                                       content_settings=_JSON,
                                                                       metadata=token.metadata, **condition)
        except (ResourceExistsError, ResourceModifiedError):
            return token.landed_or_conflict(key, lambda: self._current(key))
        except ResourceNotFoundError as exc:
            if if_version and exc.error_code == "BlobNotFound":  # deleted since read: that version is gone
                raise VersionConflict(f"{key}: gone since it was read") from None
            raise _store_error("write", key, exc) from None
        except AzureError as exc:
            raise _store_error("write", key, exc) from None
        self._lineages.note(key, token.metadata, result["etag"])
        return result["etag"]

    def _current(self, key: str) -> Current:
        try:
            properties = self._container.get_blob_client(self.prefix + key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _store_error("read back", key, exc) from None
        return properties.metadata, properties.etag

    def list(self, prefix: str) -> Iterator[str]:
        try:
            for name in self._container.list_blob_names(name_starts_with=self.prefix + prefix):
                yield name[len(self.prefix):]
        except AzureError as exc:
            raise _store_error("list", prefix, exc) from None


def _store_error(what: str, key: str, exc: AzureError) -> StoreError:
    code = getattr(exc, "error_code", None) if isinstance(exc, HttpResponseError) else None
    reason = str(exc.message or exc).splitlines()[0][:200]
    return StoreError(f"Blob Storage could not {what} {key!r}: {code or type(exc).__name__}: {reason}")
