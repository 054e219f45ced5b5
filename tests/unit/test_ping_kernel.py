"""The compiled ping judge (sensor/ping_kernel.py) against its numpy reference, on echo data built to
hit every rule: timevals of each layout near and far from the capture's clock, each fill pattern,
patterns broken at one byte, cut at any length."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kubesonar.sensor import record_walk
from kubesonar.sensor.app_layer import ping_data_vectorised
from kubesonar.sensor.ping_fill import PATTERN_WINDOW, WINDOWS_PING

NOW_S = 1_700_000_000


def _fill(kind: str, start: int, period: bytes) -> bytes:
    k = np.arange(PATTERN_WINDOW)
    if kind == "count":
        return bytes(((k + period[0]) % 256).tolist())
    if kind == "windows":
        return bytes(WINDOWS_PING[(k + start) % len(WINDOWS_PING)].astype(np.uint8).tolist())
    return (period * PATTERN_WINDOW)[:PATTERN_WINDOW]


def _clock(layout: str, seconds: int, micros: int) -> bytes:
    return {"tv64": struct.pack("<qq", seconds, micros), "tv32le": struct.pack("<ii", seconds, micros),
            "tv32be": struct.pack(">ii", seconds, micros), "none": b""}[layout]


echo_rows = st.builds(
    lambda layout, offset_s, micros, kind, period, flip, captured: (layout, offset_s, micros, kind, period, flip,
                                                                     captured),
    st.sampled_from(["tv64", "tv32le", "tv32be", "none"]),
    st.sampled_from([0, 100, 366 * 86_400, 366 * 86_400 + 1, -400 * 86_400, 2**31 - 1 - NOW_S]),
    st.sampled_from([0, 999_999, 1_000_000, 2**31 - 1]),
    st.sampled_from(["count", "windows", "repeat"]),
    st.binary(min_size=1, max_size=18),
    st.one_of(st.none(), st.integers(0, PATTERN_WINDOW - 1)),
    st.integers(0, PATTERN_WINDOW),
)


def _row(spec) -> np.ndarray:
    layout, offset_s, micros, kind, period, flip, captured = spec
    head = _clock(layout, NOW_S + offset_s, micros)
    data = bytearray((head + _fill(kind, len(head), period))[:PATTERN_WINDOW])
    if flip is not None:
        data[flip] ^= 0x5A
    row = np.full(PATTERN_WINDOW, -1, dtype=np.int64)
    row[:captured] = np.frombuffer(bytes(data), dtype=np.uint8)[:captured]
    return row


@settings(max_examples=300, deadline=None)
@given(st.lists(echo_rows, min_size=1, max_size=12))
def test_compiled_and_numpy_judges_agree(specs):
    data = np.stack([_row(spec) for spec in specs])
    now_s = np.full(len(data), NOW_S, dtype=np.int64)
    expected = ping_data_vectorised(data, now_s)
    compiled = np.empty(len(data), dtype=bool)
    record_walk.ping_data(data, now_s, compiled)
    assert compiled.tolist() == expected.tolist()


def test_the_rules_are_exercised_both_ways():
    """Guards the generator above: it must produce data ping sends and data it does not."""
    rows = [_row(("tv64", 0, 5, "count", b"\x07", None, 112)), _row(("none", 0, 0, "windows", b"x", None, 112)),
            _row(("tv32be", 0, 5, "repeat", b"ab", None, 40)), _row(("tv64", 0, 5, "count", b"\x07", 50, 112)),
            _row(("none", 0, 0, "repeat", bytes(range(17)), None, 112))]
    data = np.stack(rows)
    judged = np.empty(len(data), dtype=bool)
    record_walk.ping_data(data, np.full(len(data), NOW_S, dtype=np.int64), judged)
    assert judged.tolist() == [True, True, True, False, False]
