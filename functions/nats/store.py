"""JetStream KV as the core's object store: ``nats://HOST:PORT/BUCKET``.

A key's version is its KV revision (the stream sequence of its last write). ``create_only`` publishes
with ``Nats-Expected-Last-Subject-Sequence: 0`` and ``if_version=r`` with ``r``: the server applies the
write only if the key's last revision is still the one read, so a lost race is a VersionConflict and
never an overwrite, across any number of backend replicas.

Documents above the server's max payload (1 MiB by default) cannot be KV values. They go to the
JetStream object store (bucket ``<BUCKET>_objects``) under a fresh name, and the KV value becomes a
small pointer carrying that name in a header; the pointer is written with the same conditions, so the
compare-and-swap still holds. The superseded object is deleted after the pointer moves on (a reader
that finds it gone reads the key again). The core's own documents stay far below the limit (detector
state is bounded by design); the pointer is there so no document is ever refused.

Keys: '/' becomes the subject separator '.', so listing a prefix is a server-side subject filter; the
characters of store keys that KV keys lack ('.', '=', '@', '+') are escaped as ``=XX``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from kubesonar.functions.nats.connection import NatsConnection
from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import StoredObject, check_key

POINTER = "KubeSonar-Object"  # header of a KV value that points into the object store
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = (10071, 10164)
_HEADROOM = 8 * 1024  # subject and headers of a KV message
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def encode_key(key: str) -> str:
    return ".".join("".join(c if c in _PLAIN else f"={ord(c):02X}" for c in part) for part in key.split("/"))


def decode_key(token: str) -> str:
    out, i = [], 0
    while i < len(token):
        if token[i] == "=":
            out.append(chr(int(token[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append("/" if token[i] == "." else token[i])
            i += 1
    return "".join(out)


class NatsObjectStore:
    def __init__(self, connection: NatsConnection, bucket: str, replicas: int = 1):
        self._conn, self.bucket = connection, bucket
        self._stream, self._prefix = f"KV_{bucket}", f"$KV.{bucket}."
        self._kv = self._run(self._open_bucket(replicas))
        self._objects: Any = None
        self._replicas = replicas
        self.inline_limit = connection.nc.max_payload - _HEADROOM
        self.conflicts = 0  # writes that lost a race (a metric: replicas contending for one document)

    def _run(self, coro: Any, what: str = "") -> Any:
        try:
            return self._conn.run(coro)
        except (StoreError, VersionConflict):
            raise
        except Exception as exc:  # timeouts, a server gone: one clear StoreError
            raise StoreError(f"NATS KV {self.bucket}: could not {what or 'reach the bucket'}: "
                             f"{type(exc).__name__} {exc}") from None

    async def _open_bucket(self, replicas: int) -> Any:
        js = self._conn.js
        try:
            return await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(KeyValueConfig(bucket=self.bucket, history=1, replicas=replicas,
                                                            storage=StorageType.FILE, direct=True))

    async def _object_store(self) -> Any:
        if self._objects is None:
            js, name = self._conn.js, f"{self.bucket}_objects"
            try:
                self._objects = await js.object_store(name)
            except nats.js.errors.BucketNotFoundError:
                self._objects = await js.create_object_store(name, replicas=self._replicas,
                                                             storage=StorageType.FILE)
        return self._objects

    # -- reads

    def get(self, key: str) -> StoredObject | None:
        return self._run(self._get(check_key(key)), f"read {key!r}")

    async def _read(self, subject: str) -> Any:
        try:
            msg = await self._conn.js.get_msg(self._stream, subject=subject, direct=self._kv._direct)
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        return None if headers.get("KV-Operation") in ("DEL", "PURGE") else msg

    async def _get(self, key: str) -> StoredObject | None:
        subject = self._prefix + encode_key(key)
        for _ in range(10):
            msg = await self._read(subject)
            if msg is None:
                return None
            name = (msg.headers or {}).get(POINTER)
            if not name:
                return StoredObject(msg.data or b"", str(msg.seq))
            try:
                data = await (await self._object_store()).get(name)
            except nats.js.errors.ObjectNotFoundError:
                continue  # a writer replaced the pointer and removed this object meanwhile: read again
            return StoredObject(data.data or b"", str(msg.seq))
        raise StoreError(f"{key}: its large object kept changing while being read")

    # -- writes

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        check_key(key)
        last: int | None = 0 if create_only else None
        if if_version is not None:
            if not if_version.isdigit():
                raise VersionConflict(f"{key}: {if_version!r} is no version of this store")
            last = int(if_version)
        return self._run(self._put(key, data, last), f"write {key!r}")

    async def _put(self, key: str, data: bytes, last: int | None) -> str:
        subject = self._prefix + encode_key(key)
        previous = await self._read(subject)
        old_object = (previous.headers or {}).get(POINTER) if previous is not None else None
        headers: dict[str, str] = {}
        payload, new_object = data, None
        if len(data) > self.inline_limit:
            new_object = f"{key}#{uuid.uuid4().hex}"
            await (await self._object_store()).put(new_object, data)
            headers[POINTER], payload = new_object, b""
        try:
            revision = await self._publish(subject, payload, headers, last)
        except BaseException:
            if new_object:
                await self._delete_object(new_object)
            raise
        if old_object and old_object != new_object:
            await self._delete_object(old_object)
        return str(revision)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str], last: int | None) -> int:
        if last is not None:
            headers[_EXPECTED_LAST] = str(last)
        try:
            return (await self._conn.js.publish(subject, payload, headers=headers or None)).seq
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            if last == 0:  # creating over a deleted key's marker is creating
                raw = await self._raw_last(subject)
                if raw is not None and (raw.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                    return await self._publish(subject, payload, headers, raw.seq)
            self.conflicts += 1
            raise VersionConflict(f"{decode_key(subject[len(self._prefix):])}: changed since it was read") from None

    async def _raw_last(self, subject: str) -> Any:
        try:
            return await self._conn.js.get_msg(self._stream, subject=subject, direct=self._kv._direct)
        except nats.js.errors.NotFoundError:
            return None

    async def _delete_object(self, name: str) -> None:
        try:
            await (await self._object_store()).delete(name)
        except (nats.js.errors.ObjectNotFoundError, nats.js.errors.ObjectDeletedError):
            pass

    # -- listing

    def list(self, prefix: str) -> Iterator[str]:
        return iter(self._run(self._list(prefix), f"list {prefix!r}"))

    async def _list(self, prefix: str) -> list[str]:
        *whole, _partial = prefix.split("/")
        pattern = ".".join([encode_key(p) for p in whole] + [">"])
        watcher = await self._kv.watch(pattern, ignore_deletes=True, meta_only=True)
        keys: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:
                    break
                keys.append(decode_key(entry.key))
        finally:
            await watcher.stop()
        return sorted(k for k in keys if k.startswith(prefix))


def open_nats_store(url: str) -> NatsObjectStore:
    from kubesonar.functions.nats.connection import shared_connection
    from kubesonar.shared.errors import ConfigError
    from kubesonar.shared.nats_address import parse_nats_url
    from kubesonar.shared.url_credentials import without_credentials

    address = parse_nats_url(url, "bucket")
    if not address.name or "." in address.name:
        raise ConfigError(f"store URL {without_credentials(url)!r}: name the KV bucket (letters, digits, _ and -), "
                          "e.g. nats://nats:4222/kubesonar")
    return NatsObjectStore(shared_connection(address), address.name, address.replicas)
