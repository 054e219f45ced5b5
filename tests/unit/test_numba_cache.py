"""numba's cache goes somewhere writable even on a read-only root filesystem (issue 19)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubesonar.sensor.numba_cache import choose_cache_dir

UNWRITABLE = Path("/proc/kubesonar-no-such-dir")  # /proc refuses new directories, even to root


def test_neither_package_dir_nor_home_writable_falls_back_to_the_temp_dir(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(UNWRITABLE))
    chosen = choose_cache_dir(UNWRITABLE)
    assert chosen is not None and chosen.startswith(tempfile.gettempdir())


def test_a_writable_home_is_used_when_the_package_dir_is_not(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert choose_cache_dir(UNWRITABLE) == str(tmp_path / "numba")


def test_an_explicit_setting_and_a_writable_package_dir_leave_numba_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert choose_cache_dir(UNWRITABLE) is None
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    assert choose_cache_dir(tmp_path) is None
