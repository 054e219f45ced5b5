"""The embedded default queue: a directory, each message a file written atomically; readers take them in
name order (sensor, sequence, part) and a rewrite of the same key replaces the same file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from kubesonar.sensor.queues import Message
from kubesonar.shared.batch import SQS_LIMIT
from kubesonar.shared.errors import ConfigError, QueueUnavailable


class DirectoryQueue:
    def __init__(self, directory: str | os.PathLike[str], limit: int = SQS_LIMIT):
        self.directory = Path(directory)
        self.limit = limit  # default: the smallest cloud limit, so local runs split batches as production does

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            try:
                with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".incoming-", delete=False) as f:
                    f.write(m.data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(f.name, self.directory / m.file_name)
            except OSError as exc:
                raise QueueUnavailable(f"cannot write to queue directory {self.directory}: {exc.strerror}") from None


def open_directory_queue(url: str) -> DirectoryQueue:
    path = urlparse(url).path
    if not path:
        raise ConfigError(f"queue URL {url!r}: file:// needs a directory, e.g. file:///var/lib/kubesonar/queue")
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create queue directory {directory}: {exc.strerror}") from None
    return DirectoryQueue(directory)
