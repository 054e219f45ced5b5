"""numba's ``njit`` for the kernels (``*_kernel.py``), or a no-op when numba is missing.

Only the JIT path imports this: a built native module (sensor/build_native.py) needs no numba at all.
Where numba may keep its cache (a read-only root filesystem has no room beside the package) is chosen
by sensor/numba_cache.py, imported here before numba.
"""

from __future__ import annotations

from kubesonar.sensor import numba_cache as _numba_cache  # noqa: F401 - before numba is imported

try:
    from numba import njit as _numba_njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    def njit(*_args, **_options):
        return lambda function: function
else:
    def njit(**options):
        # the kernels allocate nothing: without numba's runtime (NRT) every array passed to a helper
        # costs no atomic reference count, which took 40% of dissection
        return _numba_njit(_nrt=False, **options)

__all__ = ["njit"]
