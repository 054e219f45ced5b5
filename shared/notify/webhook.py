"""Generic webhook: the alert JSON, signed so receivers can reject forgeries and replays.

Headers: ``X-KubeSonar-Timestamp: <unix seconds>`` and
``X-KubeSonar-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` (as Stripe and Slack
sign theirs). A receiver recomputes the HMAC over the raw body, compares in constant time, and rejects
a timestamp older than its tolerance (:func:`verify` does all three).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

TIMESTAMP_HEADER = "X-KubeSonar-Timestamp"
SIGNATURE_HEADER = "X-KubeSonar-Signature"


def payload(alert: dict[str, Any], reason: str, console_url: str = "") -> dict[str, Any]:
    return {"event": reason, "alert": alert, **({"console_url": console_url} if console_url else {})}


def digest(destination: str, held: dict[str, int], window_s: int) -> dict[str, Any]:
    return {"event": "digest", "window_s": window_s, "held": held}


def body(message: dict[str, Any]) -> bytes:
    return json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, timestamp: int, data: bytes) -> dict[str, str]:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + data, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: f"v1={mac}"}


def verify(secret: str, headers: dict[str, str], data: bytes, now_s: int, tolerance_s: int = 300) -> bool:
    """What a receiver does: the signature matches and the timestamp is fresh (no replay)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lowered.get(TIMESTAMP_HEADER.lower(), ""))
    except ValueError:
        return False
    if abs(now_s - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, data)[SIGNATURE_HEADER]
    return hmac.compare_digest(expected, lowered.get(SIGNATURE_HEADER.lower(), ""))
