"""The embedded default's notifier: it keeps what a cloud would push, and the CLI prints it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CollectingNotifier:
    sent: list[dict[str, Any]] = field(default_factory=list)
    keep: int | None = None  # the latest this many (a process that runs for months); None: every one

    def notify(self, alert: dict[str, Any]) -> None:
        self.sent.append(alert)
        if self.keep is not None and len(self.sent) > self.keep:
            del self.sent[: len(self.sent) - self.keep]
