"""Notification outputs (after falcosidekick: one small module per output) and their routing."""
