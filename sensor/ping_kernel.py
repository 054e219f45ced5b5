"""Compiled: whether ICMP echo data is what ping sends, the rules of sensor/app_layer.py's ``ping_data_vectorised``.

A capture holds a few echoes a batch; judging them with numpy cost ~120 array calls a batch whatever
their number. Here each row is read once. The clock words are summed as floats, as the reference
does: both are exact below 2**53, far above any clock or microsecond count they are compared with.
"""

from __future__ import annotations

import numpy as np

from kubesonar.sensor.jit import njit
from kubesonar.sensor.ping_fill import CLOCK_SKEW_S, MAX_PERIOD, MICROSECONDS, WINDOWS_PING


@njit(cache=True, nogil=True, inline="always")
def _word(data, row, at, size, little) -> float:
    value = 0.0
    for k in range(size):
        weight = 256.0 ** (k if little else size - 1 - k)
        value += np.float64(max(data[row, at + k], 0)) * weight
    return value


@njit(cache=True, nogil=True, inline="always")
def _clock(seconds, now_s) -> bool:
    return abs(seconds - now_s) <= CLOCK_SKEW_S


@njit(cache=True, nogil=True, inline="always")
def _fill_pattern(data, row, start) -> bool:
    """Whether the row's bytes from ``start`` on follow a fill pattern (-1: not captured, matches all)."""
    width = data.shape[1] - start
    first = data[row, start]
    counting = windows = True
    captured = 0
    for k in range(width):
        b = data[row, start + k]
        if b < 0:
            continue
        captured += 1
        if b != (first + k) % 256:
            counting = False
        if b != WINDOWS_PING[(k + start) % len(WINDOWS_PING)]:
            windows = False
    if counting or windows:
        return True
    for period in range(1, MAX_PERIOD + 1):
        if captured < 2 * period:
            break
        repeats = True
        for k in range(period, width):
            b = data[row, start + k]
            if b >= 0 and b != data[row, start + k - period]:
                repeats = False
                break
        if repeats:
            return True
    return False


@njit(cache=True, nogil=True)
def ping_data(data, now_s, out) -> None:
    """``out[i]``: row i of echo data bytes (-1 past what was captured) is what ping would have sent
    at ``now_s[i]`` (seconds)."""
    for row in range(data.shape[0]):
        now = now_s[row]
        ping = False
        if _clock(_word(data, row, 0, 8, True), now) and _word(data, row, 8, 8, True) < MICROSECONDS:
            ping = _fill_pattern(data, row, 16)
        if not ping and ((_clock(_word(data, row, 0, 4, True), now) and _word(data, row, 4, 4, True) < MICROSECONDS)
                         or (_clock(_word(data, row, 0, 4, False), now)
                             and _word(data, row, 4, 4, False) < MICROSECONDS)):
            ping = _fill_pattern(data, row, 8)
        if not ping:
            ping = _fill_pattern(data, row, 0)
        out[row] = ping
