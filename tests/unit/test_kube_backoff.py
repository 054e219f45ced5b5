"""The pod watch's backoff between failed rounds: full jitter, 0.2 s doubling to 30 s, however long the
API server keeps failing."""

from __future__ import annotations

from kubesonar.sensor.kube import backoff_s


def test_the_backoff_stays_within_its_cap_however_many_rounds_failed():
    for failures in (1, 2, 8, 1023, 1024, 100_000):
        assert 0 <= backoff_s(failures) <= 30.0  # 2**1024 once raised OverflowError, ending the watch thread


def test_the_first_waits_are_short():
    assert max(backoff_s(1) for _ in range(1000)) <= 0.4
    assert max(backoff_s(3) for _ in range(1000)) <= 1.6
