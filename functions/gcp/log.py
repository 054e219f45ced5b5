"""Structured logs as Cloud Logging reads them from stdout: one JSON object a line, with `severity` and
`message` (https://cloud.google.com/run/docs/logging#special-fields)."""

from __future__ import annotations

import json
import sys
from typing import Any


def log(severity: str, message: str, **fields: Any) -> None:
    print(json.dumps({"severity": severity, "message": message, **fields}, default=str), file=sys.stdout, flush=True)
