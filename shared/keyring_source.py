"""The backend's keyring from its settings, read again from its source when a batch names a key it lacks.

Every runtime reads its keyring when an instance starts, and a warm instance lives for hours. After an
operator added a key (docs/hardening.md, rotation) and moved sensors to sign with it, instances that
still held the old keyring refused their batches as poison: data dead-lettered during a routine
rotation. A source that can change under a running instance (a Secrets Manager secret, a mounted file
the kubelet updates in place) is therefore read again before an unknown key id is refused, at most once
every ``REREAD_INTERVAL_S``, and the message verified against what was read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from kubesonar.shared.errors import ConfigError
from kubesonar.shared.signing import Keyring, SignatureError

# Anyone who can write to the queue can name key ids we lack, as often as they like: this bounds what
# that costs to one read per instance a minute (GetSecretValue at $0.05 per 10,000 calls: 1,440 a day,
# under a cent per instance). A key that has been in the source this long is always taken: the last
# read then either already saw it or is older than the interval, so the next unknown id reads again.
REREAD_INTERVAL_S = 60.0

_log = logging.getLogger("kubesonar")


class RereadingKeyring:
    """A keyring with the means to read it again; verifies as :class:`Keyring` does."""

    def __init__(self, read: Callable[[], Keyring], where: str, interval_s: float = REREAD_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._read, self.where, self._interval_s, self._clock = read, where, interval_s, clock
        self.keyring = read()  # at start a source that cannot be read stops the instance, as before
        self._last_reread: float | None = None  # the start's read does not count: a rotation may follow it
        self._lock = threading.Lock()  # one re-read at a time, even with concurrent requests
        self.rereads = 0
        self.reread_failures = 0

    def verify(self, data: bytes) -> bytes:
        held = self.keyring
        try:
            return held.verify(data)
        except SignatureError as exc:
            if exc.reason != "unknown_key" or not self._reread(held):
                raise
        return self.keyring.verify(data)

    def _reread(self, held: Keyring) -> bool:
        """Whether a keyring other than ``held`` is now in hand to verify with."""
        with self._lock:
            if self.keyring is not held:  # another request read it meanwhile
                return True
            now = self._clock()
            if self._last_reread is not None and now - self._last_reread < self._interval_s:
                return False
            self._last_reread = now
            self.rereads += 1
            try:
                self.keyring = self._read()
            except Exception as exc:  # noqa: BLE001 - unreachable, half-written, invalid: keep what we hold
                self.reread_failures += 1
                _log.warning("keyring %s: read again for a key id it lacks, and failed (%d failed so far); "
                             "keeping the keyring in hand: %s", self.where, self.reread_failures, exc)
                return False
            _log.info("keyring %s read again: a batch named a key id it lacked", self.where)
            return True


def keyring_from_env(env: Mapping[str, str], fetch_secret: Callable[[str], str] | None = None
                     ) -> Keyring | RereadingKeyring | None:
    """The backend's keyring from its settings, or None (unsigned accepted): ``KUBESONAR_KEYRING`` (the
    document itself, e.g. in a function's encrypted environment; fixed for the instance's life),
    ``KUBESONAR_KEYRING_FILE`` (a path to a regular file) or ``KUBESONAR_KEYRING_SECRET`` (a name the adapter's
    ``fetch_secret`` resolves in the cloud's secret manager), both read again as above. At most one."""
    given = [name for name in ("KUBESONAR_KEYRING", "KUBESONAR_KEYRING_FILE", "KUBESONAR_KEYRING_SECRET")
             if env.get(name)]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} are alternatives; set one")
    if not given:
        return None
    value = env[given[0]]
    if given[0] == "KUBESONAR_KEYRING":
        return Keyring.from_json(value, "KUBESONAR_KEYRING")
    if given[0] == "KUBESONAR_KEYRING_FILE":
        return RereadingKeyring(lambda: Keyring.load(value, regular_file=True), value)
    if fetch_secret is None:
        raise ConfigError("KUBESONAR_KEYRING_SECRET is set but this runtime cannot read a secret manager")
    return RereadingKeyring(lambda: Keyring.from_json(fetch_secret(value), f"secret {value}"), f"secret {value}")
