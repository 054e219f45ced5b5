"""A writable place for numba's compiled-function cache, chosen before numba is first imported.

numba caches next to the source (``__pycache__``) or else under ``$HOME``; on a read-only root
filesystem (the DaemonSet) neither is writable and ``@njit(cache=True)`` fails at import. Then the
cache goes to a per-user directory under the temporary directory (an emptyDir in the pod). An explicit
``NUMBA_CACHE_DIR`` always wins.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def _writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (made if missing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def choose_cache_dir(package_dir: Path = _PACKAGE_DIR) -> str | None:
    """The directory to give numba, or None when its own default (beside the sources) works."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return None
    if _writable(package_dir / "__pycache__"):
        return None
    try:
        home_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "numba"
    except RuntimeError:  # no home directory at all
        home_cache = None
    if home_cache is not None and _writable(home_cache):
        return str(home_cache)
    return str(Path(tempfile.gettempdir()) / f"kubesonar-numba-{os.getuid() if hasattr(os, 'getuid') else 0}")


def configure() -> None:
    chosen = choose_cache_dir()
    if chosen:
        os.environ["NUMBA_CACHE_DIR"] = chosen


configure()
