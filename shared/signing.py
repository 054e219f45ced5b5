"""Authenticated batch messages: HMAC-SHA256 over the whole message with a per-cluster key.

A signed message is a small envelope around the batch message::

    "KSS1" | key-id length (u8) | key id (ASCII) | HMAC-SHA256 (32 bytes) | batch message

The MAC covers everything before it and the whole batch message, so no byte can change unnoticed. A
key belongs to one cluster: a message is accepted only if the batch header's cluster is the key's, and
its sensor id begins with its node name (``<node>/...``), so a node's key speaks for its own cluster
and a sensor for its own node only. Two keys per cluster may be active at once, for rotation: sensors
move to the new key while the backend accepts both, then the old one is removed, once no batch signed
with it still waits in a sensor's spool or the queue (docs/hardening.md says how to tell).

Keyring document (a Kubernetes Secret's file for the sensor; the function's encrypted environment,
a file or the cloud's secret manager for the backend)::

    {"keys": [{"id": "prod-2026-12", "cluster": "prod", "secret": "<base64, 32 bytes or more>"}],
     "sign_with": "prod-2026-12"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kubesonar.shared.errors import BatchFormatError, ConfigError

MAGIC = b"KSS1"
MAC_BYTES = 32
MIN_SECRET_BYTES = 32
MAX_KEYS_PER_CLUSTER = 2  # per cluster, or per node for per-node keys
# A keyring is at most what a Kubernetes Secret holds (1 MiB; Secrets Manager: 64 KiB), which is room for
# two keys for each of thousands of nodes: past it the path points at something else (a log, /dev/zero),
# read no further
MAX_KEYRING_BYTES = 1 << 20
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
OVERHEAD = len(MAGIC) + 1 + 64 + MAC_BYTES  # the most an envelope adds to a message


class SignatureError(BatchFormatError):
    """A message is unsigned, badly signed, signed with an unknown key, or speaks for another cluster
    or node. It will never verify: it is poison, counted by :attr:`reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"signature: {reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Key:
    key_id: str
    cluster: str
    secret: bytes
    node: str | None = None  # a per-node key speaks for that node only; None: any node of the cluster


class Verifier(Protocol):
    """What the backend checks messages with: a :class:`Keyring`, or one its runtime re-reads from a
    source that can change while it runs (shared/keyring_source.py)."""

    def verify(self, data: bytes) -> bytes: ...


def is_signed(data: bytes) -> bool:
    return bytes(data[:4]) == MAGIC


class Keyring:
    """The keys one side knows; ``sign_with`` names the one a sensor signs with."""

    def __init__(self, keys: list[Key], sign_with: str | None = None):
        self._keys = {k.key_id: k for k in keys}
        per_scope: dict[tuple[str, str | None], int] = {}
        for key in keys:
            per_scope[(key.cluster, key.node)] = per_scope.get((key.cluster, key.node), 0) + 1
        crowded = [scope for scope, n in per_scope.items() if n > MAX_KEYS_PER_CLUSTER]
        if crowded:
            cluster, node = crowded[0]
            raise ConfigError(f"cluster {cluster!r}{f' node {node!r}' if node else ''} has more than "
                              f"{MAX_KEYS_PER_CLUSTER} active keys (one current, one being rotated out)")
        if sign_with is not None and sign_with not in self._keys:
            raise ConfigError(f"sign_with names key {sign_with!r}, which is not in the keyring")
        self.sign_with = sign_with

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Keyring:
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"keyring {where}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
            raise ConfigError(f"keyring {where}: expected an object with a non-empty 'keys' list")
        keys = [_key(raw, f"keyring {where} key {i + 1}") for i, raw in enumerate(doc["keys"])]
        if len({k.key_id for k in keys}) != len(keys):
            raise ConfigError(f"keyring {where}: a key id appears twice")
        sign_with = doc.get("sign_with")
        if sign_with is not None and not isinstance(sign_with, str):
            raise ConfigError(f"keyring {where}: 'sign_with' is a key id")
        try:
            return cls(keys, sign_with)
        except ConfigError as exc:
            raise ConfigError(f"keyring {where}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path, regular_file: bool = False) -> Keyring:
        """The keyring in the file at ``path``, read up to MAX_KEYRING_BYTES. ``regular_file``: refuse a
        FIFO, a device or a socket without waiting on it, for a source read again while batches wait."""
        try:
            # O_NONBLOCK: opening a FIFO does not wait for a writer (a regular file reads as ever)
            with open(os.open(path, os.O_RDONLY | (os.O_NONBLOCK if regular_file else 0)), "rb") as handle:
                if regular_file and not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    raise ConfigError(f"keyring {path} is not a regular file (a FIFO or a device is not read "
                                      "again); mount the keyring as a file, or pass it in KUBESONAR_KEYRING")
                text = handle.read(MAX_KEYRING_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read keyring {path}: {exc.strerror}") from None
        if len(text) > MAX_KEYRING_BYTES:
            raise ConfigError(f"keyring {path} is larger than {MAX_KEYRING_BYTES} bytes, which no keyring is")
        return cls.from_json(text, str(path))

    # -- sensor side ----------------------------------------------------------------------------------

    def check_signs_for(self, cluster: str) -> None:
        """A sensor's keyring must sign with a key of its own cluster: the backend would refuse the rest."""
        if self.sign_with is None:
            raise ConfigError("the keyring names no key to sign with ('sign_with')")
        if self._keys[self.sign_with].cluster != cluster:
            raise ConfigError(f"key {self.sign_with!r} is for cluster {self._keys[self.sign_with].cluster!r}, "
                              f"not {cluster!r}")

    def sign(self, message: bytes) -> bytes:
        if self.sign_with is None:
            raise ConfigError("this keyring names no key to sign with ('sign_with')")
        key = self._keys[self.sign_with]
        head = MAGIC + struct.pack("B", len(key.key_id)) + key.key_id.encode()
        return head + _mac(key.secret, head, message) + message

    # -- backend side ---------------------------------------------------------------------------------

    def verify(self, data: bytes) -> bytes:
        """The batch message inside a signed envelope, once its MAC, cluster and node check out."""
        data = bytes(data)
        if not is_signed(data):
            raise SignatureError("unsigned", "the message carries no signature and this backend requires one")
        if len(data) < len(MAGIC) + 1:
            raise SignatureError("malformed", "envelope cut short")
        id_len = data[len(MAGIC)]
        start = len(MAGIC) + 1 + id_len + MAC_BYTES
        if len(data) < start:
            raise SignatureError("malformed", "envelope cut short")
        key_id = data[len(MAGIC) + 1 : len(MAGIC) + 1 + id_len].decode("ascii", "replace")
        key = self._keys.get(key_id)
        if key is None:
            # after a rotation, what a sensor spooled or the queue held under the removed key comes back so
            raise SignatureError("unknown_key", f"key id {key_id[:64]!r} is not in the keyring (removed too early? "
                                                "batches signed before a rotation wait in spools and queues up to "
                                                "23 h: docs/hardening.md)")
        head, mac, message = data[: start - MAC_BYTES], data[start - MAC_BYTES : start], data[start:]
        if not hmac.compare_digest(mac, _mac(key.secret, head, message)):
            raise SignatureError("bad_mac", f"the MAC does not match key {key_id!r}")
        from kubesonar.shared.batch import decode_header  # here: batch reads envelopes through this module

        header = decode_header(message)
        if header.cluster != key.cluster:
            raise SignatureError("wrong_cluster", f"key {key_id!r} is for cluster {key.cluster!r}, "
                                                  f"the message says {header.cluster!r}")
        if key.node is not None and header.node != key.node:
            raise SignatureError("wrong_node", f"key {key_id!r} is for node {key.node!r}, "
                                               f"the message says {header.node!r}")
        if not header.sensor_id.startswith(header.node + "/"):
            raise SignatureError("wrong_node", f"sensor {header.sensor_id!r} does not belong to node {header.node!r}")
        return message


def unwrap_unverified(data: bytes) -> bytes:
    """The batch message of a signed envelope without checking it: only where no keyring is configured."""
    data = bytes(data)
    if not is_signed(data) or len(data) < len(MAGIC) + 1:
        return data
    return data[len(MAGIC) + 1 + data[len(MAGIC)] + MAC_BYTES :]


def _mac(secret: bytes, head: bytes, message: bytes) -> bytes:
    return hmac.new(secret, head + message, hashlib.sha256).digest()


def _key(raw: Any, where: str) -> Key:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a key is an object with id, cluster and secret")
    key_id, cluster, secret = raw.get("id"), raw.get("cluster"), raw.get("secret")
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise ConfigError(f"{where}: 'id' must be 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(cluster, str) or not cluster:
        raise ConfigError(f"{where}: 'cluster' names the cluster the key speaks for")
    try:
        decoded = base64.b64decode(secret, validate=True) if isinstance(secret, str) else b""
    except (binascii.Error, ValueError):
        decoded = b""
    node = raw.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        raise ConfigError(f"{where}: 'node', when given, names the one node the key speaks for")
    if len(decoded) < MIN_SECRET_BYTES:
        raise ConfigError(f"{where}: 'secret' must be base64 of at least {MIN_SECRET_BYTES} random bytes "
                          "(openssl rand -base64 32)")
    return Key(key_id, cluster, decoded, node)


_log = logging.getLogger("kubesonar")
_warned = [False]


def authenticate(data: bytes, keyring: Verifier | None) -> bytes:
    """The batch message to decode: verified when a keyring is configured (anything else is a
    SignatureError); without one (the embedded default) accepted as it is, with a warning once."""
    if keyring is not None:
        return keyring.verify(data)
    if not _warned[0]:
        _warned[0] = True
        _log.warning("no keyring configured: batch messages are accepted unauthenticated "
                     "(anyone who can write to the queue can feed flows); see docs/hardening.md")
    return unwrap_unverified(data)
