"""A bounded on-disk spool in front of a publisher: when the queue cannot be reached, messages wait on
disk and drain, oldest first, once it is back. Nothing is lost within the bound; beyond it the oldest
messages are dropped and counted. Delivery is at least once (receivers deduplicate by message key)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from kubesonar.sensor.queues import Message, Publisher
from kubesonar.shared.errors import ConfigError, QueueUnavailable

_KEY_LEN = struct.Struct("<H")


@dataclass
class SpoolStats:
    sent: int = 0  # messages the queue accepted
    retries: int = 0
    spooled: int = 0  # messages that went to disk
    drained: int = 0  # spooled messages delivered later
    dropped: int = 0  # oldest messages dropped to keep the bound
    dropped_bytes: int = 0
    depth: int = 0  # messages on disk now
    depth_bytes: int = 0
    peak_bytes: int = 0


class SpoolingPublisher:
    def __init__(self, inner: Publisher, directory: str | os.PathLike[str], max_bytes: int = 256 << 20,
                 attempts: int = 3, max_wait_s: float = 0.5):
        self.inner, self.limit = inner, inner.limit
        self.directory = Path(directory)
        if max_bytes < self.limit:
            raise ConfigError(f"spool bound {max_bytes} bytes is smaller than one message ({self.limit})")
        self.max_bytes = max_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create spool directory {self.directory}: {exc.strerror}") from None
        self.stats = SpoolStats()
        # retries stay short: the capture loop waits meanwhile; the spool absorbs longer outages
        self._retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_random_exponential(0.02, max_wait_s),
                                  retry=retry_if_exception_type(QueueUnavailable), reraise=True,
                                  before_sleep=self._count_retry)
        files = self._files()  # a restarted sensor resumes its spool
        self._next = int(files[-1].name.split(".")[0]) + 1 if files else 0
        self.stats.depth = len(files)
        self.stats.depth_bytes = sum(f.stat().st_size for f in files)

    def _count_retry(self, _state) -> None:
        self.stats.retries += 1

    def publish(self, messages: list[Message]) -> None:
        """Send now if the queue is reachable and nothing waits before these; else spool them."""
        if self.drain():
            try:
                self._retrying(self.inner.send, messages)
                self.stats.sent += len(messages)
                return
            except QueueUnavailable:
                pass
        for m in messages:
            self._spool(m)

    def drain(self) -> bool:
        """Deliver spooled messages oldest first; True once the spool is empty."""
        for path in self._files():
            message = _read(path)
            try:
                self._retrying(self.inner.send, [message])
            except QueueUnavailable:
                return False
            size = path.stat().st_size
            path.unlink()
            self.stats.sent += 1
            self.stats.drained += 1
            self.stats.depth -= 1
            self.stats.depth_bytes -= size
        return True

    def _spool(self, message: Message) -> None:
        key = message.key.encode()
        size = _KEY_LEN.size + len(key) + len(message.data)
        for old in self._files():
            if self.stats.depth_bytes + size <= self.max_bytes:
                break
            old_size = old.stat().st_size
            old.unlink()
            self.stats.dropped += 1
            self.stats.dropped_bytes += old_size
            self.stats.depth -= 1
            self.stats.depth_bytes -= old_size
        path = self.directory / f"{self._next:020d}.spool"
        self._next += 1
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(_KEY_LEN.pack(len(key)) + key + message.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.stats.spooled += 1
        self.stats.depth += 1
        self.stats.depth_bytes += size
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.stats.depth_bytes)

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.spool"))


def _read(path: Path) -> Message:
    raw = path.read_bytes()
    (n,) = _KEY_LEN.unpack_from(raw)
    return Message(raw[2 : 2 + n].decode(), raw[2 + n :])
