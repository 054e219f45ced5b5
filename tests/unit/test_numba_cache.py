"""numba's cache goes somewhere writable even on a read-only root filesystem (issue 19)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

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


@pytest.mark.slow
def test_flows_runs_with_a_read_only_package_and_no_home(tmp_path):
    """The DaemonSet's read-only root filesystem: the sensor package read-only, $HOME unwritable."""
    import os
    import subprocess
    import sys

    sensor_dir = Path(__file__).resolve().parents[2] / "sensor"
    # the package read-only in a mount namespace of the command's own: the rest of the machine (tests run
    # beside this one) keeps a writable package, and so numba's cache beside it
    read_only = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                 'mount -o bind,ro "$1" "$1" && shift && exec "$@"', "sh", str(sensor_dir)]
    if os.geteuid() != 0 or subprocess.run([*read_only, "true"], capture_output=True, check=False).returncode:
        pytest.skip("needs root, unshare and bind mounts to make the package read-only")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    # the JIT path is the one that needs a cache directory, also where the native module was built
    env |= {"HOME": str(UNWRITABLE), "TMPDIR": str(tmp_path), "KUBESONAR_NATIVE": "0"}
    kubesonar = Path(sys.executable).with_name("kubesonar")
    done = subprocess.run([*read_only, str(kubesonar), "flows", "--format", "jsonl",
                           str(sensor_dir.parent / "examples/cluster-traffic.pcap")],
                          capture_output=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout.splitlines()) > 0
    assert any(p.name.startswith("kubesonar-numba-") for p in tmp_path.iterdir())
