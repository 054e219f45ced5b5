"""distinct_addresses is np.unique on 16-byte addresses, faster: the same order, first rows and inverse."""

from __future__ import annotations

import numpy as np
import pytest

from kubesonar.shared.flow import distinct_addresses

_V4_MAPPED = np.frombuffer(b"\0" * 10 + b"\xff\xff", dtype=np.uint8)


@pytest.mark.parametrize(("rows", "pool"), [(0, 1), (1, 1), (7, 3), (5_000, 5), (20_000, 300), (20_000, 20_000)])
def test_the_same_as_numpys_unique(rows, pool):
    rng = np.random.default_rng(rows + pool)
    raw = rng.integers(0, 256, (pool, 16), dtype=np.uint8)
    raw[: pool // 2, :12] = _V4_MAPPED  # IPv4 and IPv6 mixed; high bytes test the unsigned order
    raw[pool // 2:, 8:] = raw[:1, 8:]  # addresses alike in their low word, apart in the high one
    addresses = raw.view("V16").ravel()[rng.integers(0, pool, rows)]
    expected = np.unique(addresses, return_index=True, return_inverse=True)
    got = distinct_addresses(addresses)
    assert got[0].dtype == addresses.dtype
    for e, g in zip(expected, got, strict=True):
        assert np.array_equal(e.ravel(), g)
