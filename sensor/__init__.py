"""KubeSonar sensor: packets to bidirectional flow records, and publishing them."""

from kubesonar.sensor import numba_cache as _numba_cache  # noqa: F401 - before any module imports numba
