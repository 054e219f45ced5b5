"""numba's ``njit`` for the kernels (``*_kernel.py``), or a no-op when numba is missing.

Only the JIT path imports this: a built native module (sensor/build_native.py) needs no numba at all.
"""

from __future__ import annotations

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    def njit(*_args, **_options):
        return lambda function: function

__all__ = ["njit"]
