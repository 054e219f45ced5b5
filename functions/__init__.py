"""Runtimes: one thin adapter per cloud over the core, and the local default."""
