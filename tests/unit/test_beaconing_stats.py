"""beaconing's quartiles and medians on sorted lists are numpy's, bit for bit: the rule's decisions
must not move by a rounding when the arithmetic leaves numpy for speed."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kubesonar.shared.detectors.beaconing import median_of_sorted, regularity, skew_and_spread


def _numpy_skew_and_spread(values: np.ndarray) -> tuple[float, float]:
    """The definition as it was written with numpy."""
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    skew = (q1 + q3 - 2 * q2) / (q3 - q1) if q3 > q1 else 0.0
    mad = float(np.median(np.abs(values - q2)))
    spread = 0.0 if mad == 0 else (mad / q2 if q2 > 0 else math.inf)
    return 1.0 - min(1.0, abs(float(skew))), float(spread)


_intervals = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False, allow_infinity=False)
_sizes = st.integers(min_value=0, max_value=2**40).map(float)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_intervals, _sizes), min_size=1, max_size=65))
def test_the_statistics_are_numpys_bit_for_bit(values):
    array = np.array(values, dtype=np.float64)
    assert skew_and_spread(array) == _numpy_skew_and_spread(array)
    assert skew_and_spread(values) == _numpy_skew_and_spread(array)
    assert median_of_sorted(sorted(values)) == float(np.median(array))


def test_a_clock_and_an_exponential_process_score_as_rita_says():
    assert regularity([30.0] * 20) == 1.0
    rng = np.random.default_rng(1)
    assert 0.4 < regularity(rng.exponential(30.0, 64)) < 0.75
