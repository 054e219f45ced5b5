"""Detectors: each scores batches against what it learned, decides findings, and learns, with its state
kept as a typed, versioned document. The interface is :class:`Detector` (shared/detectors/base.py)."""

from __future__ import annotations

from kubesonar.shared.detectors.base import (
    IDLE_FORGET_NS,
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

__all__ = ["IDLE_FORGET_NS", "Detector", "LearningClock", "Pair", "Score", "StateMigrationError", "batch_of", "bounded",
           "clock_from_v0", "decide_alarms", "observe_all", "without_flagged"]
