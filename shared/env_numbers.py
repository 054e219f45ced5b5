"""Numbers the functions read from their environment at a cold start. A value that is not a number (or is
out of range) is one ConfigError naming the variable and the value, not a bare ValueError from float()."""

from __future__ import annotations

import math
from collections.abc import Mapping

from kubesonar.shared.errors import ConfigError


def seconds_setting(env: Mapping[str, str], name: str, default: float) -> float:
    """A duration in seconds: a finite number, 0 or more."""
    text = env.get(name)
    if text is None:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={text!r} is not a number of seconds (0 or more, such as 60)")
    return value


def count_setting(env: Mapping[str, str], name: str, default: int) -> int:
    """A count: a whole number, 1 or more."""
    text = env.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={text!r} is not a whole number of 1 or more (such as {default})")
    return value
