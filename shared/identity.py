"""Identity, built in one place: the workload key, a flow side's endpoint and a batch message's key.

Every other module calls these instead of formatting the strings itself, so a change of form is one edit.
"""

from __future__ import annotations

from kubesonar.shared.errors import BatchFormatError


def workload_key(namespace: str, kind: str, name: str) -> str:
    """``namespace/kind/name``: a workload across its pods and restarts; '' when the name is unknown."""
    return f"{namespace}/{kind}/{name}" if name else ""


def batch_key(sensor_id: str, sequence: int, part: int) -> str:
    """What identifies a batch message across redeliveries: its sensor, sequence number and part."""
    return f"{sensor_id}/{sequence}/{part}"


def split_batch_key(key: str) -> tuple[str, int, int]:
    """(sensor id, sequence, part) of a batch key; a key of another form is a BatchFormatError."""
    try:
        sensor, sequence, part = key.rsplit("/", 2)
        return sensor, int(sequence), int(part)
    except ValueError:
        raise BatchFormatError(f"batch key {key!r} is not <sensor id>/<sequence>/<part>") from None
