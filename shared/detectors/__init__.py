"""Detectors: each learns from and scores flows, keeps serialisable state, and reports findings."""
