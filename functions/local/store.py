"""An object store on a local directory, with compare-and-swap that holds across processes.

Each key is a file; its version is the SHA-256 of its content (like an ETag). A write takes an
exclusive ``flock`` on the key's lock file, checks the condition, writes a temporary file and
renames it over the object, so readers see the old or the new object, never half of one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubesonar.shared.errors import StoreError, VersionConflict
from kubesonar.shared.ports import StoredObject, check_key

_LOCKS = ".locks"


def _version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalObjectStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        try:
            (self.root / _LOCKS).mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root / _LOCKS):  # an existing directory on a read-only mount
                pass
        except OSError as exc:
            raise StoreError(f"cannot use {self.root} as an object store: {exc.strerror}") from None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        lock = self.root / _LOCKS / hashlib.sha256(key.encode()).hexdigest()
        with open(lock, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, key: str) -> StoredObject | None:
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except (IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {key} under {self.root}: {exc.strerror}") from None
        return StoredObject(data, _version(data))

    def put(self, key: str, data: bytes, *, if_version: str | None = None, create_only: bool = False) -> str:
        try:
            return self._put(key, data, if_version, create_only)
        except OSError as exc:  # disk full, read-only, a file where a directory should be
            raise StoreError(f"cannot write {key} under {self.root}: {exc.strerror or exc}") from None

    def _put(self, key: str, data: bytes, if_version: str | None, create_only: bool) -> str:
        path = self._path(key)
        with self._locked(key):
            current = self.get(key)
            if create_only and current is not None:
                raise VersionConflict(f"{key} already exists")
            if if_version is not None and (current is None or current.version != if_version):
                raise VersionConflict(f"{key} changed since version {if_version[:12]}")
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return _version(data)

    def list(self, prefix: str) -> Iterator[str]:
        keys = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != _LOCKS]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = (rel / name).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))
