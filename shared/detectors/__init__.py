"""Detectors: each scores batches against what it learned, decides findings, and learns, with its state
kept as a typed, versioned document. The interface is :class:`Detector` (shared/detectors/base.py)."""

from __future__ import annotations

from kubesonar.shared.detectors.base import (
    Detector,
    LearningClock,
    Pair,
    Score,
    StateMigrationError,
    batch_of,
    bounded,
    clock_from_v0,
    decide_alarms,
    observe_all,
    without_flagged,
)

__all__ = ["Detector", "LearningClock", "Pair", "Score", "StateMigrationError", "batch_of", "bounded", "clock_from_v0",
           "decide_alarms",
           "observe_all", "without_flagged"]
