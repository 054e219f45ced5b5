"""numba's ``njit`` for the kernels (``*_kernel.py``), or a no-op when numba is missing.

Only the JIT path imports this: a built native module (sensor/build_native.py) needs no numba at all.
Numba caches compiled kernels beside the package, else under $HOME; on a read-only root filesystem
neither is writable and numba refuses to load, so the cache then goes to the temporary directory
(NUMBA_CACHE_DIR, when set, is always honoured).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _choose_cache_dir() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    package = Path(__file__).resolve().parent
    home = Path(os.environ.get("HOME", "/nonexistent"))
    if not (os.access(package, os.W_OK) or os.access(home, os.W_OK)):
        os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "kubesonar-numba-cache")


_choose_cache_dir()

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    def njit(*_args, **_options):
        return lambda function: function

__all__ = ["njit"]
