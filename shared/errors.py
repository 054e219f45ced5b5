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
