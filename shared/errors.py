"""The project's one exception root and its precise subclasses."""

from __future__ import annotations


class KubeSonarError(Exception):
    """Root of every error KubeSonar raises on purpose; the message says what was wrong."""


class ConfigError(KubeSonarError):
    """A setting, flag or configuration file is invalid."""


class CaptureError(KubeSonarError):
    """A packet capture file is missing, of an unknown format, corrupt or truncated."""


class BatchFormatError(KubeSonarError):
    """A flow batch message is malformed, truncated, of an unknown version or over a size cap."""


class StoreError(KubeSonarError):
    """The object store failed or refused a request."""


class VersionConflict(StoreError):
    """A compare-and-swap write lost: the object changed (or exists, or vanished) since it was read."""


class QueueUnavailable(KubeSonarError):
    """The queue a sensor publishes to could not be reached or refused a message; worth retrying."""


class QueueRefusingAll(QueueUnavailable):
    """The queue refuses every window the sensor sends (misconfigured): its batches are held in the spool, which
    offers it its newest window now and then to learn whether it works again (sensor/queues/refusals.py)."""


class MessageRefused(KubeSonarError):
    """The queue refused messages for what they are (too large, a malformed attribute): sending them again
    would be refused again. The rest of the send was delivered. ``refused`` maps each key to the reason."""

    def __init__(self, refused: dict[str, str]):
        super().__init__("; ".join(f"{key}: {why}" for key, why in refused.items()))
        self.refused = refused


class AlertNotFound(KubeSonarError):
    """No alert has the id given."""


class TriageError(KubeSonarError):
    """A triage change is invalid (a status that does not exist, a snooze that cannot be read)."""


class DeliveryFailed(KubeSonarError):
    """A notification destination refused or did not answer; the outbox retries it later."""
