"""Structured logs as Cloud Logging reads them from stdout: one JSON object a line, with `severity` and
`message` (https://cloud.google.com/run/docs/logging#special-fields)."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

# Cloud Run serves concurrent requests on threads; `print` writes the text and the newline apart, so two
# entries could share a line and Cloud Logging would read neither as JSON. One locked write per entry.
_LINE = threading.Lock()


def log(severity: str, message: str, **fields: Any) -> None:
    line = json.dumps({"severity": severity, "message": message, **fields}, default=str) + "\n"
    with _LINE:
        sys.stdout.write(line)
        sys.stdout.flush()
