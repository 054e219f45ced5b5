"""Whether the sensor loop still moves: a file the loop rewrites and an exec probe that reads it.

Each batch the sink takes (one a window at least: the heartbeat) pushes a deadline, written to the file,
``stale_after_s`` ahead. The kubelet runs ``python -m kubesonar.sensor.liveness FILE``, which fails once
the deadline has passed: a loop stuck on a worker or a publish that never returns, or a sink that keeps
failing, gets the container restarted instead of a pod that looks alive and sends nothing.

A file and an exec probe, not an HTTP endpoint: the sensor runs with hostNetwork, where a port would be
open on the node's own addresses (and could collide with the node's services); the file stays in the
pod's /tmp. The probe imports nothing but this module, so it costs a Python start, not the sensor's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# a window's publish may wait for the spool's three short tries and its drain; NATS gives a send of ten
# parts up to a minute: three windows and two minutes more before the sensor is called stuck
STALE_MARGIN_S = 120.0
_BEAT_EVERY_S = 1.0  # the file is rewritten at most this often


def stale_after(window_s: float) -> float:
    return 3 * window_s + STALE_MARGIN_S


class Heartbeat:
    def __init__(self, path: str | os.PathLike[str], stale_after_s: float):
        self.path, self.stale_after_s = Path(path), stale_after_s
        self._last = float("-inf")
        self.error = ""  # why the file could not be written, if it could not

    def beat(self, ahead_s: float | None = None) -> None:
        """Push the deadline ``ahead_s`` (default ``stale_after_s``) from now."""
        now = time.monotonic()
        if now - self._last < _BEAT_EVERY_S:
            return
        self._last = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(f"{time.time() + (self.stale_after_s if ahead_s is None else ahead_s):.3f}\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # the probe then fails and says so: the sensor cannot be told alive
            self.error = f"cannot write {self.path}: {exc.strerror}"


def alive(path: str | os.PathLike[str], now: float | None = None) -> tuple[bool, str]:
    """(whether the sensor beat in time, why not)."""
    try:
        deadline = float(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return False, f"no heartbeat in {path}: {exc}"
    now = time.time() if now is None else now
    if now > deadline:
        return False, f"the sensor loop last moved {now - deadline:.0f} s past its deadline ({path})"
    return True, ""


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kubesonar.sensor.liveness HEALTH_FILE", file=sys.stderr)
        return 2
    ok, why = alive(argv[0])
    if not ok:
        print(f"kubesonar sensor: not alive: {why}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
