"""S3 as the core's object store: conditional writes are S3's own (If-None-Match: * to create,
If-Match on the ETag to replace), so concurrent Lambda invocations never lose an update.

botocore retries any operation, a conditional PUT included, whose answer was lost: standard mode
(retries/standard.py TransientRetryableChecker: ReadTimeoutError, ConnectionClosedError and the rest of its
ConnectionError family, 500/502/503/504, RequestTimeout) and legacy mode (data/_retry.json: the same
socket errors and 5xx) alike. So a failed condition is checked by reading the object's metadata back
(shared/write_token.py); a replace carries the tokens of the version it replaces, from the metadata
get_object returned with it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import STORE_RETRY_S, StoredObject, check_key, store_request_timeout_s
from kubesonar.shared.write_token import Current, Lineages

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# 412: the condition did not hold; 409: a concurrent conditional write to the same key won
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def client_config(retry_s: float = STORE_RETRY_S) -> Config:
    """The S3 client's config: its 3 attempts (standard mode's) share ``retry_s`` of connect and read
    timeouts (its own 60 s each took 180 s on a silent port); its retries' sleeps stay its own (< 3 s)."""
    timeout = store_request_timeout_s(retry_s, attempts=3)
    return Config(connect_timeout=timeout, read_timeout=timeout)


class S3ObjectStore:
    def __init__(self, client: S3Client | Any, bucket: str, prefix: str = ""):
        self._s3, self.bucket, self.prefix = client, bucket, prefix
        self._lineages = Lineages()

    def get(self, key: str) -> StoredObject | None:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + check_key(key))
            data = obj["Body"].read()
            self._lineages.note(key, obj.get("Metadata"), obj["ETag"])
            return StoredObject(data, obj["ETag"])
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise _store_error("read", key, exc) from None
        except BotoCoreError as exc:  # S3 not reached, or the answer cut: the store failed all the same
            raise _store_error("read", key, exc) from None

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        condition = {"IfNoneMatch": "*"} if create_only else {"IfMatch": if_version} if if_version else {}
        token = self._lineages.token_for(check_key(key), if_version, lambda: self._current(key))
        try:
            response = self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                           ContentType="application/json", Metadata=token.metadata, **condition)
        except ClientError as exc:
            if _code(exc) in _CONFLICT_CODES:
                return token.landed_or_conflict(key, lambda: self._current(key))
            if if_version and _code(exc) in ("NoSuchKey", "404"):
                raise VersionConflict(f"{key}: gone since it was read") from None
            raise _store_error("write", key, exc) from None
        except BotoCoreError as exc:
            raise _store_error("write", key, exc) from None
        self._lineages.note(key, token.metadata, response["ETag"])
        return response["ETag"]

    def _current(self, key: str) -> Current:
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise _store_error("read back", key, exc) from None
        except BotoCoreError as exc:
            raise _store_error("read back", key, exc) from None
        return head.get("Metadata"), head["ETag"]

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix):]
        except ClientError as exc:
            raise _store_error("list", prefix, exc) from None
        except BotoCoreError as exc:
            raise _store_error("list", prefix, exc) from None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _store_error(what: str, key: str, exc: ClientError | BotoCoreError) -> StoreError:
    why = (f"{_code(exc)} {exc.response.get('Error', {}).get('Message', '')}" if isinstance(exc, ClientError)
           else str(exc))
    return StoreError(f"S3 could not {what} {key!r}: {why}")
